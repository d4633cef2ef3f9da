"""The planner: cluster view + this node's identity -> this node's desired data path. Pure.

The view (raven.view) has already refused bad input field by field; what reaches here is
accepted. Rules (DESIGN.md, "Data path"):

* A node outside every pool gets ``Role.NONE`` and nothing else.
* A pool's active gateway is its Lease holder, as seen, if that node is in the pool.
* The relay pool is the one the view chose (the oldest Gateway with ``spec.relay: true``).
  Every cross-pool packet between two non-relay pools passes the relay.
* Every node routes every accepted pod CIDR of every other pool, whether or not that pool has
  a gateway right now, so no node's routes depend on another pool's Lease, and a node needs to
  watch only the Leases :func:`leases_needed` names:

  * members: one rule, and a route per remote CIDR via the own pool's gateway, on-link: out of
    the underlay when the gateway's InternalIP lies in one of the member's underlay subnets,
    else over Raven's VXLAN link to it (a permanent neighbour and forwarding entry for the
    gateway, whose VXLAN MAC both derive from its InternalIP). No routes while the own pool
    has no gateway. A gateway has that link too while some node of its pool is outside its
    own underlay subnets, so it can decapsulate;
  * gateways and the relay: one rule, a route per remote CIDR into the WireGuard device,
    forwarding on. An edge gateway's one peer is the relay pool's active gateway, carrying every
    remote CIDR (it depends on its own pool's and the relay pool's Leases only). The relay
    peers with every other pool's active gateway, carrying that pool's CIDRs, and with every
    other candidate as a standby peer without AllowedIPs, so a failover's first handshake is
    never dropped; only the relay's plan depends on every pool's Lease.

* A peer without a published public key is left out (a problem).
* A remote CIDR overlapping a network this node must keep reaching (``Identity.protected`` and
  its underlay subnets) is neither routed nor peered by this node (a problem); other nodes,
  for which it is harmless, still route it.
* A remote CIDR overlapping a pod CIDR that a node of this pool claims but lost to it
  (``NodeView.clashing_cidrs``) is neither routed nor peered by this pool's nodes (a problem):
  that node's pods may live there, and intra-pool traffic never meets Raven state.
* Each plan carries the problems of the pools it depends on: its own pool's (which include
  every problem with the relay's gateway and Gateway), and on the relay every pool's.

Everything is sorted, so equal input gives equal output regardless of input order.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from raven.addresses import PARSE_CACHE, IPNetwork
from raven.gatewayspec import GatewaySpec, selector_matches
from raven.model import (
    DesiredState,
    PeerSpec,
    Problem,
    Role,
    RouteSpec,
    RuleSpec,
    VxlanPeer,
    VxlanSpec,
)
from raven.mtu import route_mtu, tunnel_mtu, vxlan_mtu
from raven.names import PUBLIC_KEY_ANNOTATION, lease_name
from raven.view import ClusterView, GatewayView, Identity, NodeView

KEY_FIELD = f"metadata.annotations[{PUBLIC_KEY_ANNOTATION}]"


#: ``ipaddress.ip_network`` remembered: the planner meets every pool's CIDRs on every round.
_net = functools.lru_cache(maxsize=PARSE_CACHE)(ipaddress.ip_network)


@functools.lru_cache(maxsize=PARSE_CACHE)
def _cidr_key(cidr: str) -> tuple[int, int, int]:
    net = _net(cidr)
    return (net.version, int(net.network_address), net.prefixlen)


def _sorted_cidrs(cidrs: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(cidrs), key=_cidr_key))


@dataclass(frozen=True)
class PoolState:
    """One pool as the planner sees it."""

    name: str
    nodes: tuple[NodeView, ...]
    subnets: tuple[str, ...]  # the accepted pod CIDRs of its nodes
    spec: GatewaySpec
    holder: str | None  # Lease holder as seen, even if it is not a node of the pool
    gateway: NodeView | None  # the active gateway: the holder, when it is in the pool

    def candidates(self) -> tuple[NodeView, ...]:
        """The nodes that may become the pool's gateway (spec.candidateSelector)."""
        selector = self.spec.candidate_selector
        return tuple(n for n in self.nodes if selector_matches(selector, n.labels))


