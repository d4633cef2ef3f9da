"""A watcher that falls too far behind is closed, so a stopped client cannot make the server's
memory grow without limit (kube-apiserver's cacher does the same with a full watch buffer)."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import pytest
from kubernetes import client

from raven.lab.apiserver.api import Api
from raven.lab.apiserver.resources import BUILTINS
from raven.lab.apiserver.store import Store
from raven.lab.testing.apiserver import api_client, run_apiserver

NODES = next(t for t in BUILTINS if t.plural == "nodes")


def node(name: str, **annotations: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": annotations}}


async def test_a_watch_that_is_not_read_is_closed_once_its_queue_is_full():
    store = Store(None)
    api = Api(store)
    overflowed: list[bool] = []
    stream = api.watch(NODES, None, max_events=3, on_overflow=lambda: overflowed.append(True))
    for i in range(3):
        api.create(NODES, None, node(f"n{i}"))
    assert stream.queued[0] == 3 and not stream.overflowed
    api.create(NODES, None, node("n3"))  # one more than the client has room for
    assert stream.overflowed and overflowed == [True]
    assert stream.queued == (0, 0)  # what it held is dropped at once
    for i in range(10):  # later writes are not queued anywhere
        api.create(NODES, None, node(f"m{i}"))
    assert stream.queued == (0, 0)
    events = [e async for e in stream.events(timeout=5)]
    assert events == []  # the stream ends; the client resumes from what it last saw


async def test_the_byte_bound_closes_a_watch_before_the_event_count_does():
    api = Api(Store(None))
    stream = api.watch(NODES, None, max_events=1000, max_bytes=50_000)
    for i in range(4):
        api.create(NODES, None, node(f"n{i}", blob="x" * 20_000))
    assert stream.overflowed


async def test_a_watch_that_keeps_up_is_never_closed():
    api = Api(Store(None))
    stream = api.watch(NODES, None, max_events=2)
    seen: list[str] = []
    events = stream.events(timeout=5)
    for i in range(20):
        api.create(NODES, None, node(f"n{i}"))
        kind, obj = await anext(events)
        seen.append(obj["metadata"]["name"])
    await events.aclose()
    assert seen == [f"n{i}" for i in range(20)] and not stream.overflowed


def test_a_stalled_client_is_disconnected_and_its_watch_released(tmp_path):
    with run_apiserver(tmp_path / "api", watch_queue_events=20) as api:
        ctx = ssl.create_default_context(cafile=str(api.ca_cert))
        raw = socket.create_connection((api.host, api.port))
        # A tiny receive window, and we never read: the server's writes back up at once.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock = ctx.wrap_socket(raw, server_hostname=api.host)
        sock.sendall(
            f"GET /api/v1/nodes?watch=1 HTTP/1.1\r\nHost: {api.host}\r\n"
            f"Authorization: Bearer {api.token}\r\n\r\n".encode()
        )
        deadline = time.monotonic() + 10
        while api.open_watches == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert api.open_watches == 1
        with api_client(api) as c:
            v1 = client.CoreV1Api(c)
            blob = "x" * 30_000
            v1.create_node({"metadata": {"name": "n", "annotations": {"blob": blob}}})
            deadline = time.monotonic() + 60
            i = 0
            while api.open_watches and time.monotonic() < deadline:
                v1.patch_node("n", {"metadata": {"annotations": {"i": str(i)}}})
                i += 1
            assert api.open_watches == 0, "the stalled watch is still being fed"
            # Everyone else is served as before.
            assert v1.read_node("n").metadata.annotations["i"] == str(i - 1)
        # The server hung up: reading what it had sent ends in EOF or a reset, not a hang.
        sock.settimeout(10)
        with pytest.raises((ConnectionError, ssl.SSLError, EOFError)):
            while sock.recv(65536):
                pass
            raise EOFError
        sock.close()
