"""Node-level reuse: the proxy's shared copies of the shared resources, and the answers it gives
from them. One upstream list+watch per resource (raven/cacheproxy/reflector.py) serves every
client of the node, each with its own namespace, selectors and version, after the API server
said its own credential may read that (raven/cacheproxy/access.py); which reads qualify and when
a copy may answer is decided in raven/cacheproxy/sharing.py.

- **A list** is the copy's matching objects at its version, whole.
- **A watch** from version ``X`` gets every matching change after ``X`` in order, each once;
  from ``""`` or ``0`` it first gets the matching objects as ADDED, as from the API server. A
  version older than the copy's history gets the API server's answer to that, an ERROR event
  with a 410 Expired Status. With ``allowWatchBookmarks`` a BOOKMARK carries the copy's version
  at least every minute while nothing else is sent. The watch ends after its
  ``timeoutSeconds`` (else after 30 to 60 minutes, as kube-apiserver), when the copy is listed
  again (the client's next watch is then answered 410 if it missed anything), or when the proxy
  stops. While the cloud is away the watch stays open and silent, and goes on from where it was
  once the copy does.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from raven.cacheproxy.access import AccessReviews
from raven.cacheproxy.health import CloudHealth
from raven.cacheproxy.listdoc import join
from raven.cacheproxy.poolfollow import PoolFollower
from raven.cacheproxy.reflector import Reflector
from raven.cacheproxy.sharing import (
    Copy,
    Route,
    SharedRead,
    SharedResource,
    Verdict,
    route,
)
from raven.cacheproxy.upstream import Upstream
from raven.cacheproxy.watchcache import Selection, Stored, WatchCache

BOOKMARK_EVERY = 60.0
DEFAULT_WATCH_TIMEOUT = (1800, 3600)  # kube-apiserver's min-request-timeout, times 1 to 2
STALL_TIMEOUT = 60.0


class _Gone(Exception):
    """The client went away."""


def _line(type_: str, body: bytes) -> bytes:
    return b'{"type":"' + type_.encode() + b'","object":' + body + b"}\n"


def expired(asked: int, oldest: int) -> bytes:
    """The ERROR event kube-apiserver's watch cache sends for a version it no longer has."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {asked} ({oldest})",
        "reason": "Expired",
        "code": 410,
    }
    return _line("ERROR", json.dumps(status, separators=(",", ":")).encode())


def bookmark(resource: SharedResource, rv: int) -> bytes:
    obj = {
        "kind": resource.kind,
        "apiVersion": resource.api_version,
        "metadata": {"resourceVersion": str(rv)},
    }
    return _line("BOOKMARK", json.dumps(obj, separators=(",", ":")).encode())


def list_body(resource: SharedResource, rv: int, items: list[Stored]) -> bytes:
    shell = {
        "kind": resource.list_kind,
        "apiVersion": resource.api_version,
        "metadata": {"resourceVersion": str(rv)},
    }
    return bytes(join(shell, "items", (o.body for o in items)))


