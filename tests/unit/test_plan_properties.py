"""Planner properties over random clusters (hypothesis): order does not matter, and Raven never
routes or tunnels a node's own pool, whatever pools, holders, keys and overlaps it sees."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from raven.gatewayspec import GatewaySpec
from raven.model import Role
from raven.plan import plan
from raven.view import ClusterView, GatewayView, Identity, NodeView

POOLS = ["p0", "p1", "p2", "p3"]
# A small CIDR space so overlaps (a /23 over a /24, duplicates) happen often.
CIDRS = [f"10.0.{i}.0/24" for i in range(8)] + ["10.0.0.0/23", "10.0.4.0/22", "fd00::/64"]


@st.composite
def clusters(draw: Any) -> tuple[ClusterView, str]:
    pools = draw(st.lists(st.sampled_from(POOLS), min_size=1, max_size=4, unique=True))
    nodes = []
    for p_index, pool in enumerate(pools):
        for n_index in range(draw(st.integers(1, 3))):
            name = f"{pool}-n{n_index}"
            cidrs = draw(st.lists(st.sampled_from(CIDRS), max_size=2, unique=True))
            has_key = draw(st.booleans())
            nodes.append(
                NodeView(
                    name=name,
                    pool=pool,
                    internal_ip=f"192.168.{p_index}.{n_index + 1}",
                    pod_cidrs=tuple(sorted(cidrs)),
                    public_key=f"key-{name}" if has_key else None,
                )
            )
    nodes.append(NodeView(name="outsider", pod_cidrs=("10.0.7.0/24",)))
    names = [n.name for n in nodes]
    holders = {p: draw(st.sampled_from(names)) for p in pools if draw(st.booleans())}
    gateways = {p: GatewayView(p, GatewaySpec(relay=draw(st.booleans())), None, 1) for p in pools}
    return ClusterView(tuple(nodes), gateways, holders), draw(st.sampled_from(names))


def identity(name: str) -> Identity:
    return Identity(node_name=name, underlay_dev="eth0", wg_dev="wg-prop")


def shuffled(view: ClusterView, draw: Any) -> ClusterView:
    return ClusterView(
        tuple(draw(st.permutations(view.nodes))),
        dict(draw(st.permutations(list(view.gateways.items())))),
        dict(draw(st.permutations(list(view.holders.items())))),
    )


@settings(max_examples=300, deadline=None)
@given(clusters(), st.data())
def test_plan_is_deterministic_under_input_reordering(
    cluster: tuple[ClusterView, str], data: st.DataObject
) -> None:
    view, name = cluster
    assert plan(shuffled(view, data.draw), identity(name)) == plan(view, identity(name))


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_never_routes_or_tunnels_the_own_pool(cluster: tuple[ClusterView, str]) -> None:
    view, name = cluster
    me = next(n for n in view.nodes if n.name == name)
    state = plan(view, identity(name))
    own = [
        ipaddress.ip_network(c)
        for n in view.nodes
        if n.pool == me.pool and me.pool
        for c in n.pod_cidrs
    ]
    dsts = [ipaddress.ip_network(r.dst) for r in state.routes]
    assert not any(d.overlaps(o) for d in dsts for o in own if d.version == o.version)
    for peer in state.peers:
        for allowed in map(ipaddress.ip_network, peer.allowed_ips):
            assert not any(allowed.overlaps(o) for o in own if allowed.version == o.version)
    # One route per destination, sorted, and relay peers never claim the same CIDR twice.
    assert len({r.key for r in state.routes}) == len(state.routes)
    all_allowed = [c for p in state.peers for c in p.allowed_ips]
    assert len(all_allowed) == len(set(all_allowed))


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_members_route_only_via_their_own_pool_gateway(cluster: tuple[ClusterView, str]) -> None:
    view, name = cluster
    state = plan(view, identity(name))
    me = next(n for n in view.nodes if n.name == name)
    if me.pool is None:
        assert state.role == Role.NONE and state.routes == state.rules == ()
        return
    if state.role == Role.MEMBER:
        holder = next((n for n in view.nodes if n.name == view.holders.get(me.pool)), None)
        assert state.peers == () and not state.forwarding
        assert all(r.gateway == holder.internal_ip for r in state.routes if holder)
        assert all(r.dev == "eth0" and r.onlink for r in state.routes)
    elif state.role in (Role.GATEWAY, Role.RELAY):
        assert view.holders.get(me.pool) == name
        assert all(r.dev == "wg-prop" and r.gateway is None for r in state.routes)


@given(
    st.dictionaries(
        st.sampled_from(POOLS),
        st.lists(st.sampled_from(CIDRS), max_size=4, unique=True),
        min_size=1,
    )
)
@settings(max_examples=300, deadline=None)
def test_overlapping_pools_are_found_as_by_comparing_every_pair(
    subnets: dict[str, list[str]],
) -> None:
    # The planner finds overlaps with one sorted sweep (comparing every pair of CIDRs of every
    # two pools cost seconds per plan at a few hundred nodes); it must find exactly those pairs.
    from raven.plan import _clashes, _sorted_cidrs

    pools = {pool: _sorted_cidrs(cidrs) for pool, cidrs in subnets.items()}
    expected: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for a in pools:
        for b in pools:
            if a < b:
                for ca in pools[a]:
                    for cb in pools[b]:
                        na, nb = ipaddress.ip_network(ca), ipaddress.ip_network(cb)
                        if na.version == nb.version and na.overlaps(nb):
                            expected.setdefault((a, b), set()).add((ca, cb))
    found = {pair: set(clashes) for pair, clashes in _clashes(pools).items()}
    assert found == expected
