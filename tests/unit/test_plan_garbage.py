"""Any JSON, anywhere (hypothesis): the view and the planner never raise, and one added object,
whatever it holds, never changes the plan of a node in a healthy pool that does not depend on it.

Objects are drawn from two strategies: JSON of any shape, and Node/Gateway/Lease shapes whose
every level is either the real thing (valid or subtly wrong: a CIDR that overlaps, a key
another node publishes, an endpoint with a leading zero) or JSON garbage.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raven.model import DesiredState
from raven.names import POOL_LABEL, PROBE_ANNOTATION, PUBLIC_KEY_ANNOTATION
from raven.names import TUNNEL_ENDPOINT_ANNOTATION as ENDPOINT
from raven.plan import analyse, leases_needed, plan, pool_status
from raven.view import ClusterView, Identity, cluster_view

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EARLY, LATE = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"


def key(name: str) -> str:
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


# The healthy cluster every test starts from: cloud (relay) c1 c2, edge-a a1 a2, edge-b b1 b2,
# every object created EARLY, every pool held.
BASE = {
    "c1": ("cloud", "10.244.0.0/24", "198.18.0.11"),
    "c2": ("cloud", "10.244.1.0/24", "198.18.0.12"),
    "a1": ("edge-a", "10.244.10.0/24", "192.168.1.11"),
    "a2": ("edge-a", "10.244.11.0/24", "192.168.1.12"),
    "b1": ("edge-b", "10.244.20.0/24", "192.168.2.21"),
    "b2": ("edge-b", "10.244.21.0/24", "192.168.2.22"),
}
SUBNET = {"cloud": "198.18.0.0/24", "edge-a": "192.168.1.0/24", "edge-b": "192.168.2.0/24"}
HOLDERS = {"cloud": "c1", "edge-a": "a1", "edge-b": "b1"}


def base_node(name: str) -> dict[str, Any]:
    pool, cidr, ip = BASE[name]
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": EARLY,
            "labels": {POOL_LABEL: pool},
            "annotations": {
                PUBLIC_KEY_ANNOTATION: key(name),
                PROBE_ANNOTATION: cidr.replace("0/24", "1"),
                **({ENDPOINT: "198.18.0.11:51820"} if name == "c1" else {}),
            },
        },
        "spec": {"podCIDRs": [cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def base_gateways() -> list[dict[str, Any]]:
    meta = {"creationTimestamp": EARLY, "generation": 1}
    return [
        {"metadata": {"name": "cloud", **meta}, "spec": {"relay": True}},
        {"metadata": {"name": "edge-a", **meta}, "spec": {}},
        {"metadata": {"name": "edge-b", **meta}, "spec": {"keepaliveSeconds": 25}},
    ]


def base_leases() -> dict[str, Any]:
    return {pool: {"spec": {"holderIdentity": h}} for pool, h in HOLDERS.items()}


def identity(name: str) -> Identity:
    pool = BASE[name][0] if name in BASE else "cloud"
    return Identity(
        node_name=name,
        underlay_dev="eth0",
        wg_dev="wg-prop",
        underlay_subnets=(SUBNET[pool],),
        protected=("198.18.0.1",),  # the API server
    )


# Strategies -------------------------------------------------------------------------------

json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip

# Values for each field, valid and invalid; valid ones overlap the base cluster on purpose (a
# CIDR over edge-a's, a key c1 publishes, an IP inside the cloud LAN) so that clashes happen.
NAMES = (["x1", "x2", "x3", "x4", "x5", "a1", "c1"], ["Bad Name", "", "x" * 254, "x1\n"])
POOLS = (["edge-a", "edge-b", "cloud", "edge-x", "edge-y"], ["Edge_X", "", "-x", "x" * 64])
CIDRS = (
    ["10.244.50.0/24", "10.244.51.0/24", "10.244.10.0/24", "10.244.0.0/16", "10.244.10.128/25",
     "192.168.1.0/24", "192.168.0.0/16", "198.18.0.0/24", "198.18.0.0/30", "fd00:50::/64",
     "10.244.50.7/24", "1.2.3.0/24"],
    ["0.0.0.0/0", "127.0.0.0/8", "224.0.0.0/24", "169.254.0.0/16", "fe80::/64", "::/0",
     "10.244.50.0/33", "10.244.50.0", "::ffff:10.0.0.0/104", "10.0.0.0/7", "10.244.50.0/24\n"],
)  # fmt: skip
IPS = (
    ["192.168.9.9", "192.168.1.11", "10.244.10.5", "198.18.0.11", "fd00::9", "10.244.50.1",
     "198.18.0.2", "192.168.7.7"],
    ["127.0.0.1", "0.0.0.0", "fe80::1%eth0", "::ffff:1.2.3.4", "224.0.0.1", "010.1.1.1"],
)  # fmt: skip
KEYS = (
    [key("x1"), key("x2"), key("a1"), key("c1")],
    ["short", key("x1")[:-2] + "x=", base64.b64encode(bytes(32)).decode()],
)  # fmt: skip
ENDPOINTS = (
    ["198.18.0.99:51820", "[fd00::1]:9", "198.18.0.98:4500"],
    ["relay.example:51820", "198.18.0.99:051820", "198.18.0.99:\uff15\uff11", "1.2.3.4",
     "1.2.3.4:0", "127.0.0.1:1", "[fe80::1%eth0]:9"],
)  # fmt: skip
STAMPS = [LATE, "2030-01-01T00:00:00+02:00", "yesterday", "", "9999-12-31", None]


@st.composite
def some(draw: Any, values: tuple[list[str], list[str]]) -> str:
    """A valid value most of the time, else an invalid one or any text."""
    roll = draw(st.integers(0, 9))
    if roll == 9:
        return str(draw(st.text(max_size=6)))
    return str(draw(st.sampled_from(values[1] if roll >= 7 else values[0])))


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in ``value`` that holds something: the root, each key, each list item."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


@st.composite
def corrupted(draw: Any, base: st.SearchStrategy[dict[str, Any]]) -> Any:
    """An object from ``base`` with up to two places (any level) replaced by JSON garbage."""
    obj = draw(base)
    for _ in range(draw(st.integers(0, 2))):
        path = draw(st.sampled_from(paths(obj)))
        if not path:
            return draw(json)
        target = obj
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = draw(json)
    return obj


def drop_none(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None}


@st.composite
def node_objects(draw: Any) -> dict[str, Any]:
    annotations = drop_none({
        PUBLIC_KEY_ANNOTATION: draw(st.none() | some(KEYS)),
        ENDPOINT: draw(st.none() | some(ENDPOINTS)),
        PROBE_ANNOTATION: draw(st.none() | some(IPS)),
    })  # fmt: skip
    return {
        "metadata": drop_none({
            "name": draw(some(NAMES)),
            "creationTimestamp": draw(st.sampled_from(STAMPS)),
            "labels": {POOL_LABEL: draw(some(POOLS))},
            "annotations": annotations,
        }),
        "spec": {"podCIDRs": draw(st.lists(some(CIDRS), min_size=1, max_size=2))},
        "status": {
            "addresses": [{"type": "InternalIP", "address": a}
                          for a in draw(st.lists(some(IPS), max_size=2))],
            "conditions": [{"type": "Ready", "status": draw(st.sampled_from(["True", "False"]))}],
        },
    }  # fmt: skip


@st.composite
def gateway_objects(draw: Any) -> dict[str, Any]:
    spec = drop_none({
        "relay": draw(st.none() | st.booleans()),
        "endpoint": draw(st.none() | some(ENDPOINTS)),
        "tunnelPort": draw(st.none() | st.integers(-1, 70000)),
        "keepaliveSeconds": draw(st.none() | st.integers(-1, 70000)),
        "candidateSelector": draw(st.none() | st.fixed_dictionaries({
            "matchLabels": st.dictionaries(st.sampled_from(["gw", "Bad Key"]), some((["y"], [""]))),
            "matchExpressions": st.lists(st.fixed_dictionaries({
                "key": st.sampled_from(["gw", "zone"]),
                "operator": st.sampled_from(["In", "NotIn", "Exists", "Bogus"]),
                "values": st.lists(some((["y", "a"], ["A b"])), max_size=2),
            }), max_size=2),
        })),
    })  # fmt: skip
    meta = drop_none({
        "name": draw(some(POOLS)),
        "creationTimestamp": draw(st.sampled_from(STAMPS)),
        "generation": draw(st.integers(-1, 5)),
    })  # fmt: skip
    return {"metadata": meta, "spec": spec}


@st.composite
def lease_objects(draw: Any) -> dict[str, Any]:
    return {"spec": {"holderIdentity": draw(some(NAMES))}}


NODES = corrupted(node_objects())
GATEWAYS = corrupted(gateway_objects())
LEASES = corrupted(lease_objects())


def objects() -> st.SearchStrategy[tuple[str, Any, Any]]:
    """(kind, object, lease pool key): one object to add to the healthy cluster."""
    new_pool = some(POOLS).filter(lambda p: p not in HOLDERS)
    return st.one_of(
        st.tuples(st.just("Node"), NODES, st.none()),
        st.tuples(st.just("Gateway"), GATEWAYS, st.none()),
        st.tuples(st.just("Lease"), LEASES, new_pool),
    )


# Never raises, and what is accepted is consistent ------------------------------------------


def assert_consistent(view: ClusterView) -> None:
    """What the view accepted holds together, whatever went in."""
    nodes = view.nodes
    assert len({n.name for n in nodes}) == len(nodes)
    ips = [n.internal_ip for n in nodes if n.internal_ip]
    assert len(set(ips)) == len(ips)
    keys = [n.public_key for n in nodes if n.public_key]
    assert len(set(keys)) == len(keys)
    nets = [(n, ipaddress.ip_network(c)) for n in nodes for c in n.pod_cidrs]
    for node, net in nets:
        assert not any(ipaddress.ip_address(ip) in net for ip in ips), (node.name, net)
        for other, other_net in nets:
            if other.pool != node.pool and net.version == other_net.version:
                assert not net.overlaps(other_net), (node.name, net, other.name, other_net)
    for node in nodes:
        if node.probe_address:
            probe = ipaddress.ip_address(node.probe_address)
            assert any(probe in ipaddress.ip_network(c) for c in node.pod_cidrs)
    assert view.relay is None or view.relay in view.gateways
    assert list(view.problems) == sorted(set(view.problems))


def assert_safe(view: ClusterView, me: Identity, state: DesiredState) -> None:
    """A plan never routes the node's own pool, or what the node must keep reaching."""
    node = next((n for n in view.nodes if n.name == me.node_name), None)
    own = [
        ipaddress.ip_network(c)
        for n in view.nodes
        if node is not None and n.pool == node.pool
        for c in n.pod_cidrs
    ]
    for dst in [r.dst for r in state.routes] + [c for p in state.peers for c in p.allowed_ips]:
        net = ipaddress.ip_network(dst)
        for keep in (*own, *me.protected_networks):
            assert not (net.version == keep.version and net.overlaps(keep)), (dst, keep)


