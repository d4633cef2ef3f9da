"""Planner properties over random clusters (hypothesis), built from Kubernetes JSON: order does
not matter, and Raven never routes or tunnels a node's own pool, whatever pools, holders, keys,
creation times and overlaps it sees."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from raven.model import Role
from raven.names import POOL_LABEL, PUBLIC_KEY_ANNOTATION
from raven.plan import plan
from raven.view import ClusterView, Identity, cluster_view

POOLS = ["p0", "p1", "p2", "p3"]
# A small CIDR space so overlaps (a /23 over a /24, duplicates) happen often.
CIDRS = [f"10.0.{i}.0/24" for i in range(8)] + ["10.0.0.0/23", "10.0.4.0/22", "fd00::/64"]
STAMPS = ["2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z", None]


def key(name: str) -> str:
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def node(name: str, pool: str | None, ip: str, cidrs: list[str], has_key: bool, stamp: Any):
    meta: dict[str, Any] = {
        "name": name,
        "labels": {POOL_LABEL: pool} if pool else {},
        "annotations": {PUBLIC_KEY_ANNOTATION: key(name)} if has_key else {},
    }
    if stamp is not None:
        meta["creationTimestamp"] = stamp
    return {
        "metadata": meta,
        "spec": {"podCIDRs": cidrs},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


Cluster = tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], str]


@st.composite
def clusters(draw: Any) -> Cluster:
    pools = draw(st.lists(st.sampled_from(POOLS), min_size=1, max_size=4, unique=True))
    nodes = []
    for p_index, pool in enumerate(pools):
        for n_index in range(draw(st.integers(1, 3))):
            nodes.append(
                node(
                    f"{pool}-n{n_index}",
                    pool,
                    f"192.168.{p_index}.{n_index + 1}",
                    draw(st.lists(st.sampled_from(CIDRS), max_size=2, unique=True)),
                    draw(st.booleans()),
                    draw(st.sampled_from(STAMPS)),
                )
            )
    nodes.append(node("outsider", None, "192.168.9.9", ["10.0.7.0/24"], True, None))
    names = [n["metadata"]["name"] for n in nodes]
    holders = {p: draw(st.sampled_from(names)) for p in pools if draw(st.booleans())}
    leases = {p: {"spec": {"holderIdentity": h}} for p, h in holders.items()}
    gateways = [
        {
            "metadata": {"name": p, "creationTimestamp": draw(st.sampled_from(STAMPS))},
            "spec": {"relay": draw(st.booleans())},
        }
        for p in pools
    ]
    return nodes, gateways, leases, draw(st.sampled_from(names))


def built(cluster: Cluster) -> ClusterView:
    nodes, gateways, leases, _ = cluster
    return cluster_view(nodes, gateways, leases)


def identity(name: str) -> Identity:
    return Identity(node_name=name, underlay_dev="eth0", wg_dev="wg-prop")


@settings(max_examples=300, deadline=None)
@given(clusters(), st.data())
def test_plan_is_deterministic_under_input_reordering(
    cluster: Cluster, data: st.DataObject
) -> None:
    nodes, gateways, leases, name = cluster
    reordered = cluster_view(
        data.draw(st.permutations(nodes)),
        data.draw(st.permutations(gateways)),
        dict(data.draw(st.permutations(list(leases.items())))),
    )
    assert reordered == built(cluster)
    assert plan(reordered, identity(name)) == plan(built(cluster), identity(name))


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_never_routes_or_tunnels_the_own_pool(cluster: Cluster) -> None:
    view, name = built(cluster), cluster[3]
    me = next(n for n in view.nodes if n.name == name)
    state = plan(view, identity(name))
    # The node's own pool's CIDRs as they were given, accepted or not.
    own = [
        ipaddress.ip_network(c)
        for n in cluster[0]
        if me.pool and n["metadata"]["labels"].get(POOL_LABEL) == me.pool
        for c in n["spec"]["podCIDRs"]
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
def test_members_route_only_via_their_own_pool_gateway(cluster: Cluster) -> None:
    view, name = built(cluster), cluster[3]
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
