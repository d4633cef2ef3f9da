"""Planner: a pool whose nodes are not on one L2 segment reaches its gateway over VXLAN.

Pools: ``cloud`` (relay; c1 c2 on the Internet segment), ``edge-a`` (a routed LAN: a1 and a3
on 192.168.10.0/24, a2 on 192.168.11.0/24 behind a LAN router), ``edge-b`` (b1 b2 on one LAN).
Lease holders c1, a1, b1. Expected routes and VXLAN links are written out whole.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from raven.model import (
    DesiredState,
    Problem,
    Role,
    RouteSpec,
    RuleSpec,
    VxlanPeer,
    VxlanSpec,
    default_vxlan_dev,
)
from raven.mtu import route_mtu, tunnel_mtu, vxlan_mtu
from raven.names import POOL_LABEL, PUBLIC_KEY_ANNOTATION
from raven.plan import plan, vxlan_mac
from raven.view import ClusterView, Identity, cluster_view

C1, C2 = "10.244.1.0/24", "10.244.2.0/24"
A1, A2, A3 = "10.244.11.0/24", "10.244.12.0/24", "10.244.13.0/24"
B1, B2 = "10.244.21.0/24", "10.244.22.0/24"
IP = {"c1": "198.18.0.11", "c2": "198.18.0.12"}
IP |= {"a1": "192.168.10.10", "a2": "192.168.11.10", "a3": "192.168.10.11"}
IP |= {"b1": "192.168.20.10", "b2": "192.168.20.11"}
SUBNET = {"c1": "198.18.0.0/24", "c2": "198.18.0.0/24"}
SUBNET |= {"a1": "192.168.10.0/24", "a2": "192.168.11.0/24", "a3": "192.168.10.0/24"}
SUBNET |= {"b1": "192.168.20.0/24", "b2": "192.168.20.0/24"}
CIDR = {"c1": C1, "c2": C2, "a1": A1, "a2": A2, "a3": A3, "b1": B1, "b2": B2}
POOL = {"c1": "cloud", "c2": "cloud", "a1": "edge-a", "a2": "edge-a", "a3": "edge-a"}
POOL |= {"b1": "edge-b", "b2": "edge-b"}
RULE = (RuleSpec(9027, 9027, 4),)
WG, VX = "rvnwg0", "rvnvx0"


def key(name: str) -> str:
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def node(name: str, ip: str | None = None) -> dict[str, Any]:
    addresses = [{"type": "InternalIP", "address": ip or IP[name]}] if ip != "" else []
    return {
        "metadata": {
            "name": name,
            "labels": {POOL_LABEL: POOL[name]},
            "annotations": {PUBLIC_KEY_ANNOTATION: key(name)},
        },
        "spec": {"podCIDRs": [CIDR[name]]},
        "status": {"addresses": addresses, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def view(holders: dict[str, str] | None = None, **ips: str) -> ClusterView:
    holders = holders or {"cloud": "c1", "edge-a": "a1", "edge-b": "b1"}
    gateways = [
        {"metadata": {"name": "cloud", "generation": 1}, "spec": {"relay": True}},
        {"metadata": {"name": "edge-a", "generation": 1}, "spec": {}},
        {"metadata": {"name": "edge-b", "generation": 1}, "spec": {}},
    ]
    leases = {pool: {"spec": {"holderIdentity": h}} for pool, h in holders.items()}
    return cluster_view([node(n, ips.get(n)) for n in CIDR], gateways, leases)


def me(name: str, **kw: Any) -> Identity:
    kw.setdefault("underlay_subnets", (SUBNET[name],))
    return Identity(node_name=name, underlay_dev="eth0", wg_dev=WG, **kw)


def onlink(gw: str, *cidrs: str, mtu: int = 1440) -> tuple[RouteSpec, ...]:
    return tuple(RouteSpec(c, 9027, IP[gw], "eth0", True, mtu) for c in cidrs)


def over_vxlan(gw: str, *cidrs: str, dev: str = VX, mtu: int = 1440) -> tuple[RouteSpec, ...]:
    """1500 - 60: the VXLAN wrap (50) comes off at the gateway before WireGuard's (60) goes on,
    so the larger overhead decides."""
    return tuple(RouteSpec(c, 9027, IP[gw], dev, True, mtu) for c in cidrs)


def vxlan(local: str, *peers: str, dev: str = VX, mtu: int = 1450, **kw: Any) -> VxlanSpec:
    return VxlanSpec(
        dev=dev,
        local=IP[local],
        mac=vxlan_mac(IP[local]),
        mtu=mtu,
        peers=tuple(VxlanPeer(IP[p], vxlan_mac(IP[p])) for p in peers),
        **kw,
    )


ROUTES_FROM_A = (C1, C2, B1, B2)


@pytest.mark.parametrize(
    ("node_name", "holders", "routes", "link"),
    [
        pytest.param("a2", None, over_vxlan("a1", *ROUTES_FROM_A), vxlan("a2", "a1"), id="a2"),
        pytest.param("a3", None, onlink("a1", *ROUTES_FROM_A), None, id="a3-on-link"),
        pytest.param("b2", None, onlink("b1", C1, C2, A1, A2, A3), None, id="flat-pool-member"),
        pytest.param(
            "a1",
            {"edge-a": "a2"},
            over_vxlan("a2", *ROUTES_FROM_A),
            vxlan("a1", "a2"),
            id="after-failover-to-a2",
        ),
        pytest.param(
            "a3",
            {"edge-a": "a2"},
            over_vxlan("a2", *ROUTES_FROM_A),
            vxlan("a3", "a2"),
            id="after-failover-to-a2-a3",
        ),
        pytest.param("a2", {"edge-a": ""}, (), None, id="no-gateway"),
    ],
)
def test_member_routes_and_vxlan_link(
    node_name: str,
    holders: dict[str, str] | None,
    routes: tuple[RouteSpec, ...],
    link: VxlanSpec | None,
) -> None:
    full = {"cloud": "c1", "edge-a": "a1", "edge-b": "b1"} | (holders or {})
    state = plan(view({p: h for p, h in full.items() if h}), me(node_name))
    assert state.role == Role.MEMBER
    assert state.routes == routes
    assert state.rules == RULE
    assert state.vxlan == link


def test_the_member_vxlan_link_is_exactly_this() -> None:
    assert plan(view(), me("a2")).vxlan == VxlanSpec(
        dev="rvnvx0",
        vni=9027,
        port=4790,
        local="192.168.11.10",
        mac="0e:52:c0:a8:0b:0a",
        mtu=1450,
        peers=(VxlanPeer("192.168.10.10", "0e:52:c0:a8:0a:0a"),),
    )


def test_a_gateway_with_a_member_off_link_gets_a_vxlan_link_without_peers() -> None:
    state = plan(view(), me("a1"))
    assert state.role == Role.GATEWAY
    assert state.routes == tuple(RouteSpec(c, 9027, None, WG, False, 1440) for c in ROUTES_FROM_A)
    assert state.vxlan == vxlan("a1")
    # After a failover the new gateway has one too; a member never keeps a stale peer.
    assert plan(view({"cloud": "c1", "edge-a": "a2", "edge-b": "b1"}), me("a2")).vxlan == vxlan(
        "a2"
    )


def test_gateways_whose_pool_is_all_on_link_get_no_vxlan_link() -> None:
    assert plan(view(), me("b1")).vxlan is None
    relay = plan(view(), me("c1"))
    assert relay.role == Role.RELAY and relay.vxlan is None


def test_unknown_underlay_subnets_count_as_on_link() -> None:
    """What every plan looked like before Raven knew about subnets: routes out of eth0."""
    state = plan(view(), me("a2", underlay_subnets=()))
    assert (state.routes, state.vxlan) == (onlink("a1", *ROUTES_FROM_A), None)
    assert plan(view(), me("a1", underlay_subnets=())).vxlan is None


def test_any_connected_subnet_makes_the_gateway_on_link_and_order_does_not_matter() -> None:
    subnets = ("10.1.0.0/16", "192.168.10.0/25")
    state = plan(view(), me("a2", underlay_subnets=subnets))
    assert (state.routes, state.vxlan) == (onlink("a1", *ROUTES_FROM_A), None)
    assert plan(view(), me("a2", underlay_subnets=subnets[::-1])) == state


def test_gateway_onlink_forces_the_decision_either_way() -> None:
    forced_on = plan(view(), me("a2", gateway_onlink=True))
    assert (forced_on.routes, forced_on.vxlan) == (onlink("a1", *ROUTES_FROM_A), None)
    forced_off = plan(view(), me("a3", gateway_onlink=False))
    assert (forced_off.routes, forced_off.vxlan) == (
        over_vxlan("a1", *ROUTES_FROM_A),
        vxlan("a3", "a1"),
    )


def test_device_name_vni_port_and_mtu_follow_the_identity() -> None:
    ident = me("a2", vxlan_dev="site-vx", vxlan_vni=42, vxlan_port=4800, underlay_mtu=9000)
    state = plan(view(), ident)
    assert state.routes == over_vxlan("a1", *ROUTES_FROM_A, dev="site-vx", mtu=9000 - 60)
    assert state.vxlan == vxlan("a2", "a1", dev="site-vx", mtu=9000 - 50, vni=42, port=4800)


def test_ipv6_underlay_overheads_and_the_mac_from_a_hash() -> None:
    ips = {"a1": "fd00:10::10", "a2": "fd00:11::10"}
    ident = me("a2", underlay_subnets=("fd00:11::/64",), underlay_family=6)
    state = plan(view(**ips), ident)
    assert {r.mtu for r in state.routes} == {1500 - 80}  # WireGuard's 80 over VXLAN's 70
    assert {r.gateway for r in state.routes} == {"fd00:10::10"}
    assert state.vxlan is not None
    assert (state.vxlan.local, state.vxlan.mtu) == ("fd00:11::10", 1430)
    (peer,) = state.vxlan.peers
    digest = hashlib.sha256(bytes.fromhex("fd000010" + "00" * 10 + "0010")).digest()
    assert peer == VxlanPeer("fd00:10::10", "0e:52:" + ":".join(f"{b:02x}" for b in digest[:4]))


def test_a_gateway_of_another_address_family_is_refused_by_name() -> None:
    state = plan(view(a1="fd00:10::10"), me("a2"))
    assert (state.routes, state.vxlan) == ((), None)
    assert state.problems == (
        Problem(
            "Node",
            "a2",
            "status.addresses",
            "AddressFamilyMismatch",
            "InternalIP 192.168.11.10 and gateway a1's fd00:10::10 are of different families,"
            " so no VXLAN link can join them; no routes",
            ("edge-a",),
        ),
    )


def test_a_member_without_internal_ip_cannot_use_vxlan_and_says_so() -> None:
    state = plan(view(a2=""), me("a2"))
    assert (state.routes, state.vxlan) == ((), None)
    assert state.problems == (
        Problem(
            "Node",
            "a2",
            "status.addresses",
            "NoInternalIP",
            "no usable InternalIP to reach gateway a1 (192.168.10.10), which is not on-link,"
            " over VXLAN; no routes",
            ("edge-a",),
        ),
    )


def test_nodes_outside_every_pool_get_nothing() -> None:
    assert plan(view(), Identity("zz", "eth0", WG)) == DesiredState()


@pytest.mark.parametrize(
    ("address", "mac"),
    [
        ("192.168.10.10", "0e:52:c0:a8:0a:0a"),
        ("10.0.0.1", "0e:52:0a:00:00:01"),
        ("255.255.255.254", "0e:52:ff:ff:ff:fe"),
    ],
)
def test_vxlan_mac_is_locally_administered_unicast_from_the_ipv4_address(
    address: str, mac: str
) -> None:
    assert vxlan_mac(address) == mac
    first = int(mac[:2], 16)
    assert first & 0b10 and not first & 0b01  # locally administered, unicast


@pytest.mark.parametrize(
    ("wg", "vx"),
    [
        ("rlwg3", "rlvx3"),
        ("wgxwg12", "wgxvx12"),
        ("raven0", "raven0-vx"),
        ("a" * 15, "a" * 12 + "-vx"),
    ],
)
def test_default_vxlan_device_names(wg: str, vx: str) -> None:
    assert default_vxlan_dev(wg) == vx
    assert len(vx) <= 15
    assert Identity("n", "eth0", wg).vxlan_name == vx


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"underlay_subnets": ("192.168.1.0/33",)}, "underlay_subnets has '192.168.1.0/33'"),
        ({"vxlan_vni": 0}, "vxlan_vni must be from 1 to 16777215, got 0"),
        ({"vxlan_vni": 2**24}, "vxlan_vni must be from 1 to 16777215"),
        ({"vxlan_port": 70000}, "vxlan_port must be from 1 to 65535, got 70000"),
    ],
)
def test_bad_identity_values_are_refused_by_name(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Identity("n", "eth0", WG, **kw)


@pytest.mark.parametrize(
    ("family", "underlay", "route", "link"),
    [(4, 1500, 1440, 1450), (6, 1500, 1420, 1430), (4, 9000, 8940, 8950), (6, 1280, 1200, 1210)],
)
def test_the_vxlan_hop_never_lowers_the_route_mtu_below_the_wireguard_one(
    family: int, underlay: int, route: int, link: int
) -> None:
    """The member's VXLAN wrap comes off at the gateway before WireGuard's goes on: the inner
    packet must fit each hop, never both wraps at once."""
    assert route_mtu(underlay, underlay_family=family, over_vxlan=True) == route
    assert tunnel_mtu(underlay, underlay_family=family) == route
    assert vxlan_mtu(underlay, underlay_family=family) == link
    with pytest.raises(ValueError, match="underlay_family must be 4 or 6, got 5"):
        vxlan_mtu(1500, underlay_family=5)