def exercise(view: ClusterView, names: list[str]) -> None:
    """Every entry point over ``view``; none may raise."""
    assert_consistent(view)
    analyse(view)
    for name in names:
        me = identity(name) if name in BASE else Identity(name, "eth0", "wg-x")
        state = plan(view, me)
        assert_safe(view, me, state)
        leases_needed(view, name)
    for pool in [*view.gateways, *{n.pool for n in view.nodes if n.pool}, "nope"]:
        status = pool_status(view, pool)
        assert [c["type"] for c in status["conditions"]] == [
            "SpecValid", "SubnetsAccepted", "GatewayActive", "RelayAvailable", "InputAccepted",
        ]  # fmt: skip


@SETTINGS
@given(
    st.lists(NODES, max_size=5),
    st.lists(GATEWAYS, max_size=3),
    st.dictionaries(some(POOLS), LEASES, max_size=3),
    st.lists(NODES, max_size=3),
)
def test_arbitrary_objects_never_make_the_view_or_the_planner_raise(
    nodes: list[Any], gateways: list[Any], leases: dict[str, Any], before: list[Any]
) -> None:
    previous = cluster_view(before, gateways[:1], {})
    view = cluster_view(nodes, gateways, leases, previous=previous)
    names = [n.name for n in view.nodes] + ["c1", "zz"]
    exercise(view, names)
    # The same input in another order gives the same view.
    again = cluster_view(nodes[::-1], gateways[::-1], leases, previous=previous)
    assert again == view


