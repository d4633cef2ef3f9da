"""Planner scenarios: a three-pool cluster built from Kubernetes JSON, complete expected plans.

Pools: ``cloud`` (relay; c1 c2 c3), ``edge-a`` (a1 a2 a3), ``edge-b`` (b1 b2). Lease holders
c1, a1, b1. Each expected DesiredState is written out whole and compared with ``==``. Other
test modules (refusals, leases) build on the helpers here.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from raven.model import DesiredState, PeerSpec, Problem, Role, RouteSpec, RuleSpec
from raven.plan import KEY_FIELD, plan, pool_status
from raven.view import (
    POOL_LABEL,
    PUBLIC_KEY_ANNOTATION,
    TUNNEL_ENDPOINT_ANNOTATION,
    ClusterView,
    Identity,
    cluster_view,
)

# Pod CIDRs per node, named so expected plans read like the topology.
C1, C2, C3 = "10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"
A1, A2, A3 = "10.244.10.0/24", "10.244.11.0/24", "10.244.12.0/24"
B1, B2 = "10.244.20.0/24", "10.244.21.0/24"
CLOUD, EDGE_A, EDGE_B = (C1, C2, C3), (A1, A2, A3), (B1, B2)
IP = {"c1": "10.0.0.1", "c2": "10.0.0.2", "c3": "10.0.0.3"}
IP |= {"a1": "192.168.1.11", "a2": "192.168.1.12", "a3": "192.168.1.13"}
IP |= {"b1": "192.168.2.21", "b2": "192.168.2.22"}
IP |= {"s1": "192.168.3.31", "d1": "192.168.4.41"}  # extra one-node pools some tests add
RULE = (RuleSpec(priority=9027, table=9027, family=4),)
MTU = 1440  # 1500 - 60 (WireGuard over IPv4)
WG = "rvn-wg0"


def key(name: str) -> str:
    """A stable, valid WireGuard public key per node."""
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def node(
    name: str,
    pool: str | None,
    cidr: str | None,
    *,
    with_key: bool = True,
    endpoint: str | None = None,
    ip: str | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    annotations = {PUBLIC_KEY_ANNOTATION: key(name)} if with_key else {}
    if endpoint:
        annotations[TUNNEL_ENDPOINT_ANNOTATION] = endpoint
    meta: dict[str, Any] = {
        "name": name,
        "labels": {POOL_LABEL: pool} if pool else {"kubernetes.io/hostname": name},
        "annotations": annotations,
    }
    if created is not None:
        meta["creationTimestamp"] = created
    return {
        "metadata": meta,
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]} if cidr else {},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": ip or IP[name]},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def base_nodes() -> list[dict[str, Any]]:
    return [
        node("c1", "cloud", C1, endpoint="198.18.0.1:51820"),
        node("c2", "cloud", C2),
        node("c3", "cloud", C3),
        node("a1", "edge-a", A1),
        node("a2", "edge-a", A2),
        node("a3", "edge-a", A3),
        node("b1", "edge-b", B1),
        node("b2", "edge-b", B2),
    ]


def gateway(
    pool: str, generation: int = 1, *, created: str | None = None, **spec: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": pool, "generation": generation}
    if created is not None:
        meta["creationTimestamp"] = created
    return {"metadata": meta, "spec": spec}


def base_gateways() -> list[dict[str, Any]]:
    return [gateway("cloud", relay=True), gateway("edge-a"), gateway("edge-b", keepaliveSeconds=25)]


BASE_HOLDERS = {"cloud": "c1", "edge-a": "a1", "edge-b": "b1"}


def view(
    nodes: list[dict[str, Any]] | None = None,
    gateways: list[dict[str, Any]] | None = None,
    holders: dict[str, str] | None = None,
    previous: ClusterView | None = None,
) -> ClusterView:
    holders = BASE_HOLDERS if holders is None else holders
    leases = {pool: {"spec": {"holderIdentity": h}} for pool, h in holders.items()}
    return cluster_view(
        base_nodes() if nodes is None else nodes,
        base_gateways() if gateways is None else gateways,
        leases,
        previous=previous,
    )


def me(name: str, **kw: Any) -> Identity:
    return Identity(node_name=name, underlay_dev="eth0", wg_dev=WG, **kw)


def without(*names: str) -> list[dict[str, Any]]:
    """The base nodes but ``names``."""
    return [n for n in base_nodes() if n["metadata"]["name"] not in names]


POOLS = ("cloud", "edge-a", "edge-b")


def via(gateway_node: str, *cidrs: str) -> tuple[RouteSpec, ...]:
    """Member routes: each CIDR via the pool gateway's InternalIP, on-link over eth0."""
    return tuple(RouteSpec(c, 9027, IP[gateway_node], "eth0", True, MTU) for c in cidrs)


