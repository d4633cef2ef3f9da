"""Long-running requests stream through at once and outlive the request timeout; a failed or
slow request is that request's problem, not the cloud's; a write that timed out says that its
outcome is unknown.

Most tests run against the lab API server. Pod logs and an API server that is slow on purpose
are what it does not have: for those a small stand-in upstream (below) answers the same paths
the way kube-apiserver does (a chunked log stream, a request that takes too long)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from kubernetes import client as k8s_client

from raven.cacheproxy.health import HealthConfig
from raven.lab.apiserver.pki import Pki, make_pki
from raven.lab.testing.apiserver import ApiServerHandle, api_client, run_apiserver
from raven.lab.testing.cacheproxy import ProxyHandle, run_proxy

LOG_PATH = "/api/v1/namespaces/default/pods/p/log"


def make_node(api: ApiServerHandle, name: str) -> None:
    k8s_client.CoreV1Api(api_client(api)).create_node(
        k8s_client.V1Node(metadata=k8s_client.V1ObjectMeta(name=name))
    )


def connect(proxy: ProxyHandle, timeout: float = 10.0) -> http.client.HTTPSConnection:
    host, port = proxy.url.removeprefix("https://").split(":")
    return http.client.HTTPSConnection(
        host, int(port), context=proxy.proxy.ssl_ctx, timeout=timeout
    )


def get(proxy: ProxyHandle, path: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(proxy.url + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15, context=proxy.proxy.ssl_ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[ApiServerHandle, ProxyHandle]]:
    with run_apiserver(tmp_path / "api") as api:
        tls = (api.pki.server_cert, api.pki.server_key)
        with run_proxy(
            api.url, api.ca_cert, tmp_path / "cache", tls=tls, request_timeout=1.0
        ) as proxy:
            yield api, proxy


# The lab API server takes only these spellings as a watch (kube-apiserver takes any value but
# false/0, see test_cacheproxy_request.py for the proxy's reading of the others).
@pytest.mark.parametrize("spelling", ["watch=True", "watch=true", "watch=1"])
def test_every_watch_spelling_streams_at_once_and_outlives_the_request_timeout(
    env, spelling: str
) -> None:
    api, proxy = env
    headers = {"Authorization": f"Bearer {api.token}", "Accept": "application/json"}
    conn = connect(proxy)
    conn.request("GET", "/api/v1/nodes", headers=headers)
    rv = json.loads(conn.getresponse().read())["metadata"]["resourceVersion"]
    watch = connect(proxy)
    watch.request(
        "GET", f"/api/v1/nodes?{spelling}&resourceVersion={rv}&timeoutSeconds=60", headers=headers
    )
    resp = watch.getresponse()
    assert resp.status == 200
    time.sleep(1.5)  # longer than the proxy's request timeout (1 s): a watch has none
    make_node(api, "late")
    line = resp.readline()  # arrives while the watch is open: nothing buffered it
    assert json.loads(line)["object"]["metadata"]["name"] == "late"
    watch.close()
    # The event was folded into the cached list: offline, the list has it.
    api.stop()
    proxy.wait_cloud(False)
    conn = connect(proxy)
    conn.request("GET", "/api/v1/nodes", headers=headers)
    got = conn.getresponse()
    assert got.status == 200
    assert [i["metadata"]["name"] for i in json.loads(got.read())["items"]] == ["late"]


def test_a_client_leaving_mid_watch_does_not_mark_the_cloud_down(env) -> None:
    api, proxy = env
    bearer = {"Authorization": f"Bearer {api.token}"}
    for query in ("watch=1", "watch=1&timeoutSeconds=1"):  # the API server ends the second
        watch = connect(proxy)
        watch.request("GET", f"/api/v1/nodes?{query}", headers=bearer)
        assert watch.getresponse().status == 200
        assert watch.sock is not None
        watch.sock.shutdown(socket.SHUT_RDWR)
        watch.close()
    for i in range(5):  # the proxy writes these to the clients that left, and notices
        make_node(api, f"n{i}")
    deadline = time.monotonic() + 10
    while proxy.metrics()["raven_cacheproxy_watches"] > 0:
        assert time.monotonic() < deadline, "the proxy never noticed the client left"
        time.sleep(0.05)
    assert get(proxy, "/readyz")[0] == 200
    assert proxy.proxy.health.outages == 0


def test_a_connection_that_cannot_be_opened_marks_the_cloud_down_and_is_answered_offline(
    tmp_path: Path,
) -> None:
    # A probe so slow that only the request itself can tell the cloud is gone.
    slow_probe = HealthConfig(interval=60, timeout=1, fail_threshold=1, success_threshold=1)
    with run_apiserver(tmp_path / "api") as api:
        tls = (api.pki.server_cert, api.pki.server_key)
        with run_proxy(api.url, api.ca_cert, tmp_path / "cache", slow_probe, tls) as proxy:
            make_node(api, "n1")
            assert get(proxy, "/api/v1/nodes", api.token)[0] == 200
            api.stop()
            status, body = get(proxy, "/api/v1/nodes", api.token)
            assert status == 200 and json.loads(body)["items"][0]["metadata"]["name"] == "n1"
            assert proxy.proxy.health.outages == 1 and not proxy.proxy.health.healthy
            api.start()


# -- a stand-in upstream for what the lab API server does not have -----------------------------


@dataclass
class Upstream:
    url: str
    pki: Pki
    applied: list[str] = field(default_factory=list)


@contextmanager
def stand_in(tmp: Path, lines: int = 6, every: float = 0.3) -> Iterator[Upstream]:
    """HTTPS on loopback: ``/healthz``; a followed pod log (``lines`` lines, one per ``every``
    seconds, chunked as kube-apiserver streams it); ``/api/v1/nodes/slow``, which answers a GET
    after 3 s and applies a PATCH at once but answers it after 3 s."""
    pki = make_pki(tmp / "pki", ["127.0.0.1"])
    up = Upstream("", pki)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def log(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for i in range(lines):
            await resp.write(f"line {i}\n".encode())
            await asyncio.sleep(every)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        if request.method == "PATCH":
            up.applied.append(await request.text())
        await asyncio.sleep(3)
        return web.json_response({"kind": "Node", "metadata": {"name": "slow"}})

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"kind": "Node", "metadata": {"name": "fast"}})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get(LOG_PATH, log)
    app.router.add_route("*", "/api/v1/nodes/slow", slow)
    app.router.add_get("/api/v1/nodes/fast", fast)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    up.url = f"https://127.0.0.1:{port}"
    try:
        yield up
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def slow_env(tmp_path: Path) -> Iterator[tuple[Upstream, ProxyHandle]]:
    with stand_in(tmp_path / "up") as up:
        tls = (up.pki.server_cert, up.pki.server_key)
        with run_proxy(
            up.url, up.pki.ca_cert, tmp_path / "cache", tls=tls, request_timeout=1.0
        ) as proxy:
            proxy.wait_cloud(True)
            yield up, proxy


def test_a_followed_log_streams_at_once_and_outlives_the_request_timeout(slow_env) -> None:
    up, proxy = slow_env
    conn = connect(proxy)
    conn.request("GET", LOG_PATH + "?follow=true", headers={"Authorization": "Bearer t"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline() == b"line 0\n"  # the first line, long before the stream ends
    rest = resp.read().decode().splitlines()  # 1.8 s in all, past the 1 s request timeout
    assert rest == [f"line {i}" for i in range(1, 6)]


def test_a_slow_read_fails_alone_and_the_cloud_stays_up(slow_env) -> None:
    up, proxy = slow_env
    status, body = get(proxy, "/api/v1/nodes/slow", "t")
    assert status == 504 and "did not answer" in json.loads(body)["message"]
    assert get(proxy, "/api/v1/nodes/fast", "t")[0] == 200  # forwarded, not served offline
    assert get(proxy, "/readyz")[0] == 200
    assert proxy.proxy.health.outages == 0


def test_a_write_that_timed_out_says_its_outcome_is_unknown(slow_env) -> None:
    up, proxy = slow_env
    req = urllib.request.Request(
        proxy.url + "/api/v1/nodes/slow",
        method="PATCH",
        data=b'{"metadata":{"labels":{"a":"b"}}}',
        headers={"Authorization": "Bearer t", "Content-Type": "application/merge-patch+json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=15, context=proxy.proxy.ssl_ctx)
    body = json.loads(err.value.read())
    assert err.value.code == 504 and body["kind"] == "Status" and body["reason"] == "Timeout"
    assert "may or may not have been applied" in body["message"]
    assert "NOT applied" not in body["message"]
    assert up.applied == ['{"metadata":{"labels":{"a":"b"}}}']  # and indeed it was
    assert proxy.proxy.health.outages == 0
