"""Raven's VXLAN link in real namespaces: a member reaches a gateway that is not on-link.

The site: ``member`` (10.1.0.2/24) and ``gw`` (10.2.0.2/24) on two subnets joined by a
``router``; behind the gateway a ``far`` namespace (10.99.0.2) stands for a remote pool. The
member steers 10.99.0.0/24 to the gateway through Raven's table, rule and VXLAN link, exactly
as the agent would; the gateway's replies return by plain routes through the router.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from raven.model import RouteSpec, RuleSpec, VxlanPeer, VxlanSpec
from raven.netlink.cleanup import cleanup
from raven.netlink.errors import BadSpec
from raven.netlink.monitor import KernelWatch
from raven.netlink.routes import RouteReconciler
from raven.netlink.rules import RuleReconciler
from raven.netlink.vxlan import ALIAS, LINK_ADDRESS, VxlanReconciler
from raven.plan import vxlan_mac
from tests.netns.conftest import reported_so_far, settle_links, sh

MEMBER_IP, GW_IP, FAR_IP = "10.1.0.2", "10.2.0.2", "10.99.0.2"
VX = "rvx0"
MEMBER_SPEC = VxlanSpec(
    VX, 9027, 4790, MEMBER_IP, vxlan_mac(MEMBER_IP), 1450, (VxlanPeer(GW_IP, vxlan_mac(GW_IP)),)
)
GW_SPEC = VxlanSpec(VX, 9027, 4790, GW_IP, vxlan_mac(GW_IP), 1450, ())
ROUTES = (RouteSpec("10.99.0.0/24", 9027, GW_IP, VX, onlink=True, mtu=1440),)


@dataclass
class Site:
    member: str
    router: str
    gw: str
    far: str


def veth(a: str, if_a: str, b: str, if_b: str) -> None:
    sh("ip", "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", b, ns=a)
    sh("ip", "link", "set", if_a, "up", ns=a)
    sh("ip", "link", "set", if_b, "up", ns=b)


@pytest.fixture
def site(make_netns) -> Site:
    s = Site(make_netns("rvm"), make_netns("rvr"), make_netns("rvg"), make_netns("rvf"))
    veth(s.member, "eth0", s.router, "r0")
    veth(s.gw, "eth0", s.router, "r1")
    veth(s.gw, "far0", s.far, "eth0")
    sh("ip", "addr", "add", f"{MEMBER_IP}/24", "dev", "eth0", ns=s.member)
    sh("ip", "route", "add", "default", "via", "10.1.0.1", ns=s.member)
    sh("ip", "addr", "add", "10.1.0.1/24", "dev", "r0", ns=s.router)
    sh("ip", "addr", "add", "10.2.0.1/24", "dev", "r1", ns=s.router)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=s.router)
    sh("ip", "addr", "add", f"{GW_IP}/24", "dev", "eth0", ns=s.gw)
    sh("ip", "route", "add", "default", "via", "10.2.0.1", ns=s.gw)
    sh("ip", "addr", "add", "10.99.0.1/24", "dev", "far0", ns=s.gw)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=s.gw)
    sh("ip", "addr", "add", f"{FAR_IP}/24", "dev", "eth0", ns=s.far)
    sh("ip", "route", "add", "default", "via", "10.99.0.1", ns=s.far)
    for ns in (s.member, s.router, s.gw, s.far):  # the kernel's own IPv6 set-up is done
        settle_links(ns)
    return s


@pytest.fixture
def member_ipr(site: Site) -> Iterator[IPRoute]:
    with IPRoute(netns=site.member) as ipr:
        yield ipr


@pytest.fixture
def gw_ipr(site: Site) -> Iterator[IPRoute]:
    with IPRoute(netns=site.gw) as ipr:
        yield ipr


def snapshot(ns: str) -> dict[str, str]:
    return {
        "main4": sh("ip", "route", "show", "table", "main", ns=ns),
        "main6": sh("ip", "-6", "route", "show", "table", "main", ns=ns),
        "rules": sh("ip", "rule", ns=ns),
        # Raven's own link aside.
        "addrs": "".join(
            line for line in sh("ip", "-o", "addr", ns=ns).splitlines(True) if f" {VX} " not in line
        ),
    }


def ping(ns: str, dst: str, *, size: int = 56, count: int = 1) -> bool:
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", "-M", "do"]
    argv += ["-s", str(size), dst]
    return sh(*argv, ns=ns, check=False).find(f"{count} received") >= 0


def rx_packets(ns: str, dev: str) -> int:
    (link,) = json.loads(sh("ip", "-s", "-j", "link", "show", dev, ns=ns))
    return int(link["stats64"]["rx"]["packets"])


def test_the_member_link_holds_exactly_the_device_neighbour_and_fdb_entry(site, member_ipr):
    before = snapshot(site.member)
    vx = VxlanReconciler(member_ipr, VX)
    changes = vx.reconcile(MEMBER_SPEC)
    assert changes.created and vx.writes == 6  # add, devconf, alias+up, address, neigh, fdb

    details = sh("ip", "-d", "link", "show", VX, ns=site.member)
    assert "vxlan id 9027 local 10.1.0.2" in details and "dstport 4790 nolearning" in details
    assert "addrgenmode none" in details and f"alias {ALIAS}" in details
    assert "mtu 1450" in details and "state UNKNOWN" in details  # up
    assert f"link/ether {vxlan_mac(MEMBER_IP)}" in details
    neigh = sh("ip", "neigh", "show", "dev", VX, ns=site.member).strip()
    assert neigh == f"{GW_IP} lladdr {vxlan_mac(GW_IP)} PERMANENT"
    fdb = sh("bridge", "fdb", "show", "dev", VX, ns=site.member).strip()
    assert fdb == f"{vxlan_mac(GW_IP)} dst {GW_IP} self permanent"
    rp = sh("sysctl", "-n", f"net.ipv4.conf.{VX}.rp_filter", ns=site.member).strip()
    assert rp == "2"
    # One IPv4 address, link scope (never a source), and no IPv6 link-local address.
    addrs = sh("ip", "-o", "addr", "show", "dev", VX, ns=site.member)
    assert addrs.count("\n") == 1 and f"inet {LINK_ADDRESS}/32 scope link" in addrs
    # Nothing else changed: no other address, no main-table route, no rule.
    assert snapshot(site.member) == before

    # Invariant 5: a reconcile with nothing to change makes zero writes.
    writes = vx.writes
    assert vx.reconcile(MEMBER_SPEC).empty and vx.writes == writes


def test_a_packet_crosses_from_the_member_over_vxlan_to_the_gateway_and_back(
    site, member_ipr, gw_ipr
):
    # Strict reverse-path filtering on the gateway: packets from the member arrive on the VXLAN
    # link while the route back leaves by eth0, so only the link's loose setting lets them in.
    sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", ns=site.gw)
    main_before = {ns: snapshot(ns) for ns in (site.member, site.gw)}
    assert not ping(site.member, FAR_IP)  # the router knows nothing of 10.99.0.0/24

    VxlanReconciler(gw_ipr, VX).reconcile(GW_SPEC)
    VxlanReconciler(member_ipr, VX).reconcile(MEMBER_SPEC)
    RouteReconciler(member_ipr).reconcile(ROUTES)
    RuleReconciler(member_ipr).reconcile((RuleSpec(),))

    route = sh("ip", "route", "get", FAR_IP, ns=site.member)
    assert f"dev {VX} table 9027 src {MEMBER_IP}" in route  # the link's address is never a source
    received = rx_packets(site.gw, VX)
    assert ping(site.member, FAR_IP, count=3)
    assert rx_packets(site.gw, VX) - received >= 3  # it really came over VXLAN
    # The largest packet the route allows (1440, as into WireGuard) fits in one underlay packet
    # once wrapped in VXLAN (1490): it crosses whole; one byte more is refused at the member.
    assert ping(site.member, FAR_IP, size=1440 - 28)
    assert not ping(site.member, FAR_IP, size=1441 - 28)
    for ns in (site.member, site.gw):  # main tables and addresses as they were
        after = snapshot(ns)
        assert (after["main4"], after["main6"], after["addrs"]) == (
            main_before[ns]["main4"],
            main_before[ns]["main6"],
            main_before[ns]["addrs"],
        )


def test_a_removed_neighbour_or_fdb_entry_is_noticed_and_put_back_with_one_write(site, member_ipr):
    vx = VxlanReconciler(member_ipr, VX)
    vx.reconcile(MEMBER_SPEC)
    drifts: queue.Queue[str] = queue.Queue()
    with KernelWatch(drifts.put, netns=site.member):
        reported_so_far(drifts, site.member)  # what our own writes caused is behind us
        for undo in (
            ["ip", "neigh", "del", GW_IP, "dev", VX],
            ["bridge", "fdb", "del", vxlan_mac(GW_IP), "dev", VX, "dst", GW_IP, "self"],
        ):
            sh(*undo, ns=site.member)
            reason = drifts.get(timeout=10)  # the agent's loop wakes on this
            assert "NEIGH" in reason
            writes = vx.writes
            changes = vx.reconcile(MEMBER_SPEC)
            assert vx.writes - writes == 1, changes
            reported_so_far(drifts, site.member)
        # Neighbours of other links are not Raven's: the kernel's churn there wakes nobody.
        sh(
            "ip",
            "neigh",
            "add",
            "10.1.0.9",
            "lladdr",
            "02:00:00:00:00:09",
            "dev",
            "eth0",
            ns=site.member,
        )
        sh("ip", "neigh", "del", "10.1.0.9", "dev", "eth0", ns=site.member)
        assert reported_so_far(drifts, site.member) == []
    assert sh("ip", "neigh", "show", "dev", VX, ns=site.member).strip().endswith("PERMANENT")
    assert "permanent" in sh("bridge", "fdb", "show", "dev", VX, ns=site.member)


def test_a_new_gateway_replaces_only_the_entries_that_changed(site, member_ipr):
    vx = VxlanReconciler(member_ipr, VX)
    vx.reconcile(MEMBER_SPEC)
    other = "10.3.0.2"
    moved = VxlanSpec(**{**MEMBER_SPEC.__dict__, "peers": (VxlanPeer(other, vxlan_mac(other)),)})
    writes = vx.writes
    changes = vx.reconcile(moved)
    assert not changes.link_changed and changes.link_updates == []
    assert changes.neighbours == [f"del {GW_IP}", f"set {other}"]
    assert len(changes.fdb) == 2 and vx.writes - writes == 4
    assert GW_IP not in sh("ip", "neigh", "show", "dev", VX, ns=site.member)
    assert f"dst {other} self permanent" in sh("bridge", "fdb", "show", "dev", VX, ns=site.member)


def test_a_changed_vni_or_port_recreates_the_link(site, member_ipr):
    vx = VxlanReconciler(member_ipr, VX)
    vx.reconcile(MEMBER_SPEC)
    changes = vx.reconcile(VxlanSpec(**{**MEMBER_SPEC.__dict__, "vni": 77, "port": 4800}))
    assert changes.deleted and changes.created
    details = sh("ip", "-d", "link", "show", VX, ns=site.member)
    assert "vxlan id 77" in details and "dstport 4800" in details
    assert "PERMANENT" in sh("ip", "neigh", "show", "dev", VX, ns=site.member)


def test_a_link_of_that_name_raven_did_not_make_is_refused_and_left_alone(site, member_ipr):
    sh("ip", "link", "add", VX, "type", "bridge", ns=site.member)
    before = sh("ip", "-d", "link", "show", VX, ns=site.member)
    vx = VxlanReconciler(member_ipr, VX)
    with pytest.raises(BadSpec, match=f"a link named {VX} exists and is not Raven's"):
        vx.reconcile(MEMBER_SPEC)
    assert not vx.reconcile(None).deleted and not vx.remove()
    sh("ip", "link", "del", VX, ns=site.member)
    # Another VXLAN link with an alias of its own is not ours either.
    sh("ip", "link", "add", VX, "type", "vxlan", "id", "9027", "dstport", "4790", ns=site.member)
    sh("ip", "link", "set", VX, "alias", "flannel", ns=site.member)
    with pytest.raises(BadSpec, match="alias 'flannel'"):
        vx.reconcile(MEMBER_SPEC)
    assert not vx.remove()
    assert sh("ip", "-d", "link", "show", VX, ns=site.member).count("alias flannel") == 1
    assert "bridge" in before  # the foreign link was really there


def test_an_unstamped_link_left_by_an_interrupted_agent_is_claimed(site, member_ipr):
    sh("ip", "link", "add", VX, "type", "vxlan", "id", "9027", "dstport", "4790", ns=site.member)
    vx = VxlanReconciler(member_ipr, VX)
    changes = vx.reconcile(MEMBER_SPEC)
    assert changes.deleted and changes.created  # no local address, learning on: made anew
    assert f"alias {ALIAS}" in sh("ip", "-d", "link", "show", VX, ns=site.member)


def test_bad_specs_are_refused_by_name(member_ipr):
    vx = VxlanReconciler(member_ipr, VX)
    bad = {
        "local": ("not-an-ip", "local 'not-an-ip' is not an IP address"),
        "mac": ("0e:52:zz:00:00:01", "mac '0e:52:zz:00:00:01' is not a MAC address"),
        "vni": (0, "vni 0 is outside"),
        "port": (70000, "port 70000 is outside"),
        "dev": ("other", "vxlan spec is for 'other'"),
    }
    for name, (value, message) in bad.items():
        with pytest.raises(BadSpec, match=message):
            vx.reconcile(VxlanSpec(**{**MEMBER_SPEC.__dict__, name: value}))
    assert vx.writes == 0


def test_cleanup_removes_the_vxlan_link_with_routes_and_rule_and_nothing_else(site, member_ipr):
    before = snapshot(site.member)
    links_before = sh("ip", "-o", "link", ns=site.member).count("\n")
    VxlanReconciler(member_ipr, VX).reconcile(MEMBER_SPEC)
    RouteReconciler(member_ipr).reconcile(ROUTES)
    RuleReconciler(member_ipr).reconcile((RuleSpec(),))

    report = cleanup(member_ipr, vxlan_dev=VX)
    assert report.failures == {}
    assert (report.routes_deleted, report.rules_deleted, report.vxlan_removed) == (1, 1, True)
    assert snapshot(site.member) == before
    assert sh("ip", "-o", "link", ns=site.member).count("\n") == links_before
    # Running it again finds nothing left to remove.
    again = cleanup(member_ipr, vxlan_dev=VX)
    assert (again.failures, again.vxlan_removed) == ({}, False)