def into_wg(*cidrs: str) -> tuple[RouteSpec, ...]:
    return tuple(RouteSpec(c, 9027, None, WG, False, MTU) for c in cidrs)


def gateway_state(role: Role, cidrs: tuple[str, ...], *peers: PeerSpec, **kw: Any) -> DesiredState:
    return DesiredState(
        role=role,
        routes=into_wg(*cidrs),
        rules=RULE,
        peers=tuple(sorted(peers)),
        forwarding=True,
        listen_port=51820,
        tunnel_mtu=MTU,
        **kw,
    )


TO_RELAY_FROM_A = PeerSpec(key("c1"), CLOUD + EDGE_B, "198.18.0.1:51820", 5)


def standby(*names: str, endpoint: str | None = None) -> tuple[PeerSpec, ...]:
    """The relay's standby peers: a pool's other candidates, known by key, carrying nothing."""
    return tuple(PeerSpec(key(n), (), endpoint) for n in names)


RELAY_A = (PeerSpec(key("a1"), EDGE_A), *standby("a2", "a3"))
RELAY_B = (PeerSpec(key("b1"), EDGE_B), *standby("b2"))
RELAY_PEERS = RELAY_A + RELAY_B

SCENARIOS = {
    "edge-a/member": ("a2", DesiredState(Role.MEMBER, via("a1", *CLOUD, *EDGE_B), RULE)),
    "edge-a/gateway": ("a1", gateway_state(Role.GATEWAY, CLOUD + EDGE_B, TO_RELAY_FROM_A)),
    "edge-b/gateway keepalive from its spec": (
        "b1",
        gateway_state(
            Role.GATEWAY,
            CLOUD + EDGE_A,
            PeerSpec(key("c1"), CLOUD + EDGE_A, "198.18.0.1:51820", 25),
        ),
    ),
    "cloud/relay": ("c1", gateway_state(Role.RELAY, EDGE_A + EDGE_B, *RELAY_PEERS)),
    "cloud/member": ("c3", DesiredState(Role.MEMBER, via("c1", *EDGE_A, *EDGE_B), RULE)),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(name: str) -> None:
    node_name, expected = SCENARIOS[name]
    assert plan(view(), me(node_name)) == expected


def test_one_node_pool_is_its_own_gateway_and_everyone_routes_to_it() -> None:
    nodes = [*base_nodes(), node("s1", "solo", "10.244.30.0/24")]
    cluster = view(nodes, holders={**BASE_HOLDERS, "solo": "s1"})
    solo = ("10.244.30.0/24",)
    assert plan(cluster, me("s1")) == gateway_state(
        Role.GATEWAY,
        CLOUD + EDGE_A + EDGE_B,
        PeerSpec(key("c1"), CLOUD + EDGE_A + EDGE_B, "198.18.0.1:51820", 5),
    )
    assert plan(cluster, me("a2")) == DesiredState(
        Role.MEMBER, via("a1", *CLOUD, *EDGE_B, *solo), RULE
    )
    assert plan(cluster, me("c1")) == gateway_state(
        Role.RELAY, EDGE_A + EDGE_B + solo, *RELAY_PEERS, PeerSpec(key("s1"), solo)
    )


def test_node_joins_new_subnet_reaches_relay_peer_and_every_remote_table() -> None:
    new = "10.244.13.0/24"
    cluster = view([*base_nodes(), node("a4", "edge-a", new, ip="192.168.1.14")])
    edge_a = EDGE_A + (new,)
    assert plan(cluster, me("c1")) == gateway_state(
        Role.RELAY,
        edge_a + EDGE_B,
        PeerSpec(key("a1"), edge_a),
        *standby("a2", "a3", "a4"),
        *RELAY_B,
    )
    assert plan(cluster, me("c2")) == DesiredState(Role.MEMBER, via("c1", *edge_a, *EDGE_B), RULE)
    assert plan(cluster, me("b2")) == DesiredState(Role.MEMBER, via("b1", *CLOUD, *edge_a), RULE)
    assert plan(cluster, me("b1")).peers == (
        PeerSpec(key("c1"), CLOUD + edge_a, "198.18.0.1:51820", 25),
    )
    # Its own pool's routes never change: intra-pool traffic stays on the CNI.
    assert plan(cluster, me("a2")) == plan(view(), me("a2"))


def test_node_leaves_its_subnet_disappears_everywhere() -> None:
    cluster = view([n for n in base_nodes() if n["metadata"]["name"] != "b2"])
    assert plan(cluster, me("c1")) == gateway_state(
        Role.RELAY, EDGE_A + (B1,), *RELAY_A, PeerSpec(key("b1"), (B1,))
    )
    assert plan(cluster, me("a3")) == DesiredState(Role.MEMBER, via("a1", *CLOUD, B1), RULE)
    assert plan(cluster, me("b2")) == DesiredState()  # gone from the view: Raven leaves it


def test_members_repoint_when_gateway_moves_and_relay_peer_changes_key() -> None:
    cluster = view(holders={**BASE_HOLDERS, "edge-a": "a3"})
    assert plan(cluster, me("a2")) == DesiredState(Role.MEMBER, via("a3", *CLOUD, *EDGE_B), RULE)
    assert plan(cluster, me("a1")) == DesiredState(Role.MEMBER, via("a3", *CLOUD, *EDGE_B), RULE)
    assert plan(cluster, me("a3")) == gateway_state(Role.GATEWAY, CLOUD + EDGE_B, TO_RELAY_FROM_A)
    assert plan(cluster, me("c1")) == gateway_state(
        Role.RELAY, EDGE_A + EDGE_B, PeerSpec(key("a3"), EDGE_A), *standby("a1", "a2"), *RELAY_B
    )


def test_relay_moves_to_another_cloud_node_edge_gateways_follow() -> None:
    cluster = view(holders={**BASE_HOLDERS, "cloud": "c2"})
    # c2 publishes no tunnel endpoint and the spec sets none: InternalIP:tunnelPort.
    assert plan(cluster, me("a1")) == gateway_state(
        Role.GATEWAY, CLOUD + EDGE_B, PeerSpec(key("c2"), CLOUD + EDGE_B, "10.0.0.2:51820", 5)
    )
    assert plan(cluster, me("c2")) == gateway_state(Role.RELAY, EDGE_A + EDGE_B, *RELAY_PEERS)
    assert plan(cluster, me("c1")) == DesiredState(Role.MEMBER, via("c2", *EDGE_A, *EDGE_B), RULE)


def test_relay_spec_endpoint_wins_over_node_annotation() -> None:
    gws = [gateway("cloud", relay=True, endpoint="relay.example.net:4500", tunnelPort=4500)]
    cluster = view(
        gateways=[*gws, gateway("edge-a"), gateway("edge-b", endpoint="[2001:db8::1]:9")]
    )
    assert plan(cluster, me("a1")).peers == (
        PeerSpec(key("c1"), CLOUD + EDGE_B, "relay.example.net:4500", 5),
    )
    relay = plan(cluster, me("c1"))
    assert relay.listen_port == 4500
    # A pool whose spec pins an endpoint is dialled there; the others are learned.
    assert relay.peers == tuple(
        sorted(
            [
                *RELAY_A,
                PeerSpec(key("b1"), EDGE_B, "[2001:db8::1]:9"),
                *standby("b2", endpoint="[2001:db8::1]:9"),
            ]
        )
    )


NO_HOLDER_A = Problem(
    "Pool", "edge-a", "", "NoActiveGateway", "nobody holds the pool's Lease: no active gateway",
    ("edge-a",),
)  # fmt: skip


def test_pool_without_holder_members_keep_rule_only_and_others_keep_routing_it() -> None:
    # Nobody routes differently because edge-a has no gateway right now: a member's routes
    # never depend on a remote pool's Lease (issue 9). Only the relay loses the carrying peer.
    cluster = view(holders={"cloud": "c1", "edge-b": "b1"})
    assert plan(cluster, me("a2")) == DesiredState(Role.MEMBER, (), RULE, problems=(NO_HOLDER_A,))
    assert plan(cluster, me("a1")) == DesiredState(Role.MEMBER, (), RULE, problems=(NO_HOLDER_A,))
    assert plan(cluster, me("c1")) == gateway_state(
        Role.RELAY, EDGE_A + EDGE_B, *RELAY_B, *standby("a1", "a2", "a3"), problems=(NO_HOLDER_A,)
    )
    assert plan(cluster, me("b2")) == DesiredState(Role.MEMBER, via("b1", *CLOUD, *EDGE_A), RULE)
    assert plan(cluster, me("b1")) == plan(view(), me("b1"))


def test_holder_outside_the_pool_is_not_followed() -> None:
    cluster = view(holders={**BASE_HOLDERS, "edge-a": "c2"})
    problem = Problem(
        "Lease", "raven-gw-edge-a", "spec.holderIdentity", "HolderNotInPool",
        "holder c2 is not a node of pool edge-a: no active gateway", ("edge-a",),
    )  # fmt: skip
    assert plan(cluster, me("a2")) == DesiredState(Role.MEMBER, (), RULE, problems=(problem,))
    assert plan(cluster, me("c2")) == DesiredState(Role.MEMBER, via("c1", *EDGE_A, *EDGE_B), RULE)


def test_relay_without_holder_edge_gateways_keep_routes_but_have_no_peer() -> None:
    cluster = view(holders={"edge-a": "a1", "edge-b": "b1"})
    problem = Problem(
        "Pool", "cloud", "", "NoActiveGateway", "nobody holds the pool's Lease: no active gateway",
        POOLS,
    )  # fmt: skip
    assert plan(cluster, me("a1")) == gateway_state(
        Role.GATEWAY, CLOUD + EDGE_B, problems=(problem,)
    )
    assert plan(cluster, me("b2")) == DesiredState(
        Role.MEMBER, via("b1", *CLOUD, *EDGE_A), RULE, problems=(problem,)
    )


EARLY, LATE = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"
OVERLAP = Problem(
    "Node", "a3", "spec.podCIDRs[0]", "PodCIDROverlap",
    "10.244.20.0/23 overlaps pod CIDR 10.244.20.0/24 of node b1 (pool edge-b), created earlier;"
    " refused: no pool routes it",
    ("edge-a", "edge-b"),
)  # fmt: skip


def overlapping_view_nodes() -> list[dict[str, Any]]:
    """Every base node created early; a3 comes later with a /23 over edge-b's two /24s."""
    nodes = without("a3")
    for n in nodes:
        n["metadata"]["creationTimestamp"] = EARLY
    return [*nodes, node("a3", "edge-a", "10.244.20.0/23", created=LATE)]


def shadowed(cidr: str, owner: str) -> Problem:
    return Problem(
        "Node", "a3", "spec.podCIDRs", "PodCIDROverlap",
        f"10.244.20.0/23 overlaps {cidr} of node {owner} (pool edge-b); pool edge-a does not"
        f" route {cidr}, so the pods of a3 stay reachable inside the pool",
        ("edge-a",),
    )  # fmt: skip


def test_overlapping_pod_cidr_refuses_the_later_node_alone() -> None:
    # Semantics changed: only a3's CIDR is refused, never both pools (DESIGN.md invariant 7).
    # a3's own pool does not route what a3 claims, since a3's pods may live there.
    cluster = view(overlapping_view_nodes())
    edge_a = (A1, A2)
    in_edge_a = tuple(sorted((OVERLAP, shadowed(B1, "b1"), shadowed(B2, "b2"))))
    assert plan(cluster, me("a2")) == DesiredState(
        Role.MEMBER, via("a1", *CLOUD), RULE, problems=in_edge_a
    )
    assert plan(cluster, me("a1")) == gateway_state(
        Role.GATEWAY, CLOUD, PeerSpec(key("c1"), CLOUD, "198.18.0.1:51820", 5), problems=in_edge_a
    )
    assert plan(cluster, me("b2")) == DesiredState(
        Role.MEMBER, via("b1", *CLOUD, *edge_a), RULE, problems=(OVERLAP,)
    )
    assert plan(cluster, me("c1")) == gateway_state(
        Role.RELAY, edge_a + EDGE_B, PeerSpec(key("a1"), edge_a), *standby("a2", "a3"), *RELAY_B,
        problems=(OVERLAP,),
    )  # fmt: skip
    # The cloud pool's members are not concerned: their plan is exactly as without a3's CIDR.
    assert plan(cluster, me("c2")) == DesiredState(Role.MEMBER, via("c1", *edge_a, *EDGE_B), RULE)


def test_node_without_pod_cidr_is_a_member_contributing_no_subnet() -> None:
    nodes = [n for n in base_nodes() if n["metadata"]["name"] != "a3"]
    cluster = view([*nodes, node("a3", "edge-a", None)])
    assert plan(cluster, me("a3")) == DesiredState(Role.MEMBER, via("a1", *CLOUD, *EDGE_B), RULE)
    assert plan(cluster, me("c1")).peers == tuple(
        sorted((PeerSpec(key("a1"), (A1, A2)), *standby("a2", "a3"), *RELAY_B))
    )


def test_node_outside_any_pool_gets_nothing() -> None:
    cluster = view([*base_nodes(), node("x1", None, "10.244.99.0/24", ip="10.9.9.9")])
    assert plan(cluster, me("x1")) == DesiredState()
    assert plan(cluster, me("c1")) == plan(view(), me("c1"))  # and nobody routes its CIDR
    assert plan(view(), me("not-in-view")) == DesiredState()


def test_missing_public_key_leaves_the_peer_out_with_a_problem() -> None:
    nodes = without("b1", "c1")
    nodes += [node("b1", "edge-b", B1, with_key=False)]
    nodes += [node("c1", "cloud", C1, with_key=False, endpoint="198.18.0.1:51820")]
    cluster = view(nodes)
    edge_problem = Problem(
        "Node", "b1", KEY_FIELD, "NoPublicKey",
        "gateway of pool edge-b has no valid public key published; the relay leaves its peer out",
        ("edge-b",),
    )  # fmt: skip
    relay_problem = Problem(
        "Node", "c1", KEY_FIELD, "NoPublicKey",
        "gateway of pool cloud has no valid public key published; edge gateways cannot peer"
        " with it",
        POOLS,
    )  # fmt: skip
    # b2, a candidate with a key, stays a standby peer: it can take over at once.
    assert plan(cluster, me("c1")) == gateway_state(
        Role.RELAY,
        EDGE_A + EDGE_B,
        *RELAY_A,
        *standby("b2"),
        problems=(edge_problem, relay_problem),
    )
    assert plan(cluster, me("a1")) == gateway_state(
        Role.GATEWAY, CLOUD + EDGE_B, problems=(relay_problem,)
    )


def test_invalid_key_annotation_counts_as_missing_and_is_named() -> None:
    bad = node("b1", "edge-b", B1)
    bad["metadata"]["annotations"][PUBLIC_KEY_ANNOTATION] = "not-a-key"
    cluster = view([*without("b1"), bad])
    assert plan(cluster, me("c1")).problems == (
        Problem(
            "Node", "b1", KEY_FIELD, "InvalidPublicKey",
            "not a WireGuard public key (base64 of 32 bytes), got 'not-a-key'; ignored",
            ("edge-b",),
        ),
        Problem(
            "Node", "b1", KEY_FIELD, "NoPublicKey",
            "gateway of pool edge-b has no valid public key published; the relay leaves its"
            " peer out",
            ("edge-b",),
        ),
    )  # fmt: skip
    assert plan(cluster, me("c1")).peers == tuple(sorted((*RELAY_A, *standby("b2"))))


NO_RELAY = Problem(
    "Cluster", "", "", "NoRelayPool",
    "no Gateway sets spec.relay: true; pools cannot reach each other", POOLS,
)  # fmt: skip


def test_no_relay_pool_gateways_have_no_peer_and_members_keep_routing() -> None:
    cluster = view(gateways=[gateway("cloud"), gateway("edge-a"), gateway("edge-b")])
    assert plan(cluster, me("c1")) == gateway_state(
        Role.GATEWAY, EDGE_A + EDGE_B, problems=(NO_RELAY,)
    )
    assert plan(cluster, me("a1")) == gateway_state(
        Role.GATEWAY, CLOUD + EDGE_B, problems=(NO_RELAY,)
    )
    assert plan(cluster, me("a2")) == DesiredState(
        Role.MEMBER, via("a1", *CLOUD, *EDGE_B), RULE, problems=(NO_RELAY,)
    )


@pytest.mark.parametrize(
    ("cloud_created", "edge_a_created", "relay", "refused"),
    [
        (EARLY, LATE, "cloud", "edge-a"),
        (LATE, EARLY, "edge-a", "cloud"),
        (None, None, "cloud", "edge-a"),  # no timestamps: by name
        (EARLY, None, "cloud", "edge-a"),  # a missing timestamp counts as latest
    ],
)
def test_a_second_relay_claim_is_refused_alone(
    cloud_created: str | None, edge_a_created: str | None, relay: str, refused: str
) -> None:
    # Semantics changed: several relay Gateways used to mean no relay at all (every cross-pool
    # path cut by one object); now the oldest claim wins and the later one alone is refused.
    cluster = view(
        gateways=[
            gateway("cloud", relay=True, created=cloud_created),
            gateway("edge-a", relay=True, created=edge_a_created),
            gateway("edge-b", keepaliveSeconds=25),
        ]
    )
    problem = Problem(
        "Gateway", refused, "spec.relay", "DuplicateRelay",
        f"pool {relay} is the relay already (its Gateway is older); pool {refused} is served"
        f" as an edge pool",
        (refused,),
    )  # fmt: skip
    assert cluster.relay == relay
    assert plan(cluster, me("c1")).role == (Role.RELAY if relay == "cloud" else Role.GATEWAY)
    assert plan(cluster, me("a1")).role == (Role.RELAY if relay == "edge-a" else Role.GATEWAY)
    assert problem in plan(cluster, me({"cloud": "c2", "edge-a": "a2"}[refused])).problems
    assert pool_status(cluster, refused)["conditions"][4] == {
        "type": "InputAccepted", "status": "False", "reason": "DuplicateRelay",
        "message": str(problem), "observedGeneration": 1,
    }  # fmt: skip
    if relay == "cloud":
        assert plan(cluster, me("b1")) == plan(view(), me("b1"))


def test_invalid_gateway_spec_keeps_last_valid_spec_and_names_the_field() -> None:
    good = view()
    bad_gws = [gateway("cloud", relay=True, tunnelPort=70000), *base_gateways()[1:]]
    cluster = view(gateways=bad_gws, previous=good)
    problem = Problem(
        "Gateway", "cloud", "spec.tunnelPort", "InvalidSpec",
        "must be less than or equal to 65535, got 70000; keeping the last valid spec",
        POOLS,  # the relay's Gateway concerns every pool
    )  # fmt: skip
    # Bad input changes nothing else: the relay stays the relay.
    assert plan(cluster, me("c1")) == gateway_state(
        Role.RELAY, EDGE_A + EDGE_B, *RELAY_PEERS, problems=(problem,)
    )
    # Without a last valid spec the pool falls back to defaults, which are not a relay.
    fresh = view(gateways=bad_gws)
    assert plan(fresh, me("c1")).role == Role.GATEWAY
    assert pool_status(fresh, "cloud")["conditions"][0] == {
        "type": "SpecValid",
        "status": "False",
        "reason": "InvalidSpec",
        "message": "spec.tunnelPort must be less than or equal to 65535, got 70000",
        "observedGeneration": 1,
    }


def test_mtu_over_ipv6_underlay_and_vxlan_path() -> None:
    ident = Identity(
        node_name="a2", underlay_dev="eth0", wg_dev=WG, underlay_mtu=9000, underlay_family=6,
        gateway_onlink=False,
    )  # fmt: skip
    routes = plan(view(), ident).routes
    assert {r.mtu for r in routes} == {9000 - 80}
    gw = plan(view(), Identity(node_name="a1", underlay_dev="eth0", wg_dev=WG, underlay_family=6))
    assert (gw.tunnel_mtu, {r.mtu for r in gw.routes}) == (1420, {1420})


def test_ipv6_pod_cidrs_add_an_ipv6_rule() -> None:
    nodes = [n for n in base_nodes() if n["metadata"]["name"] != "b2"]
    cluster = view([*nodes, node("b2", "edge-b", "fd00:20::/64")])
    state = plan(cluster, me("a1"))
    assert state.rules == (RuleSpec(9027, 9027, 4), RuleSpec(9027, 9027, 6))
    assert state.routes == into_wg(*CLOUD, B1, "fd00:20::/64")


def test_pool_status_for_an_edge_pool() -> None:
    assert pool_status(view(), "edge-b") == {
        "activeNode": "b1",
        "endpoint": "192.168.2.21:51820",
        "publicKey": key("b1"),
        "subnets": [B1, B2],
        "nodes": ["b1", "b2"],
        "observedGeneration": 1,
        "conditions": [
            {"type": "SpecValid", "status": "True", "reason": "Valid",
             "message": "spec is valid", "observedGeneration": 1},
            {"type": "SubnetsAccepted", "status": "True", "reason": "Accepted",
             "message": "every pod CIDR of the pool is accepted", "observedGeneration": 1},
            {"type": "GatewayActive", "status": "True", "reason": "LeaseHeld",
             "message": "b1 holds the lease", "observedGeneration": 1},
            {"type": "RelayAvailable", "status": "True", "reason": "RelayActive",
             "message": "relay pool cloud, gateway c1", "observedGeneration": 1},
            {"type": "InputAccepted", "status": "True", "reason": "Accepted",
             "message": "no input concerning this pool is refused", "observedGeneration": 1},
        ],
    }  # fmt: skip


def test_pool_status_names_the_refused_node_and_field_in_both_pools() -> None:
    cluster = view(overlapping_view_nodes(), holders={"cloud": "c1", "edge-b": "b1"})
    status = pool_status(cluster, "edge-a")
    assert (status["activeNode"], status["endpoint"], status["publicKey"]) == ("", "", "")
    assert status["subnets"] == [A1, A2]
    assert [(c["type"], c["status"], c["reason"], c["message"]) for c in status["conditions"]] == [
        ("SpecValid", "True", "Valid", "spec is valid"),
        ("SubnetsAccepted", "False", "PodCIDROverlap", str(OVERLAP)),
        ("GatewayActive", "False", "NoHolder", "nobody holds the pool's lease"),
        ("RelayAvailable", "True", "RelayActive", "relay pool cloud, gateway c1"),
        ("InputAccepted", "False", "PodCIDROverlap", str(OVERLAP)),
    ]
    assert str(OVERLAP) == (
        "Node a3 spec.podCIDRs[0]: 10.244.20.0/23 overlaps pod CIDR 10.244.20.0/24 of node b1"
        " (pool edge-b), created earlier; refused: no pool routes it"
    )
    # edge-b's own CIDRs are all accepted, but it hears of the node that clashed with it.
    b_conditions = {c["type"]: c for c in pool_status(cluster, "edge-b")["conditions"]}
    assert (b_conditions["SubnetsAccepted"]["status"], b_conditions["InputAccepted"]["status"]) == (
        "True", "False",
    )  # fmt: skip
    assert pool_status(cluster, "cloud")["endpoint"] == "198.18.0.1:51820"  # published endpoint
    assert pool_status(cluster, "cloud")["conditions"][4]["status"] == "True"


def test_relay_standby_peers_follow_the_candidate_selector_and_move_allowed_ips() -> None:
    # Only candidates become gateways, so only they are worth a standby peer on the relay.
    gws = [*base_gateways()[:1], gateway("edge-a", candidateSelector={"matchLabels": {"gw": "y"}})]
    nodes = base_nodes()
    for n in nodes:
        if n["metadata"]["name"] in ("a1", "a3"):
            n["metadata"]["labels"]["gw"] = "y"
    cluster = view(nodes, gws + base_gateways()[2:])
    assert plan(cluster, me("c1")).peers == tuple(
        sorted((PeerSpec(key("a1"), EDGE_A), *standby("a3"), *RELAY_B))
    )
    # When a3 takes over, the same two peers stay; only the AllowedIPs move between them.
    moved = view(nodes, gws + base_gateways()[2:], holders={**BASE_HOLDERS, "edge-a": "a3"})
    assert plan(moved, me("c1")).peers == tuple(
        sorted((PeerSpec(key("a3"), EDGE_A), *standby("a1"), *RELAY_B))
    )