class SharedReads:
    """The shared copies of one proxy, and the answers from them."""

    def __init__(
        self,
        resources: tuple[SharedResource, ...],
        upstream: Upstream,
        base_url: str,
        node_context: Callable[[], ssl.SSLContext],
        health: CloudHealth,
        *,
        capacity: int,
        review_ttl: float,
        pool: PoolFollower | None = None,
    ) -> None:
        self.health = health
        self.reflectors = {
            r: Reflector(
                r, upstream, base_url, node_context, health, WatchCache(capacity), pool=pool
            )
            for r in resources
        }
        self.reviews = AccessReviews(upstream, base_url, review_ttl)
        self.stopping = asyncio.Event()
        self.watchers = 0
        self.served: dict[tuple[str, str], int] = {}  # (resource, verb) -> reads answered
        self.rng = random.Random()

    def start(self) -> None:
        for reflector in self.reflectors.values():
            reflector.start()

    async def stop(self) -> None:
        self.stopping.set()
        for reflector in self.reflectors.values():
            await reflector.stop()

    def copy(self, resource: SharedResource) -> Copy:
        r = self.reflectors[resource]
        return Copy(r.synced, r.cache.filled, r.cache.rv)

    async def answer(
        self,
        request: web.Request,
        read: SharedRead,
        credential: str | None,
        headers: Mapping[str, str],
        ssl_context: ssl.SSLContext,
    ) -> web.StreamResponse | None:
        """The answer from the shared copy, or None when the read must go through."""
        healthy = self.health.healthy
        verdict = Verdict.UNKNOWN
        if credential is not None:
            verdict = self.reviews.verdict(credential, read, online=healthy)
        chosen = route(
            read,
            self.copy(read.resource),
            verdict,
            cloud_healthy=healthy,
            has_credential=credential is not None,
        )
        if chosen is Route.CHECK:
            assert credential is not None
            verdict = await self.reviews.review(credential, read, headers, ssl_context)
            chosen = route(
                read,
                self.copy(read.resource),
                verdict,
                cloud_healthy=self.health.healthy,
                has_credential=True,
            )
        if chosen is not Route.SHARED:
            return None
        return await self.serve(request, read)

    async def serve(self, request: web.Request, read: SharedRead) -> web.StreamResponse:
        """Answer ``read`` from its copy (the caller decided it may be)."""
        key = (read.resource.name, read.verb)
        self.served[key] = self.served.get(key, 0) + 1
        if read.verb == "list":
            return self._list(read)
        return await self._watch(request, read)

    def feed_state(self) -> tuple[dict[str, bool], bool]:
        """For the pool feed's readiness: each copy in sync, and whether any reads a feed."""
        synced = {r.name: ref.synced for r, ref in self.reflectors.items()}
        fed = any(ref.source.feed is not None for ref in self.reflectors.values())
        return synced, fed

    @staticmethod
    def _selection(read: SharedRead) -> Selection:
        return Selection(read.namespace, read.labels, read.fields)

    def _list(self, read: SharedRead) -> web.Response:
        rv, items = self.reflectors[read.resource].cache.listing(self._selection(read))
        body = list_body(read.resource, rv, items)
        headers = {"Content-Type": "application/json", "X-Raven-Shared": read.resource.name}
        return web.Response(status=200, body=body, headers=headers)

    async def _watch(self, request: web.Request, read: SharedRead) -> web.StreamResponse:
        reflector = self.reflectors[read.resource]
        cache = reflector.cache
        selection = self._selection(read)
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "application/json", "X-Raven-Shared": read.resource.name},
        )
        loop = asyncio.get_running_loop()
        timeout = read.timeout
        if timeout is None:
            timeout = self.rng.randint(*DEFAULT_WATCH_TIMEOUT)
        deadline = loop.time() + timeout
        self.watchers += 1
        try:
            await resp.prepare(request)
            epoch = cache.epoch
            if read.resource_version in ("", "0"):
                pos, items = cache.listing(selection)
                await self._write(resp, b"".join(_line("ADDED", o.body) for o in items))
            else:
                pos = int(read.resource_version)
            last_sent = loop.time()
            marked = pos
            while not self.stopping.is_set() and cache.epoch == epoch:
                wake = reflector.changed
                # What the copy holds now, read at once: the reflector may apply more while
                # this client is written to, and those must come in the next turn, not be
                # skipped by moving past them.
                upto, news = cache.rv, cache.since(pos, selection)
                if not isinstance(news, list):  # TOO_OLD
                    await self._write(resp, expired(pos, cache.floor))
                    break
                if news:
                    await self._write(resp, b"".join(_line(t, o.body) for t, o in news))
                    last_sent = loop.time()
                    marked = news[-1][1].rv
                pos = max(pos, upto)
                now = loop.time()
                if read.bookmarks and pos > marked and now - last_sent >= BOOKMARK_EVERY:
                    await self._write(resp, bookmark(read.resource, pos))
                    last_sent, marked = now, pos
                left = deadline - now
                if left <= 0:
                    break
                wait = min(left, BOOKMARK_EVERY) if read.bookmarks else left
                stop = asyncio.ensure_future(self.stopping.wait())
                changed = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait({stop, changed}, timeout=wait, return_when="FIRST_COMPLETED")
                finally:
                    stop.cancel()
                    changed.cancel()
            await resp.write_eof()
        except (_Gone, ConnectionError):
            pass
        finally:
            self.watchers -= 1
        return resp

    @staticmethod
    async def _write(resp: web.StreamResponse, data: bytes) -> None:
        if not data:
            return
        try:
            async with asyncio.timeout(STALL_TIMEOUT):
                await resp.write(data)
        except (ConnectionError, TimeoutError) as e:
            raise _Gone from e

    def metrics(self) -> dict[str, Any]:
        """Figures for /metrics, by resource."""
        return {
            r.name: {
                "synced": ref.synced,
                "objects": len(ref.cache.objects),
                "history": len(ref.cache.history),
                "bytes": ref.cache.size(),
                "relists": ref.relists,
                "received": ref.received_bytes,
            }
            for r, ref in self.reflectors.items()
        }
