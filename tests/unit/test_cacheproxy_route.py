"""The proxy follows the node's cloud path: while the path file says ``via``, its requests,
watches and health probe go through the neighbour's CONNECT relay; back to direct, they stop
using it; a malformed file changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from raven.cacheproxy.upstream import Upstream
from raven.cloudpath import DIRECT, VIA, CloudPath, write_path
from raven.lab.apiserver.pki import make_pki
from raven.lab.testing.apiserver import ApiServerHandle, run_apiserver
from raven.lab.testing.cacheproxy import ProxyHandle, run_proxy
from raven.lab.testing.connectrelay import ConnectRelay, RelayHandle, run_relay


def wait_for(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def get(proxy: ProxyHandle, token: str, path: str = "/api/v1/nodes") -> int:
    req = urllib.request.Request(proxy.url + path)
    req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=proxy.proxy.ssl_ctx) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def via(relay: RelayHandle, node: str = "edge-a-1") -> CloudPath:
    return CloudPath(VIA, node, relay.url, time.time())


@pytest.fixture
def env(
    tmp_path: Path,
) -> Iterator[tuple[ApiServerHandle, ProxyHandle, RelayHandle, Path]]:
    path_file = tmp_path / "cloud-path.json"
    with run_apiserver(tmp_path / "api") as api, run_relay() as relay:
        tls = (api.pki.server_cert, api.pki.server_key)
        with run_proxy(
            api.url, api.ca_cert, tmp_path / "cache", tls=tls, path_file=path_file
        ) as proxy:
            yield api, proxy, relay, path_file


def test_via_sends_requests_and_the_probe_through_the_relay_and_direct_stops(env) -> None:
    api, proxy, relay, path_file = env
    assert get(proxy, api.token) == 200
    time.sleep(0.3)  # a few probes
    assert relay.stats.tunnels == 0
    assert proxy.metrics()['raven_cacheproxy_upstream_route{mode="direct",via=""}'] == 1

    write_path(path_file, via(relay))
    wait_for("the switch to the relay", lambda: proxy.proxy.upstream.relay == relay.url)
    assert get(proxy, api.token) == 200
    assert relay.stats.tunnels >= 1
    assert set(relay.stats.targets) == {api.url.removeprefix("https://")}
    metrics = proxy.metrics()
    assert metrics['raven_cacheproxy_upstream_route{mode="via",via="edge-a-1"}'] == 1
    assert 'raven_cacheproxy_upstream_route{mode="direct",via=""}' not in metrics
    assert metrics["raven_cacheproxy_upstream_switches"] == 1

    # The probe goes the same way: without the relay the cloud is unreachable, although the API
    # server itself is up; with it back, healthy again.
    relay.stop()
    proxy.wait_cloud(False)
    relay.start()
    proxy.wait_cloud(True)

    write_path(path_file, CloudPath(DIRECT, since=time.time()))
    wait_for("the switch back", lambda: proxy.proxy.upstream.relay is None)
    wait_for("the relay's tunnels closed", lambda: relay.stats.open == 0)
    before = relay.stats.tunnels
    for _ in range(3):
        assert get(proxy, api.token) == 200
    time.sleep(0.3)  # a few probes
    assert relay.stats.tunnels == before
    assert proxy.proxy.health.healthy


def test_a_route_change_ends_a_watch_and_the_next_one_goes_through_the_relay(env) -> None:
    api, proxy, relay, path_file = env
    host, port = proxy.url.removeprefix("https://").split(":")
    headers = {"Authorization": f"Bearer {api.token}", "Accept": "application/json"}

    def watch() -> http.client.HTTPResponse:
        conn = http.client.HTTPSConnection(host, int(port), context=proxy.proxy.ssl_ctx, timeout=10)
        conn.request("GET", "/api/v1/nodes?watch=true&resourceVersion=0", headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200
        return resp

    first = watch()
    wait_for("the watch upstream", lambda: api.open_watches == 1)
    assert relay.stats.tunnels == 0
    write_path(path_file, via(relay))
    started = time.monotonic()
    assert first.read() == b""  # ended by the proxy (a timeout would raise)
    assert time.monotonic() - started < 5

    second = watch()
    wait_for("the new watch upstream", lambda: api.open_watches == 1)
    assert relay.stats.open >= 1
    write_path(path_file, CloudPath(DIRECT))
    assert second.read() == b""
    wait_for("the relay unused", lambda: relay.stats.open == 0)


def test_a_malformed_path_file_keeps_the_last_route_and_is_logged_once(
    env, caplog: pytest.LogCaptureFixture
) -> None:
    api, proxy, relay, path_file = env
    write_path(path_file, via(relay))
    wait_for("the switch to the relay", lambda: proxy.proxy.upstream.relay == relay.url)
    caplog.set_level(logging.INFO, logger="raven.cacheproxy")
    for text in ('{"mode": "sideways"}', "not json", '{"mode": "via", "via": "x"}'):
        path_file.write_text(text)
        time.sleep(0.3)  # several polls
        assert proxy.proxy.upstream.relay == relay.url
        assert proxy.metrics()["raven_cacheproxy_path_file_ok"] == 0
    refusals = [r for r in caplog.records if "cloud path file refused" in r.getMessage()]
    assert len(refusals) == 3  # one per distinct fault, not one per poll
    assert "keeping via edge-a-1" in refusals[0].getMessage()
    switches = proxy.proxy.upstream.switches
    assert get(proxy, api.token) == 200
    assert proxy.proxy.upstream.switches == switches

    path_file.unlink()  # no file: direct
    wait_for("direct", lambda: proxy.proxy.upstream.relay is None)
    assert proxy.metrics()["raven_cacheproxy_path_file_ok"] == 1
    assert api.token not in caplog.text


# ---- requests in flight when the route changes ------------------------------------------------


async def _hanging_server(tmp_path: Path) -> tuple[asyncio.Server, str, ssl.SSLContext]:
    """An HTTPS "API server" that accepts and reads, and never answers: a path that died
    mid-request. Returns it, its URL and a client context that trusts it."""
    pki = make_pki(tmp_path / "pki", ["127.0.0.1"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while await reader.read(4096):
                pass

    server = await asyncio.start_server(hang, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/api/v1/nodes"
    return server, url, ssl.create_default_context(cafile=str(pki.ca_cert))


async def _in_flight(upstream: Upstream, url: str, ctx: ssl.SSLContext) -> asyncio.Task[None]:
    async def call() -> None:
        async with upstream.request("GET", url, ssl=ctx) as resp:
            await resp.read()

    task = asyncio.create_task(call())
    await asyncio.sleep(0.3)
    assert not task.done()
    return task


async def test_leaving_a_dead_route_ends_its_requests_at_once(tmp_path: Path) -> None:
    """The heartbeat moves to a relay because the direct path died: a write hanging on it (the
    kubelet's renewal) fails now, not after its own timeout, and is retried the new way."""
    server, url, ctx = await _hanging_server(tmp_path)
    relay = ConnectRelay()
    await relay.start()
    path_file = tmp_path / "cloud-path.json"
    upstream = Upstream(aiohttp.ClientSession, path_file, poll_interval=60)
    await upstream.start()
    try:
        task = await _in_flight(upstream, url, ctx)
        write_path(path_file, CloudPath(VIA, "edge-a-1", relay.url, time.time()))
        t0 = time.monotonic()
        assert upstream.poll()
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(task, 5)
        assert time.monotonic() - t0 < 1.0
    finally:
        await upstream.stop()
        await relay.stop()
        server.close()


async def test_back_to_direct_lets_requests_on_the_relay_finish(tmp_path: Path) -> None:
    """After a heal the relay still works: what runs through it may finish (up to a grace)."""
    server, url, ctx = await _hanging_server(tmp_path)
    relay = ConnectRelay()
    await relay.start()
    path_file = tmp_path / "cloud-path.json"
    write_path(path_file, CloudPath(VIA, "edge-a-1", relay.url, time.time()))
    upstream = Upstream(aiohttp.ClientSession, path_file, poll_interval=60)
    await upstream.start()
    try:
        upstream.poll()
        assert upstream.relay == relay.url
        task = await _in_flight(upstream, url, ctx)
        write_path(path_file, CloudPath(DIRECT, since=time.time()))
        assert upstream.poll()
        await asyncio.sleep(1.0)
        assert not task.done(), "a request on the healthy relay was cut short"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await upstream.stop()
        await relay.stop()
        server.close()
