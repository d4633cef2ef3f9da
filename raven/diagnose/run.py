"""One diagnosis, start to end: read the objects, draw the path, collect every node's facts at
once, judge them hop by hop, probe where a probe tells more, name the first wrong hop.

The judging is pure (:mod:`raven.diagnose.checks`); this module only gathers (objects through
:mod:`raven.kube`, facts and probes through a :class:`~raven.diagnose.transport.Transport`)
and puts the findings in path order.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from raven.diagnose import checks
from raven.diagnose.checks import Finding, Status
from raven.diagnose.facts import NodeFacts, parse_facts
from raven.diagnose.outcome import Report, stations
from raven.diagnose.path import Leg, Path, PathError, endpoint, expected_path, planned
from raven.diagnose.probes import (
    Capture,
    CaptureResult,
    Echo,
    Udp,
    capture_from_json,
    echo_results_from_json,
)
from raven.diagnose.transport import Transport, TransportError
from raven.kube.client import KubeClient, load_config
from raven.kube.errors import KubeError, NotFound
from raven.kube.resources import GATEWAYS, NODES, Resource, leases
from raven.model import DEFAULT_RULE_PRIORITY, DEFAULT_TABLE, DesiredState
from raven.names import NODE_LEASE_NAMESPACE, PUBLIC_KEY_ANNOTATION, pool_of_lease
from raven.view import ClusterView, cluster_view

#: Sizes of the tunnel probes between two gateways: a small one, steps towards a full
#: WireGuard packet (underlay MTU), so a black hole also shows the size that still passes.
LEG_SIZES = (100, 1280, 1360, 1400, 1420, 1440, 1460, 1480, 1500)


@dataclass(frozen=True)
class Objects:
    """What the API server says, as far as a diagnosis needs it."""

    view: ClusterView
    annotations: Mapping[str, str | None]  # node -> its public-key annotation
    node_leases: Mapping[str, Mapping[str, str]]  # node -> its kube-node-lease annotations
    ready: Mapping[str, str | None]  # node -> Ready condition status


# ---- objects ---------------------------------------------------------------------------------


async def _read_objects(kubeconfig: str | None, lease_namespace: str) -> tuple[Any, ...]:
    config = load_config(kubeconfig)
    async with KubeClient(config, user_agent="raven-diagnose") as client:
        nodes, gateways, pool_leases, node_leases = await asyncio.gather(
            client.list(NODES),
            client.list(GATEWAYS),
            client.list(leases(lease_namespace)),
            client.list(leases(NODE_LEASE_NAMESPACE)),
        )
    return nodes, gateways, pool_leases, node_leases


def read_objects(kubeconfig: str | None, *, lease_namespace: str) -> Objects:
    nodes, gateways, pool_leases, node_leases = asyncio.run(
        _read_objects(kubeconfig, lease_namespace)
    )
    by_pool = {}
    for lease in pool_leases.get("items", []):
        pool = pool_of_lease(lease.get("metadata", {}).get("name", ""))
        if pool is not None:
            by_pool[pool] = lease
    view = cluster_view(nodes.get("items", []), gateways.get("items", []), by_pool)
    annotations = {}
    ready = {}
    for node in nodes.get("items", []):
        meta = node.get("metadata", {})
        annotations[meta.get("name", "")] = (meta.get("annotations") or {}).get(
            PUBLIC_KEY_ANNOTATION
        )
        cond: Mapping[str, Any] = next(
            (c for c in node.get("status", {}).get("conditions", []) if c.get("type") == "Ready"),
            {},
        )
        ready[meta.get("name", "")] = cond.get("status")
    hb = {
        lease["metadata"]["name"]: lease["metadata"].get("annotations") or {}
        for lease in node_leases.get("items", [])
    }
    return Objects(view, annotations, hb, ready)


async def _pod_ip(kubeconfig: str | None, namespace: str, name: str) -> str | None:
    config = load_config(kubeconfig)
    async with KubeClient(config, user_agent="raven-diagnose") as client:
        try:
            pod = await client.get(Resource("", "v1", "pods", "Pod", namespace), name)
        except NotFound:
            return None
    ip = pod.get("status", {}).get("podIP")
    return str(ip) if ip else None


def resolve(
    text: str, transport: Transport, *, kubeconfig: str | None, namespace: str
) -> tuple[str, str]:
    """(IP, name) of ``text``: an IP, a pod name the transport knows, or ``[NS/]POD``."""
    try:
        return str(ipaddress.ip_address(text)), ""
    except ValueError:
        pass
    ip = transport.pod_ip(text)
    if ip is None:
        ns, _, name = text.rpartition("/")
        ip = asyncio.run(_pod_ip(kubeconfig, ns or namespace, name))
    if ip is None:
        raise PathError(f"no pod {text!r} (give an IP, a pod name or NAMESPACE/POD)")
    return ip, text


# ---- the diagnosis ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    table: int = DEFAULT_TABLE
    rule_priority: int = DEFAULT_RULE_PRIORITY
    echo_timeout: float = 1.0


def _parallel(jobs: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run the jobs at once; each result, or the exception it raised."""
    out: dict[str, Any] = {}
    if not jobs:
        return out
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {k: pool.submit(fn) for k, fn in jobs.items()}
        for k, fut in futures.items():
            try:
                out[k] = fut.result()
            except Exception as e:  # noqa: BLE001 -- reported as the node's finding
                out[k] = e
    return out