@dataclass(frozen=True)
class Analysis:
    """The cluster-wide part of planning, shared by every node's plan and the pool status."""

    pools: dict[str, PoolState]
    relay: str | None
    problems: tuple[Problem, ...]  # the view's refusals and what the planner found missing

    def concerning(self, pool: str | None) -> list[Problem]:
        """The problems the given pool's Gateway reports (every one when ``pool`` is None)."""
        return [p for p in self.problems if (p.pools if pool is None else pool in p.pools)]


def analyse(view: ClusterView) -> Analysis:
    """Group nodes into pools, find each pool's gateway, and note what is missing."""
    members: dict[str, list[NodeView]] = {}
    for node in sorted(view.nodes, key=lambda n: n.name):
        if node.pool is not None:
            members.setdefault(node.pool, []).append(node)
    everyone = tuple(sorted(set(members) | set(view.gateways)))
    relay = view.relay
    problems: list[Problem] = list(view.problems)

    def audience(pool: str) -> tuple[str, ...]:
        return everyone if pool == relay else (pool,)

    pools: dict[str, PoolState] = {}
    for name in sorted(members):
        gw_view = view.gateways.get(name)
        spec = gw_view.spec if gw_view is not None and gw_view.spec is not None else GatewaySpec()
        holder = view.holders.get(name)
        gateway = next((n for n in members[name] if n.name == holder), None)
        subnets = _sorted_cidrs(c for n in members[name] for c in n.pod_cidrs)
        pools[name] = PoolState(name, tuple(members[name]), subnets, spec, holder, gateway)
        if holder is None:
            problems.append(
                Problem("Pool", name, "", "NoActiveGateway",
                        "nobody holds the pool's Lease: no active gateway", audience(name))
            )  # fmt: skip
        elif gateway is None:
            problems.append(
                Problem("Lease", lease_name(name), "spec.holderIdentity", "HolderNotInPool",
                        f"holder {holder} is not a node of pool {name}: no active gateway",
                        audience(name))
            )  # fmt: skip
        elif gateway.public_key is None:
            whom = (
                "edge gateways cannot peer with it"
                if name == relay
                else "the relay leaves its peer out"
            )
            problems.append(
                Problem("Node", gateway.name, KEY_FIELD, "NoPublicKey",
                        f"gateway of pool {name} has no valid public key published; {whom}",
                        audience(name))
            )  # fmt: skip
        if gateway is not None and gateway.internal_ip is None:
            problems.append(
                Problem("Node", gateway.name, "status.addresses", "NoInternalIP",
                        f"gateway of pool {name} has no usable InternalIP; the pool's members"
                        f" have no route to it", audience(name))
            )  # fmt: skip
    if relay is None:
        problems.append(
            Problem("Cluster", "", "", "NoRelayPool",
                    "no Gateway sets spec.relay: true; pools cannot reach each other", everyone)
        )  # fmt: skip
    return Analysis(pools, relay, tuple(sorted(set(problems))))


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
    if node is None or pool is None:
        return DesiredState()
    is_gateway = pool.gateway is not None and pool.gateway.name == me.node_name
    is_relay = is_gateway and facts.relay == pool.name
    problems = facts.concerning(None if is_relay else pool.name)
    refused = _protected(facts, pool, me, problems) | _shadowed(facts, pool, problems)
    remote = _sorted_cidrs(
        c
        for p in facts.pools.values()
        if p.name != pool.name
        for c in p.subnets
        if c not in refused
    )
    # Family 6 joins once any pool has accepted IPv6 pod CIDRs, so the rule does not flap.
    families = {4} | {
        _net(c).version for p in facts.pools.values() for c in p.subnets
    }
    rules = tuple(
        RuleSpec(priority=me.rule_priority, table=me.table, family=f) for f in sorted(families)
    )

    if not is_gateway:
        # Next hop: the gateway's InternalIP, out of the underlay when it is on-link, else
        # over Raven's VXLAN link to it (DESIGN.md, "Data path").
        routes: tuple[RouteSpec, ...] = ()
        vxlan: VxlanSpec | None = None
        gw = pool.gateway
        if gw is not None and gw.internal_ip is not None:
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
    if is_relay:
        peers = _relay_peers(facts, pool, refused)
    else:
        peers = _edge_peers(facts, pool, remote, problems)
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


