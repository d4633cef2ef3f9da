"""Start, stop and kill the lab's per-node processes that act as the node itself: the kubelet
stand-in (:mod:`raven.lab.kubelet`) and ``raven-heartbeat``.

Both authenticate as the node: a client certificate from the lab CA (``pki/node-<node>.crt``,
``CN=system:node:<node>``, ``O=system:nodes``), used through the node's cache-proxy with
``STATE/nodes/<node>/identity.kubeconfig``. The cache-proxy holds the same certificate
(``--node-cert``) to present the node's identity upstream, and follows the node's cloud path in
``STATE/nodes/<node>/cloud-path.json``, which the heartbeat writes. Processes are recorded in the
lab state like agents (roles ``kubelet`` and ``heartbeat``), so ``down`` stops them by PID.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from raven.cloudpath import CloudPath, CloudPathError, read_path
from raven.lab import netns
from raven.lab.apiserver.kubeconfig import write_kubeconfig
from raven.lab.apiserver.pki import Pki, node_client_name
from raven.lab.proxies import PROXY_URL
from raven.lab.state import LabState, log_since
from raven.lab.topology import Node

KUBELET, HEARTBEAT = "kubelet", "heartbeat"
ROLES = (KUBELET, HEARTBEAT)
IDENTITY_KUBECONFIG = "identity.kubeconfig"
PATH_FILE = "cloud-path.json"
RELAY_PORT = 10264  # raven.heartbeat's default (not imported: it pulls in aiohttp)
HEARTBEAT_HEALTH_PORT = 10265
AGENT_HEALTH_PORT = 10262
KUBELET_HEALTHZ = "http://127.0.0.1:10248/healthz"
READY_LINES = {
    KUBELET: b"raven-lab-kubelet healthz on",
    HEARTBEAT: b"raven-heartbeat relay listening",
}


class SidecarError(RuntimeError):
    """A kubelet stand-in or heartbeat did not start; the message quotes its log."""


def node_dir(state_dir: Path, node: str) -> Path:
    return state_dir / "nodes" / node


def path_file(state_dir: Path, node: str) -> Path:
    return node_dir(state_dir, node) / PATH_FILE


def client_pair(state_dir: Path, node: str) -> tuple[Path, Path]:
    """The node's client certificate and key in the lab PKI."""
    return Pki.at(state_dir / "pki").extra_pair(node_client_name(node))


def write_identity_kubeconfig(state_dir: Path, node: str) -> Path:
    """The node's kubeconfig: its client certificate, through its own cache-proxy."""
    cert, key = client_pair(state_dir, node)
    pki = Pki.at(state_dir / "pki")
    return write_kubeconfig(
        node_dir(state_dir, node) / IDENTITY_KUBECONFIG,
        PROXY_URL,
        pki.ca_cert,
        client_cert=cert,
        client_key=key,
        name=f"node-{node}",
    )


def cloud_path(state_dir: Path, node: str) -> str:
    """``direct``, ``via NODE`` or ``none`` as the node's heartbeat last decided; ``unknown``
    when its file cannot be read."""
    try:
        path: CloudPath = read_path(path_file(state_dir, node))
    except CloudPathError:
        return "unknown"
    return path.describe()


def _argv(role: str, state_dir: Path, node: Node, upstream: str) -> list[str]:
    home = node_dir(state_dir, node.name)
    kubeconfig = str(home / IDENTITY_KUBECONFIG)
    if role == KUBELET:
        return [sys.executable, "-m", "raven.lab.kubelet", "--node", node.name,
                "--kubeconfig", kubeconfig]  # fmt: skip
    pki = Pki.at(state_dir / "pki")
    return [
        str(Path(sys.executable).parent / "raven-heartbeat"),
        "--node",
        node.name,
        "--kubeconfig",
        kubeconfig,
        "--upstream",
        upstream,
        "--ca-cert",
        str(pki.ca_cert),
        "--path-file",
        str(home / PATH_FILE),
        "--relay-port",
        str(RELAY_PORT),
        "--health-port",
        str(HEARTBEAT_HEALTH_PORT),
        "--kubelet-healthz",
        KUBELET_HEALTHZ,
        "--agent-role",
        f"http://127.0.0.1:{AGENT_HEALTH_PORT}/role",
    ]


def running(st: LabState, role: str, node: str) -> bool:
    return st.running(role, node)


def start(st: LabState, state_dir: Path, role: str, node: Node, upstream: str) -> int:
    """Start ``role`` of ``node`` inside its namespace; returns its PID (see :func:`wait_ready`)."""
    if role not in ROLES:
        raise SidecarError(f"no such node process {role!r}: expected one of {ROLES}")
    if running(st, role, node.name):
        raise SidecarError(f"the {role} of {node.name} is already running")
    home = node_dir(state_dir, node.name)
    home.mkdir(parents=True, exist_ok=True)
    if not (home / IDENTITY_KUBECONFIG).exists():
        write_identity_kubeconfig(state_dir, node.name)
    log_file = home / f"{role}.log"
    offset = log_file.stat().st_size if log_file.exists() else 0
    return st.spawn(
        role,
        node.name,
        netns.in_netns(node.netns, _argv(role, state_dir, node, upstream)),
        log_file,
        netns=node.netns,
        log=str(log_file),
        log_offset=offset,
    )


def wait_ready(st: LabState, role: str, nodes: list[str], *, timeout: float = 20.0) -> None:
    """Wait until ``role`` of each of ``nodes`` says it runs; SidecarError naming the first one
    that died or stayed silent, with the end of its log."""
    waiting = {name: st.processes(role, name) for name in nodes}
    deadline = time.monotonic() + timeout
    while waiting:
        for name, recs in list(waiting.items()):
            if not recs:
                raise SidecarError(f"no {role} of {name} was started")
            rec = recs[-1]
            text = log_since(rec)
            if READY_LINES[role] in text:
                del waiting[name]
            elif not st.running(role, name):
                raise SidecarError(
                    f"the {role} of {name} exited; log {rec['log']}:\n"
                    + text[-2000:].decode(errors="replace")
                )
        if waiting and time.monotonic() > deadline:
            raise SidecarError(
                f"{role} of {', '.join(sorted(waiting))} not up after {timeout:.0f}s"
            )
        time.sleep(0.05)


def stop(st: LabState, role: str, node: str, *, grace: float = 5.0) -> bool:
    return st.stop(role, node, grace=grace)


def kill(st: LabState, role: str, node: str) -> bool:
    """SIGKILL the recorded ``role`` of ``node``: a crash."""
    return st.kill(role, node)
