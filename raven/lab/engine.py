"""Orchestration of ``raven lab up | status | down | restart`` on top of the topology and the
primitives (cut and heal live in :mod:`raven.lab.faults`).

``up`` records every namespace, link, process and file in the state dir as it creates it;
``down`` undoes those records, then sweeps anything named with the lab's prefix, so it also
cleans up after a crash or a half-finished ``up``, and running it twice is harmless.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shutil
import sys
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raven.lab import agents as lab_agents
from raven.lab import apiserver_proc, breaks, deployment, faults, netns, proxies, sidecars
from raven.lab.apiserver.kubeconfig import write_kubeconfig
from raven.lab.apiserver.pki import Pki, node_clients, node_serving_name
from raven.lab.state import LabState, proc_start_time, stop_processes
from raven.lab.topology import (
    API_PORT_IF,
    BRIDGE_IF,
    HOST_PORT_IF,
    HOSTLINK_RANGE,
    POD_IF,
    POD_INNER_IF,
    UPLINK_IF,
    Lab,
    Node,
    host_if_name,
    load_topology_file,
    parse_topology,
    resolve,
)

DEFAULT_STATE_DIR = Path("/run/raven-lab")
DEFAULT_PREFIX = "rl"
DEFAULT_TOPOLOGY = Path(__file__).resolve().parents[2] / "netns-lab" / "three-pools.yaml"
CRD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "crds"
WG_SOCKET_DIR = Path("/var/run/wireguard")
HOST_KUBECONFIG = "kubeconfig"  # for the operator on the host (API server's host-link address)
NODE_KUBECONFIG = lab_agents.NODE_KUBECONFIG  # node namespaces reach the API server directly
PROXY_KUBECONFIG = proxies.PROXY_KUBECONFIG  # admin, through a node's cache proxy on 127.0.0.1
# what `raven lab restart|kill NODE --component` operates
COMPONENTS = ("agent", "cache-proxy", sidecars.KUBELET, sidecars.HEARTBEAT)
# Order in which `down` stops processes: agents, heartbeats and kubelets still talk to their
# proxies as they stop.
STOP_ORDER = ("agent", sidecars.HEARTBEAT, sidecars.KUBELET, proxies.ROLE, "apiserver")
# Files and directories the lab writes in its state dir; `down` removes exactly these.
STATE_ENTRIES = (
    "lab.json",
    "lab.tmp",
    "pki",
    "apiserver",
    "apiserver.log",
    "audit.log",
    "agents",
    "proxies",
    "nodes",
    HOST_KUBECONFIG,
    NODE_KUBECONFIG,
    PROXY_KUBECONFIG,
    deployment.AGENT_KUBECONFIG,
)


class LabError(RuntimeError):
    """A lab operation refused or failed; the message says what to do."""


@dataclass
class Settings:
    state_dir: Path = DEFAULT_STATE_DIR
    prefix: str = DEFAULT_PREFIX
    apiserver_timeout: float = 20.0


@dataclass
class UpResult:
    lab: Lab
    kubeconfig: Path | None
    api_url: str | None
    seconds: float
    agents: list[str] = field(default_factory=list)


def agent_executable() -> Path:
    # RAVEN_LAB_AGENT overrides the venv's console script (to try an agent build elsewhere)
    override = os.environ.get("RAVEN_LAB_AGENT")
    return Path(override) if override else Path(sys.executable).parent / "raven-agent"


def agent_problem() -> str | None:
    """Why agents cannot be started, or None when they can."""
    exe = agent_executable()
    if not exe.exists():
        return f"{exe} does not exist"
    if not os.access(exe, os.X_OK):
        return f"{exe} is not executable"
    if os.environ.get("RAVEN_LAB_AGENT"):
        return None  # another agent build: its own imports are its business
    try:
        if importlib.util.find_spec("agent.main") is None:
            return "module agent.main cannot be imported"
    except ImportError as e:
        return f"module agent.main cannot be imported ({e})"
    return None


def _hostlink_subnet(prefix: str) -> ipaddress.IPv4Network:
    """A /30 in 198.19.0.0/16 for this prefix's host<->API server veth, skipping ranges in use."""
    used = [i.network for i in netns.host_addresses()] + netns.host_routes()
    count = HOSTLINK_RANGE.num_addresses // 4
    start = zlib.crc32(prefix.encode()) % count
    for k in range(count):
        base = int(HOSTLINK_RANGE.network_address) + 4 * ((start + k) % count)
        net = ipaddress.IPv4Network((base, 30))
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise LabError(f"no free /30 left in {HOSTLINK_RANGE} for the lab's host link")