def _captured(
    transport: Transport,
    captures: Mapping[str, Capture],
    send: Callable[[], Any],
) -> tuple[Any, dict[str, CaptureResult]]:
    """Start the captures, send once every one listens, collect what each saw."""
    ready = threading.Semaphore(0)
    jobs: dict[str, Callable[[], Any]] = {}
    for node, cap in captures.items():
        jobs[node] = functools.partial(transport.probe, node, cap, ready=ready.release)
    results: dict[str, Any] = {}

    def run_captures() -> None:
        results.update(_parallel(jobs))

    thread = threading.Thread(target=run_captures, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5.0
    for _ in captures:
        ready.acquire(timeout=max(0.0, deadline - time.monotonic()))
    sent = send()
    thread.join()
    seen = {
        node: (CaptureResult(error=str(r)) if isinstance(r, Exception) else capture_from_json(r))
        for node, r in results.items()
    }
    return sent, seen


def diagnose(
    src_text: str,
    dst_text: str,
    transport: Transport,
    *,
    objects: Objects,
    src_ip: str,
    dst_ip: str,
    settings: Settings = Settings(),
) -> Report:
    t0 = time.monotonic()
    report = Report(src_text, dst_text)
    try:
        view = objects.view
        src = endpoint(view, src_ip, name=src_text if src_text != src_ip else "")
        dst = endpoint(view, dst_ip, name=dst_text if dst_text != dst_ip else "")
        path = expected_path(view, src, dst)
    except PathError as e:
        report.error = str(e)
        report.findings.append(checks.wrong("path", "path", str(e), "fix what it names"))
        report.seconds = time.monotonic() - t0
        return report
    report.path = path
    if path.same_pool:
        report.findings.append(
            checks.ok(
                src.node,
                "path",
                f"both in pool {src.pool}: the CNI carries it, Raven is not on this path",
            )
        )
        report.seconds = time.monotonic() - t0
        return report

    raw = _parallel(
        {n: functools.partial(transport.collect, n, table=settings.table) for n in path.nodes()}
    )
    facts: dict[str, NodeFacts] = {}
    for node, out in raw.items():
        if isinstance(out, Exception):
            report.findings.append(
                checks.wrong(
                    node, "reach", f"cannot reach {node}: {out}", "is its Raven pod running?"
                )
            )
        else:
            facts[node] = parse_facts(node, transport.wg_dev(node), out)
    plans = planned(
        view,
        facts,
        table=settings.table,
        rule_priority=settings.rule_priority,
        vxlan_dev={n: transport.vxlan_dev(n) for n in facts},
    )
    order = stations(path)
    by_station: dict[int, list[Finding]] = {i: [] for i in range(len(order) + 1)}
    for i, station in enumerate(order):
        if isinstance(station, Leg):
            by_station[i] += _leg_findings(station, facts, plans, objects)
        else:
            by_station[i] += _node_findings(station, path, facts, plans, objects)

    # Probes: an echo end to end; where it fails, a trace and the tunnels' own probes.
    probe_src = _probe_source(view, facts.get(src.node), src.node)
    desired_src = plans.get(src.node)
    full = _route_mtu(desired_src, dst.ip) or 1400
    echo_finding = None
    if probe_src is not None:
        ident = random.randrange(1, 0xFFFF)
        echo = Echo(probe_src, dst.ip, (84, full), ident, timeout=settings.echo_timeout)
        replies = _echo(transport, src.node, echo)
        echo_finding = checks.judge_echo(f"{src.node} -> {dst.ip}", replies)
        facts_wrong = any(f.status is Status.WRONG for fs in by_station.values() for f in fs)
        if replies and replies[0].outcome != "reply" and not facts_wrong:
            trace_echo = Echo(
                probe_src, dst.ip, (84,), ident + 1 & 0xFFFF or 1, timeout=settings.echo_timeout
            )
            cap = Capture(settings.echo_timeout + 0.3, icmp_id=trace_echo.ident)
            _, seen = _captured(
                transport,
                {n: cap for n in path.nodes()},
                lambda: _echo(transport, src.node, trace_echo),
            )
            places = [(h.node, "/".join(h.roles)) for h in path.hops]
            traced = checks.judge_trace(places, seen)
            if traced is not None:
                idx = next(
                    i for i, s in enumerate(order) if getattr(s, "node", None) == traced.where
                )
                by_station[idx].append(traced)
        if echo_finding.status is Status.WRONG:
            legs = {i: s for i, s in enumerate(order) if isinstance(s, Leg)}
            probed = _parallel(
                {
                    str(i): functools.partial(_leg_probes, leg, view, facts, plans, transport)
                    for i, leg in legs.items()
                }
            )
            for i in legs:
                found = probed[str(i)]
                if not isinstance(found, Exception):
                    by_station[i][1:1] = found  # after the keys, before the handshake
    else:
        echo_finding = Finding(
            src.node,
            "echo",
            Status.WARN,
            f"{src.node} has no address in its pod CIDR to probe from",
        )

    for i in range(len(order)):
        report.findings += by_station[i]
    report.findings.append(echo_finding)
    report.seconds = time.monotonic() - t0
    return report


def _echo(transport: Transport, node: str, echo: Echo) -> tuple[Any, ...]:
    try:
        return echo_results_from_json(transport.probe(node, echo, ready=lambda: None))
    except (TransportError, OSError, ValueError):
        return ()


def _probe_source(view: ClusterView, facts: NodeFacts | None, node: str) -> str | None:
    nv = next((n for n in view.nodes if n.name == node), None)
    if nv is None or facts is None:
        return None
    if nv.probe_address and facts.address_dev(nv.probe_address) is not None:
        return nv.probe_address
    nets = [ipaddress.ip_network(c) for c in nv.pod_cidrs]
    return next(
        (
            a.address
            for a in facts.addresses
            if any(ipaddress.ip_address(a.address) in n for n in nets)
        ),
        None,
    )


def _route_mtu(desired: DesiredState | None, ip: str) -> int | None:
    if desired is None:
        return None
    route = checks.best_route(desired.routes, ip)
    return route.mtu if route is not None else None


def _node_findings(
    hop: Any,
    path: Path,
    facts: Mapping[str, NodeFacts],
    plans: Mapping[str, DesiredState],
    objects: Objects,
) -> list[Finding]:
    node = hop.node
    f = facts.get(node)
    desired = plans.get(node)
    if f is None:
        return []
    out: list[Finding] = list(checks.wrong(node, "collect", e, "see the node") for e in f.errors)
    if desired is None:
        out.append(
            checks.wrong(
                node,
                "plan",
                f"{node} has no InternalIP on any of its links, so its agent plans nothing",
                "check the Node's addresses",
            )
        )
        return out
    nv = next(n for n in objects.view.nodes if n.name == node)
    underlay = f.address_dev(nv.internal_ip or "")
    underlay_dev = underlay.dev if underlay is not None else ""
    roles = hop.roles
    carrying = "gateway" in roles or "relay" in roles
    devs = [underlay_dev]
    if carrying:
        devs.append(f.wg_dev)
    if desired.vxlan is not None:
        devs.append(desired.vxlan.dev)
    for ip in (path.src.ip, path.dst.ip):
        pod_dev = f.main_route_dev(ip) if node in (path.src.node, path.dst.node) else None
        if pod_dev and pod_dev not in devs:
            devs.append(pod_dev)
    out.append(checks.check_rule(node, f, desired))
    remote = [
        ip
        for ip, pool in ((path.dst.ip, path.dst.pool), (path.src.ip, path.src.pool))
        if pool != hop.pool
    ]
    for ip in remote:
        out.append(checks.check_route(node, f, desired, ip))
    out.append(checks.check_forwarding(node, f, [d for d in devs if d]))
    out.append(checks.check_rp_filter(node, f, desired, underlay_dev))
    out.append(checks.check_vxlan(node, f, desired))
    if carrying:
        out.append(checks.check_wireguard(node, f, desired))
        for ip in remote:
            out.append(checks.check_peer(node, f, desired, ip))
        out.append(checks.check_mss(node, f))
    if "destination" in roles:
        out.append(checks.check_pod_route(node, f, path.dst.ip))
    out.append(checks.check_api(node, objects.node_leases.get(node, {}), objects.ready.get(node)))
    # A wrong finding before a later one of the same hop explains it: keep the order.
    return out


def _leg_findings(
    leg: Leg, facts: Mapping[str, NodeFacts], plans: Mapping[str, DesiredState], objects: Objects
) -> list[Finding]:
    where = str(leg)
    return [
        checks.check_leg_keys(where, leg.a, leg.b, facts, plans, objects.annotations),
        checks.check_handshake(where, leg.a, leg.b, facts),
    ]


def _leg_probes(
    leg: Leg,
    view: ClusterView,
    facts: Mapping[str, NodeFacts],
    plans: Mapping[str, DesiredState],
    transport: Transport,
) -> list[Finding]:
    """Tagged UDP from the edge gateway's tunnel port to the relay's, DF set, sizes up to a full
    tunnel packet, captured at the relay: does the tunnel's UDP get through the NAT, and how
    big?"""
    where = str(leg)
    edge, relay = facts.get(leg.a), facts.get(leg.b)
    ea, ra = plans.get(leg.a), plans.get(leg.b)
    nodes = {n.name: n for n in view.nodes}
    if edge is None or relay is None or ea is None or ra is None:
        return []
    src_ip = nodes[leg.a].internal_ip
    peer = next((p for p in ea.peers if p.allowed_ips), None)
    if src_ip is None or peer is None or peer.endpoint is None:
        return []
    host, _, port = peer.endpoint.rpartition(":")
    tag = f"raven-{random.randrange(1 << 30):x}"
    sport = ea.listen_port or 51820
    underlay = edge.address_dev(src_ip)
    needed = underlay.mtu if underlay is not None else 1500
    sizes = tuple(s for s in LEG_SIZES if s <= needed)
    udp = Udp(src_ip, sport, host.strip("[]"), int(port), sizes, tag)
    cap = Capture(0.8, udp_tag=tag)
    _, seen = _captured(
        transport, {leg.b: cap}, lambda: transport.probe(leg.a, udp, ready=lambda: None)
    )
    got = seen.get(leg.b, CaptureResult(error="no capture"))
    return [checks.judge_leg_udp(where, leg.a, leg.b, sizes, got, needed=needed)]


def objects_or_error(kubeconfig: str | None, lease_namespace: str) -> Objects:
    try:
        return read_objects(kubeconfig, lease_namespace=lease_namespace)
    except KubeError as e:
        raise PathError(f"cannot read the cluster's objects: {e}") from e
