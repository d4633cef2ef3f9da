"""Every hop's checks: collected facts (and probe results) -> a :class:`Finding`. Pure.

Each function looks at one thing on one hop and says ``ok``, ``wrong`` (this breaks the path:
evidence, and what to do) or ``warn`` (the path works, but something is off). The first
``wrong`` finding in path order is the diagnosis (:func:`first_wrong`).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from raven.diagnose.facts import NodeFacts
from raven.diagnose.probes import CaptureResult, EchoReply
from raven.model import DesiredState, RouteSpec

#: WireGuard drops a session this long after its handshake (REJECT_AFTER_TIME); a live tunnel
#: makes a new one every 2 minutes, so older than this (plus slack) means no handshake works.
HANDSHAKE_STALE = 180 + 15
MSS_CHAIN = "RAVEN-MSS"


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    WRONG = "wrong"


@dataclass(frozen=True)
class Finding:
    where: str  # the hop: a node's name, or "tunnel A <-> B"
    check: str  # what was looked at: "route", "forwarding", "rp_filter", "public-key", ...
    status: Status
    evidence: str
    fix: str = ""
    node: str = ""  # the node at fault, when one is (may differ from ``where``)

    def as_json(self) -> dict[str, str]:
        return {
            "where": self.where,
            "check": self.check,
            "status": str(self.status),
            "evidence": self.evidence,
            "fix": self.fix,
            "node": self.node,
        }


def ok(where: str, check: str, evidence: str) -> Finding:
    return Finding(where, check, Status.OK, evidence)


def wrong(where: str, check: str, evidence: str, fix: str, node: str = "") -> Finding:
    return Finding(where, check, Status.WRONG, evidence, fix, node or where)


def first_wrong(findings: Iterable[Finding]) -> Finding | None:
    return next((f for f in findings if f.status is Status.WRONG), None)


def _contains(cidr: str, ip: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


def best_route(routes: Iterable[RouteSpec], ip: str) -> RouteSpec | None:
    hits = [r for r in routes if _contains(r.dst, ip)]
    return max(hits, key=lambda r: ipaddress.ip_network(r.dst).prefixlen, default=None)


# ---- a node's own data path ------------------------------------------------------------------


def check_rule(node: str, facts: NodeFacts, desired: DesiredState) -> Finding:
    for rule in desired.rules:
        if rule.family != 4:
            continue
        found = any(
            r.get("priority") == rule.priority and str(r.get("table")) == str(rule.table)
            for r in facts.rules
        )
        if not found:
            return wrong(
                node,
                "rule",
                f"no policy rule 'priority {rule.priority} lookup {rule.table}':"
                " cross-pool packets never reach Raven's table",
                "see the agent's log on this node: its rule reconciler re-adds the rule",
            )
    return ok(
        node,
        "rule",
        f"priority {desired.rules[0].priority} -> table {desired.rules[0].table}"
        if desired.rules
        else "no rule planned",
    )


def check_route(node: str, facts: NodeFacts, desired: DesiredState, ip: str) -> Finding:
    """Raven's route towards ``ip``: planned, and in the kernel as planned."""
    route = best_route(desired.routes, ip)
    if route is None:
        refused = [
            p
            for p in desired.problems
            if p.reason in ("PodCIDROverlap", "PodCIDRProtected")
            and any(_contains(c, ip) for c in _cidrs_in(p.message))
        ]
        if refused:
            return wrong(
                node,
                "pod-cidr",
                f"no route to {ip} is planned: {refused[0]}",
                f"give Node {refused[0].name} a pod CIDR that overlaps no other pool's",
                node=node,
            )
        why = "; ".join(str(p) for p in desired.problems[:3]) or "nothing routes it"
        return wrong(
            node,
            "route",
            f"no route to {ip} is planned ({why})",
            "fix what the problems name (kubectl describe gw)",
        )
    kernel = next((r for r in facts.routes if r.get("dst") == route.dst), None)
    want = _route_text(route)
    if kernel is None:
        return wrong(
            node,
            "route",
            f"Raven's table {route.table} has no route {want}",
            "see the agent's log on this node: its route reconciler re-adds it",
        )
    have_mtu = next((m.get("mtu") for m in kernel.get("metrics", []) if "mtu" in m), None)
    same = (
        (route.gateway or None) == kernel.get("gateway")
        and (route.dev is None or route.dev == kernel.get("dev"))
        and (route.mtu is None or route.mtu == have_mtu)
    )
    if not same:
        have = (
            f"{kernel.get('dst')} via {kernel.get('gateway')} dev {kernel.get('dev')}"
            f" mtu {have_mtu}"
        )
        return wrong(
            node,
            "route",
            f"table {route.table} has {have}, planned {want}",
            "see the agent's log on this node",
        )
    return ok(node, "route", want)


