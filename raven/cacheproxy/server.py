"""The proxy's HTTP front: loopback only, forwards to the API server over HTTPS with the client's
own Authorization header, caches successful reads, streams watches and other long-running
requests through at once (folding watch events into the cache), and answers from the cache while
the cloud is unhealthy. It reads a request's shape (request.py, keys.py), asks the pure core
(decide.py, fold.py) what to do, and does it. Own endpoints: /healthz (process up), /readyz (200
only while the cloud is healthy), /metrics.

With the node's client certificate (``node_cert``/``node_key``) the HTTPS listener also asks for
client certificates, verifies them with ``client_ca``, and forwards the requests of a client
whose certificate names this node over a connection presenting the node's certificate
(identity.py, nodecert.py); another verified subject gets 403. With a ``path_file`` all upstream
traffic follows the node's cloud path, through a neighbour's relay while it says so
(upstream.py).

With the node's certificate, lists and watches of the shared resources (``share``, default
Services and EndpointSlices) are answered from one upstream list+watch per resource for all
the node's clients (node-level reuse: sharing.py, shared.py). With the agent's role
(``agent_role``) the copies read from the pool gateway's feed while it is ready, and with
``pool_listen`` this proxy serves that feed to its pool's nodes while it is the gateway
(pool-level reuse: pool.py, poolfollow.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from yarl import URL

from raven.aio import cancel_and_wait
from raven.cacheproxy import fold
from raven.cacheproxy import pool as poolfeed
from raven.cacheproxy.access import DEFAULT_TTL as DEFAULT_REVIEW_TTL
from raven.cacheproxy.cache import Cache, CacheConfig, digest
from raven.cacheproxy.decide import (
    READ_METHODS,
    Action,
    Failure,
    Outcome,
    Request,
    State,
    Verdict,
    after_failure,
    credential_verdict,
    decide,
    marks_cloud_down,
)
from raven.cacheproxy.health import CloudHealth, HealthConfig
from raven.cacheproxy.identity import (
    Presented,
    Subject,
    certificate_credential,
    judge,
    peer_subject,
)
from raven.cacheproxy.keys import ReadKey, identity_headers, read_key, watch_key
from raven.cacheproxy.listdoc import Blob, ListDoc, join, split
from raven.cacheproxy.nodecert import NodeCertificate, NodeCertificateError
from raven.cacheproxy.pages import Pages
from raven.cacheproxy.pool import DEFAULT_FEED_PORT
from raven.cacheproxy.poolfollow import PoolFollower
from raven.cacheproxy.request import RequestInfo, credential, request_info
from raven.cacheproxy.shared import SharedReads
from raven.cacheproxy.sharing import (
    DEFAULT_SHARED,
    SharedRead,
    SharedResource,
    path_group_version,
    shared_read,
)
from raven.cacheproxy.upstream import POLL_INTERVAL, Upstream
from raven.cacheproxy.watchcache import DEFAULT_CAPACITY
from raven.cloudpath import CloudPath

log = logging.getLogger(__name__)

DEFAULT_PORT = 10261
# Opening a connection to the API server (TCP and TLS) takes this long at most: on a link that
# silently drops packets a connect would otherwise hang for aiohttp's default 30 s.
CONNECT_TIMEOUT = 5.0
# A request that is not long-running gets this long in all, as kube-apiserver's own limit.
REQUEST_TIMEOUT = 300.0
# Answers larger than this are taken apart in a worker thread, not on the event loop.
INLINE_PARSE = 256 * 1024
# A watch line longer than this is passed on but not folded (etcd objects are at most ~1.5 MB).
MAX_EVENT_LINE = 16 * 1024 * 1024
# Answers larger than this are written out, not kept in the response object (see send()).
SEND_INLINE = 64 * 1024
SEND_PIECE = 256 * 1024
# Seconds a client may take to accept one piece of an answer before the proxy gives up on it.
STALL_TIMEOUT = 60.0
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
    cache: CacheConfig = field(default_factory=CacheConfig)
    # Seconds a request that is not long-running may take in all (kube-apiserver's own limit).
    request_timeout: float = REQUEST_TIMEOUT
    # The node's own client certificate and key (may be one file): clients whose verified
    # certificate has the same subject are forwarded with it. Needs tls_cert.
    node_cert: Path | None = None
    node_key: Path | None = None
    # The CA that client certificates must chain to (default: ca_cert).
    client_ca: Path | None = None
    # The node's cloud path (raven/cloudpath.py), looked at every path_poll seconds.
    path_file: Path | None = None
    path_poll: float = POLL_INTERVAL
    # Resources read once for all the node's clients (needs node_cert); () turns it off.
    share: tuple[SharedResource, ...] = DEFAULT_SHARED
    # Changes each shared copy keeps for watches that resume from an older version.
    share_history: int = DEFAULT_CAPACITY
    # Seconds an access review's answer is trusted online.
    review_ttl: float = DEFAULT_REVIEW_TTL
    # Pool-level reuse: the agent's /role (follow the pool's gateway feed) ...
    agent_role: str | None = None
    # ... the port of every gateway's feed ...
    pool_port: int = DEFAULT_FEED_PORT
    # ... and where this node serves it (its InternalIP), with its serving pair (kubelet's).
    pool_listen: str | None = None
    pool_cert: Path | None = None
    pool_key: Path | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if (self.node_cert is None) != (self.node_key is None):
            raise ValueError("node_cert and node_key must be given together")
        if self.node_cert is not None and self.tls_cert is None:
            raise ValueError("a node certificate needs tls_cert: client certificates come by TLS")
        if self.client_ca is not None and self.node_cert is None:
            raise ValueError("client_ca is used only with a node certificate")
        if self.path_poll <= 0:
            raise ValueError(f"path poll interval must be positive, got {self.path_poll}")
        if not ipaddress.ip_address(self.host).is_loopback:
            raise ValueError(f"the cache proxy listens on loopback only, not {self.host!r}")
        if not self.upstream.startswith("https://"):
            raise ValueError(f"the upstream API server must be https://, got {self.upstream!r}")
        if self.request_timeout <= 0:
            raise ValueError(f"request timeout must be positive, got {self.request_timeout}")
        if self.share_history < 1:
            raise ValueError(f"share history must keep at least 1 change, got {self.share_history}")
        if self.review_ttl <= 0:
            raise ValueError(f"access review TTL must be positive, got {self.review_ttl}")
        if self.agent_role is not None and (self.node_cert is None or not self.share):
            raise ValueError("pool-level reuse (agent_role) needs the node certificate and --share")
        if self.pool_listen is not None:
            if self.agent_role is None:
                raise ValueError("serving the pool feed (pool_listen) needs agent_role")
            if self.pool_cert is None or self.pool_key is None:
                raise ValueError("serving the pool feed needs its serving pair (pool_cert/key)")
            try:
                ipaddress.ip_address(self.pool_listen)
            except ValueError:
                raise ValueError(
                    f"pool_listen must be the node's IP address, got {self.pool_listen!r}"
                ) from None
        elif self.pool_cert is not None or self.pool_key is not None:
            raise ValueError("pool_cert/pool_key are used only with pool_listen")
        if not 0 < self.pool_port < 65536:
            raise ValueError(f"pool port must be 1..65535, got {self.pool_port}")


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


# aiohttp >= 3.10 tells a connect timeout apart; with an older one it counts as a timeout.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientConnectorError,) + tuple(
    t for t in (getattr(aiohttp, "ConnectionTimeoutError", None),) if t is not None
)


def classify(error: BaseException) -> Failure:
    """How a forwarded request failed (see decide.Failure)."""
    if isinstance(error, _CONNECT_ERRORS):
        return Failure.CONNECT
    if isinstance(error, TimeoutError):
        return Failure.TIMEOUT
    return Failure.BROKEN


async def send(
    request: web.Request, status: int, headers: dict[str, str], body: bytes
) -> web.StreamResponse:
    """Answer with ``body``. A large one is written out in pieces rather than kept in the
    response: aiohttp holds a connection's last response until its next request (a 9 MB list
    should not stay in memory while a client keeps its connection idle), and TLS and the socket
    then buffer one piece at a time, not a copy of it all."""
    if len(body) <= SEND_INLINE or request.method == "HEAD":
        return web.Response(status=status, body=body, headers=headers)
    view = memoryview(body)
    return await send_pieces(
        request,
        status,
        headers,
        _slices(view, SEND_PIECE),
        size=len(body),
    )


async def _slices(view: memoryview, size: int) -> AsyncGenerator[memoryview, None]:
    for start in range(0, len(view), size):
        yield view[start : start + size]


async def send_pieces(
    request: web.Request,
    status: int,
    headers: dict[str, str],
    pieces: AsyncGenerator[bytes, None] | AsyncGenerator[memoryview, None],
    *,
    size: int | None = None,
) -> web.StreamResponse:
    """Answer with ``pieces`` as they come (chunked when ``size`` is not known). A client that
    takes more than ``STALL_TIMEOUT`` seconds for one piece is given up on."""
    resp = web.StreamResponse(status=status, headers=headers)
    if size is not None:
        resp.content_length = size
    try:
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        await resp.prepare(request)
        async for piece in pieces:
            async with asyncio.timeout(STALL_TIMEOUT):
                await resp.write(piece)
        await resp.write_eof()
    except (ConnectionError, aiohttp.ClientConnectionResetError, TimeoutError):
        pass  # the client left or stalled
    finally:
        await pieces.aclose()
    return resp


class _ClientGone(Exception):
    """Writing to the client failed: it went away."""


@dataclass(frozen=True)
class Shape:
    """A request as the proxy reads it, and the cache entry that answers it (if any)."""

    info: RequestInfo
    credential: str | None
    read: ReadKey | None  # a cacheable read (get or list)
    watch: str | None  # a watch: the key of the list it continues
    # The TLS context upstream: the node's certificate for its clients, None for the plain one.
    upstream_ssl: ssl.SSLContext | None = None
    shared: SharedRead | None = None  # a read the shared copies may answer

    @property
    def key(self) -> str | None:
        return self.read.key if self.read is not None else self.watch


class CacheProxy:
    def __init__(self, config: ProxyConfig):
        self.config = config
        self.ssl_ctx = ssl.create_default_context(cafile=str(config.ca_cert))
        self.node: NodeCertificate | None = None
        if config.node_cert is not None and config.node_key is not None:
            self.node = NodeCertificate(config.node_cert, config.node_key, config.ca_cert)
        self.upstream = Upstream(
            self._new_session, config.path_file, config.path_poll, on_change=self._path_changed
        )
        self.health = CloudHealth(config.upstream, self.ssl_ctx, config.health)
        self.shared: SharedReads | None = None
        self.pool: PoolFollower | None = None
        if self.node is not None and config.agent_role is not None:
            name = poolfeed.member_of(self.node.subject)
            if name is None:
                raise NodeCertificateError(
                    f"pool-level reuse needs a node identity, the node certificate names "
                    f"{self.node.subject.describe()}"
                )
            self.pool = PoolFollower(name, config.agent_role, config.pool_port, self.node.context)
        if self.node is not None and config.share:
            self.shared = SharedReads(
                config.share,
                self.upstream,
                config.upstream,
                self.node.context,
                self.health,
                capacity=config.share_history,
                review_ttl=config.review_ttl,
                pool=self.pool,
            )
        self.cache = Cache(config.cache_dir, config.cache, clock=self.health.online_time)
        self.pages = Pages()
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
        self.m_entries = Gauge(
            "raven_cacheproxy_cache_entries", "Entries in the cache", registry=self.registry
        )
        self.m_evicted = Gauge(
            "raven_cacheproxy_cache_evicted",
            "Entries dropped for the TTL or the entry bound since start",
            registry=self.registry,
        )
        self.m_watches = Gauge(
            "raven_cacheproxy_watches",
            "Watches open through the proxy (streamed or held)",
            registry=self.registry,
        )
        self.m_outages = Gauge(
            "raven_cacheproxy_cloud_outages",
            "Times the API server was marked unreachable since start",
            registry=self.registry,
        )
        self.m_written = Gauge(
            "raven_cacheproxy_store_written_bytes",
            "Bytes of cache changes queued for the disk since start",
            registry=self.registry,
        )
        self.m_commits = Gauge(
            "raven_cacheproxy_store_commits",
            "Disk commits (fsyncs) of the cache since start",
            registry=self.registry,
        )
        self.m_backlog = Gauge(
            "raven_cacheproxy_store_backlog_bytes",
            "Bytes of cache changes waiting for the disk",
            registry=self.registry,
        )
        self.m_route = Gauge(
            "raven_cacheproxy_upstream_route",
            "1 for the cloud path upstream traffic takes now: mode direct, via (a neighbour's "
            "relay, named) or none",
            ["mode", "via"],
            registry=self.registry,
        )
        self.m_route.labels("direct", "").set(1)
        self.m_switches = Gauge(
            "raven_cacheproxy_upstream_switches",
            "Times upstream traffic moved to another route since start",
            registry=self.registry,
        )
        self.m_path_ok = Gauge(
            "raven_cacheproxy_path_file_ok",
            "0 while the cloud path file is malformed (the last good path is kept)",
            registry=self.registry,
        )
        self.m_path_ok.set(1)
        self.m_refused_certs = Counter(
            "raven_cacheproxy_refused_certificates",
            "Requests refused for a client certificate of another identity than the node's",
            registry=self.registry,
        )
        self.m_shared = {
            name: Gauge(
                f"raven_cacheproxy_shared_{name}",
                text,
                ["resource"],
                registry=self.registry,
            )
            for name, text in (
                ("synced", "1 while the shared copy is listed and its watch is up"),
                ("objects", "Objects in the shared copy"),
                ("bytes", "Bytes of object JSON the shared copy holds (state and history)"),
                ("relists", "Upstream lists of the shared copy since start"),
                ("upstream_bytes", "Bytes the shared copy received from upstream since start"),
            )
        }
        self.m_shared_reads = Gauge(
            "raven_cacheproxy_shared_reads",
            "Lists and watches answered from a shared copy since start",
            ["resource", "verb"],
            registry=self.registry,
        )
        self.m_shared_watchers = Gauge(
            "raven_cacheproxy_shared_watchers",
            "Watches open on a shared copy",
            registry=self.registry,
        )
        self.m_reviews = Gauge(
            "raven_cacheproxy_access_reviews",
            "SelfSubjectAccessReviews asked for clients of a shared copy since start",
            registry=self.registry,
        )
        self.m_feed_refused = Counter(
            "raven_cacheproxy_pool_feed_refused",
            "Requests to the pool feed refused: not a node of the pool, or not ready",
            ["reason"],
            registry=self.registry,
        )
        self.m_source = Gauge(
            "raven_cacheproxy_shared_source",
            "1 for where each shared copy reads from now: gateway names the pool gateway whose "
            "feed it reads, empty for the API server",
            ["resource", "gateway"],
            registry=self.registry,
        )
        self.m_feed_serving = Gauge(
            "raven_cacheproxy_pool_feed_serving",
            "1 while this node's pool feed listens (0: off, or its serving pair or address failed)",
            registry=self.registry,
        )
        self.m_pool_switches = Gauge(
            "raven_cacheproxy_pool_source_switches",
            "Times the shared copies moved between the cloud and a gateway's feed since start",
            registry=self.registry,
        )
        self.runner: web.AppRunner | None = None
        self.feed_runner: web.AppRunner | None = None
        self.port = config.port
        self.stopping = False
        self._sweeper: asyncio.Task[None] | None = None

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            auto_decompress=True,
            timeout=aiohttp.ClientTimeout(
                total=self.config.request_timeout, sock_connect=CONNECT_TIMEOUT
            ),
        )

    def _path_changed(self, old: CloudPath, new: CloudPath) -> None:
        """One series for the route in use: the old one goes, so a sum over nodes counts each
        node once."""
        with contextlib.suppress(KeyError):
            self.m_route.remove(old.mode, old.via)
        self.m_route.labels(new.mode, new.via).set(1)

    def _server_context(self) -> ssl.SSLContext | None:
        if not (self.config.tls_cert and self.config.tls_key):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        if self.node is not None:
            # Ask for a client certificate; one that does not chain to the client CA fails the
            # handshake (Python's ssl cannot ask without verifying), no certificate is fine.
            ctx.load_verify_locations(cafile=str(self.config.client_ca or self.config.ca_cert))
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    async def start(self) -> None:
        await self.upstream.start()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        server_ctx = self._server_context()
        site = web.TCPSite(self.runner, self.config.host, self.config.port, ssl_context=server_ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.health.start(self.upstream)
        if self.pool is not None:
            await self.pool.start()
        if self.shared is not None:
            self.shared.start()
        if self.config.pool_listen is not None:
            await self._start_feed()
        self._sweeper = asyncio.create_task(self._sweep(), name="raven-cacheproxy-sweep")

    async def stop(self) -> None:
        # Release held watches first, or shutdown would wait on them for the whole outage.
        self.stopping = True
        self.health.changed.set()
        if self.shared is not None:
            self.shared.stopping.set()  # ... and the watches on the shared copies, the feed's too
        await cancel_and_wait(self._sweeper)
        if self.feed_runner:
            await self.feed_runner.cleanup()
        if self.shared is not None:
            await self.shared.stop()
        if self.pool is not None:
            await self.pool.stop()
        await self.health.stop()
        if self.runner:
            await self.runner.cleanup()
        await self.upstream.stop()
        await asyncio.to_thread(self.cache.close)

    async def _sweep(self) -> None:
        interval = min(60.0, self.config.cache.entry_ttl / 10)
        while True:
            await asyncio.sleep(interval)
            self.cache.sweep()

    # -- the pool feed ------------------------------------------------------------------------

    def _feed_context(self) -> ssl.SSLContext:
        assert self.config.pool_cert is not None and self.config.pool_key is not None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.config.pool_cert, self.config.pool_key)
        ctx.load_verify_locations(cafile=str(self.config.client_ca or self.config.ca_cert))
        ctx.verify_mode = ssl.CERT_REQUIRED  # a node's client certificate, or no handshake
        return ctx

    async def _start_feed(self) -> None:
        """Serve the pool feed. A serving pair that does not load, or an address that cannot be
        bound, leaves the feed off (logged, ``raven_cacheproxy_pool_feed_serving`` 0) rather
        than the proxy: the node's clients must not lose the API server over it, and while this
        node is the gateway its pool's nodes read the API server themselves."""
        assert self.config.pool_listen is not None
        where = f"{self.config.pool_listen}:{self.config.pool_port}"
        try:
            ctx = self._feed_context()
        except (OSError, ssl.SSLError) as e:
            log.error("pool feed off: its serving pair %s does not load (%s)",
                      self.config.pool_cert, getattr(e, "strerror", None) or e)  # fmt: skip
            return
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handle_feed)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.pool_listen, self.config.pool_port,
                              ssl_context=ctx).start()  # fmt: skip
        except OSError as e:
            await runner.cleanup()
            log.error("pool feed off: cannot listen on %s (%s)", where, e.strerror or e)
            return
        self.feed_runner = runner
        log.info("pool feed on https://%s", where)

    async def handle_feed(self, request: web.Request) -> web.StreamResponse:
        """The pool feed (raven/cacheproxy/pool.py): the shared copies, to the pool's nodes."""
        if request.path == "/healthz":
            return web.Response(text="ok")
        transport = request.transport
        peer = peer_subject(transport.get_extra_info("peercert") if transport else None)
        view = self.pool.view if self.pool is not None else None
        admitted, why = poolfeed.admit(peer, view)
        if not admitted:
            self.m_feed_refused.labels("identity").inc()
            return status_body(403, "Forbidden", why)
        assert self.shared is not None
        synced, fed = self.shared.feed_state()
        ok, why = poolfeed.ready(view, synced, fed)
        if request.path == "/readyz":
            return web.Response(status=200 if ok else 503, text=why)
        if not ok:
            self.m_feed_refused.labels("not-ready").inc()
            return status_body(503, "ServiceUnavailable", f"the pool feed is not ready: {why}")
        pairs, info = self._request_info(request)
        read = self._shared_read(request, info, pairs)
        if read is None:
            return status_body(
                400,
                "BadRequest",
                "the pool feed serves only JSON lists and watches of "
                + ", ".join(r.name for r in self.config.share),
            )
        return await self.shared.serve(request, read)

    # -- the request's shape and the decision -------------------------------------------------

    def identify(self, request: web.Request) -> tuple[Presented, Subject | None]:
        """What to present upstream for ``request``'s client, and its certificate's subject."""
        if self.node is None:
            return Presented.OWN, None
        transport = request.transport
        peer = peer_subject(transport.get_extra_info("peercert") if transport else None)
        self.node.context()  # the subject of a rotated certificate, before comparing
        return judge(peer, self.node.subject), peer

    @staticmethod
    def _request_info(request: web.Request) -> tuple[list[tuple[str, str]], RequestInfo]:
        """The query's pairs in order, and the request as the API server reads it."""
        pairs = list(request.query.items())
        query: dict[str, list[str]] = {}
        for k, v in pairs:
            query.setdefault(k, []).append(v)
        return pairs, request_info(request.method, request.path, query)

    def _shared_read(
        self, request: web.Request, info: RequestInfo, pairs: list[tuple[str, str]]
    ) -> SharedRead | None:
        """The read the shared copies answer, if ``request`` is one (sharing.py)."""
        group, version = path_group_version(request.path)
        return shared_read(
            info,
            pairs,
            request.headers.get("Accept", ""),
            self.config.share,
            group=group,
            version=version,
        )

    def shape(self, request: web.Request, peer: Subject | None = None) -> Shape:
        """``peer``: the subject of the node's own certificate when the client showed it."""
        pairs, info = self._request_info(request)
        cred = credential(request.headers.get("Authorization"))
        upstream_ssl = None
        if peer is not None and self.node is not None:
            cred, upstream_ssl = certificate_credential(peer), self.node.context()
        read = watch = None
        if request.method in READ_METHODS and info.watch:
            watch = watch_key(
                info,
                user_agent=request.headers.get("User-Agent", ""),
                raw_path=request.rel_url.raw_path,
                query=pairs,
                accept=request.headers.get("Accept", ""),
                identity=identity_headers(list(request.headers.items())),
            )
        elif request.method in READ_METHODS and not info.long_running:
            read = read_key(
                info,
                user_agent=request.headers.get("User-Agent", ""),
                raw_path=request.rel_url.raw_path,
                query=pairs,
                accept=request.headers.get("Accept", ""),
                identity=identity_headers(list(request.headers.items())),
            )
        shared = None
        if self.shared is not None and request.method == "GET":
            shared = self._shared_read(request, info, pairs)
        return Shape(info, cred, read, watch, upstream_ssl, shared)

    def state(self, shape: Shape, healthy: bool) -> State:
        key = shape.key
        entry = self.cache.get(key) if key is not None else None
        if entry is None or (shape.watch is not None and entry.kind != "list"):
            return State(healthy, False, frozenset())
        cached = shape.read is None or shape.read.continue_token is None
        fresh = True
        if shape.read is not None and shape.read.min_rv is not None:
            have = fold.version(entry.resource_version)
            fresh = have is not None and have >= shape.read.min_rv
        return State(healthy, cached, frozenset(entry.credentials), fresh)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path in OWN_PATHS:
            return self.own(request)
        presented, peer = self.identify(request)
        if presented is Presented.REFUSED:
            assert peer is not None and self.node is not None
            self.m_refused_certs.inc()
            return status_body(
                403,
                "Forbidden",
                f"this proxy speaks only for its node ({self.node.subject.describe()}); the "
                f"client certificate of {peer.describe()} is refused: go to the API server "
                "directly",
            )
        shape = self.shape(request, peer if presented is Presented.NODE else None)
        if self.shared is not None and shape.shared is not None:
            headers = {"Authorization": request.headers.get("Authorization", "")}
            headers.update(identity_headers(list(request.headers.items())))
            if not headers["Authorization"]:
                del headers["Authorization"]
            answer = await self.shared.answer(
                request,
                shape.shared,
                shape.credential,
                headers,
                shape.upstream_ssl or self.ssl_ctx,
            )
            if answer is not None:
                self.m_requests.labels("serve-shared").inc()
                return answer
        return await self.act(request, shape, self.health.healthy)

    async def act(self, request: web.Request, shape: Shape, healthy: bool) -> web.StreamResponse:
        req = Request(request.method, shape.info.watch, shape.credential, shape.info.long_running)
        action = decide(req, self.state(shape, healthy))
        self.m_requests.labels(action.value).inc()
        if action in (Action.FORWARD, Action.FORWARD_WATCH, Action.FORWARD_STREAM):
            try:
                if action is Action.FORWARD:
                    return await self.forward(request, shape)
                return await self.stream(request, shape)
            except (aiohttp.ClientError, TimeoutError) as e:  # from the upstream side only
                return await self.failed(request, shape, classify(e))
        if action is Action.SERVE_CACHE:
            key = shape.key
            assert key is not None
            entry = self.cache.get(key)
            pieces = await self.cache.answer(key)
            if entry is None or pieces is None:  # dropped meanwhile
                return self.unavailable(request)
            self.cache.touch(key)
            self.m_hits.inc()
            headers = {"Content-Type": entry.content_type, "X-Raven-Cache": "hit"}
            return await send_pieces(request, entry.status, headers, self._count(pieces))
        if action is Action.HOLD_WATCH:
            assert shape.watch is not None
            self.cache.watched(shape.watch, +1)
            try:
                return await self.hold_watch(request)
            finally:
                self.cache.watched(shape.watch, -1)
        if action is Action.REFUSE_WRITE:
            return self.not_applied(request)
        return self.unavailable(request)

    async def _count(self, pieces: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        try:
            async for piece in pieces:
                self.m_saved.inc(len(piece))
                yield piece
        finally:
            await pieces.aclose()

    async def failed(
        self, request: web.Request, shape: Shape, failure: Failure
    ) -> web.StreamResponse:
        if marks_cloud_down(failure):
            self.health.record(False)
        outcome = after_failure(request.method, failure)
        if outcome is Outcome.ANSWER_OFFLINE:
            return await self.act(request, shape, healthy=False)
        if outcome is Outcome.NOT_APPLIED:
            return self.not_applied(request)
        if outcome is Outcome.OUTCOME_UNKNOWN:
            return status_body(
                504,
                "Timeout",
                f"the API server did not complete {request.method} {request.path} "
                f"({failure.value}): it may or may not have been applied. Read the object "
                "to find out before retrying.",
            )
        if outcome is Outcome.GATEWAY_TIMEOUT:
            return status_body(
                504, "Timeout", f"the API server did not answer {request.path} in time"
            )
        return status_body(
            502,
            "ServiceUnavailable",
            f"the connection to the API server broke while it answered {request.path}",
        )

    def not_applied(self, request: web.Request) -> web.Response:
        return status_body(
            503,
            "ServiceUnavailable",
            f"the API server is unreachable (cloud outage); {request.method} "
            f"{request.path} was NOT applied. Retry when the cloud is back.",
        )

    def unavailable(self, request: web.Request) -> web.Response:
        # One answer for every read the cache cannot serve to this credential, so that it
        # tells nothing about what is cached.
        return status_body(
            503,
            "ServiceUnavailable",
            f"the API server is unreachable and {request.path} is not cached for this credential",
        )

    def own(self, request: web.Request) -> web.Response:
        self.m_cloud.set(1 if self.health.healthy else 0)
        if request.path == "/healthz":
            return web.Response(text="ok")
        if request.path == "/readyz":
            if self.health.healthy:
                return web.Response(text="ok")
            return web.Response(status=503, text="cloud unreachable: serving from cache")
        self.m_entries.set(len(self.cache))
        self.m_evicted.set(self.cache.evicted)
        self.m_backlog.set(self.cache.store.backlog)
        self.m_outages.set(self.health.outages)
        self.m_watches.set(self.cache.open_watches)
        self.m_written.set(self.cache.store.submitted_bytes)
        self.m_commits.set(self.cache.store.commits)
        self.m_switches.set(self.upstream.switches)
        self.m_path_ok.set(0 if self.upstream.follower and self.upstream.follower.error else 1)
        if self.shared is not None:
            for resource, figures in self.shared.metrics().items():
                self.m_shared["synced"].labels(resource).set(1 if figures["synced"] else 0)
                self.m_shared["objects"].labels(resource).set(figures["objects"])
                self.m_shared["bytes"].labels(resource).set(figures["bytes"])
                self.m_shared["relists"].labels(resource).set(figures["relists"])
                self.m_shared["upstream_bytes"].labels(resource).set(figures["received"])
            self.m_source.clear()
            for shared, ref in self.shared.reflectors.items():
                self.m_source.labels(shared.name, ref.source.gateway or "").set(1)
            for (resource, verb), count in self.shared.served.items():
                self.m_shared_reads.labels(resource, verb).set(count)
            self.m_shared_watchers.set(self.shared.watchers)
            self.m_reviews.set(self.shared.reviews.asked)
        if self.pool is not None:
            self.m_pool_switches.set(self.pool.switches)
        self.m_feed_serving.set(1 if self.feed_runner is not None else 0)
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": "text/plain; version=0.0.4"},
        )

    # -- forwarding ---------------------------------------------------------------------------

    def _upstream(self, request: web.Request) -> tuple[URL, dict[str, str]]:
        # The raw, still-encoded path: decoding %2F would let a name climb to another resource.
        url = URL(self.config.upstream.rstrip("/") + request.raw_path, encoded=True)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        return url, headers

    def _learn_credential(self, request: web.Request, shape: Shape, status: int) -> Verdict:
        verdict = credential_verdict(request.method, status)
        if shape.credential is None:
            return verdict
        if verdict is Verdict.REFUSED:
            self.cache.revoke(shape.credential)
        elif verdict is Verdict.FORBIDDEN and shape.key is not None:
            self.cache.forbid(shape.key, shape.credential)
        return verdict

    async def forward(self, request: web.Request, shape: Shape) -> web.StreamResponse:
        url, headers = self._upstream(request)
        body = await request.read()
        async with self.upstream.request(
            request.method,
            url,
            headers=headers,
            data=body or None,
            ssl=shape.upstream_ssl or self.ssl_ctx,
            allow_redirects=False,
        ) as up:
            data = await up.read()
            out = {k: v for k, v in up.headers.items() if k.lower() not in DROP_RESPONSE}
            content_type = up.headers.get("Content-Type", "")
        verdict = self._learn_credential(request, shape, up.status)
        if verdict is Verdict.ACCEPTED and shape.credential and shape.read is not None:
            # Remember this credential as accepted for exactly this data.
            await self.remember(shape.read, shape.credential, up.status, content_type, data)
        return await send(request, up.status, out, data)

    async def remember(
        self, key: ReadKey, cred: str, status: int, content_type: str, data: bytes
    ) -> None:
        """Store a successful read. Lists are taken apart before the client gets its answer,
        so a watch it starts from that answer finds the list in the cache."""
        doc: ListDoc | Blob = Blob(None)
        if "json" in content_type:
            if len(data) > INLINE_PARSE:
                doc = await asyncio.to_thread(split, data)
            else:
                doc = split(data)
        if isinstance(doc, Blob):
            if key.continue_token is None:
                body_digest = None
                if len(data) > INLINE_PARSE:
                    body_digest = await asyncio.to_thread(digest, data)
                self.cache.remember_blob(
                    key.key, status, content_type, data, doc.resource_version, cred, body_digest
                )
            return
        whole = self.pages.add(key.key, key.continue_token, doc, cred, time.monotonic())
        if whole is None:
            return
        if not whole.table:
            self.cache.remember_list(key.key, status, content_type, whole, cred)
            return
        body = data if whole is doc else join(whole.shell, "rows", (i.body for i in whole.items))
        self.cache.remember_blob(key.key, status, content_type, body, whole.resource_version, cred)

    async def stream(self, request: web.Request, shape: Shape) -> web.StreamResponse:
        """Stream a long-running request through as it comes, without a total timeout. A watch's
        events are folded into the list it continues. A change of the upstream route ends the
        stream (its client watches again, through the new route).

        Losing the cloud (by the probe) ends the upstream side. A watch's client is then held,
        silent, like an offline watch, and ended once the cloud is back, so it watches again at
        once (a link that silently drops packets would otherwise leave it waiting on a dead
        connection until its own read timeout, long after the cloud returned). Any other stream
        just ends. An upstream that breaks while the cloud is healthy ends the client's stream at
        once; the cloud's state is the probe's business.
        """
        url, headers = self._upstream(request)
        body = await request.read()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=None)
        route = self.upstream.changed
        async with self.upstream.request(
            request.method,
            url,
            headers=headers,
            data=body or None,
            ssl=shape.upstream_ssl or self.ssl_ctx,
            timeout=timeout,
            allow_redirects=False,
        ) as up:
            self._learn_credential(request, shape, up.status)
            out = {k: v for k, v in up.headers.items() if k.lower() not in DROP_RESPONSE}
            if up.status != 200:
                data = await up.read()
                return web.Response(status=up.status, body=data, headers=out)
            resp = web.StreamResponse(status=200, headers=out)
            try:
                await resp.prepare(request)
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                return resp  # the client left before the first byte
            folder = None
            if shape.watch is not None and "json" in up.headers.get("Content-Type", ""):
                folder = _Folder(self.cache, shape.watch, request.query.get("resourceVersion", ""))
            pump = asyncio.create_task(self._pump(up, resp, folder))
            if shape.watch is not None:
                self.cache.watched(shape.watch, +1)
            try:
                while (
                    not pump.done()
                    and self.health.healthy
                    and not self.stopping
                    and not route.is_set()
                ):
                    wakes = {
                        asyncio.ensure_future(self.health.changed.wait()),
                        asyncio.ensure_future(route.wait()),
                    }
                    await asyncio.wait({pump, *wakes}, return_when=asyncio.FIRST_COMPLETED)
                    for wake in wakes:
                        wake.cancel()
            finally:
                await cancel_and_wait(pump)
                if shape.watch is not None:
                    self.cache.watched(shape.watch, -1)
            error = None if pump.cancelled() else pump.exception()
            if isinstance(error, _ClientGone):
                return resp
            if error is not None and not isinstance(error, aiohttp.ClientError | TimeoutError):
                raise error
            if pump.cancelled() and shape.watch is not None:
                await self._hold(resp)  # the cloud went away (or we stop): hold, then end
            else:
                await self._end(resp)  # the API server ended it, or its connection broke
            return resp

    async def _pump(
        self, up: aiohttp.ClientResponse, resp: web.StreamResponse, folder: _Folder | None
    ) -> None:
        async for chunk in up.content.iter_any():
            try:
                await resp.write(chunk)
            except (ConnectionError, aiohttp.ClientConnectionResetError) as e:
                raise _ClientGone from e
            if folder is not None:
                folder.feed(chunk)

    async def hold_watch(self, request: web.Request) -> web.StreamResponse:
        """Hold the watch open and silent until the cloud is healthy; ending it forces a re-list."""
        resp = web.StreamResponse(status=200)
        resp.content_type = "application/json"
        try:
            await resp.prepare(request)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            return resp
        await self._hold(resp)
        return resp

    async def _hold(self, resp: web.StreamResponse) -> None:
        while not self.health.healthy and not self.stopping:
            await self.health.changed.wait()
        await self._end(resp)

    @staticmethod
    async def _end(resp: web.StreamResponse) -> None:
        try:
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass  # the client left first


class _Folder:
    """Splits a watch stream into events and folds each into the list it continues."""

    def __init__(self, cache: Cache, key: str, start: str) -> None:
        self.cache = cache
        self.key = key
        self.follower = fold.begin(cache.list_state(key), start)
        self.buf = b""

    def feed(self, chunk: bytes) -> None:
        if self.follower.generation is None:
            return  # not folding (any more)
        self.buf += chunk
        if b"\n" not in chunk:
            if len(self.buf) > MAX_EVENT_LINE:
                self.follower, self.buf = fold.Follower(None, None), b""
            return
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            if line.strip():
                self.line(line)

    def line(self, line: bytes) -> None:
        event = fold.parse_event(line)
        if event is None:
            self.follower = fold.Follower(None, None)
            return
        op, self.follower = fold.step(self.follower, self.cache.list_state(self.key), event)
        if op in (fold.Op.UPSERT, fold.Op.DELETE, fold.Op.ADVANCE):
            self.cache.fold(self.key, op, event)
        elif op is fold.Op.SKIP:
            self.cache.touch(self.key)
