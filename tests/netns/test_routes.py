"""Route reconciler against real netlink in a throwaway namespace."""

from __future__ import annotations

import pytest

from raven.model import RAVEN_RTPROTO, RouteSpec
from raven.netlink.errors import ApplyError, BadSpec
from raven.netlink.routes import RouteReconciler
from tests.netns.conftest import settle_links, sh

T = 9027


@pytest.fixture
def node(netns: str) -> str:
    """A namespace with a veth (v0 up, 10.9.0.1/24) and routes that are not Raven's."""
    sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1", ns=netns)
    sh("ip", "link", "set", "v0", "up", ns=netns)
    sh("ip", "link", "set", "v1", "up", ns=netns)
    sh("ip", "addr", "add", "10.9.0.1/24", "dev", "v0", ns=netns)
    # Someone else's routes: another table, our table with another proto, main with our proto.
    sh("ip", "route", "add", "10.60.0.0/16", "via", "10.9.0.2", "table", "100", ns=netns)
    sh(
        "ip",
        "route",
        "add",
        "10.61.0.0/16",
        "dev",
        "v0",
        "table",
        str(T),
        "proto",
        "static",
        ns=netns,
    )
    sh(
        "ip",
        "route",
        "add",
        "10.62.0.0/16",
        "via",
        "10.9.0.3",
        "proto",
        str(RAVEN_RTPROTO),
        ns=netns,
    )
    settle_links(netns)  # the kernel's own IPv6 set-up is done before the test looks
    return netns


def tables(ns: str) -> dict[str, str]:
    return {
        "main": sh("ip", "route", "show", "table", "main", ns=ns),
        "100": sh("ip", "route", "show", "table", "100", ns=ns),
        "ours-foreign": sh("ip", "route", "show", "table", str(T), "proto", "static", ns=ns),
        "v6main": sh("ip", "-6", "route", "show", "table", "main", ns=ns),
    }


def ours(ns: str) -> list[str]:
    """Our routes as `ip route` prints them (it omits "proto 149" when filtering by it)."""
    out = sh("ip", "route", "show", "table", str(T), "proto", str(RAVEN_RTPROTO), ns=ns)
    return sorted(line.strip() for line in out.splitlines())


DESIRED = (
    RouteSpec("10.50.0.0/16", T, "10.9.0.2", "v0", mtu=1400),
    RouteSpec("10.51.0.0/16", T, "172.16.0.9", "v0", onlink=True),
    RouteSpec("10.52.0.0/16", T, None, "v1", mtu=1380),
    RouteSpec("10.53.0.0/16", T, "10.9.0.4"),
)


def test_exact_routes_appear_and_second_reconcile_writes_nothing(node, ipr):
    rec = RouteReconciler(ipr)
    changes = rec.reconcile(DESIRED)
    assert rec.writes == 4 and len(changes.added) == 4
    assert ours(node) == [
        "10.50.0.0/16 via 10.9.0.2 dev v0 mtu 1400",
        "10.51.0.0/16 via 172.16.0.9 dev v0 onlink",
        "10.52.0.0/16 dev v1 scope link mtu 1380",
        "10.53.0.0/16 via 10.9.0.4 dev v0",
    ]
    assert rec.reconcile(DESIRED).writes == 0
    assert rec.writes == 4
    # A restarted agent (new reconciler) finds its own routes by table + proto: no writes.
    again = RouteReconciler(ipr)
    assert again.reconcile(DESIRED).writes == 0 and again.writes == 0


@pytest.mark.parametrize(
    "changed",
    [
        RouteSpec("10.50.0.0/16", T, "10.9.0.2", "v0", mtu=1300),  # mtu
        RouteSpec("10.50.0.0/16", T, "10.9.0.7", "v0", mtu=1400),  # gateway
        RouteSpec("10.50.0.0/16", T, "10.9.0.2", "v0", onlink=True, mtu=1400),  # onlink
        RouteSpec("10.50.0.0/16", T, None, "v1", mtu=1400),  # dev
    ],
)
def test_one_changed_route_costs_one_write(node, ipr, changed):
    rec = RouteReconciler(ipr)
    rec.reconcile(DESIRED)
    before = ours(node)
    desired = (changed, *DESIRED[1:])
    changes = rec.reconcile(desired)
    assert rec.writes == 5 and changes.replaced == [changed]
    after = ours(node)
    assert after[1:] == before[1:] and after[0] != before[0]
    assert rec.reconcile(desired).writes == 0