def _cidrs_in(text: str) -> list[str]:
    out = []
    for word in text.replace(",", " ").replace(";", " ").split():
        try:
            out.append(ipaddress.ip_network(word.rstrip(".:)"), strict=False).with_prefixlen)
        except ValueError:
            continue
    return [c for c in out if "/" in c and not c.endswith("/32")]


def _route_text(route: RouteSpec) -> str:
    via = f" via {route.gateway}" if route.gateway else ""
    return f"{route.dst}{via} dev {route.dev} mtu {route.mtu}"


def check_forwarding(node: str, facts: NodeFacts, devs: Sequence[str]) -> Finding:
    """IPv4 forwarding on, globally and on every interface the path enters the node by."""
    if facts.sysctl_int("ip_forward") == 0:
        return wrong(
            node,
            "forwarding",
            "net.ipv4.ip_forward is 0: the node forwards nothing",
            "sysctl -w net.ipv4.ip_forward=1 (and keep it in /etc/sysctl.d)",
        )
    off = [d for d in devs if facts.sysctl_int(f"conf/{d}/forwarding") == 0]
    if off:
        keys = ", ".join(f"net.ipv4.conf.{d}.forwarding=0" for d in off)
        return wrong(
            node,
            "forwarding",
            f"{keys}: packets arriving on {', '.join(off)} are not forwarded",
            "sysctl -w " + " ".join(f"net.ipv4.conf.{d}.forwarding=1" for d in off),
        )
    return ok(node, "forwarding", f"on ({', '.join(devs)})")


def check_rp_filter(node: str, facts: NodeFacts, desired: DesiredState, underlay: str) -> Finding:
    """Strict reverse-path filtering drops what comes back by the underlay to a node that sends
    over VXLAN (and what a gateway decapsulates); 0 or 2 is needed there."""
    values = {d: facts.sysctl_int(f"conf/{d}/rp_filter") for d in ("all", underlay)}
    strict = max((v for v in values.values() if v is not None), default=0) == 1
    if desired.vxlan is not None and strict:
        shown = ", ".join(f"net.ipv4.conf.{d}.rp_filter={v}" for d, v in values.items())
        return wrong(
            node,
            "rp_filter",
            f"{shown}: strict, and this node's cross-pool packets go over VXLAN"
            f" ({desired.vxlan.dev}) while their replies arrive on {underlay}, so the"
            " kernel drops the replies",
            f"sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{underlay}.rp_filter=2"
            " (loose; Raven does not change it for you)",
        )
    return ok(node, "rp_filter", ", ".join(f"{d}={v}" for d, v in values.items()))


def check_vxlan(node: str, facts: NodeFacts, desired: DesiredState) -> Finding:
    if desired.vxlan is None:
        return ok(node, "vxlan", "none needed")
    link = facts.links.get(desired.vxlan.dev)
    if link is None or not link.up:
        state = "missing" if link is None else "down"
        return wrong(
            node,
            "vxlan",
            f"VXLAN link {desired.vxlan.dev} is {state}",
            "see the agent's log on this node",
        )
    return ok(node, "vxlan", f"{desired.vxlan.dev} up, mtu {link.mtu}")


def check_wireguard(node: str, facts: NodeFacts, desired: DesiredState) -> Finding:
    """The device of a gateway: there, served, up, with the planned MTU and port."""
    dev = facts.wg_dev
    stopped = [p for p in facts.wg_processes if p.state == "T"]
    if stopped:
        p = stopped[0]
        return wrong(
            node,
            "wireguard-go",
            f"wireguard-go serving {dev} (pid {p.pid}) is stopped (state T);"
            f" {facts.wg_error or 'its device answers nothing'}",
            f"kill -CONT {p.pid}, or delete {dev} so the agent starts a new one",
        )
    if facts.wg is None:
        return wrong(
            node,
            "wireguard",
            f"WireGuard device {dev}: {facts.wg_error or 'missing'}",
            "see the agent's log on this node",
        )
    link = facts.links.get(dev)
    if link is None or not link.up:
        return wrong(node, "wireguard", f"{dev} is down", "ip link set dev {dev} up")
    if desired.tunnel_mtu is not None and link.mtu != desired.tunnel_mtu:
        return wrong(
            node,
            "mtu",
            f"{dev} has MTU {link.mtu}, planned {desired.tunnel_mtu}",
            "see the agent's log on this node",
        )
    if desired.listen_port is not None and facts.wg.listen_port != desired.listen_port:
        return wrong(
            node,
            "wireguard",
            f"{dev} listens on {facts.wg.listen_port}, planned {desired.listen_port}",
            "see the agent's log on this node",
        )
    return ok(node, "wireguard", f"{dev} up, port {facts.wg.listen_port}, mtu {link.mtu}")


