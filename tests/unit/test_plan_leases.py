"""Watch only what the plan needs (issue 9): a member's and an edge gateway's plan depend on
their own pool's Lease and the relay pool's, never on another pool's; only a relay candidate
needs every pool's. ``leases_needed`` says which, and a plan built from just those Leases is
the plan built from all of them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raven.plan import leases_needed, plan, pool_status
from raven.view import POOL_LABEL, cluster_view
from tests.unit.test_plan_scenarios import (
    BASE_HOLDERS,
    base_gateways,
    base_nodes,
    gateway,
    me,
    node,
    view,
)

EDGE_A_NEEDS = frozenset({"edge-a", "cloud"})
EDGE_B_NEEDS = frozenset({"edge-b", "cloud"})
NEEDED: dict[str, frozenset[str] | None] = {
    "c1": None, "c2": None, "c3": None,  # relay candidates: every pool's
    "a1": EDGE_A_NEEDS, "a2": EDGE_A_NEEDS, "a3": EDGE_A_NEEDS,
    "b1": EDGE_B_NEEDS, "b2": EDGE_B_NEEDS,
    "x1": frozenset(),  # in no pool: none
    "not-in-view": frozenset(),
}  # fmt: skip


@pytest.mark.parametrize("name", NEEDED)
def test_leases_needed(name: str) -> None:
    cluster = view([*base_nodes(), node("x1", None, "10.244.99.0/24", ip="10.9.9.9")])
    assert leases_needed(cluster, name) == NEEDED[name]


def test_a_relay_pool_node_that_is_no_candidate_needs_its_own_pools_lease_only() -> None:
    nodes = base_nodes()
    for n in nodes:
        if n["metadata"]["name"] in ("c1", "c2"):
            n["metadata"]["labels"]["gw"] = "y"
    gws = [gateway("cloud", relay=True, candidateSelector={"matchLabels": {"gw": "y"}})]
    cluster = view(nodes, [*gws, *base_gateways()[1:]])
    assert [leases_needed(cluster, n) for n in ("c1", "c2", "c3")] == [
        None, None, frozenset({"cloud"}),
    ]  # fmt: skip


def test_without_a_relay_pool_a_node_needs_its_own_pools_lease() -> None:
    cluster = view(gateways=[gateway("cloud"), gateway("edge-a"), gateway("edge-b")])
    assert leases_needed(cluster, "a2") == frozenset({"edge-a"})
    assert leases_needed(cluster, "c2") == frozenset({"cloud"})


HOLDER_CHOICES = {
    "cloud": ["c1", "c2", "c3", "a1", None],
    "edge-a": ["a1", "a2", "a3", "b1", None],
    "edge-b": ["b1", "b2", "c2", None],
}


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries({pool: st.sampled_from(c) for pool, c in HOLDER_CHOICES.items()}),
    st.sampled_from(sorted(n for n in NEEDED if n != "not-in-view")),
)
def test_a_plan_from_the_needed_leases_is_the_plan_from_all(
    holders: dict[str, str | None], name: str
) -> None:
    nodes = [*base_nodes(), node("x1", None, "10.244.99.0/24", ip="10.9.9.9")]
    leases: dict[str, Any] = {p: {"spec": {"holderIdentity": h}} for p, h in holders.items() if h}
    full = cluster_view(nodes, base_gateways(), leases)
    needed = leases_needed(full, name)
    if needed is None:
        return  # a relay candidate watches every pool's Lease
    narrow = cluster_view(nodes, base_gateways(), {p: v for p, v in leases.items() if p in needed})
    assert leases_needed(narrow, name) == needed
    assert plan(narrow, me(name)) == plan(full, me(name))
    pool = next((n.pool for n in full.nodes if n.name == name), None)
    if pool is not None:  # what its gateway writes to its own Gateway's status
        assert pool_status(narrow, pool) == pool_status(full, pool)


@pytest.mark.parametrize("edge_b_holder", ["b1", "b2", None, "c2"])
def test_no_edge_a_plan_follows_edge_b_lease(edge_b_holder: str | None) -> None:
    holders = {k: v for k, v in {**BASE_HOLDERS, "edge-b": edge_b_holder}.items() if v}
    cluster = view(holders=holders)
    for name in ("a1", "a2", "a3"):
        assert plan(cluster, me(name)) == plan(view(), me(name)), name


def test_the_pool_label_of_a_node_decides_its_leases() -> None:
    obj = node("a2", "edge-b", "10.244.11.0/24", ip="192.168.1.12")
    assert obj["metadata"]["labels"][POOL_LABEL] == "edge-b"
    nodes = [n for n in base_nodes() if n["metadata"]["name"] != "a2"] + [obj]
    assert leases_needed(view(nodes), "a2") == EDGE_B_NEEDS