def _protected(
    facts: Analysis, pool: PoolState, me: Identity, problems: list[Problem]
) -> frozenset[str]:
    """Remote pod CIDRs this node must not route: they overlap a network it must keep
    reaching. Each one refused adds a problem naming the node that claims it."""
    protected = me.protected_networks
    if not protected:
        return frozenset()
    refused = set()
    for other in facts.pools.values():
        if other.name == pool.name:
            continue
        for node in other.nodes:
            for cidr in node.pod_cidrs:
                net = _net(cidr)
                hit = next((p for p in protected if _overlap(net, p)), None)
                if hit is None:
                    continue
                refused.add(cidr)
                what = hit.network_address if hit.prefixlen == hit.max_prefixlen else hit
                problems.append(
                    Problem("Node", node.name, "spec.podCIDRs", "PodCIDRProtected",
                            f"{cidr} overlaps {what}, which node {me.node_name} must keep"
                            f" reaching (its underlay or the API server); {me.node_name} does"
                            f" not route it", tuple(sorted({other.name, pool.name})))
                )  # fmt: skip
    return frozenset(refused)


def _shadowed(facts: Analysis, pool: PoolState, problems: list[Problem]) -> frozenset[str]:
    """Remote pod CIDRs the pool must not route because they overlap a CIDR that one of its own
    nodes claims but lost to them (raven.view): that node's pods may still live there, and
    intra-pool traffic never meets Raven state."""
    claims = [(n, _net(c)) for n in pool.nodes for c in n.clashing_cidrs]
    if not claims:
        return frozenset()
    refused = set()
    for other in facts.pools.values():
        if other.name == pool.name:
            continue
        for node in other.nodes:
            for cidr in node.pod_cidrs:
                net = _net(cidr)
                hit = next(((n, c) for n, c in claims if _overlap(net, c)), None)
                if hit is None:
                    continue
                refused.add(cidr)
                problems.append(
                    Problem("Node", hit[0].name, "spec.podCIDRs", "PodCIDROverlap",
                            f"{hit[1]} overlaps {cidr} of node {node.name} (pool {other.name});"
                            f" pool {pool.name} does not route {cidr}, so the pods of"
                            f" {hit[0].name} stay reachable inside the pool", (pool.name,))
                )  # fmt: skip
    return frozenset(refused)


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def _edge_peers(
    facts: Analysis, pool: PoolState, remote: tuple[str, ...], problems: list[Problem]
) -> tuple[PeerSpec, ...]:
    """An edge gateway's one peer: the relay pool's active gateway, carrying every remote CIDR.
    None while the relay has no gateway with a key (the analysis names why)."""
    relay = facts.pools.get(facts.relay) if facts.relay is not None else None
    gw = relay.gateway if relay is not None else None
    if relay is None or gw is None or gw.public_key is None:
        return ()
    endpoint = gateway_endpoint(gw, relay.spec)
    if endpoint is None:
        problems.append(
            Problem("Node", gw.name, "status.addresses", "NoEndpoint",
                    f"gateway of relay pool {relay.name} has no address to dial (no"
                    f" spec.endpoint, tunnel endpoint or InternalIP); waiting for it to dial in",
                    (pool.name, relay.name))
        )  # fmt: skip
    peer = PeerSpec(
        public_key=gw.public_key,
        allowed_ips=remote,
        endpoint=endpoint,
        persistent_keepalive=pool.spec.keepalive_seconds,
    )
    return (peer,)