def check_peer(node: str, facts: NodeFacts, desired: DesiredState, ip: str) -> Finding:
    """The tunnel peer that carries ``ip``: planned, and held by the device as planned."""
    peer = next((p for p in desired.peers if any(_contains(c, ip) for c in p.allowed_ips)), None)
    if peer is None:
        why = "; ".join(str(p) for p in desired.problems[:3]) or "no peer carries it"
        return wrong(
            node,
            "peer",
            f"no WireGuard peer is planned for {ip} ({why})",
            "fix what the problems name (kubectl describe gw)",
        )
    held = facts.wg.peer(peer.public_key) if facts.wg is not None else None
    if held is None:
        return wrong(
            node,
            "peer",
            f"{facts.wg_dev} has no peer {peer.public_key}",
            "see the agent's log on this node",
        )
    if not any(_contains(c, ip) for c in held.allowed_ips):
        return wrong(
            node,
            "peer",
            f"peer {peer.public_key} has AllowedIPs {','.join(held.allowed_ips)}, without {ip}",
            "see the agent's log on this node",
        )
    return ok(node, "peer", f"{peer.public_key[:8]}… carries {ip}")


def check_mss(node: str, facts: NodeFacts) -> Finding:
    rule = any(
        line.startswith(f"-A {MSS_CHAIN}") and f"-o {facts.wg_dev}" in line and "TCPMSS" in line
        for line in facts.mangle
    )
    jump = any(line.startswith("-A FORWARD") and f"-j {MSS_CHAIN}" in line for line in facts.mangle)
    if not (rule and jump):
        return wrong(
            node,
            "mss",
            f"no TCP MSS clamp for {facts.wg_dev} in the mangle table:"
            " TCP through the tunnel stalls on full-size segments",
            "see the agent's log on this node",
        )
    return ok(node, "mss", f"SYNs out of {facts.wg_dev} clamped to the path MTU")


def check_pod_route(node: str, facts: NodeFacts, ip: str) -> Finding:
    dev = facts.main_route_dev(ip)
    if dev is None:
        return wrong(
            node,
            "pod",
            f"no route to the pod {ip} in the main table (the CNI's)",
            "the CNI's business: is the pod running on this node?",
        )
    return ok(node, "pod", f"{ip} dev {dev} (the CNI's route)")


def check_api(node: str, lease_annotations: Mapping[str, str], ready: str | None) -> Finding:
    """The node's own way to the API server, from what its heartbeat wrote (raven-heartbeat)."""
    via = lease_annotations.get("raven.io/heartbeat-via")
    if via:
        return Finding(
            node,
            "api-server",
            Status.WARN,
            f"{node} does not reach the API server itself: its heartbeat and API"
            f" traffic go through {via}; its agent works from its proxy's cache if"
            " that fails too",
            "restore the node's own path to the API server",
            node,
        )
    if ready not in (None, "True"):
        return Finding(
            node,
            "api-server",
            Status.WARN,
            f"Node {node} is Ready={ready}",
            "see kubectl describe node",
            node,
        )
    return ok(node, "api-server", "reaches the API server")


# ---- a tunnel between two gateways -----------------------------------------------------------


def check_leg_keys(
    where: str,
    edge: str,
    relay: str,
    facts: Mapping[str, NodeFacts],
    planned: Mapping[str, DesiredState],
    annotations: Mapping[str, str | None],
) -> Finding:
    """Each end peers with the key the other end's device really has."""
    for me, other in ((relay, edge), (edge, relay)):
        mine, theirs = planned.get(me), facts.get(other)
        if mine is None or theirs is None or theirs.wg is None:
            continue
        device_key = theirs.wg.public_key
        published = annotations.get(other)
        if published is not None and device_key is not None and published != device_key:
            return wrong(
                where,
                "public-key",
                f"{other}'s raven.io/public-key annotation is {published}, but its"
                f" device {theirs.wg_dev} has {device_key}: {me} peers with a key"
                " nobody holds, so no handshake can succeed",
                f"kubectl annotate --overwrite node {other}"
                f" raven.io/public-key={device_key} (its agent does so when it runs)",
                node=other,
            )
    return ok(where, "public-key", "both ends peer with the keys the devices hold")


