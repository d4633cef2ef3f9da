"""The shared copy answers every client as the API server's watch cache would: a list and the
changes after it add up to the API server's state for that client's selector, nothing twice,
nothing out of order; a version older than the history gets 410."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raven.cacheproxy.watchcache import (
    TOO_OLD,
    Change,
    Selection,
    WatchCache,
    WatchCacheError,
    shown,
    stored,
)
from raven.selectors import parse_field_selector, parse_label_selector


def obj(name: str, rv: int, ns: str = "default", **labels: str):
    return stored(
        {
            "metadata": {
                "name": name,
                "namespace": ns,
                "resourceVersion": str(rv),
                "labels": labels,
            }
        }
    )


def sel(labels: str = "", fields: str = "", ns: str = "") -> Selection:
    return Selection(
        ns,
        parse_label_selector(labels),
        parse_field_selector(fields, ("metadata.name", "metadata.namespace")),
    )


APP_A = sel("app=a")


@pytest.mark.parametrize(
    "type_, prev_labels, now_labels, seen",
    [
        ("ADDED", None, {"app": "a"}, "ADDED"),
        ("ADDED", None, {"app": "b"}, None),
        ("MODIFIED", {"app": "a"}, {"app": "a"}, "MODIFIED"),
        ("MODIFIED", {"app": "b"}, {"app": "a"}, "ADDED"),  # starts to match
        ("MODIFIED", {"app": "a"}, {"app": "b"}, "DELETED"),  # stops matching
        ("MODIFIED", {"app": "b"}, {"app": "b"}, None),
        ("MODIFIED", None, {"app": "a"}, "ADDED"),  # first seen
        ("DELETED", {"app": "a"}, {"app": "a"}, "DELETED"),
        ("DELETED", {"app": "b"}, {"app": "b"}, None),
    ],
)
def test_a_client_sees_changes_through_its_selector(type_, prev_labels, now_labels, seen):
    prev = obj("x", 1, **prev_labels) if prev_labels is not None else None
    change = Change(type_, 2, obj("x", 2, **now_labels), prev)
    got = shown(change, APP_A)
    assert (got[0] if got else None) == seen
    if got:
        assert got[1].rv == 2  # always the new state, also when it stopped matching


def test_namespace_and_field_selectors_narrow_the_list():
    cache = WatchCache()
    cache.replace([obj("a", 1, "x"), obj("b", 2, "x"), obj("a", 3, "y")], 3)
    assert [o.key for o in cache.listing(sel(ns="x"))[1]] == [("x", "a"), ("x", "b")]
    assert [o.key for o in cache.listing(sel(fields="metadata.name=a"))[1]] == [
        ("x", "a"),
        ("y", "a"),
    ]
    assert [o.key for o in cache.listing(sel(fields="metadata.namespace!=x"))[1]] == [("y", "a")]
    assert cache.listing()[0] == 3


def test_a_list_is_in_the_api_servers_order():
    cache = WatchCache()
    cache.replace([obj("b", 1, "y"), obj("z", 2, "x"), obj("a", 3, "y")], 3)
    assert [o.key for o in cache.listing()[1]] == [("x", "z"), ("y", "a"), ("y", "b")]


def test_an_event_already_in_the_state_is_ignored():
    cache = WatchCache()
    cache.replace([obj("a", 5)], 5)
    assert cache.apply("MODIFIED", obj("a", 5)) is None
    assert cache.apply("ADDED", obj("b", 4)) is None
    assert cache.apply("MODIFIED", obj("a", 6)) is not None
    assert cache.since(5) == [("MODIFIED", cache.objects[("default", "a")])]


def test_a_version_older_than_the_history_is_too_old():
    cache = WatchCache(capacity=2)
    cache.replace([], 10)
    for rv in (11, 12, 13):
        cache.apply("ADDED", obj(f"o{rv}", rv))
    assert cache.floor == 11  # the change at 11 left the history
    assert cache.since(10) is TOO_OLD
    assert [o.name for _, o in cache.since(11)] == ["o12", "o13"]  # type: ignore[union-attr]
    assert cache.since(13) == []
    assert cache.since(99) == []  # ahead (listed elsewhere): nothing yet


def test_a_relist_starts_a_new_epoch_without_history():
    cache = WatchCache()
    cache.replace([obj("a", 1)], 1)
    cache.apply("ADDED", obj("b", 2))
    epoch = cache.epoch
    cache.replace([obj("a", 1), obj("c", 7)], 7)
    assert cache.epoch == epoch + 1
    assert cache.since(2) is TOO_OLD  # what happened between 2 and 7 is not known
    assert cache.since(7) == []


def test_a_bookmark_moves_the_version_and_keeps_the_history_whole():
    cache = WatchCache()
    cache.replace([], 3)
    assert cache.bookmark(9)
    assert not cache.bookmark(9)
    assert cache.rv == 9 and cache.floor == 3
    assert cache.since(5) == []  # from 5: everything since is known (none)
    assert cache.since(2) is TOO_OLD  # before the list
    cache.apply("ADDED", obj("a", 10))
    cache.bookmark(12)
    assert [t for t, _ in cache.since(9)] == ["ADDED"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"metadata": {"resourceVersion": "1"}},
        {"metadata": {"name": "a"}},
        {"metadata": {"name": "a", "resourceVersion": "x"}},
        {"metadata": {"name": "a", "resourceVersion": True}},
    ],
)
def test_an_object_the_cache_cannot_place_names_the_problem(bad):
    with pytest.raises(WatchCacheError):
        stored(bad)


def test_an_unknown_event_type_is_refused():
    cache = WatchCache()
    with pytest.raises(WatchCacheError, match="not a change"):
        cache.apply("BOOKMARK", obj("a", 1))


def test_the_body_is_the_json_the_api_server_sent():
    raw = b'{"metadata":{"name":"a","resourceVersion":"4"},"spec":{"x":1}}'
    assert stored(json.loads(raw), raw).body == raw


# -- the whole contract, on random histories ----------------------------------------------

NAMES = ["a", "b", "c", "d"]
LABELS = st.sampled_from([{}, {"app": "a"}, {"app": "b"}, {"app": "a", "tier": "x"}])
STEP = st.tuples(st.sampled_from(["put", "delete"]), st.sampled_from(NAMES), LABELS)
SELECTIONS = [sel(), sel("app=a"), sel("app!=a"), sel("tier"), sel(fields="metadata.name=b")]


@settings(max_examples=200, deadline=None)
@given(
    start=st.lists(STEP, max_size=6),
    then=st.lists(STEP, max_size=12),
    capacity=st.integers(1, 20),
)
def test_a_list_then_the_changes_after_it_add_up_to_the_state(start, then, capacity):
    """For every selector: the list at some version, then everything since, applied by a
    client, equals the list at the end; each change reaches it once, in version order."""
    server: dict[str, dict[str, str]] = {}
    rv = 0
    cache = WatchCache(capacity)

    def run(steps, feed: bool):
        nonlocal rv
        for op, name, labels in steps:
            if op == "delete" and name not in server:
                continue
            rv += 1
            if op == "delete":
                change = ("DELETED", obj(name, rv, **server.pop(name)))
            else:
                change = ("MODIFIED" if name in server else "ADDED", obj(name, rv, **labels))
                server[name] = labels
            if feed:
                cache.apply(*change)

    run(start, feed=False)
    cache.replace([obj(n, rv, **labels) for n, labels in server.items()], rv)
    marks = {id(s): cache.listing(s) for s in SELECTIONS}
    run(then, feed=True)
    for selection in SELECTIONS:
        at, items = marks[id(selection)]
        client = {o.name: o for o in items}
        news = cache.since(at, selection)
        if news is TOO_OLD:
            assert len(then) > capacity  # only when the history overflowed
            continue
        versions = [o.rv for _, o in news]  # type: ignore[union-attr]
        assert versions == sorted(set(versions))
        for type_, o in news:  # type: ignore[union-attr]
            if type_ == "ADDED":
                assert o.name not in client
                client[o.name] = o
            elif type_ == "MODIFIED":
                assert o.name in client
                client[o.name] = o
            else:
                assert client.pop(o.name, None) is not None
        expected = {o.name: o.rv for o in cache.listing(selection)[1]}
        assert {n: o.rv for n, o in client.items()} == expected
