"""Which way the proxy's upstream traffic goes: straight to the API server, or through a pool
member's HTTP CONNECT relay while the node's cloud path says ``via`` (raven/cloudpath.py; the
path file is written by ``raven-heartbeat``).

Every request to the API server (forwarded reads and writes, watches and other streams, the
cloud health probe) goes through :meth:`Upstream.request`, so all of it takes the same route.
Through a relay, aiohttp opens an HTTP CONNECT tunnel to the API server's address and TLS runs
inside it end to end: the relay sees neither a token nor a certificate's key, and the API server
still authenticates the client's own credential (or the node's certificate).

The route follows the file: :class:`Upstream` polls it (a ``stat`` every ``poll_interval``, a
read only when it changed). When the relay changes it opens a fresh client session for the new
route and retires the old one: ``changed`` fires at once, so streams held on the old route end and
their clients watch again through the new one, and the probe tries the new route at once. The
heartbeat moves away from a route because it stopped working (the node's own path, or a relay
that went away), so requests still running on it are ended at once: a write hanging on a dead
path would otherwise hold its client (the kubelet's renewal) until its own timeout. Only back to
``direct`` after a heal is the relay still fine: then the old session is closed when its last
request is done, or after ``RETIRE_GRACE`` seconds whatever it still carries.
``direct`` and ``none`` both mean no relay (with ``none`` the probe keeps finding
the cloud unreachable and the cache answers), so a change between them keeps the session. A
malformed file keeps the last good route; its error is logged once, not on every poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from raven.aio import cancel_and_wait
from raven.cloudpath import DIRECT, VIA, CloudPath, PathFollower

log = logging.getLogger(__name__)

# Seconds between two looks at the path file (a stat; the file is read only when it changed).
POLL_INTERVAL = 0.5
# Seconds requests still running on a retired route may take before its session is closed.
RETIRE_GRACE = 10.0


def relay_of(path: CloudPath) -> str | None:
    """The relay URL ``path`` sends traffic through; None for a straight connection."""
    return path.proxy if path.mode == VIA else None


@dataclass(eq=False)
class _Route:
    session: aiohttp.ClientSession
    relay: str | None
    running: int = 0  # requests in flight on it
    retired: bool = False

    def __post_init__(self) -> None:
        self.idle = asyncio.Event()


class Upstream:
    """The client session to the API server for the current route (see the module doc)."""

    def __init__(
        self,
        make_session: Callable[[], aiohttp.ClientSession],
        path_file: Path | None = None,
        poll_interval: float = POLL_INTERVAL,
        on_change: Callable[[CloudPath, CloudPath], None] | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"path poll interval must be positive, got {poll_interval}")
        self._make_session = make_session
        self.follower = PathFollower(path_file) if path_file is not None else None
        self.poll_interval = poll_interval
        self._on_change = on_change
        self.path = CloudPath()
        self.changed = asyncio.Event()  # set and replaced whenever the relay changes
        self.switches = 0  # relay changes since start
        self._route: _Route | None = None
        self._logged_error = ""
        self._poller: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[None]] = set()

    @property
    def relay(self) -> str | None:
        """The relay the current route goes through, None when straight."""
        return self._route.relay if self._route is not None else None

    async def start(self) -> None:
        self.poll()
        if self._route is None:
            self._route = _Route(self._make_session(), relay_of(self.path))
        if self.follower is not None:
            self._poller = asyncio.create_task(self._poll_forever(), name="raven-cacheproxy-path")

    async def stop(self) -> None:
        await cancel_and_wait(self._poller)
        for task in list(self._closers):
            await cancel_and_wait(task)
        route, self._route = self._route, None
        if route is not None:
            await route.session.close()

    @asynccontextmanager
    async def request(self, method: str, url: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """``session.request`` on the current route (through its relay, if any)."""
        route = self._route
        if route is None:
            raise RuntimeError("the upstream is not started")
        route.running += 1
        try:
            async with route.session.request(method, url, proxy=route.relay, **kwargs) as resp:
                yield resp
        finally:
            route.running -= 1
            if route.running == 0:
                route.idle.set()

    def poll(self) -> bool:
        """Look at the path file once; switch routes when its relay changed. True on a switch."""
        if self.follower is None:
            return False
        moved = self.follower.poll()
        if self.follower.error:
            if self.follower.error != self._logged_error:
                log.error("cloud path file refused, keeping %s: %s", self.path.describe(),
                          self.follower.error)  # fmt: skip
                self._logged_error = self.follower.error
            return False
        self._logged_error = ""
        if not moved:
            return False
        old, new = self.path, self.follower.current
        self.path = new
        log.info("cloud path: %s -> %s", old.describe(), new.describe())
        if self._on_change is not None:
            self._on_change(old, new)
        if self._route is None or relay_of(new) == self._route.relay:
            return False
        self._switch(relay_of(new), grace=RETIRE_GRACE if new.mode == DIRECT else 0.0)
        return True

    def _switch(self, relay: str | None, *, grace: float = RETIRE_GRACE) -> None:
        old = self._route
        self._route = _Route(self._make_session(), relay)
        self.switches += 1
        if old is not None:
            old.retired = True
            task = asyncio.create_task(self._retire(old, grace), name="raven-cacheproxy-retire")
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)
        done, self.changed = self.changed, asyncio.Event()
        done.set()

    @staticmethod
    async def _retire(route: _Route, grace: float) -> None:
        try:
            if route.running and grace > 0:
                async with asyncio.timeout(grace):
                    await route.idle.wait()
        except TimeoutError:
            pass
        finally:
            await route.session.close()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self.poll()
