"""The cache: versions only move forward, an event costs one object, the disk is written off the
caller's path in batches, entries are bounded, and a crash at any point leaves a consistent
cache."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raven.cacheproxy import fold
from raven.cacheproxy.cache import Cache, CacheConfig
from raven.cacheproxy.listdoc import ListDoc, split
from raven.cacheproxy.store import DB_NAME

JSON = "application/json"
K = "a" * 64


def node(name: str, rv: int, label: str = "a") -> dict:
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "resourceVersion": str(rv), "labels": {"l": label}},
    }


def nodelist(rv: int, nodes: list[dict]) -> ListDoc:
    doc = split(json.dumps({"kind": "NodeList", "metadata": {"resourceVersion": str(rv)},
                            "items": nodes}).encode())  # fmt: skip
    assert isinstance(doc, ListDoc)
    return doc


def event(kind: str, obj: dict) -> fold.Event:
    parsed = fold.parse_event(json.dumps({"type": kind, "object": obj}).encode())
    assert parsed is not None
    return parsed


def apply(cache: Cache, key: str, start: str, events: list[fold.Event]) -> None:
    """What the server does with a watch from ``start``."""
    follower = fold.begin(cache.list_state(key), start)
    for e in events:
        op, follower = fold.step(follower, cache.list_state(key), e)
        cache.fold(key, op, e)


async def served(cache: Cache, key: str) -> dict:
    pieces = await cache.answer(key)
    assert pieces is not None
    return json.loads(b"".join([p async for p in pieces]))


async def test_object_not_replaced_by_older_version(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    try:
        assert c.remember_blob(K, 200, JSON, json.dumps(node("n1", 7, "new")).encode(), "7", "h1")
        assert not c.remember_blob(
            K, 200, JSON, json.dumps(node("n1", 5, "old")).encode(), "5", "h2"
        )
        assert (await served(c, K))["metadata"]["labels"]["l"] == "new"
        e = c.get(K)
        assert e is not None and e.resource_version == "7"
        assert e.credentials == {"h1", "h2"}  # the older answer still proved h2 may read it
    finally:
        c.close()


async def test_watch_events_fold_into_the_list_and_older_ones_are_ignored(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    try:
        c.remember_list(K, 200, JSON, nodelist(9, [node("n1", 9, "new"), node("n0", 3)]), "h1")
        apply(c, K, "9", [event("MODIFIED", node("n1", 4, "old")), event("ADDED", node("n2", 10))])
        doc = await served(c, K)
        assert {i["metadata"]["name"]: i["metadata"]["labels"]["l"] for i in doc["items"]} == {
            "n0": "a", "n1": "new", "n2": "a"
        }  # fmt: skip
        assert [i["metadata"]["name"] for i in doc["items"]] == ["n0", "n1", "n2"]  # key order
        assert doc["metadata"]["resourceVersion"] == "10"
        apply(c, K, "10", [event("DELETED", node("n1", 11)), event("BOOKMARK", node("", 15))])
        doc = await served(c, K)
        assert [i["metadata"]["name"] for i in doc["items"]] == ["n0", "n2"]
        assert doc["metadata"]["resourceVersion"] == "15"
    finally:
        c.close()


async def test_lists_replaced_whole_and_the_same_snapshot_writes_nothing(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    try:
        c.remember_list(K, 200, JSON, nodelist(9, [node("n1", 9)]), "h1")
        c.remember_list(K, 200, JSON, nodelist(12, [node("n2", 12)]), "h1")
        assert [i["metadata"]["name"] for i in (await served(c, K))["items"]] == ["n2"]
        written = c.store.submitted_bytes
        assert c.remember_list(K, 200, JSON, nodelist(12, [node("n2", 12)]), "h1")
        assert c.store.submitted_bytes == written
    finally:
        c.close()


async def test_one_event_writes_one_object_whatever_the_lists_size(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    try:
        big = [node(f"n{i:04}", 5) for i in range(2000)]
        c.remember_list(K, 200, JSON, nodelist(5, big), "h1")
        await c.flush()
        one = node("n0007", 6, "changed")
        before = c.store.submitted_bytes
        apply(c, K, "5", [event("MODIFIED", one)])
        assert c.store.submitted_bytes - before == len(json.dumps(one, separators=(",", ":")))
        await c.flush()
        db = sqlite3.connect(tmp_path / DB_NAME)
        assert db.execute("SELECT count(*) FROM items").fetchone() == (2000,)
        got = db.execute("SELECT body FROM items WHERE name = 'n0007'").fetchone()
        assert json.loads(got[0])["metadata"]["labels"]["l"] == "changed"
    finally:
        c.close()


async def test_changes_are_queued_and_committed_in_batches(tmp_path: Path) -> None:
    c = Cache(tmp_path, CacheConfig(flush_interval=30))
    try:
        c.remember_list(K, 200, JSON, nodelist(5, [node("n1", 5)]), "h1")
        await c.flush()
        commits = c.store.commits
        apply(c, K, "5", [event("MODIFIED", node("n1", 5 + i)) for i in range(1, 51)])
        # Nothing is on disk yet: the caller never waited for it, and 50 events are one batch.
        db = sqlite3.connect(tmp_path / DB_NAME)
        assert db.execute("SELECT rv FROM entries").fetchone() == ("5",)
        await c.flush()
        assert db.execute("SELECT rv FROM entries").fetchone() == ("55",)
        assert c.store.commits == commits + 1
        apply(c, K, "55", [event("MODIFIED", node("n1", 56))])
        # An answer read back holds every change queued before it.
        assert (await served(c, K))["metadata"]["resourceVersion"] == "56"
    finally:
        c.close()


async def test_an_answer_is_one_state_while_changes_go_on(tmp_path: Path) -> None:
    c = Cache(tmp_path, CacheConfig(flush_interval=0))
    try:
        big = [{**node(f"n{i:04}", 5), "pad": "x" * 500} for i in range(2000)]  # many pieces
        c.remember_list(K, 200, JSON, nodelist(5, big), "h1")
        pieces = await c.answer(K)
        assert pieces is not None
        got = [await anext(pieces)]
        # Meanwhile every object changes and is committed.
        apply(c, K, "5", [event("MODIFIED", node(f"n{i:04}", 6 + i, "new")) for i in range(2000)])
        await c.flush()
        got += [p async for p in pieces]
        assert len(got) > 2
        doc = json.loads(b"".join(got))
        assert doc["metadata"]["resourceVersion"] == "5"
        assert {i["metadata"]["labels"]["l"] for i in doc["items"]} == {"a"}  # all before
        assert (await served(c, K))["metadata"]["resourceVersion"] == str(5 + 2000)
    finally:
        c.close()


async def test_entries_nothing_asked_for_expire_and_their_number_is_bounded(
    tmp_path: Path,
) -> None:
    now = [0.0]
    c = Cache(tmp_path, CacheConfig(entry_ttl=100, max_entries=3), clock=lambda: now[0])
    try:
        for i, key in enumerate("abc"):
            c.remember_blob(key * 64, 200, JSON, b"{}", None, "h1")
            now[0] = i + 1.0
        c.touch("a" * 64)
        c.remember_blob("d" * 64, 200, JSON, b"{}", None, "h1")  # the least recently used goes
        assert sorted(k[0] for k in c._entries) == ["a", "c", "d"]
        now[0] = 103.5  # "c" (used at 2) and "a" (used at 3) are past the TTL; "d" not
        c.touch("d" * 64)
        assert c.sweep() == 2 and [k[0] for k in c._entries] == ["d"]
        assert await c.answer("a" * 64) is None
    finally:
        c.close()


async def test_a_list_with_an_open_watch_does_not_expire(tmp_path: Path) -> None:
    now = [0.0]
    c = Cache(tmp_path, CacheConfig(entry_ttl=100), clock=lambda: now[0])
    try:
        c.remember_list(K, 200, JSON, nodelist(9, [node("n1", 9)]), "h1")
        c.watched(K, +1)  # a quiet watch: no event for longer than the TTL
        now[0] = 500.0
        assert c.sweep() == 0 and c.get(K) is not None
        c.watched(K, -1)  # the watch ended: its list counts as used then
        now[0] = 599.0
        assert c.sweep() == 0
        now[0] = 601.0
        assert c.sweep() == 1 and c.get(K) is None
    finally:
        c.close()


async def test_a_refused_credential_is_forgotten_everywhere(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    try:
        for key in ("a" * 64, "b" * 64):
            c.remember_blob(key, 200, JSON, b"{}", None, "h1")
            c.remember_blob(key, 200, JSON, b"{}", None, "h2")
        assert c.revoke("h1") == 2
        c.forbid("b" * 64, "h2")
        assert c.get("a" * 64).credentials == {"h2"}  # type: ignore[union-attr]
        assert c.get("b" * 64).credentials == set()  # type: ignore[union-attr]
    finally:
        c.close()
    again = Cache(tmp_path)  # and it stays forgotten
    try:
        assert again.get("a" * 64).credentials == {"h2"}  # type: ignore[union-attr]
    finally:
        again.close()


async def test_a_backlog_beyond_the_bound_stores_nothing_new(tmp_path: Path) -> None:
    c = Cache(tmp_path, CacheConfig(max_backlog=10))
    try:
        assert not c.remember_blob(K, 200, JSON, b"x" * 100, None, "h1")
        assert c.get(K) is None and c.skipped == 1
    finally:
        c.close()


async def test_reopened_cache_serves_what_it_held(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    c.remember_list(K, 200, JSON, nodelist(9, [node("n1", 9)]), "h1")
    apply(c, K, "9", [event("ADDED", node("n2", 10))])
    c.close()
    again = Cache(tmp_path)
    try:
        doc = await served(again, K)
        assert [i["metadata"]["name"] for i in doc["items"]] == ["n1", "n2"]
        assert doc["metadata"]["resourceVersion"] == "10"
        assert again.get(K).credentials == {"h1"}  # type: ignore[union-attr]
    finally:
        again.close()


def test_a_damaged_database_or_old_files_start_an_empty_cache(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    (tmp_path / ("b" * 64)).write_bytes(b'{"status": 200}\nold format')
    (tmp_path / ("c" * 64 + ".123.tmp")).write_bytes(b"torn")
    c = Cache(tmp_path)
    try:
        assert len(c) == 0
        assert {DB_NAME, "b" * 64, "c" * 64 + ".123.tmp"} <= set(c.recovered)
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(DB_NAME)) == []
    finally:
        c.close()


# A writer that folds a known sequence of events, as fast as it can, until it is killed: event
# i (from 1) sets node n(i % N) to label i at resourceVersion BASE + i.
WRITER = """
import asyncio, json, sys
from pathlib import Path
from raven.cacheproxy import fold
from raven.cacheproxy.cache import Cache, CacheConfig
from raven.cacheproxy.listdoc import split
N, BASE, K = 300, 1000, "a" * 64
def node(i, label, rv):
    meta = {"name": f"n{i:03}", "resourceVersion": str(rv), "labels": {"v": str(label)}}
    return {"metadata": {**meta, "annotations": {"pad": "x" * 2000}}}