def _existing(prefix: str) -> list[str]:
    found = [n for n in netns.list_netns() if n.startswith(prefix + "-")]
    if host_if_name(prefix) in netns.link_names(None):
        found.append(host_if_name(prefix))
    return found


def up(
    topology_file: Path | None,
    settings: Settings,
    *,
    agents: bool,
    apiserver: bool = True,
    node_netns: Mapping[str, int] | None = None,
    log: Any = print,
) -> UpResult:
    """Build the lab. Refuses (creating nothing) on a bad topology, a running lab or no agent.

    ``node_netns`` maps node names to a process whose network namespace is that node's (the
    sandbox of a pod run under a container engine, see tests/docker): the lab names that
    namespace as the node's instead of making one, wires it like any node, and starts neither
    cache proxy nor agent there, since the pod runs its own.
    """
    t0 = time.monotonic()
    spec = load_topology_file(topology_file or DEFAULT_TOPOLOGY)
    lab = resolve(spec, settings.prefix)
    external = dict(node_netns or {})
    if unknown := sorted(set(external) - {n.name for n in lab.nodes}):
        raise LabError(f"node_netns names nodes the topology does not have: {unknown}")
    if gone := sorted(n for n, pid in external.items() if not Path(f"/proc/{pid}/ns/net").exists()):
        raise LabError(f"node_netns: the processes of {gone} are not running")
    if agents and (why := agent_problem()):
        raise LabError(
            f"cannot start agents: {why}. Run `raven lab up --no-agents` to build the "
            "lab without them."
        )
    if apiserver and not apiserver_proc.apiserver_available():
        raise LabError("the lab API server (python -m raven.lab.apiserver) is not installed")
    state_dir = settings.state_dir
    if LabState.load(state_dir) is not None:
        raise LabError(f"a lab is already up (state in {state_dir}); run `raven lab down` first")
    if leftovers := _existing(settings.prefix):
        raise LabError(
            f"lab prefix {settings.prefix!r} is in use ({', '.join(leftovers[:5])}); "
            "run `raven lab down` first or choose another RAVEN_LAB_PREFIX"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    st = LabState(
        path=state_dir / "lab.json",
        prefix=settings.prefix,
        topology=str(topology_file or DEFAULT_TOPOLOGY),
        started_at=time.time(),
    )
    # the resolved topology travels with the state, so `status` does not depend on the file
    st.info["spec"] = spec.model_dump(mode="json", by_alias=True)
    st.info["external_nodes"] = sorted(external)
    st.save()
    try:
        _build_network(lab, st, external)
        result = UpResult(lab=lab, kubeconfig=None, api_url=None, seconds=0.0)
        if apiserver:
            _start_apiserver(lab, st, state_dir, settings, result)
            if agents:  # the proxies start up while the API server gets its objects
                _launch_proxies(lab, st, state_dir)
            _populate_apiserver(lab, st, state_dir, result)
        if agents:
            if apiserver:
                _start_node_identities(lab, st, state_dir)
            result.agents = _start_agents(lab, st, state_dir, proxied=apiserver)
    except BaseException:
        # Roll back, so a failed `up` leaves nothing behind (a crash that skips this is
        # what `raven lab down` is for).
        log("lab up failed; removing what was built")
        for warning in down(settings, log=log):
            log(f"warning: {warning}")
        raise
    st.phase = "up"
    st.save()
    result.seconds = time.monotonic() - t0
    return result


def _build_network(lab: Lab, st: LabState, external: Mapping[str, int]) -> None:
    pids = {n.netns: external[n.name] for n in lab.nodes if n.name in external}
    for ns in lab.all_netns():
        st.add("netns", name=ns)  # recorded first: a crash between the two still gets swept
        if ns in pids:
            netns.attach_netns(ns, pids[ns])
        else:
            netns.create_netns(ns)

    # The Internet segment: a bridge in its own namespace; the API server plugs into it.
    netns.add_bridge(lab.inet_netns, BRIDGE_IF)
    netns.add_veth(lab.api_netns, UPLINK_IF, lab.inet_netns, API_PORT_IF)
    netns.set_master(lab.inet_netns, API_PORT_IF, BRIDGE_IF)
    netns.add_address(lab.api_netns, UPLINK_IF, lab.api_ip, lab.internet.prefixlen)

    # The host's one way in: a /30 veth to the API server namespace. The connected /30 is the
    # only route the host gets; the API namespace does not forward, so the host sees nothing else.
    hostnet = _hostlink_subnet(lab.prefix)
    host_ip, api_host_ip = hostnet[1], hostnet[2]
    st.add("hostlink", ifname=lab.host_if, subnet=str(hostnet))
    netns.add_veth(None, lab.host_if, lab.api_netns, HOST_PORT_IF)
    netns.disable_ipv6(lab.host_if)  # no link-local address on the host side either
    netns.add_address(None, lab.host_if, host_ip, 30)
    netns.add_address(lab.api_netns, HOST_PORT_IF, api_host_ip, 30)
    st.info["host_ip"] = str(host_ip)
    st.info["api_host_ip"] = str(api_host_ip)
    st.save()

    # NAT routers: a public leg on the Internet switch, a LAN bridge, MASQUERADE out the public leg.
    for r in lab.routers:
        netns.add_veth(r.netns, UPLINK_IF, lab.inet_netns, r.port)
        netns.set_master(lab.inet_netns, r.port, BRIDGE_IF)
        netns.add_address(r.netns, UPLINK_IF, r.public_ip, lab.internet.prefixlen)
        netns.add_bridge(r.netns, BRIDGE_IF)
        netns.add_address(r.netns, BRIDGE_IF, r.lan_ip, r.lan.prefixlen)
        netns.enable_forwarding(r.netns)
        lan_router = next((lr for lr in lab.lan_routers if lr.pool == r.pool), None)
        subnets = [g.network for g in lan_router.segments] if lan_router else []
        netns.add_masquerade(r.netns, f"{lab.prefix.upper()}-MASQ", [r.lan, *subnets], UPLINK_IF)

    # A routed LAN's LAN router: a leg on the NAT router's LAN (its default route), one bridge
    # per further subnet. The NAT router reaches those subnets through it.
    for lr in lab.lan_routers:
        nat = next(r for r in lab.routers if r.pool == lr.pool)
        netns.add_veth(lr.netns, UPLINK_IF, nat.netns, lr.port)
        netns.set_master(nat.netns, lr.port, BRIDGE_IF)
        netns.add_address(lr.netns, UPLINK_IF, lr.lan_ip, nat.lan.prefixlen)
        netns.add_route(lr.netns, "default", gateway=lr.nat_ip)
        netns.enable_forwarding(lr.netns)
        for segment in lr.segments:
            netns.add_bridge(lr.netns, segment.bridge)
            netns.add_address(
                lr.netns, segment.bridge, segment.router_ip, segment.network.prefixlen
            )
            netns.add_route(nat.netns, str(segment.network), gateway=lr.lan_ip)

    # Nodes and their pods; the lab plays CNI: host routes to local pods, and routes to the other
    # nodes' pod CIDRs of the same pool (direct on one segment, else through the LAN router,
    # which routes every pod CIDR of its pool). Nothing routes pod CIDRs between pools.
    for n in lab.nodes:
        netns.add_veth(n.netns, UPLINK_IF, n.switch_netns, n.name)
        netns.set_master(n.switch_netns, n.name, n.bridge)
        netns.add_address(n.netns, UPLINK_IF, n.ip, n.prefixlen)
        if n.gateway is not None:
            netns.add_route(n.netns, "default", gateway=n.gateway)
        netns.enable_forwarding(n.netns)
        netns.add_veth(n.netns, POD_IF, n.pod.netns, POD_INNER_IF)
        netns.add_address(n.netns, POD_IF, n.pod_gateway, 32)
        netns.add_route(n.netns, f"{n.pod.ip}/32", ifname=POD_IF)
        netns.add_address(n.pod.netns, POD_INNER_IF, n.pod.ip, 32)
        netns.add_route(n.pod.netns, f"{n.pod_gateway}/32", ifname=POD_INNER_IF)
        netns.add_route(n.pod.netns, "default", gateway=n.pod_gateway, ifname=POD_INNER_IF)
        for other in lab.nodes:
            if other.pool != n.pool or other.name == n.name:
                continue
            on_link = (other.switch_netns, other.bridge) == (n.switch_netns, n.bridge)
            hop = other.ip if on_link or n.lan_gateway is None else n.lan_gateway
            netns.add_route(n.netns, str(other.pod_cidr), gateway=hop)
        for lr in lab.lan_routers:
            if lr.pool == n.pool:
                netns.add_route(lr.netns, str(n.pod_cidr), gateway=n.ip)


def _start_apiserver(
    lab: Lab, st: LabState, state_dir: Path, settings: Settings, result: UpResult
) -> None:
    api_host_ip = st.info["api_host_ip"]
    pki = apiserver_proc.make_lab_pki(
        state_dir / "pki",
        [str(lab.api_ip), api_host_ip, "localhost"],
        extra={
            proxies.CERT_NAME: list(proxies.CERT_HOSTS),
            # Each node's kubelet serving pair: its cache-proxy's pool feed presents it.
            **{node_serving_name(n.name): [str(n.ip)] for n in lab.nodes},
        },
        clients=node_clients(n.name for n in lab.nodes),  # pods of external nodes too
    )
    host_url = f"https://{api_host_ip}:{lab.api_port}"
    node_url = f"https://{lab.api_ip}:{lab.api_port}"
    _launch_apiserver(lab, st, state_dir, pki, host_url, settings.apiserver_timeout)
    kubeconfig = write_kubeconfig(state_dir / HOST_KUBECONFIG, host_url, pki.ca_cert, pki.token)
    write_kubeconfig(state_dir / NODE_KUBECONFIG, node_url, pki.ca_cert, pki.token)
    proxies.write_proxy_kubeconfig(state_dir, pki)
    st.info.update(
        kubeconfig=str(kubeconfig),
        node_kubeconfig=str(state_dir / NODE_KUBECONFIG),
        proxy_kubeconfig=str(state_dir / PROXY_KUBECONFIG),
        api_url=host_url,
        api_node_url=node_url,
    )
    st.save()
    result.kubeconfig, result.api_url = kubeconfig, host_url


def _populate_apiserver(lab: Lab, st: LabState, state_dir: Path, result: UpResult) -> None:
    """The lab's Nodes, Raven's CRDs, deploy/'s RBAC and the relay pool's Gateway, as an
    operator would make; and the ServiceAccount token the agents run with."""
    kubeconfig = result.kubeconfig
    assert kubeconfig is not None
    apiserver_proc.register_nodes(lab, kubeconfig)
    st.info["crds"] = apiserver_proc.install_crds(kubeconfig, CRD_DIR)
    st.info["rbac"] = deployment.apply(kubeconfig, deployment.rbac_objects())
    st.info["gateways"] = apiserver_proc.create_gateways(lab, kubeconfig)
    deployment.issue_agent_kubeconfig(
        state_dir, Pki.at(state_dir / "pki"), st.info["api_url"], proxies.PROXY_URL
    )
    st.save()


def stop_apiserver(settings: Settings) -> bool:
    """Stop the running lab's API server (an outage); its state stays for ``start_apiserver``."""
    st, _ = load(settings)
    recs = st.processes("apiserver")
    stopped = bool(stop_processes([(int(r["pid"]), r.get("start_time")) for r in recs]))
    st.forget(recs)
    return stopped


def start_apiserver(settings: Settings) -> int:
    """Start the lab's API server again with the same PKI and state; returns its PID."""
    st, lab = load(settings)
    if any(r["role"] == "apiserver" for r in st.of_kind("process")):
        raise LabError("the lab API server is already running")
    pki = Pki.at(settings.state_dir / "pki")
    return _launch_apiserver(
        lab, st, settings.state_dir, pki, st.info["api_url"], settings.apiserver_timeout
    )


def _launch_apiserver(
    lab: Lab, st: LabState, state_dir: Path, pki: Pki, url: str, timeout: float
) -> int:
    """Start the API server in its namespace, record it, wait until ``url`` is ready."""
    log_file = state_dir / "apiserver.log"
    proc = apiserver_proc.start(
        lab,
        pki,
        state_dir=state_dir / "apiserver",
        log_file=log_file,
        audit_log=state_dir / "audit.log",  # every request, for tests and for debugging
    )
    st.add(
        "process",
        role="apiserver",
        name="apiserver",
        pid=proc.pid,
        start_time=proc_start_time(proc.pid),
        netns=lab.api_netns,
    )
    apiserver_proc.wait_ready(url, pki.ca_cert, proc, timeout=timeout, log_file=log_file)
    return proc.pid


def _own_nodes(lab: Lab, st: LabState) -> list[Node]:
    """The nodes whose processes the lab runs (not those whose pod runs them)."""
    external = set(st.info.get("external_nodes", []))
    return [n for n in lab.nodes if n.name not in external]


def _launch_proxies(lab: Lab, st: LabState, state_dir: Path) -> None:
    """Start every node's cache proxy without waiting (``_start_agents`` waits for them)."""
    for node in _own_nodes(lab, st):
        proxies.start(st, state_dir, node, st.info["api_node_url"])


def _start_node_identities(lab: Lab, st: LabState, state_dir: Path) -> None:
    """Every own node's kubelet stand-in and heartbeat, once its proxy listens: they act as the
    node (its client certificate) through it."""
    nodes = _own_nodes(lab, st)
    names = [n.name for n in nodes]
    proxies.wait_ready(st, names)
    for role in (sidecars.KUBELET, sidecars.HEARTBEAT):
        for node in nodes:
            sidecars.start(st, state_dir, role, node, st.info["api_node_url"])
    for role in (sidecars.KUBELET, sidecars.HEARTBEAT):
        sidecars.wait_ready(st, role, names)


def _start_agents(lab: Lab, st: LabState, state_dir: Path, *, proxied: bool) -> list[str]:
    nodes = _own_nodes(lab, st)
    names = [n.name for n in nodes]
    if proxied:
        proxies.wait_ready(st, names)  # an agent's first list goes through its proxy
    for node in nodes:
        lab_agents.start(lab, st, state_dir, node, agent_executable())
    return names


def _refuse_external(st: LabState, nodes: list[str]) -> None:
    if pods := sorted(set(nodes) & set(st.info.get("external_nodes", []))):
        raise LabError(f"{', '.join(pods)}: its processes run in a pod, not the lab's")


def start_agents(settings: Settings, nodes: list[str]) -> list[tuple[str, int]]:
    """Start the agents of ``nodes`` (their cache proxies first, where none runs); returns
    (node, pid) pairs. RuntimeError when one of them is already running."""
    st, lab = load(settings)
    by_name = {n.name: n for n in lab.nodes}
    if unknown := [n for n in nodes if n not in by_name]:
        raise LabError(f"no such lab node: {', '.join(unknown)} (nodes: {', '.join(by_name)})")
    _refuse_external(st, nodes)
    if why := agent_problem():
        raise LabError(f"cannot start agents: {why}")
    proxies.start_missing(lab, st, settings.state_dir, nodes)
    exe = agent_executable()
    return [(n, lab_agents.start(lab, st, settings.state_dir, by_name[n], exe)) for n in nodes]


def restart(settings: Settings, node: str, component: str) -> tuple[int, bool]:
    """Restart one process of ``node``: its agent (SIGTERM, so it releases its lease) or its
    cache proxy (its cache stays). Starts it when it was not running. Returns (new PID, whether
    it was running)."""
    if component not in COMPONENTS:
        raise LabError(f"component {component!r}: expected {' or '.join(COMPONENTS)}")
    st, lab = load(settings)
    by_name = {n.name: n for n in lab.nodes}
    if node not in by_name:
        raise LabError(f"no such lab node: {node} (nodes: {', '.join(by_name)})")
    _refuse_external(st, [node])
    if component == "agent":
        if why := agent_problem():
            raise LabError(f"cannot start agents: {why}")
        was = lab_agents.stop(st, node)
        return lab_agents.start(lab, st, settings.state_dir, by_name[node], agent_executable()), was
    if not st.info.get("api_node_url"):
        raise LabError(f"the lab has no API server, so there is no {component} to run")
    if component in sidecars.ROLES:
        was = sidecars.stop(st, component, node)
        pid = sidecars.start(
            st, settings.state_dir, component, by_name[node], st.info["api_node_url"]
        )
        sidecars.wait_ready(st, component, [node])
        return pid, was
    was = proxies.stop(st, node)
    pid = proxies.start(st, settings.state_dir, by_name[node], st.info["api_node_url"])
    proxies.wait_ready(st, [node])
    return pid, was


def kill(settings: Settings, node: str, component: str) -> bool:
    """SIGKILL one process of ``node`` (a crash: nothing of its own clean-up runs). True when
    it was running."""
    if component not in COMPONENTS:
        raise LabError(f"component {component!r}: expected {' or '.join(COMPONENTS)}")
    st, lab = load(settings)
    if node not in {n.name for n in lab.nodes}:
        raise LabError(f"no such lab node: {node}")
    _refuse_external(st, [node])
    return st.kill(component, node)


def down(settings: Settings, *, log: Any = print) -> list[str]:
    """Remove everything the lab made; safe after a crash and when nothing is there. Returns
    a list of warnings (things found that the lab did not record and so left alone)."""
    warnings: list[str] = []
    st = LabState.load(settings.state_dir)
    prefix = st.prefix if st else settings.prefix

    # 0. processes a break paused (SIGSTOP) go on again, so they can hear the signals below
    if st is not None:
        breaks.resume_paused(st)

    # 1. processes, by recorded PID only, each role at once: agents first (they talk to their
    #    proxies as they stop), then the proxies, then the API server and anything else
    procs = st.of_kind("process") if st else []
    rank = {role: i for i, role in enumerate(STOP_ORDER)}
    for i in sorted({rank.get(r["role"], len(rank)) for r in procs}):
        group = [r for r in procs if rank.get(r["role"], len(rank)) == i]
        ended = stop_processes([(int(r["pid"]), r.get("start_time")) for r in group])
        for rec in group:
            if int(rec["pid"]) in ended:
                log(f"stopped {rec['role']} {rec['name']} (pid {rec['pid']})")

    # 2. namespaces: recorded ones and any others named with the prefix. WireGuard links are
    #    deleted first so a wireguard-go left behind by a crashed agent exits on its own.
    names = {r["name"] for r in (st.of_kind("netns") if st else [])}
    names |= {n for n in netns.list_netns() if n.startswith(prefix + "-")}
    for ns in sorted(names):
        if ns not in netns.list_netns():
            continue
        try:
            for ifname in netns.link_names(ns):
                if ifname.startswith(f"{prefix}wg"):
                    netns.delete_link(ns, ifname)
        except Exception as e:  # noqa: BLE001 -- a broken namespace must not stop the teardown
            warnings.append(f"could not list links in {ns}: {e}")
        stranded = netns.ns_pids(ns)
        if stranded:
            warnings.append(
                f"namespace {ns} still has processes the lab did not record: "
                f"{stranded} (left running)"
            )
        netns.remove_netns(ns)

    # 3. the host veth (normally gone with the API namespace; a crash could leave it alone)
    if netns.delete_link(None, host_if_name(prefix)):
        log(f"removed host link {host_if_name(prefix)}")

    # 4. stale WireGuard sockets of this lab's interface names whose owner has gone
    if WG_SOCKET_DIR.is_dir():
        for sock in WG_SOCKET_DIR.glob(f"{prefix}wg*.sock"):
            if sock.stem[len(prefix) + 2 :].isdigit() and sock.stem not in _live_wg_names():
                sock.unlink(missing_ok=True)

    # 5. files the lab wrote, then the state dir itself if that leaves it empty
    _remove_state_files(settings.state_dir)
    return warnings


def _live_wg_names() -> set[str]:
    # A wireguard-go still running for a name shows up as a link in some namespace we can't see
    # cheaply; its socket accepts connections. Treat connectable sockets as live.
    import socket

    live: set[str] = set()
    if not WG_SOCKET_DIR.is_dir():
        return live
    for sock in WG_SOCKET_DIR.glob("*.sock"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(0.2)
            s.connect(str(sock))
            live.add(sock.stem)
        except OSError:
            pass
        finally:
            s.close()
    return live


def _remove_state_files(state_dir: Path) -> None:
    if not state_dir.is_dir():
        return
    for entry in STATE_ENTRIES:
        p = state_dir / entry
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    try:
        state_dir.rmdir()
    except OSError:
        pass  # not empty: someone else's files live there too


@dataclass
class Status:
    up: bool
    phase: str
    kubeconfig: str | None
    api_url: str | None
    nodes: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    cuts: list[dict[str, Any]] = field(default_factory=list)
    proxy_kubeconfig: str | None = None
    breaks: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "phase": self.phase,
            "kubeconfig": self.kubeconfig,
            "proxyKubeconfig": self.proxy_kubeconfig,
            "apiServer": self.api_url,
            "nodes": self.nodes,
            "pods": self.pods,
            "cuts": self.cuts,
            "breaks": self.breaks,
        }


def load(settings: Settings) -> tuple[LabState, Lab]:
    """The state and resolved topology of the running lab; LabError when none is up."""
    st = LabState.load(settings.state_dir)
    if st is None or st.phase != "up":
        raise LabError(f"no lab is up (state dir {settings.state_dir})")
    return st, resolve(parse_topology(st.info["spec"]), st.prefix)


def status(settings: Settings) -> Status:
    st = LabState.load(settings.state_dir)
    if st is None:
        return Status(up=False, phase="down", kubeconfig=None, api_url=None, nodes=[], pods=[])
    lab = resolve(parse_topology(st.info["spec"]), st.prefix)
    present = set(netns.list_netns())
    cut = faults.cut_nodes(lab, st)
    nodes = [
        {
            "name": n.name,
            "pool": n.pool,
            "netns": n.netns,
            "addresses": [str(n.ip)],
            "podCIDR": str(n.pod_cidr),
            "present": n.netns in present,
            "agent": _process_status(st, "agent", n.name),
            "cacheProxy": _process_status(st, proxies.ROLE, n.name),
            "kubelet": _process_status(st, sidecars.KUBELET, n.name),
            "heartbeat": _process_status(st, sidecars.HEARTBEAT, n.name),
            "cloudPath": sidecars.cloud_path(settings.state_dir, n.name)
            if st.processes(sidecars.HEARTBEAT, n.name)
            else None,
            "cut": n.name in cut,
        }
        for n in lab.nodes
    ]
    pods = [
        {
            "name": p.name,
            "pool": p.pool,
            "node": p.node,
            "netns": p.netns,
            "addresses": [str(p.ip)],
            "present": p.netns in present,
        }
        for p in lab.pods
    ]
    return Status(
        up=st.phase == "up",
        phase=st.phase,
        kubeconfig=st.info.get("kubeconfig"),
        api_url=st.info.get("api_url"),
        nodes=nodes,
        pods=pods,
        cuts=faults.cuts(st),
        proxy_kubeconfig=st.info.get("proxy_kubeconfig"),
        breaks=breaks.breaks(st),
    )


def _process_status(st: LabState, role: str, node: str) -> dict[str, Any] | None:
    """PID and liveness of the recorded ``role`` process of ``node``; None when none is recorded."""
    recs = st.processes(role, node)
    if not recs:
        return None
    return {"pid": int(recs[-1]["pid"]), "running": st.running(role, node)}


def settings_from_env(state_dir: Path | None = None, prefix: str | None = None) -> Settings:
    from raven.lab.topology import check_prefix

    return Settings(
        state_dir=state_dir or Path(os.environ.get("RAVEN_LAB_DIR", str(DEFAULT_STATE_DIR))),
        prefix=check_prefix(prefix or os.environ.get("RAVEN_LAB_PREFIX", DEFAULT_PREFIX)),
    )
