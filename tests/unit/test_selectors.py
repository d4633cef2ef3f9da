"""Label and field selector parsing and matching."""

from __future__ import annotations

import pytest

from raven.selectors import SelectorError, parse_field_selector, parse_label_selector

LABELS = {"pool": "edge-a", "apps.openyurt.io/nodepool": "a", "gw": ""}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("pool=edge-a", True),
        ("pool==edge-a", True),
        ("pool=edge-b", False),
        ("pool!=edge-b", True),
        ("missing!=x", True),
        ("pool in (edge-b, edge-a)", True),
        ("pool notin (edge-a)", False),
        ("missing notin (x)", True),
        ("gw", True),
        ("!gw", False),
        ("!missing", True),
        ("gw=", True),
        ("apps.openyurt.io/nodepool=a,pool", True),
        ("apps.openyurt.io/nodepool=a,missing", False),
    ],
)
def test_label_selector(selector, matches):
    assert parse_label_selector(selector).matches(LABELS) is matches


@pytest.mark.parametrize(
    "bad",
    [
        "=x",
        "a in (b",
        "a in b",
        "a in ()",
        "a,",
        "a b",
        "a=(b",
        "!",
        "a=b=c",
        "Bad Key=x",
        "a=" + "x" * 64,
        "a ~ b",
    ],
)
def test_bad_label_selectors_are_refused(bad):
    with pytest.raises(SelectorError):
        parse_label_selector(bad)


def test_field_selector():
    obj = {
        "metadata": {"name": "n1", "namespace": "default"},
        "involvedObject": {"kind": "Gateway"},
    }
    allowed = ("metadata.name", "metadata.namespace", "involvedObject.kind")
    assert parse_field_selector("metadata.name=n1", allowed).matches(obj)
    assert parse_field_selector("metadata.name==n1,metadata.namespace!=x", allowed).matches(obj)
    assert not parse_field_selector("metadata.name!=n1", allowed).matches(obj)
    assert parse_field_selector("involvedObject.kind=Gateway", allowed).matches(obj)
    assert parse_field_selector("metadata.namespace=", allowed).matches({"metadata": {}})
    with pytest.raises(SelectorError, match="field label not supported"):
        parse_field_selector("spec.nodeName=x", allowed)
    with pytest.raises(SelectorError, match="expected field=value"):
        parse_field_selector("metadata.name", allowed)
