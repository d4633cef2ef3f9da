"""Start, stop and restart the lab's ``raven-cache-proxy`` processes, one per node namespace.

Each node runs its own proxy, as a sibling of its agent: it listens on 127.0.0.1:10261 inside the
node's namespace, serves HTTPS with the lab CA's certificate for 127.0.0.1, forwards to the API
server's Internet address and keeps its cache in ``STATE/proxies/<node>/cache``, which survives a
restart of the proxy. Since every proxy has the same loopback address in its own namespace, one
kubeconfig (``STATE/proxy.kubeconfig``) serves every node's agent. It also holds its node's
client certificate (``--node-cert``), which it presents upstream for the node's kubelet and
heartbeat, and follows the cloud path the heartbeat decides (``--path-file``, see
:mod:`raven.lab.sidecars`). With the node's identity it also reads the shared resources once
for all the node's clients (node-level reuse, ``--share``), and once for its whole pool
(pool-level reuse): it follows its agent's ``/role`` and serves the pool feed on the node's
InternalIP with the node's kubelet serving pair from the lab CA (``pki/kubelet-serving-<node>``,
for that address) while the node is its pool's gateway. The lab-wide settings
(:func:`set_share`, kept in the lab state as ``proxy_share`` and ``proxy_pool``) choose which
resources, or ``none``, and whether pool-level reuse is on (the default);
:func:`restart_all` applies them. Proxies are recorded in the lab state like agents (role
``cache-proxy``), so ``down`` stops them by PID.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from raven.lab import netns
from raven.lab.apiserver.kubeconfig import write_kubeconfig
from raven.lab.apiserver.pki import Pki, node_client_name, node_serving_name
from raven.lab.state import LabState, log_since
from raven.lab.topology import Lab, Node

ROLE = "cache-proxy"
PROXY_KUBECONFIG = "proxy.kubeconfig"  # server https://127.0.0.1:10261: the node's own proxy
CERT_NAME = "cache-proxy"  # the extra serving pair in the lab PKI (pki/cache-proxy.{crt,key})
CERT_HOSTS = ("127.0.0.1", "localhost")
LISTEN_HOST = "127.0.0.1"
LISTEN_PORT = 10261  # raven.cacheproxy.server.DEFAULT_PORT (not imported: it pulls in aiohttp)
READY_LINE = b"raven-cache-proxy listening on"
PROXY_URL = f"https://{LISTEN_HOST}:{LISTEN_PORT}"
SHARE_KEY = "proxy_share"  # the lab state's record of --share ("" or absent: the default)
POOL_KEY = "proxy_pool"  # False: no pool-level reuse (absent: on)
AGENT_ROLE = "http://127.0.0.1:10262/role"  # the node's agent (agent/config.py health_port)


class ProxyError(RuntimeError):
    """A cache proxy did not start; the message quotes its log."""


def executable() -> Path:
    # RAVEN_LAB_CACHE_PROXY overrides the venv's console script (to try another build of it)
    override = os.environ.get("RAVEN_LAB_CACHE_PROXY")
    return Path(override) if override else Path(sys.executable).parent / "raven-cache-proxy"


def proxy_dir(state_dir: Path, node: str) -> Path:
    return state_dir / "proxies" / node


def write_proxy_kubeconfig(state_dir: Path, pki: Pki) -> Path:
    """The kubeconfig of every node's agent: its own proxy, the lab CA, the lab token."""
    return write_kubeconfig(state_dir / PROXY_KUBECONFIG, PROXY_URL, pki.ca_cert, pki.token)


def running(st: LabState, node: str) -> bool:
    return st.running(ROLE, node)


