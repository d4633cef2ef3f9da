"""Follows the node's pool for pool-level reuse (raven/cacheproxy/pool.py): asks the agent's
``/role`` every second, says which source the shared copies read from, and holds the LAN session
to the gateway's pool feed.

A feed that was not ready or failed is left for the cloud until the gateway changes or
``retry`` seconds have passed; then it is tried again. ``changed`` is set (and replaced) whenever
the source changes, so a reflector on the old source ends its watch and resumes on the new one.
An agent that does not answer, or answers something unusable, leaves the last view in place
(logged once): a restarting agent does not move every copy to the cloud.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable

import aiohttp

from raven.aio import cancel_and_wait
from raven.cacheproxy.pool import CLOUD, PoolView, RoleError, Source, parse_role, source

log = logging.getLogger(__name__)

POLL = 1.0
RETRY = 3.0
READY_TIMEOUT = 2.0
CONNECT_TIMEOUT = 3.0


class PoolFollower:
    def __init__(
        self,
        node: str,
        role_url: str,
        port: int,
        ssl_context: Callable[[], ssl.SSLContext],
        *,
        poll: float = POLL,
        retry: float = RETRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.role_url = role_url
        self.port = port
        self.ssl_context = ssl_context
        self.poll = poll
        self.retry = retry
        self.clock = clock
        self.view: PoolView | None = None
        self.current: Source = CLOUD
        self.changed = asyncio.Event()
        self.switches = 0
        self.error = ""
        self._failed: tuple[str | None, float] | None = None  # (gateway, when)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the pool follower is not started")
        return self._session

    async def start(self) -> None:
        # The LAN session: straight to the gateway, never through the cloud path's relay.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
        )
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="raven-cacheproxy-pool")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._session is not None:
            await self._session.close()
        self._wake()

    def _wake(self) -> None:
        done, self.changed = self.changed, asyncio.Event()
        done.set()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            await self.refresh()

    async def refresh(self) -> None:
        try:
            async with self.session.get(
                self.role_url, timeout=aiohttp.ClientTimeout(total=READY_TIMEOUT)
            ) as resp:
                doc = json.loads(await resp.read()) if resp.status == 200 else None
            if doc is None:
                raise RoleError(f"the agent's /role answered {resp.status}")
            self.view = parse_role(doc, self.node)
            self.error = ""
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            if str(e) != self.error:
                log.warning("pool: cannot read the agent's role (%s); keeping %s", e,
                            self.current.describe())  # fmt: skip
            self.error = str(e)
        self._choose()

    def _choose(self) -> None:
        failed = False
        if self._failed is not None:
            gateway, when = self._failed
            view_gateway = self.view.holder if self.view is not None else None
            if gateway != view_gateway or self.clock() - when > self.retry:
                self._failed = None
            else:
                failed = True
        new = source(self.view, port=self.port, feed_failed=failed)
        if new != self.current:
            log.info("pool: shared copies now read from %s (were %s)", new.describe(),
                     self.current.describe())  # fmt: skip
            self.current = new
            self.switches += 1
            self._wake()

    def failed(self, src: Source, why: str) -> None:
        """The feed of ``src`` was not ready or failed: read the cloud for a while."""
        if src.feed is None or src != self.current:
            return
        log.warning("pool: the feed of %s %s; reading the API server", src.gateway, why)
        self._failed = (src.gateway, self.clock())
        self._choose()

    async def feed_ready(self, src: Source) -> tuple[bool, str]:
        """Whether the feed of ``src`` says it is in sync."""
        assert src.feed is not None
        try:
            async with self.session.get(
                src.feed + "/readyz",
                ssl=self.ssl_context(),
                timeout=aiohttp.ClientTimeout(total=READY_TIMEOUT),
            ) as resp:
                text = (await resp.read()).decode(errors="replace").strip()
                return resp.status == 200, f"answered {resp.status}: {text[:200]}"
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as e:
            return False, f"did not answer ({type(e).__name__}: {e})"
