"""The path a packet between two pod IPs should take, from the cluster objects. Pure.

The source node sends cross-pool packets to its pool's gateway (directly, or over Raven's VXLAN
link when the gateway is not on-link), the gateway into its tunnel to the relay, the relay into
its tunnel to the destination pool's gateway, which hands them to the destination node and its
pod (raven.plan; DESIGN.md, "Data path"). Where the relay pool is the source's or the
destination's, its gateway is both. Each node's planned data path comes from
:func:`raven.plan.plan` with an identity made from the node's own addresses (as its agent makes
it), so "as planned" means what that node's agent would apply.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from raven.diagnose.facts import NodeFacts
from raven.model import DesiredState
from raven.plan import Analysis, analyse, gateway_endpoint, plan
from raven.view import ClusterView, Identity, NodeView


class PathError(ValueError):
    """No path can be drawn (an address in no pool, no relay, no gateway); says why."""


@dataclass(frozen=True)
class Endpoint:
    ip: str
    node: str
    pool: str
    name: str = ""  # the pod's name, when it was given by name

    def __str__(self) -> str:
        return f"{self.name} ({self.ip})" if self.name else self.ip


@dataclass(frozen=True)
class PathHop:
    """One node on the path and what it does there."""

    node: str
    pool: str
    roles: tuple[str, ...]  # "source", "gateway", "relay", "destination"
    over_vxlan: bool = False  # a member that reaches its gateway over VXLAN

    def __str__(self) -> str:
        return f"{self.node} ({', '.join(self.roles)} of {self.pool})"


@dataclass(frozen=True)
class Leg:
    """A WireGuard tunnel the packet crosses, between two gateways."""

    a: str  # the edge side (dials out)
    b: str  # the relay
    pool: str  # the edge pool

    def __str__(self) -> str:
        return f"tunnel {self.a} <-> {self.b}"


@dataclass(frozen=True)
class Path:
    src: Endpoint
    dst: Endpoint
    relay_pool: str
    hops: tuple[PathHop, ...]  # nodes in order
    legs: tuple[Leg, ...]  # tunnels in order
    same_pool: bool = False

    def nodes(self) -> tuple[str, ...]:
        return tuple(h.node for h in self.hops)

    def gateway_of(self, pool: str) -> str | None:
        return next((h.node for h in self.hops if h.pool == pool and "gateway" in h.roles), None)


def endpoint(view: ClusterView, ip: str, *, name: str = "") -> Endpoint:
    """The node (and pool) whose accepted pod CIDR holds ``ip``."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise PathError(f"{ip!r} is not an IP address") from None
    for node in view.nodes:
        for cidr in node.pod_cidrs:
            if addr in ipaddress.ip_network(cidr):
                if node.pool is None:
                    raise PathError(f"{ip} is on node {node.name}, which is in no pool")
                return Endpoint(ip, node.name, node.pool, name)
    raise PathError(f"{ip} is in no node's accepted pod CIDR")


def expected_path(view: ClusterView, src: Endpoint, dst: Endpoint) -> Path:
    """The hops from ``src`` to ``dst``. PathError when a pool on the way has no gateway."""
    facts = analyse(view)
    if src.pool == dst.pool:
        local = [PathHop(src.node, src.pool, ("source",))]
        if dst.node != src.node:
            local.append(PathHop(dst.node, dst.pool, ("destination",)))
        return Path(src, dst, facts.relay or "", tuple(local), (), same_pool=True)
    if facts.relay is None:
        raise PathError("no Gateway sets spec.relay: true, so no pool reaches another")
    gw_a = _gateway(facts, src.pool)
    gw_b = _gateway(facts, dst.pool)
    relay = _gateway(facts, facts.relay)
    order: list[tuple[str, str, str]] = [(src.node, src.pool, "source")]
    order.append((gw_a, src.pool, "relay" if src.pool == facts.relay else "gateway"))
    if facts.relay not in (src.pool, dst.pool):
        order.append((relay, facts.relay, "relay"))
    order.append((gw_b, dst.pool, "relay" if dst.pool == facts.relay else "gateway"))
    order.append((dst.node, dst.pool, "destination"))
    hops: list[PathHop] = []
    for node, pool, role in order:
        roles = (role, "gateway") if role == "relay" else (role,)
        if hops and hops[-1].node == node:
            hops[-1] = PathHop(node, pool, hops[-1].roles + roles)
        else:
            hops.append(PathHop(node, pool, roles))
    legs = []
    if src.pool != facts.relay:
        legs.append(Leg(gw_a, relay, src.pool))
    if dst.pool != facts.relay:
        legs.append(Leg(gw_b, relay, dst.pool))
    return Path(src, dst, facts.relay, tuple(hops), tuple(legs))


def _gateway(facts: Analysis, pool: str) -> str:
    state = facts.pools.get(pool)
    if state is None or state.gateway is None:
        why = (
            "nobody holds its Lease"
            if state is None or state.holder is None
            else (f"its Lease holder {state.holder} is not a node of the pool")
        )
        raise PathError(f"pool {pool} has no active gateway: {why}")
    return state.gateway.name


def identity_of(
    node: NodeView, facts: NodeFacts, *, table: int, rule_priority: int, vxlan_dev: str | None
) -> Identity | None:
    """The identity the node's agent plans with: the link holding its InternalIP is its
    underlay (None when no local address is its InternalIP)."""
    if node.internal_ip is None:
        return None
    underlay = facts.address_dev(node.internal_ip)
    if underlay is None:
        return None
    subnets = sorted(
        {
            ipaddress.ip_interface(f"{a.address}/{a.prefixlen}").network.with_prefixlen
            for a in facts.addresses
            if a.dev == underlay.dev
        }
    )
    return Identity(
        node_name=node.name,
        underlay_dev=underlay.dev,
        underlay_mtu=min(max(underlay.mtu, 1280), 65535),
        underlay_subnets=tuple(subnets),
        wg_dev=facts.wg_dev,
        vxlan_dev=vxlan_dev,
        table=table,
        rule_priority=rule_priority,
    )


def planned(
    view: ClusterView,
    facts: Mapping[str, NodeFacts],
    *,
    table: int,
    rule_priority: int,
    vxlan_dev: Mapping[str, str | None],
) -> dict[str, DesiredState]:
    """Each node's desired data path, as its agent would plan it, for the nodes with facts."""
    out = {}
    by_name = {n.name: n for n in view.nodes}
    for name, f in facts.items():
        node = by_name.get(name)
        me = (
            identity_of(
                node, f, table=table, rule_priority=rule_priority, vxlan_dev=vxlan_dev.get(name)
            )
            if node is not None
            else None
        )
        if me is not None:
            out[name] = plan(view, me)
    return out


def relay_endpoint(view: ClusterView) -> str | None:
    """Where edge gateways dial the relay (host:port), from the objects."""
    facts = analyse(view)
    relay = facts.pools.get(facts.relay) if facts.relay is not None else None
    if relay is None or relay.gateway is None:
        return None
    return gateway_endpoint(relay.gateway, relay.spec)


def tunnel_port(view: ClusterView, pool: str) -> int:
    state = analyse(view).pools.get(pool)
    return state.spec.tunnel_port if state is not None else 51820
