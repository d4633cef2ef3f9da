"""List, then watch from the list's version, for one informer, the way client-go's reflector
does; every answer goes into a :class:`~raven.lab.standins.mirror.Mirror` with its arrival time.

client-go's behaviour, kept because what crosses the uplink depends on it:

- the first list asks ``resourceVersion=0`` (any version: kube-apiserver answers from its watch
  cache, whole, without paging); a list after a 410 asks the newest version (no
  ``resourceVersion``) in pages of 500 (``limit``/``continue``);
- the watch starts from the list's version with ``allowWatchBookmarks=true`` and a
  ``timeoutSeconds`` drawn between 300 and 600 (its minWatchTimeout of 5 minutes, times 1 to 2),
  and after the server ends it, starts again from the last version seen (bookmarks move it);
- a 410 Gone (the version left the server's history) ends the watch and forces a relist;
  any other failure is retried after a backoff (800 ms doubling to 30 s, reset by success).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from raven.kube.client import KubeClient
from raven.kube.errors import Expired, KubeError
from raven.lab.standins.components import Watched
from raven.lab.standins.mirror import Mirror

log = logging.getLogger("raven.lab.standins")

PAGE = 500
MIN_WATCH_TIMEOUT = 300
BACKOFF_FIRST, BACKOFF_MAX = 0.8, 30.0


def watch_timeout(rng: random.Random) -> int:
    """Seconds a watch asks the server for: client-go's minWatchTimeout times 1 to 2."""
    return int(MIN_WATCH_TIMEOUT * (1 + rng.random()))


def list_params(watched: Watched, rv: str, continue_token: str = "") -> dict[str, str]:
    """The query of one list request: ``rv`` "0" for the first list, "" after a 410."""
    params: dict[str, str] = {}
    if watched.label_selector:
        params["labelSelector"] = watched.label_selector
    if rv:
        params["resourceVersion"] = rv
    else:
        params["limit"] = str(PAGE)
    if continue_token:
        params["continue"] = continue_token
    return params


class Reflector:
    def __init__(
        self,
        kube: KubeClient,
        watched: Watched,
        mirror: Mirror,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_synced: Callable[[], None] | None = None,
    ) -> None:
        self.kube, self.watched, self.mirror = kube, watched, mirror
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_synced = on_synced

    async def list_once(self, rv: str) -> None:
        path = self.watched.resource.collection_path()
        items: list[dict[str, Any]] = []
        token, version = "", ""
        while True:
            page = await self.kube.request("GET", path, params=list_params(self.watched, rv, token))
            meta = page.get("metadata") or {}
            items += page.get("items") or []
            version = version or str(meta.get("resourceVersion", ""))
            token = str(meta.get("continue") or "")
            if not token:
                break
        self.mirror.replace(items, version, self.clock())

    async def watch_once(self) -> None:
        self.mirror.watches += 1
        async for event in self.kube.watch(
            self.watched.resource,
            resource_version=self.mirror.rv,
            timeout_seconds=watch_timeout(self.rng),
            label_selector=self.watched.label_selector or None,
        ):
            self.mirror.apply(str(event.get("type")), event["object"], self.clock())

    async def run(self) -> None:
        """List and watch until cancelled; a mirror that holds a list already starts with a
        watch from its version."""
        rv, failures = "0", 0
        resume = self.mirror.synced
        while True:
            try:
                if not resume:
                    await self.list_once(rv)
                resume = False
            except KubeError as e:
                failures += 1
                await self._backoff(failures, f"list {self.mirror.resource}", e)
                rv = "" if isinstance(e, Expired) else rv
                continue
            failures = 0
            if self.on_synced is not None:
                self.on_synced()
                self.on_synced = None
            while True:
                try:
                    await self.watch_once()
                    failures = 0
                except Expired:
                    self.mirror.expired += 1
                    rv = ""  # the version is gone: list the newest, consistently
                    break
                except KubeError as e:
                    failures += 1
                    await self._backoff(failures, f"watch {self.mirror.resource}", e)

    async def _backoff(self, failures: int, what: str, error: Exception) -> None:
        delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
        log.warning("%s failed (%s); again in %.1f s", what, error, delay)
        await asyncio.sleep(delay)
