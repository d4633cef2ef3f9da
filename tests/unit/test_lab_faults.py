"""What `raven lab cut` adds, per target (pure: the planned chains, no iptables), and how targets
are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raven.lab import proxies
from raven.lab.faults import NODE, POOL, Block, FaultError, Target, plan_cut, resolve_target
from raven.lab.topology import load_topology_file, parse_topology, resolve

DEFAULT = Path(__file__).resolve().parents[2] / "netns-lab" / "three-pools.yaml"


@pytest.fixture
def lab():
    return resolve(load_topology_file(DEFAULT), "rl")


def allow(*nets: str) -> tuple[tuple[str, ...], ...]:
    rules: list[tuple[str, ...]] = []
    for net in nets:
        rules += [
            ("-o", "eth0", "-d", net, "-j", "RETURN"),
            ("-i", "eth0", "-s", net, "-j", "RETURN"),
        ]
    return (*rules, ("-o", "eth0", "-j", "DROP"), ("-i", "eth0", "-j", "DROP"))


def test_an_edge_pool_is_cut_at_its_nat_router_leaving_its_lan_bridge_alone(lab):
    assert plan_cut(lab, Target(POOL, "edge-a")) == [
        Block(
            "rl-edge-a-nat",
            "RL-CUT",
            ("FORWARD",),
            (("-i", "eth0", "-j", "DROP"), ("-o", "eth0", "-j", "DROP")),
        )
    ]


def test_an_edge_node_keeps_its_lan_and_its_pools_pods_and_nothing_else(lab):
    nets = ("192.168.10.0/24", "10.244.11.0/24", "10.244.12.0/24", "10.244.13.0/24")
    assert plan_cut(lab, Target(NODE, "edge-a-2")) == [
        Block("rl-edge-a-2", "RL-CUTNODE", ("INPUT", "OUTPUT", "FORWARD"), allow(*nets))
    ]


def test_the_public_pool_is_cut_at_each_of_its_nodes_which_keep_reaching_each_other(lab):
    nets = (
        "198.18.0.12/32",
        "198.18.0.13/32",
        "198.18.0.14/32",
        "10.244.1.0/24",
        "10.244.2.0/24",
        "10.244.3.0/24",
    )
    blocks = plan_cut(lab, Target(POOL, "cloud"))
    assert [(b.netns, b.chain) for b in blocks] == [
        ("rl-cloud-1", "RL-CUTPOOL"),
        ("rl-cloud-2", "RL-CUTPOOL"),
        ("rl-cloud-3", "RL-CUTPOOL"),
    ]
    assert all(b.rules == allow(*nets) for b in blocks)
    # a node cut on top of a pool cut is a chain of its own, so each heals separately
    assert plan_cut(lab, Target(NODE, "cloud-1"))[0].chain == "RL-CUTNODE"


def test_targets_are_pools_or_nodes_and_unknown_names_are_refused_naming_what_exists(lab):
    assert resolve_target(lab, "edge-a") == Target(POOL, "edge-a")
    assert resolve_target(lab, "edge-a-1") == Target(NODE, "edge-a-1")
    assert resolve_target(lab, "node/cloud-2") == Target(NODE, "cloud-2")
    with pytest.raises(FaultError, match=r"no such lab pool or node: 'edge-c' \(pools: cloud,"):
        resolve_target(lab, "edge-c")
    with pytest.raises(FaultError, match=r"no such lab pool: 'edge-a-1' \(pools: cloud, edge-a"):
        resolve_target(lab, "pool/edge-a-1")
    with pytest.raises(FaultError, match="expected pool/NAME or node/NAME"):
        resolve_target(lab, "rack/edge-a")


def test_a_name_that_is_both_a_pool_and_a_node_must_be_qualified():
    data = yaml.safe_load(DEFAULT.read_text())
    data["nodes"][0]["name"] = "edge-b"  # a node named like a pool
    lab = resolve(parse_topology(data), "rl")
    with pytest.raises(FaultError, match="both a pool and a node: say pool/edge-b or node/edge-b"):
        resolve_target(lab, "edge-b")
    assert resolve_target(lab, "pool/edge-b") == Target(POOL, "edge-b")
    assert resolve_target(lab, "node/edge-b") == Target(NODE, "edge-b")


def test_the_lab_proxies_listen_where_the_cache_proxy_listens_by_default():
    from raven.cacheproxy.server import DEFAULT_PORT

    assert proxies.LISTEN_PORT == DEFAULT_PORT
    assert proxies.PROXY_URL == f"https://127.0.0.1:{DEFAULT_PORT}"