async def main():
    c = Cache(Path(sys.argv[1]), CacheConfig(flush_interval=float(sys.argv[2])))
    if c.get(K) is None:
        body = {"kind": "NodeList", "metadata": {"resourceVersion": str(BASE)},
                "items": [node(i, 0, BASE) for i in range(N)]}
        c.remember_list(K, 200, "application/json", split(json.dumps(body).encode()), "h")
    start = int(c.get(K).resource_version) - BASE
    print("ready", start, flush=True)
    follower = fold.begin(c.list_state(K), str(BASE + start))
    i = start
    while True:
        for _ in range(20):
            i += 1
            line = json.dumps({"type": "MODIFIED", "object": node(i % N, i, BASE + i)}).encode()
            e = fold.parse_event(line)
            op, follower = fold.step(follower, c.list_state(K), e)
            c.fold(K, op, e)
        await asyncio.sleep(0.001)
asyncio.run(main())
"""


def expected(rv: int, n: int = 300, base: int = 1000) -> dict[str, str]:
    """Each node's label in the list at resourceVersion ``rv``."""
    labels = {f"n{i:03}": "0" for i in range(n)}
    for i in range(1, rv - base + 1):
        labels[f"n{i % n:03}"] = str(i)
    return labels


@pytest.mark.parametrize("flush_interval", [0.0, 0.05])
def test_killed_at_any_point_restarts_at_a_consistent_state(
    tmp_path: Path, flush_interval: float
) -> None:
    """SIGKILL at random moments while events are folded (and committed, fsynced) all the time:
    every restart finds the list exactly as it was at some resourceVersion, never half an
    event or half a batch, and goes on from there."""
    rng = random.Random(7)
    last = 0
    for _ in range(6):
        p = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(flush_interval)],
            stdout=subprocess.PIPE,
        )
        try:
            assert p.stdout is not None
            ready = p.stdout.readline().split()
            assert ready[0] == b"ready"
            assert int(ready[1]) >= last  # never back behind a state it recovered before
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
        db = sqlite3.connect(tmp_path / DB_NAME)
        try:
            (rv,) = db.execute("SELECT rv FROM entries").fetchone()
            rows = db.execute("SELECT name, body FROM items ORDER BY name").fetchall()
        finally:
            db.close()
        got = {name: json.loads(body)["metadata"]["labels"]["v"] for name, body in rows}
        assert got == expected(int(rv)), f"not the list at {rv}"
        last = int(rv) - 1000
    assert last > 0  # the writer did get somewhere