def _relay_peers(facts: Analysis, pool: PoolState, refused: frozenset[str]) -> tuple[PeerSpec, ...]:
    """The relay's peers: for each other pool, its active gateway carrying the pool's subnets,
    and every other candidate of the pool as a standby peer with no AllowedIPs. Keys are
    published before any election, so a new gateway's first handshake is accepted at once; the
    relay only moves the AllowedIPs when it sees the new holder. Endpoints come from handshakes
    unless the pool's spec pins one."""
    peers = []
    for other in facts.pools.values():
        if other.name == pool.name:
            continue
        gw = other.gateway
        if gw is not None and gw.public_key is not None:
            allowed = tuple(c for c in other.subnets if c not in refused)
            peers.append(PeerSpec(gw.public_key, allowed, endpoint=other.spec.endpoint))
        for node in other.candidates():
            if node is gw or node.public_key is None:
                continue
            peers.append(PeerSpec(node.public_key, (), endpoint=other.spec.endpoint))
    return _distinct_keys(peers)


def _distinct_keys(peers: list[PeerSpec]) -> tuple[PeerSpec, ...]:
    """One peer per key (WireGuard's identity): a carrying peer wins over a standby copy. The
    view already refuses a key published twice; this keeps the plan valid regardless."""
    by_key: dict[str, PeerSpec] = {}
    for peer in peers:
        kept = by_key.get(peer.public_key)
        if kept is None or (not kept.allowed_ips and peer.allowed_ips):
            by_key[peer.public_key] = peer
    return tuple(sorted(by_key.values()))


def _unique(problems: Iterable[Problem]) -> tuple[Problem, ...]:
    return tuple(sorted(set(problems)))


def leases_needed(view: ClusterView, me_node_name: str) -> frozenset[str] | None:
    """The pools whose Lease this node's plan and election read: its own pool's and the relay
    pool's, or None (every pool's) for a gateway candidate of the relay pool, whose plan as
    the relay peers with every pool's gateway. Empty for a node in no pool."""
    node = next((n for n in view.nodes if n.name == me_node_name), None)
    if node is None or node.pool is None:
        return frozenset()
    relay = view.relay
    if node.pool == relay:
        gw = view.gateways.get(relay)
        selector = gw.spec.candidate_selector if gw is not None and gw.spec is not None else None
        if selector_matches(selector, node.labels):
            return None
    return frozenset(p for p in (node.pool, relay) if p is not None)


# Gateway status -----------------------------------------------------------------------------

#: How many refused objects a condition message lists before it says "and N more".
CONDITION_PROBLEMS = 10


