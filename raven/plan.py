"""The planner: cluster view + this node's identity -> this node's desired data path. Pure.

Rules it applies (DESIGN.md, "Data path"):

* A node outside every pool, or in a refused pool, gets ``Role.NONE`` and nothing else.
* A pool's active gateway is its Lease holder, as seen, if that node is in the pool.
* The relay pool is the one pool whose Gateway has ``spec.relay: true``; zero or several means
  no relay (a problem). Every cross-pool packet between two non-relay pools passes the relay.
* A remote pool is *reachable* when it is not refused, has an active gateway, and either side
  is the relay pool or the relay pool is usable (not refused, has an active gateway).
* Members: one rule, and a route per reachable remote CIDR via the own pool's gateway, on-link:
  out of the underlay when the gateway's InternalIP lies in one of the member's underlay subnets,
  else over Raven's VXLAN link to it (a permanent neighbour and forwarding entry for the
  gateway, whose VXLAN MAC both derive from its InternalIP). A gateway has that link too while
  some node of its pool is outside its own underlay subnets, so it can decapsulate.
* Gateways and the relay: one rule, a route per reachable remote CIDR into the WireGuard device,
  forwarding on; an edge gateway peers with the relay, the relay with every reachable pool's
  gateway (carrying that pool's CIDRs) and, as standby peers without AllowedIPs, with the pool's
  other candidates, so a failover's first handshake is never dropped. A peer without a published
  public key is left out (a problem).
* Overlapping pod CIDRs: when any CIDR of pool A overlaps any CIDR of pool B, both pools are
  refused - nothing of theirs is routed or peered, anywhere - and the other pools are unaffected.
  Refusing both (not "the newer one") keeps the rule independent of timing and history.
  Overlaps within one pool are harmless (all go to the same gateway) and are allowed.

Everything is sorted, so equal input gives equal output regardless of input order.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any

from raven.gatewayspec import GatewaySpec, selector_matches
from raven.model import (
    DesiredState,
    PeerSpec,
    Role,
    RouteSpec,
    RuleSpec,
    VxlanPeer,
    VxlanSpec,
)
from raven.mtu import route_mtu, tunnel_mtu, vxlan_mtu
from raven.view import ClusterView, GatewayView, Identity, NodeView


@functools.lru_cache(maxsize=1 << 16)
def _cidr_key(cidr: str) -> tuple[int, int, int]:
    # Cached: every round of every agent sorts the whole cluster's CIDRs, and parsing them
    # again each time was most of a plan's cost at a few hundred nodes.
    net = ipaddress.ip_network(cidr)
    return (net.version, int(net.network_address), net.prefixlen)


def _sorted_cidrs(cidrs: Any) -> tuple[str, ...]:
    return tuple(sorted(set(cidrs), key=_cidr_key))


@dataclass(frozen=True)
class PoolState:
    """One pool as the planner sees it after applying the rules above."""

    name: str
    nodes: tuple[NodeView, ...]
    subnets: tuple[str, ...]
    spec: GatewaySpec
    holder: str | None  # Lease holder as seen, even if it is not a node of the pool
    gateway: NodeView | None  # the active gateway: the holder, when it is in the pool
    overlaps: tuple[str, ...]  # why the pool is refused; empty when accepted

    @property
    def refused(self) -> bool:
        return bool(self.overlaps)


@dataclass(frozen=True)
class Analysis:
    """The cluster-wide part of planning, shared by every node's plan and the pool status."""

    pools: dict[str, PoolState]
    relay_pools: tuple[str, ...]  # pools whose spec says relay; usable only when exactly one
    problems: tuple[str, ...]

    @property
    def relay(self) -> str | None:
        return self.relay_pools[0] if len(self.relay_pools) == 1 else None

    def usable(self, pool: str | None) -> bool:
        state = self.pools.get(pool) if pool is not None else None
        return state is not None and not state.refused and state.gateway is not None

    def reachable(self, src: str, dst: str) -> bool:
        """Can traffic from pool ``src`` reach pool ``dst`` (both must have gateways)?"""
        if src == dst or not (self.usable(src) and self.usable(dst)):
            return False
        relay = self.relay
        return relay in (src, dst) or self.usable(relay)

    def remote_cidrs(self, src: str) -> tuple[str, ...]:
        return _sorted_cidrs(
            c for p in self.pools if self.reachable(src, p) for c in self.pools[p].subnets
        )


