"""The netlink monitor makes a route or rule deleted behind Raven's back come back within a
second, and stays quiet about changes that are not Raven's."""

from __future__ import annotations

import queue
import time

import pytest

from raven.model import RouteSpec, RuleSpec
from raven.netlink.monitor import KernelWatch
from raven.netlink.routes import RouteReconciler
from raven.netlink.rules import RuleReconciler
from tests.netns.conftest import sh

ROUTES = (
    RouteSpec("10.50.0.0/16", gateway="10.9.0.2", dev="v0", mtu=1400),
    RouteSpec("10.51.0.0/16", dev="v0"),
)
RULES = (RuleSpec(),)


@pytest.fixture
def node(netns: str) -> str:
    sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1", ns=netns)
    sh("ip", "link", "set", "v0", "up", ns=netns)
    sh("ip", "addr", "add", "10.9.0.1/24", "dev", "v0", ns=netns)
    return netns


def ours(ns: str) -> str:
    return sh("ip", "route", "show", "table", "9027", ns=ns) + sh("ip", "rule", ns=ns)


def settle(drifts: queue.Queue[str]) -> None:
    """Drain notifications caused by our own writes."""
    time.sleep(0.2)
    while not drifts.empty():
        drifts.get_nowait()


def test_deleted_route_and_rule_come_back_within_a_second(node, ipr):
    routes, rules = RouteReconciler(ipr), RuleReconciler(ipr)
    routes.reconcile(ROUTES)
    rules.reconcile(RULES)
    want = ours(node)
    drifts: queue.Queue[str] = queue.Queue()
    with KernelWatch(drifts.put, netns=node):
        settle(drifts)
        for undo in (
            ["ip", "route", "del", "10.50.0.0/16", "table", "9027"],
            ["ip", "rule", "del", "priority", "9027"],
        ):
            start = time.monotonic()
            sh(*undo, ns=node)
            reason = drifts.get(timeout=1)  # what the agent's loop waits on
            changed = routes.reconcile(ROUTES).writes + rules.reconcile(RULES).writes
            elapsed = time.monotonic() - start
            assert changed == 1, reason
            assert ours(node) == want
            assert elapsed < 1.0
            settle(drifts)


def test_routes_flushed_by_link_down_come_back_after_link_up(node, ipr):
    routes = RouteReconciler(ipr)
    routes.reconcile(ROUTES)
    drifts: queue.Queue[str] = queue.Queue()
    with KernelWatch(drifts.put, netns=node):
        settle(drifts)
        # The kernel flushes IPv4 routes of a link set down without a notification per route;
        # the link events are what tell us.
        sh("ip", "link", "set", "v0", "down", ns=node)
        assert drifts.get(timeout=1)
        assert sh("ip", "route", "show", "table", "9027", ns=node) == ""
        sh("ip", "link", "set", "v0", "up", ns=node)
        assert drifts.get(timeout=1)
        assert routes.reconcile(ROUTES).writes == 2
        assert "10.50.0.0/16" in sh("ip", "route", "show", "table", "9027", ns=node)


def test_foreign_changes_are_not_reported(node, ipr):
    drifts: queue.Queue[str] = queue.Queue()
    with KernelWatch(drifts.put, netns=node) as watch:
        sh("ip", "route", "add", "10.60.0.0/16", "via", "10.9.0.2", ns=node)
        sh("ip", "route", "add", "10.61.0.0/16", "via", "10.9.0.2", "table", "100", ns=node)
        sh("ip", "route", "add", "10.62.0.0/16", "dev", "v0", "table", "9027", ns=node)
        sh("ip", "rule", "add", "priority", "9027", "lookup", "100", ns=node)
        sh("ip", "route", "del", "10.60.0.0/16", ns=node)
        with pytest.raises(queue.Empty):
            drifts.get(timeout=0.4)
        assert watch.alive
    assert not watch.alive
