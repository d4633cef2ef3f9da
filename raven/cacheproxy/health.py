"""Cloud health: a probe of the API server with documented interval and thresholds.

Every ``interval`` seconds (default 1 s) the probe opens an HTTPS request to ``/healthz`` with a
``timeout`` (default 1 s). Any HTTP answer below 500 counts as success (401 still proves the API
server is up; the proxy holds no credential of its own). One failure (``fail_threshold`` = 1)
marks the cloud unhealthy at once; only ``success_threshold`` (default 3) consecutive successes
mark it healthy again, so a flapping link does not make clients re-list repeatedly.

The probe is what sets the cloud's state. The server adds a failure only when a forwarded
request could not even open a connection (see ``decide.marks_cloud_down``); a slow or broken
request is that request's problem, not every client's.

The probe takes the proxy's current upstream route (:mod:`raven.cacheproxy.upstream`), through
the relay while the node's cloud path goes via a neighbour; when the route changes it probes the
new one at once rather than after the rest of its interval.

``online_time()`` counts the seconds the cloud has been healthy since start: the clock by which
cache entries age, so an outage never empties the cache.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

import aiohttp

from raven.aio import cancel_and_wait
from raven.cacheproxy.upstream import Upstream


@dataclass
class HealthConfig:
    interval: float = 1.0
    timeout: float = 1.0
    fail_threshold: int = 1
    success_threshold: int = 3


class CloudHealth:
    def __init__(self, url: str, ssl_ctx: ssl.SSLContext, config: HealthConfig | None = None):
        self.url = url.rstrip("/")
        self.ssl_ctx = ssl_ctx
        self.config = config or HealthConfig()
        if self.config.fail_threshold < 1 or self.config.success_threshold < 1:
            raise ValueError("health thresholds must be at least 1")
        self.healthy = True  # optimistic at start; the first probe corrects it within a timeout
        self._fails = 0
        self._successes = 0
        self.changed = asyncio.Event()  # set and replaced on every transition
        self._task: asyncio.Task[None] | None = None
        self.outages = 0  # times the cloud was marked unreachable since start
        self._online = 0.0  # healthy seconds before the current healthy spell
        self._since = time.monotonic()  # start of the current healthy spell

    def online_time(self) -> float:
        """Seconds the cloud has been healthy since the proxy started."""
        if self.healthy:
            return self._online + time.monotonic() - self._since
        return self._online

    def record(self, ok: bool) -> None:
        """Feed one probe outcome (also used by the server when a forward cannot connect)."""
        if ok:
            self._fails = 0
            self._successes += 1
            if not self.healthy and self._successes >= self.config.success_threshold:
                self._set(True)
        else:
            self._successes = 0
            self._fails += 1
            if self.healthy and self._fails >= self.config.fail_threshold:
                self._set(False)

    def _set(self, healthy: bool) -> None:
        now = time.monotonic()
        if healthy:
            self._since = now
        else:
            self._online += now - self._since
            self.outages += 1
        self.healthy = healthy
        old, self.changed = self.changed, asyncio.Event()
        old.set()

    async def probe_once(self, upstream: Upstream) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=self.config.timeout)
            async with upstream.request(
                "GET", self.url + "/healthz", ssl=self.ssl_ctx, timeout=timeout
            ) as r:
                return bool(r.status < 500)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def run(self, upstream: Upstream) -> None:
        while True:
            moved = upstream.changed
            self.record(await self.probe_once(upstream))
            if moved.is_set():
                continue  # the route changed during the probe: try the new one now
            try:
                async with asyncio.timeout(self.config.interval):
                    await moved.wait()
            except TimeoutError:
                pass

    def start(self, upstream: Upstream) -> None:
        self._task = asyncio.create_task(self.run(upstream))

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
