"""Rule reconciler against real netlink in a throwaway namespace."""

from __future__ import annotations

import pytest

from raven.model import RuleSpec
from raven.netlink.errors import BadSpec
from raven.netlink.rules import RuleReconciler
from tests.netns.conftest import sh


def rules(ns: str) -> str:
    return sh("ip", "rule", "show", ns=ns) + sh("ip", "-6", "rule", "show", ns=ns)


@pytest.fixture
def node(netns: str) -> str:
    # Someone else's rules, one of them at our priority and one pointing at our table.
    sh("ip", "rule", "add", "priority", "9027", "from", "10.1.0.0/16", "lookup", "100", ns=netns)
    sh("ip", "rule", "add", "priority", "500", "lookup", "9027", ns=netns)
    return netns


def test_rule_appears_once_and_second_reconcile_writes_nothing(node, ipr):
    before = rules(node)
    rec = RuleReconciler(ipr)
    assert rec.reconcile([RuleSpec()]).writes == 1
    out = sh("ip", "rule", "show", "priority", "9027", ns=node)
    assert "9027:\tfrom all lookup 9027 proto 149" in out
    assert "9027:\tfrom 10.1.0.0/16 lookup 100" in out  # the foreign rule is still there
    assert rec.reconcile([RuleSpec()]).writes == 0 and rec.writes == 1
    assert RuleReconciler(ipr).reconcile([RuleSpec()]).writes == 0  # restarted agent
    lines = set(rules(node).splitlines())
    assert lines - set(before.splitlines()) == {"9027:\tfrom all lookup 9027 proto 149"}


def test_rule_deleted_behind_its_back_comes_back(node, ipr):
    rec = RuleReconciler(ipr)
    rec.reconcile([RuleSpec()])
    want = rules(node)
    sh("ip", "rule", "del", "priority", "9027", "lookup", "9027", ns=node)
    assert rec.reconcile([RuleSpec()]).writes == 1
    assert rules(node) == want


def test_changing_priority_and_adding_ipv6(node, ipr):
    rec = RuleReconciler(ipr)
    rec.reconcile([RuleSpec()])
    changes = rec.reconcile([RuleSpec(priority=9100), RuleSpec(priority=9100, family=6)])
    assert changes.deleted == [RuleSpec()] and len(changes.added) == 2 and rec.writes == 4
    # Deleting ours at 9027 left the foreign rule at the same priority alone.
    assert "9027:\tfrom 10.1.0.0/16 lookup 100" in sh("ip", "rule", ns=node)
    assert "9100:\tfrom all lookup 9027 proto 149" in sh("ip", "-6", "rule", ns=node)


def test_remove_all_leaves_ip_rule_output_identical(node, ipr):
    before = rules(node)
    rec = RuleReconciler(ipr)
    rec.reconcile([RuleSpec(), RuleSpec(family=6)])
    rec.remove_all()
    assert rules(node) == before


def test_bad_rule_refused_before_any_write(node, ipr):
    before = rules(node)
    rec = RuleReconciler(ipr)
    with pytest.raises(BadSpec, match="priority 40000"):
        rec.reconcile([RuleSpec(priority=40000)])
    with pytest.raises(BadSpec, match="family 5"):
        rec.reconcile([RuleSpec(family=5)])
    assert rec.writes == 0 and rules(node) == before
