"""The storage and watch core without HTTP: Store, Api and WatchStream."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from raven.lab.apiserver import errors
from raven.lab.apiserver.api import Api
from raven.lab.apiserver.resources import BUILTINS
from raven.lab.apiserver.store import Store, TooOld

NODES = next(t for t in BUILTINS if t.plural == "nodes")
LEASES = next(t for t in BUILTINS if t.plural == "leases")


def node(name: str, **labels: str) -> dict:
    return {"metadata": {"name": name, "labels": labels}}


def test_versions_are_monotonic_strings_across_kinds(tmp_path):
    api = Api(Store(tmp_path / "db"))
    a = api.create(NODES, None, node("a"))
    b = api.create(LEASES, "default", {"metadata": {"name": "l"}, "spec": {}})
    assert isinstance(a["metadata"]["resourceVersion"], str)
    assert int(b["metadata"]["resourceVersion"]) == int(a["metadata"]["resourceVersion"]) + 1
    listing = api.list(NODES, None)
    assert listing["metadata"]["resourceVersion"] == b["metadata"]["resourceVersion"]


def test_state_and_version_survive_reopen(tmp_path):
    store = Store(tmp_path / "db")
    api = Api(store)
    created = api.create(NODES, None, node("a", pool="x"))
    api.delete(NODES, None, "a")
    api.create(NODES, None, node("b"))
    last = store.rv
    store.close()
    reopened = Api(Store(tmp_path / "db"))
    assert [n["metadata"]["name"] for n in reopened.list(NODES, None)["items"]] == ["b"]
    assert reopened.store.rv == last
    again = reopened.create(NODES, None, node("a"))
    assert int(again["metadata"]["resourceVersion"]) == last + 1
    assert again["metadata"]["uid"] != created["metadata"]["uid"]
    # Namespaces are created once, not again on every start.
    assert (
        len(reopened.list(next(t for t in BUILTINS if t.plural == "namespaces"), None)["items"])
        == 4
    )


def test_each_write_is_one_committed_transaction(tmp_path):
    store = Store(tmp_path / "db")
    Api(store).create(NODES, None, node("a"))
    # Another connection (as after a crash) sees the object and the counter together.
    other = sqlite3.connect(tmp_path / "db")
    rv = int(other.execute("SELECT value FROM meta WHERE key='rv'").fetchone()[0])
    names = [r[0] for r in other.execute("SELECT name FROM objects WHERE resource='core/nodes'")]
    assert names == ["a"] and rv == store.rv


def test_history_floor(tmp_path):
    store = Store(None, history=3)
    api = Api(store)  # the objects every cluster starts with: versions 1..n, 3 kept
    n = store.rv
    assert n > 3 and store.floor == n - 3
    with pytest.raises(TooOld):
        store.events_since("core/namespaces", 0)
    for i in range(3):
        api.create(NODES, None, node(f"n{i}"))
    assert store.floor == n
    assert [e.name for e in store.events_since("core/nodes", n)] == ["n0", "n1", "n2"]
    with pytest.raises(errors.ApiError) as e:
        api.watch(NODES, None, resource_version=str(n - 1))
    assert e.value.code == 410 and e.value.reason == "Expired"


async def _take(stream, n: int, timeout: float = 2.0) -> list[tuple[str, str]]:
    out = []
    async for kind, obj in stream.events(timeout=timeout):
        out.append((kind, obj["metadata"]["name"]))
        if len(out) == n:
            break
    return out


async def test_watch_from_list_version_has_no_gap_and_no_duplicate():
    api = Api(Store(None))
    api.create(NODES, None, node("old"))
    rv = api.list(NODES, None)["metadata"]["resourceVersion"]
    api.create(NODES, None, node("a"))
    stream = api.watch(NODES, None, resource_version=rv)
    api.create(NODES, None, node("b"))
    api.delete(NODES, None, "a")
    assert await _take(stream, 3) == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]


async def test_watch_filters_by_namespace_and_label_transitions():
    api = Api(Store(None))
    stream = api.watch(
        LEASES, "default", label_selector="role=gw", resource_version=str(api.store.rv)
    )
    api.create(LEASES, "kube-system", {"metadata": {"name": "x", "labels": {"role": "gw"}}})
    api.create(LEASES, "default", {"metadata": {"name": "y"}})
    api.patch(
        LEASES,
        "default",
        "y",
        "application/merge-patch+json",
        {"metadata": {"labels": {"role": "gw"}}},
    )
    api.patch(
        LEASES, "default", "y", "application/merge-patch+json", {"spec": {"holderIdentity": "n"}}
    )
    api.patch(
        LEASES,
        "default",
        "y",
        "application/merge-patch+json",
        {"metadata": {"labels": {"role": None}}},
    )
    assert await _take(stream, 3) == [("ADDED", "y"), ("MODIFIED", "y"), ("DELETED", "y")]


async def test_watch_ends_at_timeout_and_on_close():
    api = Api(Store(None))
    stream = api.watch(NODES, None)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await _take(stream, 1, timeout=0.3) == []
    assert 0.25 < loop.time() - start < 1.5
    other = api.watch(NODES, None)
    loop.call_later(0.1, other.close)
    assert await _take(other, 1, timeout=10) == []


async def test_bookmark_reports_latest_version():
    api = Api(Store(None))
    stream = api.watch(NODES, None, resource_version=str(api.store.rv), bookmarks=True)
    api.create(LEASES, "default", {"metadata": {"name": "l"}})  # another kind moves the version
    async for kind, obj in stream.events(timeout=3, first_bookmark=0.1):
        assert kind == "BOOKMARK"
        assert obj == {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(api.store.rv)},
        }
        break
    else:
        pytest.fail("no bookmark")


def test_dry_run_changes_nothing():
    api = Api(Store(None))
    rv = api.store.rv
    api.create(NODES, None, node("a"), dry_run=True)
    assert api.list(NODES, None)["items"] == [] and api.store.rv == rv
    api.create(NODES, None, node("a"))
    api.patch(NODES, None, "a", "application/merge-patch+json", {"spec": {"x": 1}}, dry_run=True)
    api.delete(NODES, None, "a", dry_run=True)
    assert api.get(NODES, None, "a")["spec"] == {}


def test_crd_lifecycle_registers_and_removes_kind():
    api = Api(Store(None))
    crd_type = next(t for t in BUILTINS if t.plural == "customresourcedefinitions")
    crd = {
        "metadata": {"name": "widgets.example.io"},
        "spec": {
            "group": "example.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True}],
        },
    }
    created = api.create(crd_type, None, crd)
    assert created["status"]["acceptedNames"]["listKind"] == "WidgetList"
    assert {c["type"] for c in created["status"]["conditions"]} == {"NamesAccepted", "Established"}
    widgets = api.registry.lookup("example.io", "v1", "widgets")
    assert widgets.namespaced and widgets.singular == "widget"
    api.create(widgets, "default", {"metadata": {"name": "w"}})
    api.delete(crd_type, None, "widgets.example.io")
    assert api.registry.find("example.io", "v1", "widgets") is None
    assert api.store.list("example.io/widgets") == []
    bad = dict(crd, metadata={"name": "wrong.example.io"})
    with pytest.raises(errors.ApiError) as e:
        api.create(crd_type, None, bad)
    assert e.value.code == 422 and "metadata.name" in e.value.message


def test_deleting_a_namespace_deletes_its_objects():
    api = Api(Store(None))
    ns_type = next(t for t in BUILTINS if t.plural == "namespaces")
    api.create(ns_type, None, {"metadata": {"name": "lab"}})
    api.create(LEASES, "lab", {"metadata": {"name": "l"}})
    api.create(LEASES, "default", {"metadata": {"name": "l"}})
    api.delete(ns_type, None, "lab")
    assert [o["metadata"]["namespace"] for o in api.list(LEASES, None)["items"]] == ["default"]


def test_one_server_per_state_directory(tmp_path):
    from raven.lab.apiserver.store import StateInUse

    first = Store(tmp_path / "db")
    with pytest.raises(StateInUse, match="in use by another API server"):
        Store(tmp_path / "db")
    first.close()
    Store(tmp_path / "db").close()