@SETTINGS
@given(json, json, json)
def test_any_json_at_all_is_refused_without_raising(nodes: Any, gateways: Any, leases: Any) -> None:
    for value in (nodes, [nodes], {"a": nodes}):
        view = cluster_view(value, gateways, leases if isinstance(leases, dict) else {})
        exercise(view, [n.name for n in view.nodes])


# One object never changes an unrelated healthy pool ----------------------------------------


def data_path(state: DesiredState) -> DesiredState:
    return dataclasses.replace(state, problems=())


def without_cidrs(state: DesiredState, extra: set[str]) -> DesiredState:
    """``state`` minus the routes and AllowedIPs of ``extra`` CIDRs, and minus the rules only
    they bring (an IPv6 rule once an IPv6 pod CIDR is accepted)."""
    return dataclasses.replace(
        state,
        routes=tuple(r for r in state.routes if r.dst not in extra),
        peers=tuple(
            dataclasses.replace(p, allowed_ips=tuple(c for c in p.allowed_ips if c not in extra))
            for p in state.peers
        ),
        rules=tuple(r for r in state.rules if r.family == 4),
        problems=(),
    )


@SETTINGS
@given(objects())
def test_one_added_object_never_changes_an_unrelated_healthy_pool(
    added: tuple[str, Any, Any],
) -> None:
    kind, obj, lease_pool = added
    nodes = [base_node(n) for n in BASE]
    gateways, leases = base_gateways(), base_leases()
    before = cluster_view(nodes, gateways, leases)
    if kind == "Node":
        nodes = [*nodes, obj]
    elif kind == "Gateway":
        gateways = [*gateways, obj]
    elif isinstance(lease_pool, str):
        leases = {**leases, lease_pool: obj}
    after = cluster_view(nodes, gateways, leases)
    assert [n for n in after.nodes if n.name in BASE] == list(before.nodes)
    assert_consistent(after)

    # What the added object legitimately brings: a new node's accepted CIDRs in its own pool.
    new = [n for n in after.nodes if n.name not in BASE]
    joined = {n.pool for n in new if n.pool}
    extra = {c for n in new for c in n.pod_cidrs} - {c for n in before.nodes for c in n.pod_cidrs}
    for name in BASE:
        pool = BASE[name][0]
        if pool in joined or (name == HOLDERS[after.relay or ""] and joined):
            continue  # its own pool changed, or it is the relay, which peers with every pool
        old, now = plan(before, identity(name)), plan(after, identity(name))
        assert_safe(after, identity(name), now)
        assert without_cidrs(now, extra) == data_path(old), name
        assert now.role == old.role
        assert {r.family for r in old.rules} <= {r.family for r in now.rules}
        assert set(now.routes) >= set(old.routes)
        # Anything it newly reports is about the added object.
        added_problems = set(now.problems) - set(old.problems)
        assert all(p.kind == kind for p in added_problems), added_problems
        assert leases_needed(after, name) == leases_needed(before, name)