def _pair_key(pair: tuple[str, str]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    return _cidr_key(pair[0]), _cidr_key(pair[1])


def _clashes(subnets: dict[str, tuple[str, ...]]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(pool a, pool b) with a < b -> the (CIDR of a, CIDR of b) pairs that overlap.

    Two CIDRs overlap only when one contains the other, so one sorted sweep finds every pair:
    broader networks first, and a stack holding the networks that enclose the current one.
    That is O(n log n) in the cluster's CIDRs, where comparing every pool's with every other's
    took seconds per plan at a few hundred nodes."""
    spans = []
    for pool, cidrs in subnets.items():
        for cidr in cidrs:
            version, start, prefixlen = _cidr_key(cidr)
            end = start + (1 << ((32 if version == 4 else 128) - prefixlen)) - 1
            spans.append((version, start, prefixlen, end, pool, cidr))
    spans.sort()
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    enclosing: list[tuple[int, int, str, str]] = []  # (version, end, pool, cidr)
    for version, start, _, end, pool, cidr in spans:
        while enclosing and (enclosing[-1][0] != version or enclosing[-1][1] < start):
            enclosing.pop()
        for _, _, other_pool, other in enclosing:
            if other_pool != pool:
                if other_pool < pool:
                    found.setdefault((other_pool, pool), []).append((other, cidr))
                else:
                    found.setdefault((pool, other_pool), []).append((cidr, other))
        enclosing.append((version, end, pool, cidr))
    return found


def analyse(view: ClusterView) -> Analysis:
    """Group nodes into pools, find each pool's gateway and the relay, refuse overlaps."""
    problems: list[str] = []
    members: dict[str, list[NodeView]] = {}
    for node in sorted(view.nodes, key=lambda n: n.name):
        problems.extend(node.problems)
        if node.pool is not None:
            members.setdefault(node.pool, []).append(node)

    subnets = {p: _sorted_cidrs(c for n in ns for c in n.pod_cidrs) for p, ns in members.items()}
    overlaps: dict[str, list[str]] = {p: [] for p in members}
    clashing = _clashes(subnets)
    for a, b in sorted(clashing):
        clashes = [f"{ca} with {cb}" for ca, cb in sorted(clashing[a, b], key=_pair_key)]
        if clashes:
            text = (
                f"pod CIDRs overlap between pools {a} and {b} ({', '.join(clashes)});"
                f" both pools refused"
            )
            overlaps[a].append(text)
            overlaps[b].append(text)
            problems.append(text)

    for name, gw in sorted(view.gateways.items()):
        if gw.spec_error is not None:
            kept = "keeping the last valid spec" if gw.spec is not None else "using defaults"
            problems.append(f"pool {name}: Gateway spec refused ({kept}): {gw.spec_error}")

    pools: dict[str, PoolState] = {}
    for name in sorted(members):
        gw_view = view.gateways.get(name)
        spec = gw_view.spec if gw_view is not None and gw_view.spec is not None else GatewaySpec()
        holder = view.holders.get(name)
        gateway = next((n for n in members[name] if n.name == holder), None)
        if holder is None:
            problems.append(f"pool {name}: no active gateway (nobody holds the pool's lease)")
        elif gateway is None:
            problems.append(
                f"pool {name}: lease holder {holder} is not a node of the pool; no active gateway"
            )
        overlap = tuple(overlaps[name])
        pools[name] = PoolState(
            name, tuple(members[name]), subnets[name], spec, holder, gateway, overlap
        )

    relay_pools = tuple(
        sorted(n for n, gw in view.gateways.items() if gw.spec is not None and gw.spec.relay)
    )
    if not relay_pools:
        problems.append("no relay pool: no Gateway sets spec.relay: true")
    elif len(relay_pools) > 1:
        problems.append(
            f"several relay pools ({', '.join(relay_pools)}): exactly one Gateway may set"
            f" spec.relay: true; no relay is used"
        )
    return Analysis(pools, relay_pools, tuple(problems))


def gateway_endpoint(node: NodeView, spec: GatewaySpec) -> str | None:
    """Where a gateway's tunnel is reached: the pool's spec.endpoint, else the node's published
    tunnel endpoint, else InternalIP:tunnelPort; None when none of these is known."""
    if spec.endpoint:
        return spec.endpoint
    if node.tunnel_endpoint:
        return node.tunnel_endpoint
    if node.internal_ip is None:
        return None
    host = f"[{node.internal_ip}]" if ":" in node.internal_ip else node.internal_ip
    return f"{host}:{spec.tunnel_port}"


def plan(view: ClusterView, me: Identity) -> DesiredState:
    """This node's desired data path. See the module docstring for the rules."""
    facts = analyse(view)
    node = next((n for n in view.nodes if n.name == me.node_name), None)
    pool = facts.pools.get(node.pool) if node is not None and node.pool is not None else None
    if pool is None:
        return DesiredState()
    problems = list(facts.problems)
    if pool.refused:
        return DesiredState(problems=_unique(problems))

    # Family 6 joins once any accepted pool has IPv6 pod CIDRs, so the rule does not flap
    # with reachability.
    families = {4} | {
        _cidr_key(c)[0]
        for p in facts.pools.values()
        if not p.refused
        for c in p.subnets
    }
    rules = tuple(
        RuleSpec(priority=me.rule_priority, table=me.table, family=f) for f in sorted(families)
    )
    remote = facts.remote_cidrs(pool.name)

    if pool.gateway is None or pool.gateway.name != me.node_name:
        # Next hop: the gateway's InternalIP, out of the underlay when it is on-link, else
        # over Raven's VXLAN link to it (DESIGN.md, "Data path").
        routes: tuple[RouteSpec, ...] = ()
        vxlan: VxlanSpec | None = None
        gw = pool.gateway
        if gw is not None and gw.internal_ip is None:
            problems.append(f"pool {pool.name}: gateway {gw.name} has no InternalIP; no routes")
        elif gw is not None and gw.internal_ip is not None:
            dev: str | None = me.underlay_dev
            if not me.gateway_on_link(gw.internal_ip):
                vxlan = _member_vxlan(me, node, gw, gw.internal_ip, problems)
                dev = vxlan.dev if vxlan is not None else None
            mtu = route_mtu(
                me.underlay_mtu, underlay_family=me.underlay_family, over_vxlan=vxlan is not None
            )
            if dev is not None:
                routes = tuple(
                    RouteSpec(c, me.table, gw.internal_ip, dev, onlink=True, mtu=mtu)
                    for c in remote
                )
        return DesiredState(Role.MEMBER, routes, rules, problems=_unique(problems), vxlan=vxlan)

    mtu = tunnel_mtu(me.underlay_mtu, underlay_family=me.underlay_family)
    routes = tuple(RouteSpec(c, me.table, None, me.wg_dev, mtu=mtu) for c in remote)
    is_relay = facts.relay == pool.name
    peers = _relay_peers(facts, pool, problems) if is_relay else _edge_peers(facts, pool, problems)
    return DesiredState(
        role=Role.RELAY if is_relay else Role.GATEWAY,
        routes=routes,
        rules=rules,
        peers=peers,
        forwarding=True,
        problems=_unique(problems),
        listen_port=pool.spec.tunnel_port,
        tunnel_mtu=mtu,
        vxlan=_gateway_vxlan(me, node, pool),
    )


def _edge_peers(facts: Analysis, pool: PoolState, problems: list[str]) -> tuple[PeerSpec, ...]:
    """An edge gateway's one peer: the relay pool's active gateway, carrying every remote CIDR."""
    if facts.relay is None or not facts.usable(facts.relay):
        return ()
    relay = facts.pools[facts.relay]
    gw = relay.gateway
    assert gw is not None  # usable() means it has one
    if gw.public_key is None:
        problems.append(
            f"relay pool {relay.name}: gateway {gw.name} has no published public key yet;"
            f" peer left out"
        )
        return ()
    endpoint = gateway_endpoint(gw, relay.spec)
    if endpoint is None:
        problems.append(f"relay pool {relay.name}: gateway {gw.name} has no address to dial")
    peer = PeerSpec(
        public_key=gw.public_key,
        allowed_ips=facts.remote_cidrs(pool.name),
        endpoint=endpoint,
        persistent_keepalive=pool.spec.keepalive_seconds,
    )
    return (peer,)


def _relay_peers(facts: Analysis, pool: PoolState, problems: list[str]) -> tuple[PeerSpec, ...]:
    """The relay's peers: for each reachable pool, its gateway carrying the pool's subnets, and
    every other candidate of the pool as a standby peer with no AllowedIPs. Keys are published
    before any election, so a new gateway's first handshake is accepted at once; the relay only
    moves the AllowedIPs when it sees the new holder. Endpoints come from handshakes unless the
    pool's spec pins one."""
    peers = []
    for other in facts.pools.values():
        if not facts.reachable(pool.name, other.name) or other.gateway is None:
            continue
        if other.gateway.public_key is None:
            problems.append(
                f"pool {other.name}: gateway {other.gateway.name} has no published public key"
                f" yet; peer left out"
            )
            continue
        peers.append(
            PeerSpec(other.gateway.public_key, other.subnets, endpoint=other.spec.endpoint)
        )
        for node in other.nodes:
            if (
                node is other.gateway
                or node.public_key is None
                or node.public_key == other.gateway.public_key
                or not selector_matches(other.spec.candidate_selector, node.labels)
            ):
                continue
            peers.append(PeerSpec(node.public_key, (), endpoint=other.spec.endpoint))
    return _distinct_keys(peers)


def _distinct_keys(peers: list[PeerSpec]) -> tuple[PeerSpec, ...]:
    """One peer per key (WireGuard's identity): a carrying peer wins over a standby copy."""
    by_key: dict[str, PeerSpec] = {}
    for peer in peers:
        kept = by_key.get(peer.public_key)
        if kept is None or (not kept.allowed_ips and peer.allowed_ips):
            by_key[peer.public_key] = peer
    return tuple(sorted(by_key.values()))


def _unique(problems: list[str]) -> tuple[str, ...]:
    return tuple(sorted(set(problems)))


def _condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def pool_status(view: ClusterView, pool: str) -> dict[str, Any]:
    """The Gateway ``status`` fields the agent writes for ``pool``, minus what only the runtime
    knows (``peers``, ``peersReady``, ``rtt``, each condition's ``lastTransitionTime``)."""
    facts = analyse(view)
    state = facts.pools.get(pool)
    gw_view = view.gateways.get(pool)
    generation = gw_view.generation if gw_view is not None else 0
    spec = state.spec if state is not None else (gw_view and gw_view.spec) or GatewaySpec()
    gateway = state.gateway if state is not None else None

    conditions = [
        _spec_condition(gw_view),
        _subnets_condition(state),
        _gateway_condition(pool, gateway, state.holder if state else view.holders.get(pool)),
        _relay_condition(facts),
    ]
    for condition in conditions:
        condition["observedGeneration"] = generation

    return {
        "activeNode": gateway.name if gateway is not None else "",
        "endpoint": (gateway_endpoint(gateway, spec) or "") if gateway is not None else "",
        "publicKey": (gateway.public_key or "") if gateway is not None else "",
        "subnets": list(state.subnets) if state is not None else [],
        "nodes": [n.name for n in state.nodes] if state is not None else [],
        "observedGeneration": generation,
        "conditions": conditions,
    }


def _spec_condition(gw_view: GatewayView | None) -> dict[str, Any]:
    if gw_view is not None and gw_view.spec_error is not None:
        return _condition("SpecValid", False, "InvalidSpec", str(gw_view.spec_error))
    return _condition("SpecValid", True, "Valid", "spec is valid")


def _subnets_condition(state: PoolState | None) -> dict[str, Any]:
    if state is not None and state.refused:
        return _condition(
            "SubnetsAccepted", False, "OverlappingPodCIDRs", "; ".join(state.overlaps)
        )
    return _condition("SubnetsAccepted", True, "NoOverlap", "pod CIDRs are unique")


def _gateway_condition(pool: str, gateway: NodeView | None, holder: str | None) -> dict[str, Any]:
    if gateway is not None:
        return _condition("GatewayActive", True, "LeaseHeld", f"{gateway.name} holds the lease")
    if holder is not None:
        message = f"lease holder {holder} is not a node of pool {pool}"
        return _condition("GatewayActive", False, "HolderNotInPool", message)
    return _condition("GatewayActive", False, "NoHolder", "nobody holds the pool's lease")


def _relay_condition(facts: Analysis) -> dict[str, Any]:
    if not facts.relay_pools:
        return _condition(
            "RelayAvailable", False, "NoRelayPool", "no Gateway sets spec.relay: true"
        )
    if facts.relay is None:
        message = f"several pools set spec.relay: true: {', '.join(facts.relay_pools)}"
        return _condition("RelayAvailable", False, "SeveralRelayPools", message)
    relay = facts.pools.get(facts.relay)
    if relay is not None and relay.refused:
        message = f"relay pool {facts.relay} is refused: overlapping pod CIDRs"
        return _condition("RelayAvailable", False, "RelayPoolRefused", message)
    if relay is None or relay.gateway is None:
        message = f"relay pool {facts.relay} has no active gateway"
        return _condition("RelayAvailable", False, "RelayHasNoGateway", message)
    message = f"relay pool {facts.relay}, gateway {relay.gateway.name}"
    return _condition("RelayAvailable", True, "RelayActive", message)


# VXLAN towards a gateway that is not on-link --------------------------------------------------


def vxlan_mac(address: str) -> str:
    """The VXLAN MAC of the node with underlay ``address``: locally administered unicast
    (``0e:52:``) + the IPv4 address's four bytes, or four bytes of a hash of an IPv6 address.
    Both ends derive it from the InternalIP, so no annotation has to carry it."""
    ip = ipaddress.ip_address(address)
    tail = ip.packed if ip.version == 4 else hashlib.sha256(ip.packed).digest()[:4]
    return ":".join(f"{b:02x}" for b in (0x0E, 0x52, *tail))


def _vxlan_spec(me: Identity, local: str, peers: tuple[VxlanPeer, ...]) -> VxlanSpec:
    return VxlanSpec(
        dev=me.vxlan_name,
        vni=me.vxlan_vni,
        port=me.vxlan_port,
        local=local,
        mac=vxlan_mac(local),
        mtu=vxlan_mtu(me.underlay_mtu, underlay_family=me.underlay_family),
        peers=tuple(sorted(peers)),
    )


def _member_vxlan(
    me: Identity, node: NodeView | None, gw: NodeView, gw_ip: str, problems: list[str]
) -> VxlanSpec | None:
    """A member's VXLAN link to its pool gateway at ``gw_ip``; None (and a problem) when this
    node has no usable InternalIP to send from."""
    local = node.internal_ip if node is not None else None
    if local is None:
        problems.append(
            f"node {me.node_name}: no InternalIP to reach gateway {gw.name} ({gw_ip}), which is"
            f" not on-link, over VXLAN; no routes"
        )
        return None
    if ipaddress.ip_address(local).version != ipaddress.ip_address(gw_ip).version:
        problems.append(
            f"node {me.node_name}: InternalIP {local} and gateway {gw.name}'s {gw_ip} are of"
            f" different families, so no VXLAN link can join them; no routes"
        )
        return None
    return _vxlan_spec(me, local, (VxlanPeer(gw_ip, vxlan_mac(gw_ip)),))


def _gateway_vxlan(me: Identity, node: NodeView | None, pool: PoolState) -> VxlanSpec | None:
    """A gateway (or relay) has a VXLAN link while some node of its pool is not on-link with it
    (that node's InternalIP lies outside the gateway's underlay subnets), so such members can
    reach it. It needs no peers: its replies to them follow the CNI's routes."""
    if node is None or node.internal_ip is None:
        return None
    if all(
        n.internal_ip is None or me.on_underlay(n.internal_ip)
        for n in pool.nodes
        if n.name != me.node_name
    ):
        return None
    return _vxlan_spec(me, node.internal_ip, ())
