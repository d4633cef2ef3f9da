"""Builders from Kubernetes JSON to planner views: what is read, what is refused and named, what
is kept from the last good view, and which of two clashing objects loses."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from raven.gatewayspec import GatewaySpec
from raven.model import Problem
from raven.view import (
    POOL_LABEL,
    PROBE_ANNOTATION,
    PUBLIC_KEY_ANNOTATION,
    TUNNEL_ENDPOINT_ANNOTATION,
    ClusterView,
    GatewayView,
    Identity,
    NodeView,
    cluster_view,
    gateway_from_k8s,
    lease_holder,
    node_from_k8s,
    valid_public_key,
)

KEY = base64.b64encode(bytes(range(32))).decode()
KEY2 = base64.b64encode(bytes(range(1, 33))).decode()
EARLY, LATE = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"
KEY_FIELD = f"metadata.annotations[{PUBLIC_KEY_ANNOTATION}]"
ENDPOINT_FIELD = f"metadata.annotations[{TUNNEL_ENDPOINT_ANNOTATION}]"
PROBE_FIELD = f"metadata.annotations[{PROBE_ANNOTATION}]"


def test_node_is_read_as_the_api_returns_it() -> None:
    obj = {
        "metadata": {
            "name": "a1",
            "labels": {POOL_LABEL: "edge-a", "zone": "z1"},
            "annotations": {
                PUBLIC_KEY_ANNOTATION: KEY,
                TUNNEL_ENDPOINT_ANNOTATION: "1.2.3.4:9",
                PROBE_ANNOTATION: "10.244.1.1",
            },
        },
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": "a1"},
                {"type": "InternalIP", "address": "192.168.1.11"},
                {"type": "InternalIP", "address": "fd00::11"},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    assert node_from_k8s(obj) == NodeView(
        name="a1",
        pool="edge-a",
        internal_ip="192.168.1.11",
        pod_cidrs=("10.244.1.0/24", "fd00:1::/64"),
        labels={POOL_LABEL: "edge-a", "zone": "z1"},
        public_key=KEY,
        tunnel_endpoint="1.2.3.4:9",
        probe_address="10.244.1.1",
        ready=True,
    )


def test_node_pool_label_key_is_configurable_and_missing_label_means_no_pool() -> None:
    obj = {"metadata": {"name": "n", "labels": {"example.com/pool": "p"}}}
    assert node_from_k8s(obj, pool_label="example.com/pool").pool == "p"
    assert node_from_k8s(obj).pool is None


def test_node_with_sparse_data_and_old_single_pod_cidr() -> None:
    view = node_from_k8s({"metadata": {"name": "n"}, "spec": {"podCIDR": "10.1.2.3/24"}})
    assert view == NodeView(name="n", pod_cidrs=("10.1.2.0/24",), ready=False)


def a_node(**changes: Any) -> dict[str, Any]:
    """Node n1 of pool p, every field valid; ``changes`` maps a path (keys joined by ``|``) to
    a new value."""
    obj: dict[str, Any] = {
        "metadata": {
            "name": "n1",
            "creationTimestamp": EARLY,
            "labels": {POOL_LABEL: "p"},
            "annotations": {
                PUBLIC_KEY_ANNOTATION: KEY,
                TUNNEL_ENDPOINT_ANNOTATION: "198.18.0.1:51820",
                PROBE_ANNOTATION: "10.244.1.1",
            },
        },
        "spec": {"podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.11"}]},
    }
    for path, value in changes.items():
        *parents, last = path.split("|")
        target = obj
        for part in parents:
            target = target[part]
        target[last] = value
    return obj


GOOD = node_from_k8s(a_node())
PROBE_GONE = Problem(
    "Node", "n1", PROBE_FIELD, "InvalidProbeAddress",
    "10.244.1.1 is not inside the node's accepted pod CIDRs (none); not probed", ("p",),
)  # fmt: skip

# One field of one Node refused: (changes, the fields of the resulting NodeView that differ from
# GOOD, the problem). The rest of the Node is read as usual; a probe address left outside every
# accepted pod CIDR is refused too (PROBE_GONE).
REFUSED: dict[str, tuple[dict[str, Any], dict[str, Any], Problem]] = {
    "pod CIDR 0.0.0.0/0": (
        {"spec|podCIDRs": ["0.0.0.0/0"]},
        {"pod_cidrs": (), "probe_address": None},
        Problem("Node", "n1", "spec.podCIDRs[0]", "InvalidPodCIDR",
                "0.0.0.0/0 is too wide for one node's pods (the prefix must be /8 or longer);"
                " refused: no pool routes it", ("p",)),
    ),
    "pod CIDR too wide": (
        {"spec|podCIDRs": ["10.0.0.0/7"]},
        {"pod_cidrs": (), "probe_address": None},
        Problem("Node", "n1", "spec.podCIDRs[0]", "InvalidPodCIDR",
                "10.0.0.0/7 is too wide for one node's pods (the prefix must be /8 or longer);"
                " refused: no pool routes it", ("p",)),
    ),
    "pod CIDR loopback": (
        {"spec|podCIDRs": ["127.0.0.0/24"]},
        {"pod_cidrs": (), "probe_address": None},
        Problem("Node", "n1", "spec.podCIDRs[0]", "InvalidPodCIDR",
                "127.0.0.0/24 overlaps 127.0.0.0/8, loopback; refused: no pool routes it",
                ("p",)),
    ),
    "pod CIDR multicast": (
        {"spec|podCIDRs": ["10.244.1.0/24", "224.0.0.0/24"]},
        {},
        Problem("Node", "n1", "spec.podCIDRs[1]", "InvalidPodCIDR",
                "224.0.0.0/24 overlaps 224.0.0.0/4, multicast; refused: no pool routes it",
                ("p",)),
    ),
    "pod CIDR link-local IPv6": (
        {"spec|podCIDRs": ["10.244.1.0/24", "fe80::/64"]},
        {},
        Problem("Node", "n1", "spec.podCIDRs[1]", "InvalidPodCIDR",
                "fe80::/64 overlaps fe80::/10, link-local; refused: no pool routes it", ("p",)),
    ),
    "pod CIDR not a string": (
        {"spec|podCIDRs": [["10.244.1.0/24"]]},
        {"pod_cidrs": (), "probe_address": None},
        Problem("Node", "n1", "spec.podCIDRs[0]", "InvalidPodCIDR",
                "not a CIDR, got ['10.244.1.0/24']; refused: no pool routes it", ("p",)),
    ),
    "pod CIDRs not a list": (
        {"spec|podCIDRs": "10.244.1.0/24"},
        {"pod_cidrs": (), "probe_address": None},
        Problem("Node", "n1", "spec.podCIDRs", "InvalidPodCIDR",
                "not a list, got '10.244.1.0/24'; refused: no pool routes it", ("p",)),
    ),
    "pod CIDR without a prefix": (
        {"spec|podCIDRs": ["10.244.1.0"]},
        {"pod_cidrs": (), "probe_address": None},
        Problem("Node", "n1", "spec.podCIDRs[0]", "InvalidPodCIDR",
                "not a CIDR, got '10.244.1.0'; refused: no pool routes it", ("p",)),
    ),
    "public key not canonical base64": (
        {f"metadata|annotations|{PUBLIC_KEY_ANNOTATION}": KEY[:-2] + "x="},
        {"public_key": None},
        Problem("Node", "n1", KEY_FIELD, "InvalidPublicKey",
                f"not a WireGuard public key (base64 of 32 bytes), got '{KEY[:-2]}x='; ignored",
                ("p",)),
    ),
    "public key all zero": (
        {f"metadata|annotations|{PUBLIC_KEY_ANNOTATION}": base64.b64encode(bytes(32)).decode()},
        {"public_key": None},
        Problem("Node", "n1", KEY_FIELD, "InvalidPublicKey",
                "the all-zero key, which no WireGuard device has, got"
                " 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='; ignored", ("p",)),
    ),
    "tunnel endpoint with a host name": (
        {f"metadata|annotations|{TUNNEL_ENDPOINT_ANNOTATION}": "relay.example:51820"},
        {"tunnel_endpoint": None},
        Problem("Node", "n1", ENDPOINT_FIELD, "InvalidTunnelEndpoint",
                "must be an IP address and a port (no host name), got 'relay.example:51820';"
                " ignored", ("p",)),
    ),
    "tunnel endpoint port with a leading zero": (
        {f"metadata|annotations|{TUNNEL_ENDPOINT_ANNOTATION}": "198.18.0.1:051820"},
        {"tunnel_endpoint": None},
        Problem("Node", "n1", ENDPOINT_FIELD, "InvalidTunnelEndpoint",
                "port must be a number from 1 to 65535 (ASCII digits, no leading zero), got"
                " '198.18.0.1:051820'; ignored", ("p",)),
    ),
    "tunnel endpoint not a string": (
        {f"metadata|annotations|{TUNNEL_ENDPOINT_ANNOTATION}": {"ip": "198.18.0.1"}},
        {"tunnel_endpoint": None},
        Problem("Node", "n1", ENDPOINT_FIELD, "InvalidTunnelEndpoint",
                "must be host:port, got {'ip': '198.18.0.1'}; ignored", ("p",)),
    ),
    "probe address outside the pod CIDRs": (
        {f"metadata|annotations|{PROBE_ANNOTATION}": "192.168.1.11"},
        {"probe_address": None},
        Problem("Node", "n1", PROBE_FIELD, "InvalidProbeAddress",
                "192.168.1.11 is not inside the node's accepted pod CIDRs (10.244.1.0/24);"
                " not probed", ("p",)),
    ),
    "probe address not an IP": (
        {f"metadata|annotations|{PROBE_ANNOTATION}": "10.244.1.1; reboot"},
        {"probe_address": None},
        Problem("Node", "n1", PROBE_FIELD, "InvalidProbeAddress",
                "not an IP address, got '10.244.1.1; reboot'; ignored", ("p",)),
    ),
    "InternalIP loopback": (
        {"status|addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
        {"internal_ip": None},
        Problem("Node", "n1", "status.addresses[0].address", "InvalidInternalIP",
                "127.0.0.1 is a loopback address, which no node can have; ignored", ("p",)),
    ),
    "InternalIP with a zone": (
        {"status|addresses": [{"type": "InternalIP", "address": "fe80::1%eth0"}]},
        {"internal_ip": None},
        Problem("Node", "n1", "status.addresses[0].address", "InvalidInternalIP",
                "not an IP address, got 'fe80::1%eth0'; ignored", ("p",)),
    ),
    "pool label not a valid name": (
        {f"metadata|labels|{POOL_LABEL}": "Edge_A"},
        {"pool": None, "labels": {POOL_LABEL: "Edge_A"}},
        Problem("Node", "n1", f"metadata.labels[{POOL_LABEL}]", "InvalidPoolLabel",
                "not a valid pool name (a lower-case DNS name of at most 63 characters), got"
                " 'Edge_A'; in no pool"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSED)
def test_one_bad_field_is_refused_alone_and_named(case: str) -> None:
    changes, differs, problem = REFUSED[case]
    view = node_from_k8s(a_node(**changes))
    problems = (problem, PROBE_GONE) if differs.get("pod_cidrs") == () else (problem,)
    expected = NodeView(**{**GOOD.__dict__, **differs, "problems": tuple(sorted(problems))})
    assert view == expected


@pytest.mark.parametrize("case", REFUSED)
def test_a_refused_field_keeps_what_was_last_accepted(case: str) -> None:
    changes, differs, problem = REFUSED[case]
    previous = cluster_view([a_node()], [], {})
    view = cluster_view([a_node(**changes)], [], {}, previous=previous)
    (node,) = view.nodes
    # A malformed field falls back to the last good value; nothing else changes.
    assert (node.name, node.pool, node.internal_ip, node.pod_cidrs) == (
        "n1", "p", "192.168.1.11", ("10.244.1.0/24",),
    )  # fmt: skip
    assert (node.public_key, node.tunnel_endpoint, node.probe_address) == (
        KEY, "198.18.0.1:51820", "10.244.1.1",
    )  # fmt: skip
    assert [(p.field, p.reason) for p in node.problems] == [(problem.field, problem.reason)]
    assert view.problems == node.problems


def test_a_relay_endpoint_turning_bad_keeps_the_last_good_one_and_says_so() -> None:
    previous = cluster_view([a_node()], [], {})
    bad = a_node(**{f"metadata|annotations|{TUNNEL_ENDPOINT_ANNOTATION}": "198.18.0.1:0"})
    (node,) = cluster_view([bad], [], {}, previous=previous).nodes
    assert node.tunnel_endpoint == "198.18.0.1:51820"
    assert node.problems == (
        Problem("Node", "n1", ENDPOINT_FIELD, "InvalidTunnelEndpoint",
                "port must be a number from 1 to 65535 (ASCII digits, no leading zero), got"
                " '198.18.0.1:0'; keeping the endpoint last accepted (198.18.0.1:51820)",
                ("p",)),
    )  # fmt: skip


def test_an_endpoint_is_kept_in_the_form_wg_prints() -> None:
    spelled = a_node(**{f"metadata|annotations|{TUNNEL_ENDPOINT_ANNOTATION}": "[2001:DB8::1]:9"})
    assert node_from_k8s(spelled).tunnel_endpoint == "[2001:db8::1]:9"


def later(name: str, pool: str, cidr: str, ip: str, key: str | None = None) -> dict[str, Any]:
    """Another Node, created after n1."""
    obj = a_node(**{
        "metadata|name": name, "metadata|creationTimestamp": LATE,
        f"metadata|labels|{POOL_LABEL}": pool, "spec|podCIDRs": [cidr],
        "status|addresses": [{"type": "InternalIP", "address": ip}],
    })  # fmt: skip
    obj["metadata"]["annotations"] = {PUBLIC_KEY_ANNOTATION: key or KEY2}
    return obj


# Two Nodes clash; the later one (n2) loses the clashing field: (n2, n2's fields, the problem).
CLASHES: dict[str, tuple[dict[str, Any], dict[str, Any], Problem]] = {
    "pod CIDR overlaps another pool's": (
        later("n2", "q", "10.244.0.0/16", "192.168.2.1"),
        {"pod_cidrs": (), "clashing_cidrs": ("10.244.0.0/16",)},
        Problem("Node", "n2", "spec.podCIDRs[0]", "PodCIDROverlap",
                "10.244.0.0/16 overlaps pod CIDR 10.244.1.0/24 of node n1 (pool p), created"
                " earlier; refused: no pool routes it", ("p", "q")),
    ),
    "pod CIDR contains another node's InternalIP (its LAN)": (
        later("n2", "q", "192.168.0.0/16", "192.168.2.1"),
        {"pod_cidrs": (), "clashing_cidrs": ("192.168.0.0/16",)},
        Problem("Node", "n2", "spec.podCIDRs[0]", "PodCIDRCoversNode",
                "192.168.0.0/16 contains 192.168.1.11, node n1's InternalIP; routing it would"
                " take that node's underlay away; refused: no pool routes it", ("p", "q")),
    ),
    "pod CIDR contains the node's own InternalIP": (
        later("n2", "q", "192.168.2.0/24", "192.168.2.1"),
        {"pod_cidrs": (), "clashing_cidrs": ("192.168.2.0/24",)},
        Problem("Node", "n2", "spec.podCIDRs[0]", "PodCIDRCoversNode",
                "192.168.2.0/24 contains 192.168.2.1, this node's own InternalIP; routing it"
                " would take that node's underlay away; refused: no pool routes it", ("q",)),
    ),
    "InternalIP inside an accepted pod CIDR": (
        later("n2", "q", "10.244.2.0/24", "10.244.1.7"),
        {"internal_ip": None},
        Problem("Node", "n2", "status.addresses[0].address", "InternalIPInPodCIDR",
                "10.244.1.7 lies inside pod CIDR 10.244.1.0/24 of node n1 (pool p), created"
                " earlier, so the pools route it to that node's pods; refused", ("p", "q")),
    ),
    "InternalIP already another node's": (
        later("n2", "q", "10.244.2.0/24", "192.168.1.11"),
        {"internal_ip": None},
        Problem("Node", "n2", "status.addresses[0].address", "DuplicateInternalIP",
                "192.168.1.11 is already the InternalIP of node n1 (pool p), created earlier;"
                " refused", ("p", "q")),
    ),
    "public key already another node's": (
        later("n2", "q", "10.244.2.0/24", "192.168.2.1", key=KEY),
        {"public_key": None},
        Problem("Node", "n2", KEY_FIELD, "DuplicatePublicKey",
                "node n1 (pool p), created earlier, already publishes this key; refused:"
                " WireGuard tells peers apart by key, so this node gets no tunnel", ("p", "q")),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CLASHES)
def test_of_two_clashing_nodes_the_later_loses_the_field_alone(case: str) -> None:
    n2, differs, problem = CLASHES[case]
    for order in ([a_node(), n2], [n2, a_node()]):  # listing order does not matter
        view = cluster_view(order, [], {})
        first, second = view.nodes
        assert first == GOOD  # the earlier node is untouched
        alone = node_from_k8s(n2)
        assert second == NodeView(**{**alone.__dict__, **differs, "problems": (problem,)})
        assert view.problems == (problem,)


def test_overlaps_inside_one_pool_are_accepted() -> None:
    n2 = later("n2", "p", "10.244.0.0/16", "192.168.2.1")
    view = cluster_view([a_node(), n2], [], {})
    assert [n.pod_cidrs for n in view.nodes] == [("10.244.1.0/24",), ("10.244.0.0/16",)]
    assert view.problems == ()


def test_a_node_name_seen_twice_keeps_the_earlier_object() -> None:
    copy_ = later("n1", "q", "10.244.2.0/24", "192.168.2.1")
    view = cluster_view([copy_, a_node()], [], {})
    assert view.nodes == (GOOD,)
    assert view.problems == (
        Problem("Node", "n1", "metadata.name", "DuplicateName",
                "another Node of this name, created earlier, is used; this one is ignored",
                ("q",)),
    )  # fmt: skip


def test_a_missing_creation_timestamp_counts_as_latest_and_ties_go_by_name() -> None:
    n0 = later("n0", "q", "10.244.0.0/16", "192.168.2.1")
    del n0["metadata"]["creationTimestamp"]
    view = cluster_view([n0, a_node()], [], {})
    assert [n.pod_cidrs for n in view.nodes] == [(), ("10.244.1.0/24",)]  # n0 lost
    assert view.nodes[0].clashing_cidrs == ("10.244.0.0/16",)
    same = copy.deepcopy(n0)
    same["metadata"]["creationTimestamp"] = EARLY
    view = cluster_view([a_node(), same], [], {})
    assert [n.pod_cidrs for n in view.nodes] == [("10.244.0.0/16",), ()]  # n0 < n1 by name


GARBAGE: list[Any] = [
    None, 7, "node", [], [1, 2],
    {"metadata": None}, {"metadata": []}, {"metadata": {"name": 5}},
    {"metadata": {"name": "n", "labels": ["x"], "annotations": "y"}},
    {"metadata": {"name": "n", "labels": {POOL_LABEL: ["p"]}}},
    {"metadata": {"name": "n", "generation": "1", "creationTimestamp": 3}, "spec": []},
    {"metadata": {"name": "n"}, "spec": {"podCIDRs": None, "podCIDR": 4}},
    {"metadata": {"name": "n"}, "status": {"addresses": {"type": "InternalIP"}}},
    {"metadata": {"name": "n"}, "status": {"addresses": [None, {"type": "InternalIP"}]}},
    {"metadata": {"name": "n"}, "status": {"conditions": [None, "Ready"]}},
    {"metadata": {"name": "n", "annotations": {PUBLIC_KEY_ANNOTATION: 5}}},
    {"metadata": {"name": "n", "creationTimestamp": "9999-12-31T23:59:59-23:59"}},
]  # fmt: skip


@pytest.mark.parametrize("obj", GARBAGE, ids=repr)
def test_any_json_shape_is_refused_without_raising(obj: Any) -> None:
    view = cluster_view([obj, a_node()], [obj], {"p": obj, "q": {"spec": obj}})
    assert GOOD in view.nodes
    node_from_k8s(obj)
    gateway_from_k8s(obj)
    lease_holder(obj)


@pytest.mark.parametrize(
    "key,ok",
    [
        (KEY, True),
        ("short", False),
        (base64.b64encode(b"x" * 31).decode(), False),
        (KEY[:-2] + "x=", False),  # decodes to KEY, but is not how anyone prints it
        (base64.b64encode(bytes(32)).decode(), False),
        (KEY + "\n", False),
        (None, False),
    ],
)
def test_valid_public_key(key: Any, ok: bool) -> None:
    assert valid_public_key(key) is ok


def test_gateway_invalid_spec_keeps_previous_valid_one() -> None:
    good = gateway_from_k8s(
        {"metadata": {"name": "cloud", "generation": 3}, "spec": {"relay": True}}
    )
    assert good == GatewayView("cloud", GatewaySpec(relay=True), None, 3)
    bad_obj = {"metadata": {"name": "cloud", "generation": 4}, "spec": {"relay": 1}}
    bad = gateway_from_k8s(bad_obj, previous=good)
    assert (bad.spec, bad.generation) == (GatewaySpec(relay=True), 4)
    assert bad.spec_error is not None and bad.spec_error.field == "spec.relay"
    assert gateway_from_k8s(bad_obj).spec is None


def test_gateway_problems_name_the_field_and_what_was_kept() -> None:
    previous = cluster_view([], [{"metadata": {"name": "p"}, "spec": {"tunnelPort": 4500}}], {})
    bad = {"metadata": {"name": "p"}, "spec": {"tunnelPort": 0, "endpoint": "x:051820"}}
    view = cluster_view([], [bad, {"metadata": {"name": "Bad_Name"}}], {}, previous=previous)
    assert view.gateways["p"].spec == GatewaySpec(tunnelPort=4500)
    assert view.problems == (
        Problem("Gateway", "", "metadata.name", "InvalidName",
                "not a valid pool name, got 'Bad_Name'; the Gateway is ignored"),
        Problem("Gateway", "p", "spec.endpoint", "InvalidSpec",
                "port must be a number from 1 to 65535 (ASCII digits, no leading zero), got"
                " 'x:051820'; keeping the last valid spec", ("p",)),
        Problem("Gateway", "p", "spec.tunnelPort", "InvalidSpec",
                "must be greater than or equal to 1, got 0; keeping the last valid spec",
                ("p",)),
    )  # fmt: skip


def test_lease_holder() -> None:
    assert lease_holder({"spec": {"holderIdentity": "a1"}}) == "a1"
    assert lease_holder({"spec": {}}) is None
    assert lease_holder(None) is None
    assert lease_holder({"spec": {"holderIdentity": ["a1"]}}) is None


def test_a_lease_naming_garbage_is_refused_and_the_pool_has_no_holder() -> None:
    view = cluster_view([], [], {"p": {"spec": {"holderIdentity": "A 1"}}})
    assert view.holders == {}
    assert view.problems == (
        Problem("Lease", "raven-gw-p", "spec.holderIdentity", "InvalidHolder",
                "not a node name, got 'A 1'; the pool is taken to have no holder", ("p",)),
    )  # fmt: skip


def test_cluster_view_sorts_and_maps_leases_by_pool() -> None:
    nodes = [{"metadata": {"name": n, "labels": {POOL_LABEL: "p"}}} for n in ("b", "a")]
    view = cluster_view(
        nodes,
        [{"metadata": {"name": "p"}}],
        {"p": {"spec": {"holderIdentity": "a"}}, "q": {"spec": {}}},
    )
    assert [n.name for n in view.nodes] == ["a", "b"]
    assert view.holders == {"p": "a"}
    assert view.gateways == {"p": GatewayView("p", GatewaySpec(), None, 0)}
    assert isinstance(view, ClusterView)


def test_identity_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="underlay_family must be 4 or 6, got 5"):
        Identity(node_name="n", underlay_dev="eth0", wg_dev="wg0", underlay_family=5)
    with pytest.raises(ValueError, match="underlay_mtu must be from 1280 to 65535, got 500"):
        Identity(node_name="n", underlay_dev="eth0", wg_dev="wg0", underlay_mtu=500)
    with pytest.raises(ValueError, match="protected has 'api.example', not a CIDR or address"):
        Identity(node_name="n", underlay_dev="eth0", wg_dev="wg0", protected=("api.example",))
