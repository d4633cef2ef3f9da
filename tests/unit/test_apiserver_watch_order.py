"""A bookmark never runs ahead of the events a watch still has to deliver: kube-apiserver's
bookmark at version V means every change up to V was sent, and a client that skips what it
already has (a cache-proxy's shared copy does) would lose an event otherwise."""

from __future__ import annotations

from typing import Any

from raven.lab.apiserver.api import Api
from raven.lab.apiserver.resources import BUILTINS
from raven.lab.apiserver.store import Store

NODES = next(t for t in BUILTINS if t.plural == "nodes")


def node(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}}


async def test_an_overdue_bookmark_waits_for_the_events_queued_before_it():
    api = Api(Store(None))
    first = int(api.create(NODES, None, node("first"))["metadata"]["resourceVersion"])
    stream = api.watch(NODES, None, resource_version=str(first), bookmarks=True)
    for i in range(5):  # queued while the client is busy: the bookmark is due meanwhile
        api.create(NODES, None, node(f"n{i}"))
    seen: list[tuple[str, int]] = []
    events = stream.events(timeout=3, bookmark_interval=0.0, first_bookmark=0.0)
    async for kind, obj in events:
        seen.append((kind, int(obj["metadata"]["resourceVersion"])))
        if sum(1 for k, _ in seen if k != "BOOKMARK") == 5:
            break
    await events.aclose()
    assert [rv for kind, rv in seen if kind != "BOOKMARK"][-5:] == list(range(first + 1, first + 6))
    marked = 0
    for kind, rv in seen:
        if kind == "BOOKMARK":
            marked = max(marked, rv)
        else:
            assert rv > marked, seen  # an event at or before a bookmark already sent