def test_removed_and_added_routes_cost_one_write_each(node, ipr):
    rec = RouteReconciler(ipr)
    rec.reconcile(DESIRED)
    extra = RouteSpec("10.54.0.0/24", T, "10.9.0.5", "v0")
    changes = rec.reconcile((*DESIRED[1:], extra))
    assert rec.writes == 6
    assert changes.deleted == [DESIRED[0]] and changes.added == [extra]
    assert not any(line.startswith("10.50.") for line in ours(node))


def test_route_deleted_behind_its_back_comes_back(node, ipr):
    rec = RouteReconciler(ipr)
    rec.reconcile(DESIRED)
    want = ours(node)
    sh("ip", "route", "del", "10.51.0.0/16", "table", str(T), ns=node)
    sh(
        "ip",
        "route",
        "change",
        "10.50.0.0/16",
        "via",
        "10.9.0.2",
        "dev",
        "v0",
        "table",
        str(T),
        "proto",
        str(RAVEN_RTPROTO),
        ns=node,
    )  # someone dropped our mtu
    changes = rec.reconcile(DESIRED)
    assert changes.writes == 2 and len(changes.added) == 1 and len(changes.replaced) == 1
    assert ours(node) == want


def test_foreign_routes_untouched_through_reconcile_and_cleanup(node, ipr):
    before = tables(node)
    rec = RouteReconciler(ipr)
    rec.reconcile(DESIRED)
    rec.reconcile(DESIRED[:2])
    assert tables(node) == before
    rec.remove_all()
    assert tables(node) == before
    assert ours(node) == []
    # Only the foreign route is left in our table.
    assert sh("ip", "route", "show", "table", str(T), ns=node).split() == [
        "10.61.0.0/16",
        "dev",
        "v0",
        "proto",
        "static",
        "scope",
        "link",
    ]


def test_unknown_device_fails_by_name_but_others_are_applied(node, ipr):
    rec = RouteReconciler(ipr)
    bad = RouteSpec("10.70.0.0/16", T, None, "nosuchdev")
    with pytest.raises(ApplyError, match="nosuchdev"):
        rec.reconcile((*DESIRED, bad))
    assert len(ours(node)) == 4


def test_malformed_spec_is_refused_before_any_write(node, ipr):
    rec = RouteReconciler(ipr)
    with pytest.raises(BadSpec, match="10.999.0.0/16"):
        rec.reconcile((*DESIRED, RouteSpec("10.999.0.0/16", T, "10.9.0.2")))
    with pytest.raises(BadSpec, match="table 254"):
        rec.reconcile((RouteSpec("10.80.0.0/16", 254, "10.9.0.2"),))
    assert rec.writes == 0 and ours(node) == []


def test_ipv6_routes(node, ipr):
    sh("ip", "addr", "add", "fd00:9::1/64", "dev", "v0", "nodad", ns=node)
    rec = RouteReconciler(ipr)
    desired = (RouteSpec("fd00:50::/64", T, "fd00:9::2", "v0", mtu=1400),)
    rec.reconcile(desired)
    assert rec.reconcile(desired).writes == 0 and rec.writes == 1
    out = sh("ip", "-6", "route", "show", "table", str(T), ns=node)
    assert "fd00:50::/64 via fd00:9::2 dev v0 proto 149" in out and "mtu 1400" in out
    # A new next hop replaces the old one (IPv6 must not turn it into a multipath route).
    moved = (RouteSpec("fd00:50::/64", T, "fd00:9::3", "v0", mtu=1400),)
    assert rec.reconcile(moved).writes == 1
    out = sh("ip", "-6", "route", "show", "table", str(T), ns=node)
    assert "via fd00:9::3" in out and "fd00:9::2" not in out and len(out.splitlines()) == 1
    assert rec.reconcile(moved).writes == 0
    rec.remove_all()
    assert sh("ip", "-6", "route", "show", "table", str(T), ns=node) == ""
