"""The proxy's HTTP front: loopback only, forwards to the API server over HTTPS with the client's
own Authorization header, caches successful reads, streams watches through while folding their
events into the cache, and answers from the cache while the cloud is unhealthy (see decide.py).
Own endpoints: /healthz (process up), /readyz (200 only while the cloud is healthy), /metrics.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from yarl import URL

from raven.aio import cancel_and_wait
from raven.cacheproxy.cache import Cache, cache_key, credential_hash
from raven.cacheproxy.decide import Action, Request, State, decide
from raven.cacheproxy.health import CloudHealth, HealthConfig

DEFAULT_PORT = 10261
# Opening a connection to the API server (TCP and TLS) takes this long at most: on a link that
# silently drops packets a connect would otherwise hang for aiohttp's default 30 s.
CONNECT_TIMEOUT = 5.0
HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}
DROP_RESPONSE = {"content-length", "transfer-encoding", "connection", "content-encoding"}
OWN_PATHS = {"/healthz", "/readyz", "/metrics"}


@dataclass
class ProxyConfig:
    upstream: str
    ca_cert: Path
    cache_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    health: HealthConfig = field(default_factory=HealthConfig)
    # Serve HTTPS with this pair when set: client-go (kubectl, kubelet) only sends its bearer
    # token over TLS, and the proxy forwards the client's own credentials.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if not ipaddress.ip_address(self.host).is_loopback:
            raise ValueError(f"the cache proxy listens on loopback only, not {self.host!r}")
        if not self.upstream.startswith("https://"):
            raise ValueError(f"the upstream API server must be https://, got {self.upstream!r}")


def status_body(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


class CacheProxy:
    def __init__(self, config: ProxyConfig):
        self.config = config
        self.cache = Cache(config.cache_dir)
        self.ssl_ctx = ssl.create_default_context(cafile=str(config.ca_cert))
        self.health = CloudHealth(config.upstream, self.ssl_ctx, config.health)
        self.registry = CollectorRegistry()
        self.m_requests = Counter(
            "raven_cacheproxy_requests", "Requests by action", ["action"], registry=self.registry
        )
        self.m_hits = Counter(
            "raven_cacheproxy_cache_hits", "Reads served from the cache", registry=self.registry
        )
        self.m_saved = Counter(
            "raven_cacheproxy_bytes_saved", "Bytes served from the cache", registry=self.registry
        )
        self.m_cloud = Gauge(
            "raven_cacheproxy_cloud_healthy",
            "1 while the API server is healthy",
            registry=self.registry,
        )
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.port = config.port
        self.stopping = False

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            auto_decompress=True,
            timeout=aiohttp.ClientTimeout(total=300, sock_connect=CONNECT_TIMEOUT),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        server_ctx = None
        if self.config.tls_cert and self.config.tls_key:
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        site = web.TCPSite(self.runner, self.config.host, self.config.port, ssl_context=server_ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.health.start(self.session)

    async def stop(self) -> None:
        # Release held watches first, or shutdown would wait on them for the whole outage.
        self.stopping = True
        self.health.changed.set()
        await self.health.stop()
        if self.runner:
            await self.runner.cleanup()
        if self.session:
            await self.session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path in OWN_PATHS:
            return self.own(request)
        watch = request.query.get("watch") in ("true", "1")
        ua = request.headers.get("User-Agent", "")
        accept = request.headers.get("Accept", "")
        key = cache_key(ua, request.rel_url.raw_path, request.query_string, accept, watch=watch)
        cred = credential_hash(request.headers.get("Authorization"))
        entry = self.cache.get(key)
        action = decide(
            Request(request.method, watch, cred),
            State(
                self.health.healthy,
                entry is not None,
                frozenset(entry.credentials) if entry else frozenset(),
            ),
        )
        self.m_requests.labels(action.value).inc()
        if action is Action.FORWARD:
            try:
                return await self.forward(request, key, cred)
            except (aiohttp.ClientConnectionError, TimeoutError):
                self.health.record(False)
                if request.method in ("GET", "HEAD"):
                    return await self.handle(request)  # answer as offline
                return self.refuse_write(request)
        if action is Action.FORWARD_WATCH:
            try:
                return await self.forward_watch(request, key)
            except (aiohttp.ClientConnectionError, TimeoutError):
                self.health.record(False)
                return await self.hold_watch(request)
        if action is Action.SERVE_CACHE:
            assert entry is not None
            self.m_hits.inc()
            self.m_saved.inc(len(entry.body))
            return web.Response(
                status=entry.status,
                body=entry.body,
                headers={"Content-Type": entry.content_type, "X-Raven-Cache": "hit"},
            )
        if action is Action.HOLD_WATCH:
            return await self.hold_watch(request)
        if action is Action.REFUSE_WRITE:
            return self.refuse_write(request)
        if action is Action.REFUSE_AUTH:
            return status_body(
                401,
                "Unauthorized",
                "the API server is unreachable and this credential was not "
                "accepted by it for this data; refusing to serve the cache",
            )
        return status_body(
            503,
            "ServiceUnavailable",
            f"the API server is unreachable and {request.path} is not cached",
        )

    def refuse_write(self, request: web.Request) -> web.Response:
        return status_body(
            503,
            "ServiceUnavailable",
            f"the API server is unreachable (cloud outage); {request.method} "
            f"{request.path} was NOT applied. Retry when the cloud is back.",
        )

    def own(self, request: web.Request) -> web.Response:
        self.m_cloud.set(1 if self.health.healthy else 0)
        if request.path == "/healthz":
            return web.Response(text="ok")
        if request.path == "/readyz":
            if self.health.healthy:
                return web.Response(text="ok")
            return web.Response(status=503, text="cloud unreachable: serving from cache")
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": "text/plain; version=0.0.4"},
        )

    def _upstream(self, request: web.Request) -> tuple[URL, dict[str, str]]:
        # The raw, still-encoded path: decoding %2F would let a name climb to another resource.
        url = URL(self.config.upstream.rstrip("/") + request.raw_path, encoded=True)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        return url, headers

    async def forward(self, request: web.Request, key: str, cred: str | None) -> web.Response:
        assert self.session is not None
        url, headers = self._upstream(request)
        body = await request.read()
        async with self.session.request(
            request.method,
            url,
            headers=headers,
            data=body or None,
            ssl=self.ssl_ctx,
            allow_redirects=False,
        ) as up:
            data = await up.read()
            out = {k: v for k, v in up.headers.items() if k.lower() not in DROP_RESPONSE}
        if request.method == "GET" and up.status == 200 and cred:
            # Remember this credential as accepted for exactly this data.
            self.cache.put(key, up.status, up.headers.get("Content-Type", ""), data, cred)
        return web.Response(status=up.status, body=data, headers=out)

    async def forward_watch(self, request: web.Request, key: str) -> web.StreamResponse:
        """Stream the API server's watch to the client, folding its events into the cache.

        Losing the cloud mid-watch ends the upstream side but not the client's: it is held,
        silent, like an offline watch, and ended once the cloud is back, so the client watches
        again at once. (A link that silently drops packets would otherwise leave it waiting on
        a dead connection until its own read timeout, long after the cloud returned.)
        """
        assert self.session is not None
        url, headers = self._upstream(request)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=None)
        async with self.session.get(url, headers=headers, ssl=self.ssl_ctx, timeout=timeout) as up:
            if up.status != 200:
                data = await up.read()
                return web.Response(status=up.status, body=data, content_type=up.content_type)
            resp = web.StreamResponse(status=200)
            resp.content_type = up.content_type
            await resp.prepare(request)
            pump = asyncio.create_task(self._pump(up, resp, key))
            try:
                while not pump.done() and self.health.healthy and not self.stopping:
                    changed = asyncio.ensure_future(self.health.changed.wait())
                    await asyncio.wait({pump, changed}, return_when=asyncio.FIRST_COMPLETED)
                    changed.cancel()
            finally:
                await cancel_and_wait(pump)
            if pump.cancelled() or pump.exception() is None:
                if pump.cancelled():  # the cloud went away (or we stop): hold, then end
                    await self._hold(resp)
                else:
                    await resp.write_eof()  # the API server ended the watch
                return resp
            error = pump.exception()
            if isinstance(error, ConnectionError):
                return resp  # the client went away
            if isinstance(error, aiohttp.ClientError | TimeoutError):
                if isinstance(error, aiohttp.ClientConnectionError | TimeoutError):
                    self.health.record(False)  # the upstream broke mid-stream: cloud gone
                await self._hold(resp)  # ends it at once while the cloud is healthy
                return resp
            assert error is not None  # done, neither cancelled nor clean: it raised
            raise error

    async def _pump(self, up: aiohttp.ClientResponse, resp: web.StreamResponse, key: str) -> None:
        buf = b""
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
            if "json" in up.content_type:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self._fold(key, line)

    def _fold(self, key: str, line: bytes) -> None:
        if not line.strip():
            return
        try:
            self.cache.apply_event(key, json.loads(line))
        except ValueError:
            pass  # a malformed event is passed through untouched; the list stays as it was

    async def hold_watch(self, request: web.Request) -> web.StreamResponse:
        """Hold the watch open and silent until the cloud is healthy; ending it forces a re-list."""
        resp = web.StreamResponse(status=200)
        resp.content_type = "application/json"
        await resp.prepare(request)
        await self._hold(resp)
        return resp

    async def _hold(self, resp: web.StreamResponse) -> None:
        while not self.health.healthy and not self.stopping:
            await self.health.changed.wait()
        try:
            await resp.write_eof()
        except ConnectionError:
            pass  # the client left while we held its watch
