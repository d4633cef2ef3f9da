"""Events expire an hour (kube-apiserver's --event-ttl) after their last write; nothing else."""

from __future__ import annotations

import time

from kubernetes import client

from raven.lab.apiserver.api import DEFAULT_EVENT_TTL, Api
from raven.lab.apiserver.resources import BUILTINS
from raven.lab.apiserver.store import Store
from raven.lab.testing.apiserver import api_client, run_apiserver

EVENTS = next(t for t in BUILTINS if t.plural == "events")
NODES = next(t for t in BUILTINS if t.plural == "nodes")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def event(name: str, count: int = 1) -> dict:
    return {
        "metadata": {"name": name},
        "involvedObject": {"kind": "Node", "name": "n1"},
        "reason": "Test",
        "count": count,
    }


def names(api: Api, rtype) -> list[str]:
    return [o["metadata"]["name"] for o in api.list(rtype, None)["items"]]


async def test_an_event_is_deleted_an_hour_after_its_last_write(tmp_path):
    clock = Clock()
    api = Api(Store(tmp_path / "db", clock=clock))
    assert DEFAULT_EVENT_TTL == 3600
    api.create(EVENTS, "default", event("e1"))
    api.create(NODES, None, {"metadata": {"name": "n1"}})
    stream = api.watch(EVENTS, None, resource_version=str(api.store.rv))
    clock.now += 3000
    api.patch(EVENTS, "default", "e1", "application/merge-patch+json", {"count": 2})
    clock.now += 3599  # an hour after the create, not after the update
    assert api.store.expire() == 0
    assert names(api, EVENTS) == ["e1"]
    clock.now += 1
    assert api.store.expire() == 1
    assert names(api, EVENTS) == [] and names(api, NODES) == ["n1"]
    events = stream.events(timeout=5)
    seen = [(await anext(events))[0] for _ in range(2)]
    await events.aclose()
    assert seen == ["MODIFIED", "DELETED"]  # watchers see the expiry as a delete


def test_expiry_times_survive_a_restart(tmp_path):
    clock = Clock()
    store = Store(tmp_path / "db", clock=clock)
    Api(store).create(EVENTS, "default", event("e1"))
    store.close()
    clock.now += DEFAULT_EVENT_TTL
    reopened = Api(Store(tmp_path / "db", clock=clock))
    assert reopened.store.expire() == 1 and names(reopened, EVENTS) == []


def test_the_server_deletes_expired_events_on_its_own(tmp_path):
    with run_apiserver(tmp_path / "api", event_ttl=1.0) as api, api_client(api) as c:
        v1 = client.CoreV1Api(c)
        v1.create_node({"metadata": {"name": "n1"}})
        v1.create_namespaced_event("default", event("e1"))
        deadline = time.monotonic() + 30
        while v1.list_namespaced_event("default").items and time.monotonic() < deadline:
            time.sleep(0.1)
        assert v1.list_namespaced_event("default").items == []
        assert [n.metadata.name for n in v1.list_node().items] == ["n1"]