def start(st: LabState, state_dir: Path, node: Node, upstream: str) -> int:
    """Start the proxy of ``node`` inside its namespace; returns its PID. Does not wait: see
    :func:`wait_ready`."""
    if running(st, node.name):
        raise ProxyError(f"the cache proxy of {node.name} is already running")
    pki = Pki.at(state_dir / "pki")
    cert, key = pki.extra_pair(CERT_NAME)
    home = proxy_dir(state_dir, node.name)
    home.mkdir(parents=True, exist_ok=True)
    log_file = home / "cache-proxy.log"
    argv = [
        str(executable()),
        "--upstream",
        upstream,
        "--ca-cert",
        str(pki.ca_cert),
        "--cache-dir",
        str(home / "cache"),
        "--host",
        LISTEN_HOST,
        "--port",
        str(LISTEN_PORT),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    ]
    node_cert, node_key = pki.extra_pair(node_client_name(node.name))
    if node_cert.exists():  # the node's identity, for its kubelet and heartbeat
        argv += ["--node-cert", str(node_cert), "--node-key", str(node_key)]
        argv += ["--path-file", str(state_dir / "nodes" / node.name / "cloud-path.json")]
        share = str(st.info.get(SHARE_KEY) or "")
        if share:
            argv += ["--share", share]
        serving_cert, serving_key = pki.extra_pair(node_serving_name(node.name))
        if share != "none" and st.info.get(POOL_KEY, True) and serving_cert.exists():
            argv += ["--agent-role", AGENT_ROLE, "--pool-listen", str(node.ip)]
            argv += ["--pool-cert", str(serving_cert), "--pool-key", str(serving_key)]
    offset = log_file.stat().st_size if log_file.exists() else 0
    pid = st.spawn(
        ROLE,
        node.name,
        netns.in_netns(node.netns, argv),
        log_file,
        netns=node.netns,
        log=str(log_file),
        log_offset=offset,
    )
    (home / "cache-proxy.pid").write_text(f"{pid}\n")
    return pid


def wait_ready(st: LabState, nodes: list[str], *, timeout: float = 20.0) -> None:
    """Wait until the proxy of each of ``nodes`` says it listens; ProxyError naming the first
    one that died or stayed silent, with the end of its log."""
    waiting = {name: st.processes(ROLE, name) for name in nodes}
    deadline = time.monotonic() + timeout
    while True:
        for name, recs in list(waiting.items()):
            if not recs:
                raise ProxyError(f"no cache proxy of {name} was started")
            rec = recs[-1]
            log_file = Path(rec["log"])
            if READY_LINE in log_since(rec):
                del waiting[name]
            elif not st.running(ROLE, name):
                raise ProxyError(
                    f"the cache proxy of {name} exited; log {log_file}:\n"
                    + log_since(rec)[-2000:].decode(errors="replace")
                )
        if not waiting:
            return
        if time.monotonic() > deadline:
            names = ", ".join(sorted(waiting))
            raise ProxyError(f"cache proxy of {names} not listening after {timeout:.0f}s")
        time.sleep(0.05)


def start_missing(lab: Lab, st: LabState, state_dir: Path, nodes: list[str]) -> list[str]:
    """Start the proxy of each of ``nodes`` that has none running, wait until all listen;
    returns the nodes whose proxy was started (none in a lab without an API server)."""
    upstream = st.info.get("api_node_url")
    if not upstream:
        return []
    by_name = {n.name: n for n in lab.nodes}
    started = [name for name in nodes if not running(st, name)]
    for name in started:
        start(st, state_dir, by_name[name], upstream)
    wait_ready(st, started)
    return started


def stop(st: LabState, node: str, *, grace: float = 5.0) -> bool:
    """SIGTERM the recorded proxy of ``node`` (it ends held watches and exits), SIGKILL after
    ``grace``."""
    return st.stop(ROLE, node, grace=grace)


def set_share(st: LabState, share: str, *, pool: bool = True) -> None:
    """The ``--share`` every proxy starts with from now on (``""``: the proxy's default;
    ``none``: no reuse at all), and whether pool-level reuse is on. Takes effect at the next
    start: see :func:`restart_all`."""
    if share:
        st.info[SHARE_KEY] = share
    else:
        st.info.pop(SHARE_KEY, None)
    st.info[POOL_KEY] = pool
    st.save()


def restart_all(lab: Lab, st: LabState, state_dir: Path) -> list[str]:
    """Stop every node's proxy and start it again (its cache survives), waiting until all
    listen; the nodes restarted. Their clients' watches end and start again at once."""
    upstream = st.info.get("api_node_url")
    if not upstream:
        return []
    names = [n.name for n in lab.nodes if running(st, n.name)]
    for name in names:
        stop(st, name)
    return start_missing(lab, st, state_dir, names) if names else []
