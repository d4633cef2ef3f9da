"""The netlink monitor reports a route or rule deleted behind Raven's back at once, so the next
reconcile puts it back with one write, and it stays quiet about changes that are not Raven's."""

from __future__ import annotations

import queue

import pytest

from raven.model import RouteSpec, RuleSpec
from raven.netlink.monitor import KernelWatch
from raven.netlink.routes import RouteReconciler
from raven.netlink.rules import RuleReconciler
from tests.netns.conftest import reported_so_far, sh

ROUTES = (
    RouteSpec("10.50.0.0/16", gateway="10.9.0.2", dev="v0", mtu=1400),
    RouteSpec("10.51.0.0/16", dev="v0"),
)
RULES = (RuleSpec(),)
#: How long a report may take on a busy machine (it comes at once; this only bounds a hang).
REPORT_DEADLINE = 10


@pytest.fixture
def node(netns: str) -> str:
    sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1", ns=netns)
    sh("ip", "link", "set", "v0", "up", ns=netns)
    sh("ip", "addr", "add", "10.9.0.1/24", "dev", "v0", ns=netns)
    return netns


def ours(ns: str) -> str:
    return sh("ip", "route", "show", "table", "9027", ns=ns) + sh("ip", "rule", ns=ns)


def test_a_deleted_route_or_rule_is_reported_and_put_back_with_one_write(node, ipr):
    routes, rules = RouteReconciler(ipr), RuleReconciler(ipr)
    routes.reconcile(ROUTES)
    rules.reconcile(RULES)
    want = ours(node)
    drifts: queue.Queue[str] = queue.Queue()
    with KernelWatch(drifts.put, netns=node):
        reported_so_far(drifts, node)  # what our own writes caused is behind us
        for undo, named in (
            (["ip", "route", "del", "10.50.0.0/16", "table", "9027"], "10.50.0.0/16"),
            (["ip", "rule", "del", "priority", "9027"], "RULE"),
        ):
            sh(*undo, ns=node)
            reason = drifts.get(timeout=REPORT_DEADLINE)  # what the agent's loop waits on
            assert named in reason, reason
            changed = routes.reconcile(ROUTES).writes + rules.reconcile(RULES).writes
            assert changed == 1, reason
            assert ours(node) == want
            reported_so_far(drifts, node)


def test_routes_flushed_by_link_down_come_back_after_link_up(node, ipr):
    routes = RouteReconciler(ipr)
    routes.reconcile(ROUTES)
    drifts: queue.Queue[str] = queue.Queue()
    with KernelWatch(drifts.put, netns=node):
        reported_so_far(drifts, node)
        # The kernel flushes IPv4 routes of a link set down without a notification per route;
        # the link events are what tell us.
        sh("ip", "link", "set", "v0", "down", ns=node)
        assert any("v0" in reason for reason in reported_so_far(drifts, node))
        assert sh("ip", "route", "show", "table", "9027", ns=node) == ""
        sh("ip", "link", "set", "v0", "up", ns=node)
        assert any("v0" in reason for reason in reported_so_far(drifts, node))
        assert routes.reconcile(ROUTES).writes == 2
        assert "10.50.0.0/16" in sh("ip", "route", "show", "table", "9027", ns=node)


def test_foreign_changes_are_not_reported(node, ipr):
    drifts: queue.Queue[str] = queue.Queue()
    with KernelWatch(drifts.put, netns=node) as watch:
        reported_so_far(drifts, node)  # setting up the node is not what this test is about
        sh("ip", "route", "add", "10.60.0.0/16", "via", "10.9.0.2", ns=node)
        sh("ip", "route", "add", "10.61.0.0/16", "via", "10.9.0.2", "table", "100", ns=node)
        sh("ip", "route", "add", "10.62.0.0/16", "dev", "v0", "table", "9027", ns=node)
        sh("ip", "rule", "add", "priority", "9027", "lookup", "100", ns=node)
        sh("ip", "route", "del", "10.60.0.0/16", ns=node)
        # Had any of these been reported, it would come before the marker's own report.
        assert reported_so_far(drifts, node) == []
        # The watch does report a change of ours, so the silence above means something.
        sh("ip", "route", "add", "10.63.0.0/16", "dev", "v0", "table", "9027", "proto", "149",
           ns=node)  # fmt: skip
        (reason,) = reported_so_far(drifts, node)
        assert "10.63.0.0/16" in reason
        assert watch.alive
    assert not watch.alive
