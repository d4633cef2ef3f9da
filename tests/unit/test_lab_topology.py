"""Lab topology validation and derivation (pure, no root)."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path

import pytest
import yaml

from raven.lab.topology import TopologyError, load_topology_file, parse_topology, resolve

DEFAULT = Path(__file__).resolve().parents[2] / "netns-lab" / "three-pools.yaml"


def base() -> dict:
    return yaml.safe_load(DEFAULT.read_text())


def problems_of(data: dict, prefix: str = "rl") -> list[str]:
    with pytest.raises(TopologyError) as exc:
        resolve(parse_topology(data), prefix)
    return exc.value.problems


def test_default_topology_derives_three_pools_of_three_nodes_each_with_one_pod():
    lab = resolve(load_topology_file(DEFAULT), "rl")
    assert [p.name for p in lab.pools] == ["cloud", "edge-a", "edge-b"]
    assert len(lab.nodes) == 9 and len(lab.pods) == 9
    by_name = {n.name: n for n in lab.nodes}
    assert by_name["cloud-1"].ip in lab.internet and by_name["cloud-1"].gateway is None
    a1 = by_name["edge-a-1"]
    assert a1.ip == ipaddress.IPv4Address("192.168.10.10")
    assert a1.gateway == ipaddress.IPv4Address("192.168.10.1")
    assert a1.netns == "rl-edge-a-1" and a1.pod.netns == "rl-edge-a-1-pod"
    assert a1.pod.ip == ipaddress.IPv4Address("10.244.11.2") and a1.pod.node == "edge-a-1"
    assert [r.netns for r in lab.routers] == ["rl-edge-a-nat", "rl-edge-b-nat"]
    assert all(r.public_ip in lab.internet for r in lab.routers)
    assert lab.api_ip == ipaddress.IPv4Address("198.18.0.2")
    # every address on the Internet segment is distinct
    inet = (
        [lab.api_ip]
        + [r.public_ip for r in lab.routers]
        + [n.ip for n in lab.nodes if n.pool == "cloud"]
    )
    assert len(set(inet)) == len(inet)


def test_wireguard_names_are_short_and_unique_per_prefix():
    lab = resolve(load_topology_file(DEFAULT), "abcdefgh")
    names = [lab.wg_ifname(n.name) for n in lab.nodes]
    assert len(set(names)) == 9 and all(len(n) <= 15 for n in names)
    assert all(n.startswith("abcdefgh") for n in names)


def test_derivation_is_deterministic():
    assert resolve(parse_topology(base()), "rl") == resolve(parse_topology(base()), "rl")


def test_unknown_pool_is_named():
    data = base()
    data["nodes"][4]["pool"] = "edge-c"
    assert problems_of(data) == [
        "nodes[4].pool: unknown pool 'edge-c' (pools: cloud, edge-a, edge-b)"
    ]


def test_duplicate_node_name_is_named():
    data = base()
    data["nodes"][5]["name"] = "edge-a-1"
    (problem,) = problems_of(data)
    assert problem.startswith("nodes[5].name: duplicate node name 'edge-a-1'")


def test_duplicate_pool_name_is_named():
    data = base()
    data["pools"][2]["name"] = "edge-a"
    assert any(p.startswith("pools[2].name: duplicate pool name") for p in problems_of(data))


def test_overlapping_pod_cidrs_name_both_fields():
    data = base()
    data["nodes"][2]["podCIDR"] = "10.244.0.0/16"
    probs = problems_of(data)
    assert any(
        p.startswith("nodes[2].podCIDR: 10.244.0.0/16 overlaps nodes[0].podCIDR") for p in probs
    )


def test_lan_overlapping_pod_cidr_is_refused():
    data = base()
    data["pools"][1]["lan"] = "10.244.11.0/24"
    assert any("overlaps pools[1].lan" in p for p in problems_of(data))


def test_internet_outside_benchmark_range_is_refused():
    data = base()
    data["internet"] = "192.0.2.0/24"
    assert any(
        p.startswith("internet: 192.0.2.0/24 must lie inside 198.18.0.0/16")
        for p in problems_of(data)
    )


@pytest.mark.parametrize("bad", ["10.244.1.0/33", "10.244.1.1/24", "not-a-cidr"])
def test_malformed_cidr_is_named(bad: str):
    data = base()
    data["nodes"][1]["podCIDR"] = bad
    (problem,) = problems_of(data)
    assert problem.startswith("nodes[1].podCIDR: ")


def test_node_name_longer_than_an_interface_name_is_refused():
    data = base()
    data["nodes"][0]["name"] = "cloud-node-number-1"
    (problem,) = problems_of(data)
    assert problem.startswith("nodes[0].name: 'cloud-node-number-1' is 19 characters")
    assert "15" in problem


def test_pool_name_too_long_for_router_interface_is_refused():
    data = base()
    old = data["pools"][1]["name"]
    data["pools"][1]["name"] = "edge-site-alpha"
    for n in data["nodes"]:
        if n["pool"] == old:
            n["pool"] = "edge-site-alpha"
    (problem,) = problems_of(data)
    assert problem.startswith("pools[1].name: 'edge-site-alpha' is 15 characters")


def test_name_that_is_not_a_dns_label_is_refused():
    data = base()
    data["nodes"][3]["name"] = "Edge_A"
    (problem,) = problems_of(data)
    assert problem.startswith("nodes[3].name: 'Edge_A' must be lowercase")


def test_namespace_name_collision_is_refused():
    data = base()
    data["nodes"][0]["name"] = "inet"
    assert any("namespace name 'rl-inet' collides" in p for p in problems_of(data))


def test_nat_pool_without_lan_and_public_pool_with_lan_are_refused():
    data = base()
    del data["pools"][1]["lan"]
    data["pools"][0]["lan"] = "192.168.99.0/24"
    probs = problems_of(data)
    assert "pools[1].lan: required for a pool behind NAT (or set public: true)" in probs
    assert "pools[0].lan: a public pool has no LAN (drop 'lan' or 'public')" in probs


def test_unknown_field_is_named():
    data = copy.deepcopy(base())
    data["pools"][0]["publik"] = True
    (problem,) = problems_of(data)
    assert problem.startswith("pools[0].publik: ")


def test_missing_field_is_named():
    data = base()
    del data["nodes"][7]["podCIDR"]
    (problem,) = problems_of(data)
    assert problem.startswith("nodes[7].podCIDR: Field required")


def test_bad_prefix_is_refused():
    with pytest.raises(ValueError, match="lab prefix 'Bad-Prefix'"):
        resolve(parse_topology(base()), "Bad-Prefix")


def test_unreadable_or_non_yaml_file_is_refused(tmp_path: Path):
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [\n")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load_topology_file(bad)


@pytest.mark.parametrize("path", sorted(DEFAULT.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_topology_is_valid(path: Path):
    lab = resolve(load_topology_file(path), "rl")
    assert lab.nodes and {n.pool for n in lab.nodes} == {p.name for p in lab.pools}


# A routed LAN: one pool's nodes on several subnets joined by a LAN router ------------------------

ROUTED = DEFAULT.parent / "routed-lan.yaml"


def routed() -> dict:
    return yaml.safe_load(ROUTED.read_text())


def test_routed_lan_puts_each_node_of_edge_a_on_its_own_segment_behind_a_lan_router():
    lab = resolve(load_topology_file(ROUTED), "rl")
    (lr,) = lab.lan_routers
    ip = ipaddress.IPv4Address
    assert (lr.pool, lr.netns, lr.port) == ("edge-a", "rl-edge-a-lan", "lr-edge-a")
    assert (lr.lan_ip, lr.nat_ip) == (ip("192.168.10.2"), ip("192.168.10.1"))
    assert [(str(g.network), g.bridge, str(g.router_ip)) for g in lr.segments] == [
        ("192.168.11.0/24", "br1", "192.168.11.1"),
        ("192.168.12.0/24", "br2", "192.168.12.1"),
    ]
    by_name = {n.name: n for n in lab.nodes}
    wired = {
        name: (str(n.ip), str(n.gateway), n.switch_netns, n.bridge, str(n.lan_gateway))
        for name, n in by_name.items()
        if n.pool in ("edge-a", "edge-b")
    }
    assert wired == {
        # on the NAT router's LAN: default route to the NAT router, the pool's other subnets
        # through the LAN router beside it
        "edge-a-1": ("192.168.10.10", "192.168.10.1", "rl-edge-a-nat", "br0", "192.168.10.2"),
        # on the LAN router's subnets: everything through the LAN router
        "edge-a-2": ("192.168.11.10", "192.168.11.1", "rl-edge-a-lan", "br1", "192.168.11.1"),
        "edge-a-3": ("192.168.12.10", "192.168.12.1", "rl-edge-a-lan", "br2", "192.168.12.1"),
        # a plain LAN pool is unchanged
        "edge-b-1": ("192.168.20.10", "192.168.20.1", "rl-edge-b-nat", "br0", "None"),
        "edge-b-2": ("192.168.20.11", "192.168.20.1", "rl-edge-b-nat", "br0", "None"),
    }
    assert "rl-edge-a-lan" in lab.all_netns()
    # No two nodes of edge-a share a subnet: none is on-link with another.
    nets = [ipaddress.ip_interface(f"{n.ip}/{n.prefixlen}").network for n in lab.nodes]
    edge_a = [net for n, net in zip(lab.nodes, nets, strict=True) if n.pool == "edge-a"]
    assert len(set(edge_a)) == 3


def test_the_default_topology_has_no_lan_router():
    lab = resolve(load_topology_file(DEFAULT), "rl")
    assert lab.lan_routers == () and {n.lan_gateway for n in lab.nodes} == {None}


def test_subnets_of_a_public_pool_are_refused():
    data = routed()
    data["pools"][0]["subnets"] = ["192.168.50.0/24"]
    assert "pools[0].subnets: a public pool has no LAN, so no subnets behind one" in (
        problems_of(data)
    )


def test_a_node_on_a_subnet_its_pool_does_not_have_is_named():
    data = routed()
    data["nodes"][3]["subnet"] = "192.168.99.0/24"
    assert problems_of(data) == [
        "nodes[3].subnet: 192.168.99.0/24 is not a segment of pool edge-a (its segments: "
        "192.168.10.0/24, 192.168.11.0/24, 192.168.12.0/24)"
    ]


def test_a_node_of_a_public_pool_cannot_choose_a_subnet():
    data = routed()
    data["nodes"][0]["subnet"] = "198.18.0.0/24"
    assert problems_of(data) == [
        "nodes[0].subnet: pool cloud is public; its nodes sit on the Internet segment"
    ]


def test_a_subnet_overlapping_the_lan_or_a_pod_cidr_is_named():
    data = routed()
    data["pools"][1]["subnets"] = ["192.168.10.128/25", "10.244.12.0/24"]
    data["nodes"][3]["subnet"] = "192.168.10.128/25"
    data["nodes"][4]["subnet"] = "10.244.12.0/24"
    probs = problems_of(data)
    assert "pools[1].subnets[0]: 192.168.10.128/25 overlaps pools[1].lan (192.168.10.0/24)" in (
        probs
    )
    assert any(
        p.startswith("nodes[3].podCIDR: 10.244.12.0/24 overlaps pools[1].subnets[1]") for p in probs
    )


def test_a_subnet_too_small_for_its_nodes_is_named():
    data = routed()
    data["pools"][1]["subnets"][0] = "192.168.11.0/29"
    data["nodes"][3]["subnet"] = "192.168.11.0/29"
    assert problems_of(data) == ["pools[1].subnets[0]: 192.168.11.0/29 is too small for 1 nodes"]


@pytest.mark.parametrize(
    ("index", "name", "taken"),
    [
        (3, "br2", "pools[1].subnets[1]"),
        (2, "lr-edge-a", "pools[1].name"),
        (5, "eth0", "(router uplink)"),
    ],
)
def test_a_node_named_like_another_port_on_its_switch_is_refused(index, name, taken):
    data = routed()
    data["nodes"][index]["name"] = name
    assert problems_of(data) == [
        f"nodes[{index}].name: {name!r} is also the name of {taken} on the switch the node is "
        "plugged into; choose another node name"
    ]
