"""The proxy's one upstream list+watch of a shared resource, with the node's identity, into a
:class:`~raven.cacheproxy.watchcache.WatchCache` that every client is answered from.

As client-go's reflector: the first list asks ``resourceVersion=0`` (the API server answers
from its watch cache, whole); a relist after a 410 asks the newest state in pages of 500; the
watch starts from the list's version with bookmarks and a ``timeoutSeconds`` between 5 and 10
minutes, and starts again from the last version seen when the API server ends it. Failures are
retried after a backoff (800 ms doubling to 30 s, reset by success).

*In sync* (what :mod:`raven.cacheproxy.sharing` routes on) means: listed, and the watch open or
being resumed from where it was. A failure or the cloud going unhealthy makes it not in sync
until the watch is open again; the copy keeps its state, which offline is the last known one.
A change of the upstream route (the cloud path) ends the watch; it resumes at once through the
new route, from the same version, so no client sees a gap.

With pool-level reuse (a :class:`~raven.cacheproxy.poolfollow.PoolFollower`) the source is the
pool gateway's feed while the follower names one and it says it is ready; a feed that fails is
left for the cloud at once (no backoff), and a change of source ends the watch, which resumes
from the same version on the new source. Reading a feed does not need the node's own path to
the cloud: a member cut from the cloud keeps its copies current through its pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
from yarl import URL

from raven.aio import cancel_and_wait
from raven.cacheproxy.health import CloudHealth
from raven.cacheproxy.pool import CLOUD, Source
from raven.cacheproxy.poolfollow import PoolFollower
from raven.cacheproxy.sharing import SharedResource
from raven.cacheproxy.upstream import Upstream
from raven.cacheproxy.watchcache import WatchCache, WatchCacheError, stored, version

log = logging.getLogger(__name__)

PAGE = 500
MIN_WATCH_TIMEOUT = 300
BACKOFF_FIRST, BACKOFF_MAX = 0.8, 30.0
CONNECT_TIMEOUT = 5.0
LIST_TIMEOUT = 60.0
MAX_LINE = 16 * 1024 * 1024


class Expired(Exception):
    """The API server no longer has the version the watch asked for (410): list again."""


class Reflector:
    def __init__(
        self,
        resource: SharedResource,
        upstream: Upstream,
        base_url: str,
        ssl_context: Callable[[], ssl.SSLContext],
        health: CloudHealth,
        cache: WatchCache | None = None,
        *,
        rng: random.Random | None = None,
        pool: PoolFollower | None = None,
    ) -> None:
        self.resource = resource
        self.upstream = upstream
        self.base_url = base_url.rstrip("/")
        self.ssl_context = ssl_context
        self.health = health
        self.cache = cache if cache is not None else WatchCache()
        self.rng = rng or random.Random()
        self.pool = pool
        self.source: Source = CLOUD  # where the copy reads from now
        self.synced = False
        self.changed = asyncio.Event()  # set and replaced on every change of the copy
        self.relists = 0
        self.received_bytes = 0
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"raven-reflector-{self.resource.name}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._wake()

    def _wake(self) -> None:
        done, self.changed = self.changed, asyncio.Event()
        done.set()

    def _set_synced(self, synced: bool) -> None:
        if synced != self.synced:
            self.synced = synced
            log.info("shared %s: %s", self.resource.name, "in sync" if synced else "not in sync")
            self._wake()

    async def _pick(self) -> Source:
        """The source to read from now: a ready feed, else the cloud (waiting while the cloud
        is unhealthy, unless a feed turns up meanwhile)."""
        while True:
            src = self.pool.current if self.pool is not None else CLOUD
            if src.feed is not None and self.pool is not None:
                ok, why = await self.pool.feed_ready(src)
                if ok:
                    return src
                self.pool.failed(src, why)
                continue
            if self.health.healthy:
                return CLOUD
            self._set_synced(False)
            wakes = [asyncio.ensure_future(self.health.changed.wait())]
            if self.pool is not None:
                wakes.append(asyncio.ensure_future(self.pool.changed.wait()))
            try:
                await asyncio.wait(wakes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wake in wakes:
                    wake.cancel()

    async def run(self) -> None:
        backoff = BACKOFF_FIRST
        must_list = True
        while True:
            src = await self._pick()
            if src != self.source:
                log.info("shared %s: reading %s", self.resource.name, src.describe())
                self.source = src
            try:
                if must_list:
                    await self._list(src, consistent=self.cache.filled)
                    must_list = False
                await self._watch(src)
                backoff = BACKOFF_FIRST
            except Expired:
                log.info("shared %s: version %d expired, listing again", self.resource.name,
                         self.cache.rv)  # fmt: skip
                must_list = True
            except (aiohttp.ClientError, TimeoutError, ValueError, WatchCacheError) as e:
                self.last_error = f"{type(e).__name__}: {e}"
                if src.feed is not None and self.pool is not None:
                    self.pool.failed(src, f"failed ({self.last_error})")
                    continue  # the cloud at once: the copy must not wait on a dead feed
                log.warning("shared %s: %s; again in %.1f s", self.resource.name,
                            self.last_error, backoff)  # fmt: skip
                self._set_synced(False)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _url(self, src: Source, params: dict[str, str]) -> URL:
        base = src.feed if src.feed is not None else self.base_url
        return URL(base + self.resource.collection_path()).with_query(params)

    def _request(self, src: Source, params: dict[str, str], timeout: aiohttp.ClientTimeout) -> Any:
        """The GET on ``src``: the LAN session to a feed, else the upstream (cloud path)."""
        kwargs: dict[str, Any] = {
            "headers": {"Accept": "application/json"},
            "ssl": self.ssl_context(),
            "timeout": timeout,
        }
        if src.feed is not None and self.pool is not None:
            return self.pool.session.get(self._url(src, params), **kwargs)
        return self.upstream.request("GET", self._url(src, params), **kwargs)

    async def _get(self, src: Source, params: dict[str, str]) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=LIST_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
        async with self._request(src, params, timeout) as resp:
            data = await resp.read()
            self.received_bytes += len(data)
            if resp.status == 410:
                raise Expired()
            if resp.status != 200:
                raise ValueError(f"list answered {resp.status}: {data[:300]!r}")
        doc = json.loads(data)
        if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
            raise ValueError("the list answer has no items")
        return doc

    async def _list(self, src: Source, *, consistent: bool) -> None:
        """``consistent``: the newest state, in pages (a relist); else the API server's cache."""
        params = {"limit": str(PAGE)} if consistent else {"resourceVersion": "0"}
        items: list[Any] = []
        while True:
            doc = await self._get(src, params)
            items.extend(doc["items"])
            meta = doc.get("metadata") or {}
            token = meta.get("continue") if isinstance(meta, dict) else None
            if not token:
                break
            params = {"limit": str(PAGE), "continue": str(token)}
        rv = version(meta.get("resourceVersion") if isinstance(meta, dict) else None)
        if rv is None:
            raise ValueError("the list answer has no resourceVersion")
        objects = [stored(item) for item in items]
        self.cache.replace(objects, rv)
        self.relists += 1
        self._wake()

    async def _watch(self, src: Source) -> None:
        params = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": str(self.cache.rv),
            "timeoutSeconds": str(int(MIN_WATCH_TIMEOUT * (1 + self.rng.random()))),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=None)
        route = self.upstream.changed
        moved = self.pool.changed if self.pool is not None else asyncio.Event()
        feed = src.feed is not None
        async with self._request(src, params, timeout) as resp:
            if resp.status == 410:
                raise Expired()
            if resp.status != 200:
                data = await resp.read()
                raise ValueError(f"watch answered {resp.status}: {data[:300]!r}")
            self._set_synced(True)
            pump = asyncio.create_task(self._pump(resp))
            try:
                while (
                    not pump.done()
                    and not moved.is_set()
                    and (feed or (self.health.healthy and not route.is_set()))
                ):
                    wakes = {
                        asyncio.ensure_future(self.health.changed.wait()),
                        asyncio.ensure_future(route.wait()),
                        asyncio.ensure_future(moved.wait()),
                    }
                    try:
                        await asyncio.wait({pump, *wakes}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for wake in wakes:
                            wake.cancel()
            finally:
                await cancel_and_wait(pump)
            if not pump.cancelled() and pump.exception() is not None:
                raise pump.exception()  # type: ignore[misc]

    async def _pump(self, resp: aiohttp.ClientResponse) -> None:
        buf = b""
        async for chunk in resp.content.iter_any():
            self.received_bytes += len(chunk)
            buf += chunk
            if b"\n" not in chunk:
                if len(buf) > MAX_LINE:
                    raise ValueError("a watch event longer than 16 MiB")
                continue
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    self._event(line)

    def _event(self, line: bytes) -> None:
        doc = json.loads(line)
        if not isinstance(doc, dict) or not isinstance(doc.get("object"), dict):
            raise ValueError(f"not a watch event: {line[:200]!r}")
        type_, obj = doc.get("type"), doc["object"]
        if type_ == "ERROR":
            if obj.get("code") == 410:
                raise Expired()
            raise ValueError(f"the watch ended with an error: {obj.get('message', obj)}")
        if type_ == "BOOKMARK":
            rv = version((obj.get("metadata") or {}).get("resourceVersion"))
            if rv is None:
                raise ValueError("a bookmark without a version")
            if self.cache.bookmark(rv):
                self._wake()
            return
        if self.cache.apply(str(type_), stored(obj)) is not None:
            self._wake()