def _condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def pool_status(
    view: ClusterView, pool: str, *, also: Iterable[Problem] = ()
) -> dict[str, Any]:
    """The Gateway ``status`` fields the agent writes for ``pool``, minus what only the runtime
    knows (``peers``, ``peersReady``, ``rtt``, each condition's ``lastTransitionTime``).
    ``also``: refusals this pool's gateway reports for others (the relay reports those no
    other gateway can). Never raises."""
    facts = analyse(view)
    state = facts.pools.get(pool)
    gw_view = view.gateways.get(pool)
    generation = gw_view.generation if gw_view is not None else 0
    spec = state.spec if state is not None else (gw_view and gw_view.spec) or GatewaySpec()
    gateway = state.gateway if state is not None else None
    refused = sorted({p for p in view.problems if pool in p.pools} | set(also))

    conditions = [
        _spec_condition(gw_view),
        _subnets_condition(state, refused),
        _gateway_condition(pool, gateway, state.holder if state else view.holders.get(pool)),
        _relay_condition(facts),
        _input_condition(refused),
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


def _summary(problems: list[Problem]) -> tuple[str, str]:
    """(reason, message) for a condition that lists refused input."""
    reasons = sorted({p.reason for p in problems})
    reason = reasons[0] if len(reasons) == 1 else "InputRefused"
    shown = [str(p) for p in problems[:CONDITION_PROBLEMS]]
    if len(problems) > CONDITION_PROBLEMS:
        shown.append(f"and {len(problems) - CONDITION_PROBLEMS} more")
    return reason, "; ".join(shown)


def _spec_condition(gw_view: GatewayView | None) -> dict[str, Any]:
    if gw_view is not None and gw_view.spec_error is not None:
        return _condition("SpecValid", False, "InvalidSpec", str(gw_view.spec_error))
    return _condition("SpecValid", True, "Valid", "spec is valid")


def _subnets_condition(state: PoolState | None, refused: list[Problem]) -> dict[str, Any]:
    """False when a pod CIDR of one of the pool's own nodes was refused."""
    names = {n.name for n in state.nodes} if state is not None else set()
    own = [
        p
        for p in refused
        if p.kind == "Node" and p.name in names and p.field.startswith("spec.podCIDR")
    ]
    if own:
        return _condition("SubnetsAccepted", False, *_summary(own))
    return _condition("SubnetsAccepted", True, "Accepted", "every pod CIDR of the pool is accepted")


def _input_condition(refused: list[Problem]) -> dict[str, Any]:
    """False when any input the pool depends on, or that clashed with it, was refused."""
    if refused:
        return _condition("InputAccepted", False, *_summary(refused))
    return _condition("InputAccepted", True, "Accepted", "no input concerning this pool is refused")


def _gateway_condition(pool: str, gateway: NodeView | None, holder: str | None) -> dict[str, Any]:
    if gateway is not None:
        return _condition("GatewayActive", True, "LeaseHeld", f"{gateway.name} holds the lease")
    if holder is not None:
        message = f"lease holder {holder} is not a node of pool {pool}"
        return _condition("GatewayActive", False, "HolderNotInPool", message)
    return _condition("GatewayActive", False, "NoHolder", "nobody holds the pool's lease")


def _relay_condition(facts: Analysis) -> dict[str, Any]:
    if facts.relay is None:
        return _condition(
            "RelayAvailable", False, "NoRelayPool", "no Gateway sets spec.relay: true"
        )
    relay = facts.pools.get(facts.relay)
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
    me: Identity, node: NodeView, gw: NodeView, gw_ip: str, problems: list[Problem]
) -> VxlanSpec | None:
    """A member's VXLAN link to its pool gateway at ``gw_ip``; None (and a problem) when this
    node has no usable InternalIP to send from."""
    local = node.internal_ip
    pools = (node.pool,) if node.pool else ()
    if local is None:
        problems.append(
            Problem("Node", me.node_name, "status.addresses", "NoInternalIP",
                    f"no usable InternalIP to reach gateway {gw.name} ({gw_ip}), which is not"
                    f" on-link, over VXLAN; no routes", pools)
        )  # fmt: skip
        return None
    if ipaddress.ip_address(local).version != ipaddress.ip_address(gw_ip).version:
        problems.append(
            Problem("Node", me.node_name, "status.addresses", "AddressFamilyMismatch",
                    f"InternalIP {local} and gateway {gw.name}'s {gw_ip} are of different"
                    f" families, so no VXLAN link can join them; no routes", pools)
        )  # fmt: skip
        return None
    return _vxlan_spec(me, local, (VxlanPeer(gw_ip, vxlan_mac(gw_ip)),))


def _gateway_vxlan(me: Identity, node: NodeView, pool: PoolState) -> VxlanSpec | None:
    """A gateway (or relay) has a VXLAN link while some node of its pool is not on-link with it
    (that node's InternalIP lies outside the gateway's underlay subnets), so such members can
    reach it. It needs no peers: its replies to them follow the CNI's routes."""
    if node.internal_ip is None:
        return None
    if all(
        n.internal_ip is None or me.on_underlay(n.internal_ip)
        for n in pool.nodes
        if n.name != me.node_name
    ):
        return None
    return _vxlan_spec(me, node.internal_ip, ())