def check_handshake(where: str, edge: str, relay: str, facts: Mapping[str, NodeFacts]) -> Finding:
    """The edge gateway's session with the relay is fresh, and where the relay reaches it."""
    e, r = facts.get(edge), facts.get(relay)
    if e is None or r is None or e.wg is None or r.wg is None:
        return ok(where, "handshake", "not checked (a device is missing; see the hops)")
    peer = e.wg.peer(r.wg.public_key or "")
    back = r.wg.peer(e.wg.public_key or "")
    if peer is None or back is None:
        missing = relay if peer is None else edge
        return wrong(
            where,
            "peer",
            f"{missing} is not a peer of the other end",
            "see the agents' logs",
            node=missing,
        )
    if peer.latest_handshake == 0:
        return wrong(
            where,
            "handshake",
            f"{edge} never completed a handshake with {relay}"
            f" (sent {peer.tx_bytes} B, received {peer.rx_bytes} B)",
            "see the tunnel probes below",
            node=edge,
        )
    age = e.now - peer.latest_handshake
    if age > HANDSHAKE_STALE:
        return wrong(
            where,
            "handshake",
            f"{edge}'s last handshake with {relay} was {age} s ago"
            f" (older than {HANDSHAKE_STALE} s: the session is dead)",
            "see the tunnel probes below",
            node=edge,
        )
    return ok(
        where,
        "handshake",
        f"{age} s ago; {relay} reaches {edge} at {back.endpoint} (its NAT's mapping)",
    )


# ---- probes ----------------------------------------------------------------------------------


def judge_echo(where: str, replies: Sequence[EchoReply]) -> Finding:
    """End to end: small and full-size echoes with DF."""
    if not replies:
        return ok(where, "echo", "not sent")
    small, full = replies[0], replies[-1]
    if small.outcome != "reply":
        return wrong(
            where,
            "echo",
            f"a {small.size}-byte echo got {small.outcome} {small.detail}".rstrip(),
            "see where it stopped (trace below)",
        )
    if full.outcome != "reply":
        return wrong(
            where,
            "path-mtu",
            f"a {small.size}-byte echo is answered but a"
            f" {full.size}-byte one (the route MTU, DF set) got {full.outcome}"
            f" {full.detail}".rstrip(),
            "see the tunnel probes below",
        )
    rtts = "/".join(f"{r.rtt_ms}" for r in replies)
    return ok(
        where, "echo", f"{'/'.join(str(r.size) for r in replies)}-byte echoes answered ({rtts} ms)"
    )


def judge_trace(
    stations: Sequence[tuple[str, str]], seen: Mapping[str, CaptureResult]
) -> Finding | None:
    """Where the echo request stopped: ``stations`` are (node, its place on the path) in
    order; the first that never saw the request (after one that did) is named."""
    last = None
    for node, place in stations:
        got = seen.get(node)
        if got is None or got.error:
            continue
        requests = [s for s in got.seen if s.kind == "echo-request"]
        if not requests:
            if last is None:
                return None
            where, how = last
            return wrong(
                node,
                "arrival",
                f"the echo request left {where} ({how}) but never reached {node} ({place})",
                f"look between {where} and {node}",
                node=node,
            )
        out = [s for s in requests if s.outgoing]
        how = f"out of {out[-1].ifname}" if out else f"in on {requests[-1].ifname}"
        last = (node, how)
        if not out and node != stations[-1][0]:
            return wrong(
                node,
                "arrival",
                f"the echo request arrived at {node} ({place}) on {requests[-1].ifname}"
                " and was not sent on",
                f"look at {node}: forwarding, rp_filter, routes",
                node=node,
            )
    return None


def judge_leg_udp(
    where: str,
    src: str,
    dst: str,
    sizes: Sequence[int],
    seen: CaptureResult,
    *,
    needed: int,
) -> Finding:
    """Tagged UDP from one tunnel end's tunnel port to the other's, with DF: which sizes
    arrived. None arriving: something between drops the tunnel's UDP; only small ones: a
    path-MTU black hole."""
    if seen.error:
        return ok(where, "tunnel-udp", f"not checked on {dst}: {seen.error}")
    arrived = sorted({s.size for s in seen.seen if not s.outgoing})
    if not arrived:
        return wrong(
            where,
            "tunnel-udp",
            f"UDP to the tunnel port from {src} never reached {dst} (sent"
            f" {', '.join(map(str, sizes))} bytes): a NAT or firewall between them drops"
            " the tunnel's UDP",
            "allow the tunnel's UDP port (51820) through, both ways",
            node=src,
        )
    src_seen = {f"{s.src}:{s.sport}" for s in seen.seen}
    if max(arrived) < needed:
        return wrong(
            where,
            "path-mtu",
            f"from {src} to {dst} packets of up to {max(arrived)} bytes arrive, but"
            f" {needed}-byte ones (a full tunnel packet) vanish and no ICMP"
            " 'fragmentation needed' comes back: a path-MTU black hole",
            f"let ICMP 'fragmentation needed' through, or lower the underlay MTU of"
            f" the pool's nodes to {max(arrived)} so Raven derives smaller routes",
            node=src,
        )
    return ok(
        where,
        "tunnel-udp",
        f"{'/'.join(map(str, arrived))} bytes arrive at {dst} from {', '.join(sorted(src_seen))}",
    )
