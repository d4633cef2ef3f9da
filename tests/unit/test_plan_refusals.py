"""One bad object never cuts a healthy pool (DESIGN.md invariant 7): each scenario adds or breaks
one object in the three-pool cluster of test_plan_scenarios and gives the complete plan of
every node it names. Nodes not named keep exactly the plan they have in the healthy cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from raven.model import DesiredState, PeerSpec, Problem, Role
from raven.plan import KEY_FIELD, plan, pool_status
from raven.view import TUNNEL_ENDPOINT_ANNOTATION, ClusterView
from tests.unit.test_plan_scenarios import (
    B1,
    CLOUD,
    EDGE_A,
    EDGE_B,
    RELAY_A,
    RELAY_PEERS,
    RULE,
    TO_RELAY_FROM_A,
    base_nodes,
    gateway_state,
    key,
    me,
    node,
    standby,
    via,
    view,
    without,
)

EARLY, LATE = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"
EVERYONE = ("a1", "a2", "a3", "b1", "b2", "c1", "c2", "c3")
API_SERVER = "203.0.113.10"


def early_nodes() -> list[dict[str, Any]]:
    nodes = base_nodes()
    for n in nodes:
        n["metadata"]["creationTimestamp"] = EARLY
    return nodes


def with_solo(cidr: str, **kw: Any) -> ClusterView:
    """The healthy cluster plus pool ``solo``: one node s1, created later, its own gateway."""
    s1 = node("s1", "solo", cidr, created=LATE, **kw)
    return view([*early_nodes(), s1], holders={"cloud": "c1", "edge-a": "a1", "edge-b": "b1",
                                               "solo": "s1"})  # fmt: skip


def relay_endpoint(value: str) -> list[dict[str, Any]]:
    nodes = early_nodes()
    nodes[0]["metadata"]["annotations"][TUNNEL_ENDPOINT_ANNOTATION] = value  # c1
    return nodes


def healthy(name: str) -> DesiredState:
    return plan(view(early_nodes()), me(name))


ZERO = Problem(
    "Node", "s1", "spec.podCIDRs[0]", "InvalidPodCIDR",
    "0.0.0.0/0 is too wide for one node's pods (the prefix must be /8 or longer); refused: no"
    " pool routes it",
    ("solo",),
)  # fmt: skip
OVER_RELAY_LAN = Problem(
    "Node", "s1", "spec.podCIDRs[0]", "PodCIDRCoversNode",
    "10.0.0.0/16 contains 10.0.0.1, node c1's InternalIP; routing it would take that node's"
    " underlay away; refused: no pool routes it",
    ("cloud", "solo"),
)  # fmt: skip
OVER_API = Problem(
    "Node", "s1", "spec.podCIDRs", "PodCIDRProtected",
    "203.0.113.0/24 overlaps 203.0.113.10, which node {me} must keep reaching (its underlay"
    " or the API server); {me} does not route it",
    ("{pool}", "solo"),
)  # fmt: skip
BAD_ENDPOINT = Problem(
    "Node", "c1", f"metadata.annotations[{TUNNEL_ENDPOINT_ANNOTATION}]", "InvalidTunnelEndpoint",
    "port must be a number from 1 to 65535 (ASCII digits, no leading zero), got"
    " '198.18.0.1:051820'; keeping the endpoint last accepted (198.18.0.1:51820)",
    ("cloud", "edge-a", "edge-b"),
)  # fmt: skip
SAME_KEY = Problem(
    "Node", "b1", KEY_FIELD, "DuplicatePublicKey",
    "node a1 (pool edge-a), created earlier, already publishes this key; refused: WireGuard"
    " tells peers apart by key, so this node gets no tunnel",
    ("edge-a", "edge-b"),
)  # fmt: skip
B1_NO_KEY = Problem(
    "Node", "b1", KEY_FIELD, "NoPublicKey",
    "gateway of pool edge-b has no valid public key published; the relay leaves its peer out",
    ("edge-b",),
)  # fmt: skip


def protected(problem: Problem, name: str, pool: str) -> Problem:
    return Problem(
        problem.kind, problem.name, problem.field, problem.reason,
        problem.message.format(me=name), tuple(sorted({pool, "solo"})),
    )  # fmt: skip


def key_of_a1() -> list[dict[str, Any]]:
    nodes = without("b1")
    for n in nodes:
        n["metadata"]["creationTimestamp"] = EARLY
    b1 = node("b1", "edge-b", B1, created=LATE)
    b1["metadata"]["annotations"]["raven.io/public-key"] = key("a1")
    return [*nodes, b1]


ALL = CLOUD + EDGE_A + EDGE_B
# (the cluster, identity keywords, {node: its complete plan}); every other node of EVERYONE
# keeps its healthy plan.
Scenario = tuple[Callable[[], ClusterView], dict[str, Any], dict[str, DesiredState]]
SCENARIOS: dict[str, Scenario] = {
    "a node with podCIDR 0.0.0.0/0, alone in its pool, is refused alone": (
        lambda: with_solo("0.0.0.0/0"),
        {},
        {
            "s1": gateway_state(
                Role.GATEWAY, ALL, PeerSpec(key("c1"), ALL, "198.18.0.1:51820", 5),
                problems=(ZERO,),
            ),
            "c1": gateway_state(
                Role.RELAY, EDGE_A + EDGE_B, *RELAY_PEERS, PeerSpec(key("s1"), ()),
                problems=(ZERO,),
            ),
        },
    ),
    "a pod CIDR over the relay's LAN is refused, the LAN stays": (
        lambda: with_solo("10.0.0.0/16"),
        {},
        {
            "s1": gateway_state(
                Role.GATEWAY, ALL, PeerSpec(key("c1"), ALL, "198.18.0.1:51820", 5),
                problems=(OVER_RELAY_LAN,),
            ),
            "c1": gateway_state(
                Role.RELAY, EDGE_A + EDGE_B, *RELAY_PEERS, PeerSpec(key("s1"), ()),
                problems=(OVER_RELAY_LAN,),
            ),
            # The cloud pool hears of it (the CIDR clashed with its node); its data path holds.
            "c2": DesiredState(
                Role.MEMBER, via("c1", *EDGE_A, *EDGE_B), RULE, problems=(OVER_RELAY_LAN,)
            ),
            "c3": DesiredState(
                Role.MEMBER, via("c1", *EDGE_A, *EDGE_B), RULE, problems=(OVER_RELAY_LAN,)
            ),
        },
    ),
    "a pod CIDR over the API server is not routed by nodes that must reach it": (
        lambda: with_solo("203.0.113.0/24"),
        {"protected": (API_SERVER,)},
        {
            "a2": DesiredState(
                Role.MEMBER, via("a1", *CLOUD, *EDGE_B), RULE,
                problems=(protected(OVER_API, "a2", "edge-a"),),
            ),
            "a1": gateway_state(
                Role.GATEWAY, CLOUD + EDGE_B, TO_RELAY_FROM_A,
                problems=(protected(OVER_API, "a1", "edge-a"),),
            ),
            "a3": DesiredState(
                Role.MEMBER, via("a1", *CLOUD, *EDGE_B), RULE,
                problems=(protected(OVER_API, "a3", "edge-a"),),
            ),
            "c1": gateway_state(
                Role.RELAY, EDGE_A + EDGE_B, *RELAY_PEERS, PeerSpec(key("s1"), ()),
                problems=(protected(OVER_API, "c1", "cloud"),),
            ),
            "c2": DesiredState(
                Role.MEMBER, via("c1", *EDGE_A, *EDGE_B), RULE,
                problems=(protected(OVER_API, "c2", "cloud"),),
            ),
            "c3": DesiredState(
                Role.MEMBER, via("c1", *EDGE_A, *EDGE_B), RULE,
                problems=(protected(OVER_API, "c3", "cloud"),),
            ),
            "b1": gateway_state(
                Role.GATEWAY, CLOUD + EDGE_A,
                PeerSpec(key("c1"), CLOUD + EDGE_A, "198.18.0.1:51820", 25),
                problems=(protected(OVER_API, "b1", "edge-b"),),
            ),
            "b2": DesiredState(
                Role.MEMBER, via("b1", *CLOUD, *EDGE_A), RULE,
                problems=(protected(OVER_API, "b2", "edge-b"),),
            ),
        },
    ),
    "a malformed tunnel endpoint on the relay keeps the last good one": (
        lambda: view(relay_endpoint("198.18.0.1:051820"), previous=view(early_nodes())),
        {},
        {
            "a1": gateway_state(Role.GATEWAY, CLOUD + EDGE_B, TO_RELAY_FROM_A,
                                problems=(BAD_ENDPOINT,)),
            "a2": DesiredState(Role.MEMBER, via("a1", *CLOUD, *EDGE_B), RULE,
                               problems=(BAD_ENDPOINT,)),
            "a3": DesiredState(Role.MEMBER, via("a1", *CLOUD, *EDGE_B), RULE,
                               problems=(BAD_ENDPOINT,)),
            "b1": gateway_state(
                Role.GATEWAY, CLOUD + EDGE_A,
                PeerSpec(key("c1"), CLOUD + EDGE_A, "198.18.0.1:51820", 25),
                problems=(BAD_ENDPOINT,),
            ),
            "b2": DesiredState(Role.MEMBER, via("b1", *CLOUD, *EDGE_A), RULE,
                               problems=(BAD_ENDPOINT,)),
            "c1": gateway_state(Role.RELAY, EDGE_A + EDGE_B, *RELAY_PEERS,
                                problems=(BAD_ENDPOINT,)),
            "c2": DesiredState(Role.MEMBER, via("c1", *EDGE_A, *EDGE_B), RULE,
                               problems=(BAD_ENDPOINT,)),
            "c3": DesiredState(Role.MEMBER, via("c1", *EDGE_A, *EDGE_B), RULE,
                               problems=(BAD_ENDPOINT,)),
        },
    ),
    "two pools' gateways with one key: the later claim is refused, never black-holed": (
        lambda: view(key_of_a1()),
        {},
        {
            "c1": gateway_state(Role.RELAY, EDGE_A + EDGE_B, *RELAY_A, *standby("b2"),
                                problems=(SAME_KEY, B1_NO_KEY)),
            "b1": gateway_state(Role.GATEWAY, CLOUD + EDGE_A,
                                PeerSpec(key("c1"), CLOUD + EDGE_A, "198.18.0.1:51820", 25),
                                problems=(SAME_KEY, B1_NO_KEY)),
            "b2": DesiredState(Role.MEMBER, via("b1", *CLOUD, *EDGE_A), RULE,
                               problems=(SAME_KEY, B1_NO_KEY)),
            "a1": gateway_state(Role.GATEWAY, CLOUD + EDGE_B, TO_RELAY_FROM_A,
                                problems=(SAME_KEY,)),
            "a2": DesiredState(Role.MEMBER, via("a1", *CLOUD, *EDGE_B), RULE,
                               problems=(SAME_KEY,)),
            "a3": DesiredState(Role.MEMBER, via("a1", *CLOUD, *EDGE_B), RULE,
                               problems=(SAME_KEY,)),
        },
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", SCENARIOS)
def test_one_bad_object_is_refused_alone(name: str) -> None:
    build, kw, expected = SCENARIOS[name]
    cluster = build()
    for node_name in [*EVERYONE, *expected]:
        want = expected.get(node_name)
        if want is None:
            base = healthy(node_name)
            if kw:  # same identity, same healthy plan
                base = plan(view(early_nodes()), me(node_name, **kw))
            want = base
        assert plan(cluster, me(node_name, **kw)) == want, node_name


def test_without_a_last_good_endpoint_the_relay_is_dialled_at_its_internal_ip() -> None:
    cluster = view(relay_endpoint("198.18.0.1:051820"))
    assert plan(cluster, me("a1")).peers == (
        PeerSpec(key("c1"), CLOUD + EDGE_B, "10.0.0.1:51820", 5),
    )


def test_refused_input_is_a_condition_of_every_pool_it_concerns() -> None:
    cluster = with_solo("10.0.0.0/16")

    def input_condition(pool: str) -> tuple[str, str, str]:
        condition = pool_status(cluster, pool)["conditions"][4]
        return condition["status"], condition["reason"], condition["message"]

    text = str(OVER_RELAY_LAN)
    assert text == (
        "Node s1 spec.podCIDRs[0]: 10.0.0.0/16 contains 10.0.0.1, node c1's InternalIP; routing"
        " it would take that node's underlay away; refused: no pool routes it"
    )
    assert input_condition("solo") == ("False", "PodCIDRCoversNode", text)
    assert input_condition("cloud") == ("False", "PodCIDRCoversNode", text)
    assert input_condition("edge-a")[0] == "True"
    subnets = pool_status(cluster, "solo")["conditions"][1]
    assert (subnets["type"], subnets["status"], subnets["reason"]) == (
        "SubnetsAccepted", "False", "PodCIDRCoversNode",
    )  # fmt: skip
    assert pool_status(cluster, "cloud")["conditions"][1]["status"] == "True"
