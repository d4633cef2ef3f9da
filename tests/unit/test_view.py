"""Builders from Kubernetes JSON to planner views: what is read, what is refused and noted."""

from __future__ import annotations

import base64

import pytest

from raven.gatewayspec import GatewaySpec
from raven.view import (
    POOL_LABEL,
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


def test_node_is_read_as_the_api_returns_it() -> None:
    obj = {
        "metadata": {
            "name": "a1",
            "labels": {POOL_LABEL: "edge-a", "zone": "z1"},
            "annotations": {PUBLIC_KEY_ANNOTATION: KEY, TUNNEL_ENDPOINT_ANNOTATION: "1.2.3.4:9"},
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
        ready=True,
    )


def test_node_pool_label_key_is_configurable_and_missing_label_means_no_pool() -> None:
    obj = {"metadata": {"name": "n", "labels": {"example.com/pool": "p"}}}
    assert node_from_k8s(obj, pool_label="example.com/pool").pool == "p"
    assert node_from_k8s(obj).pool is None


def test_node_with_sparse_data_and_old_single_pod_cidr() -> None:
    view = node_from_k8s({"metadata": {"name": "n"}, "spec": {"podCIDR": "10.1.2.3/24"}})
    assert view == NodeView(name="n", pod_cidrs=("10.1.2.0/24",), ready=False)


def test_bad_cidr_and_bad_key_are_dropped_and_named() -> None:
    obj = {
        "metadata": {"name": "n", "annotations": {PUBLIC_KEY_ANNOTATION: "short"}},
        "spec": {"podCIDRs": ["10.0.0.0/33", "10.0.1.0/24"]},
    }
    view = node_from_k8s(obj)
    assert (view.public_key, view.pod_cidrs) == (None, ("10.0.1.0/24",))
    assert view.problems == (
        "node n: spec.podCIDRs has '10.0.0.0/33', not a CIDR; ignored",
        "node n: annotation raven.io/public-key is not a WireGuard public key (base64 of 32"
        " bytes), got 'short'; ignored",
    )


@pytest.mark.parametrize(
    "key,ok", [(KEY, True), ("short", False), (base64.b64encode(b"x" * 31).decode(), False)]
)
def test_valid_public_key(key: str, ok: bool) -> None:
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


def test_lease_holder() -> None:
    assert lease_holder({"spec": {"holderIdentity": "a1"}}) == "a1"
    assert lease_holder({"spec": {}}) is None
    assert lease_holder(None) is None


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
