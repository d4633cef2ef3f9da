"""A resilient list+watch cache for one kind of object.

The informer lists once, then watches from the list's resourceVersion with bookmarks on. It
tracks the resourceVersion of every event (bookmarks included), so a broken connection resumes
where it stopped, and re-lists only when the server says that version is gone (410). Failures of
the API never empty the cache: the last known state stays, with :attr:`Informer.last_error` saying
why it may be stale (DESIGN invariant 4).

Usage::

    inf = Informer(client, NODES)
    inf.start()
    await inf.wait_synced(10)
    seen = inf.generation
    nodes = inf.snapshot()           # name -> object (plain dicts)
    seen = await inf.wait_changed(seen)
    await inf.stop()
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from raven.aio import cancel_and_wait
from raven.kube.client import JSON, KubeClient
from raven.kube.errors import Expired, KubeError, TransientError
from raven.kube.notify import Generation
from raven.kube.resources import Resource

log = logging.getLogger(__name__)

# (event type "ADDED" | "MODIFIED" | "DELETED", object) -> None; called in the loop, keep it quick.
Listener = Callable[[str, JSON], None]


@dataclass(frozen=True)
class Backoff:
    """Retry delays after API failures, in seconds.

    The n-th consecutive failure waits ``min(cap, initial * 2**n)`` scaled by a random factor in
    ``[1 - jitter, 1]`` so that many agents losing the same API server do not return in lockstep.
    A small cap recovers fast after an outage; a large one spares an overloaded server.
    """

    initial: float = 0.5
    cap: float = 30.0
    jitter: float = 0.5

    def delay(self, failures: int, floor: float = 0.0) -> float:
        base = min(self.cap, self.initial * 2.0 ** min(failures, 30))
        return max(floor, base * (1 - self.jitter * random.random()))


def _name(obj: JSON) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def _rv(obj: JSON) -> str:
    return str(obj.get("metadata", {}).get("resourceVersion", ""))


class Informer:
    """List+watch cache of one :class:`Resource` (one namespace, optional label and field
    selectors)."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout: int = 300,
        backoff: Backoff | None = None,
    ) -> None:
        if watch_timeout < 1:
            raise ValueError(f"watch_timeout must be >= 1 s, got {watch_timeout}")
        self.client = client
        self.resource = resource
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = watch_timeout
        self.backoff = backoff or Backoff()
        self.synced = False  # True once the first list succeeded; stays True afterwards
        self.last_error: KubeError | None = None  # cleared when the API answers again
        self.resource_version = ""
        self.relists = 0  # lists after the first one (410 recoveries); useful for metrics
        self._cache: dict[str, JSON] = {}
        self._gen = Generation()
        self._synced_event = asyncio.Event()
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None

    # Reading ----------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, JSON]:
        """A deep copy of the cache: name -> object. Safe to keep and mutate."""
        return copy.deepcopy(self._cache)

    def view(self) -> Mapping[str, JSON]:
        """The cache as it is now, without a copy: read it, never change it. The mapping stays
        the same snapshot after a re-list (which replaces the cache) but not after an event."""
        return MappingProxyType(self._cache)

    def get(self, name: str) -> JSON | None:
        obj = self._cache.get(name)
        return copy.deepcopy(obj) if obj is not None else None

    @property
    def generation(self) -> int:
        """Bumped on every change of the cache; pass it to :meth:`wait_changed`."""
        return self._gen.value

    async def wait_changed(self, seen: int, timeout: float | None = None) -> int:
        """Wait until the cache changed after generation ``seen``; return the new generation."""
        return await self._gen.wait_newer(seen, timeout)

    async def wait_synced(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._synced_event.wait()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(type, obj)`` for every change, re-list differences included."""
        self._listeners.append(listener)

    # Lifecycle --------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"informer:{self.resource.plural}")
        return self._task

    async def stop(self) -> None:
        """Cancel the watch and wait for the task to end. The cache stays readable."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def run(self) -> None:
        """Forever: list when needed, watch, recover. Only cancellation ends it."""
        failures = 0
        # A restarted informer resumes from its resourceVersion; the server says 410 if too old.
        need_list = not self.synced
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                    failures = 0
                started = asyncio.get_running_loop().time()
                got = await self._watch_once()
                if got or asyncio.get_running_loop().time() - started >= 1.0:
                    failures = 0  # a watch that ended normally (timeoutSeconds) is healthy
                else:
                    # A server that closes every watch at once would make us spin; pace it.
                    await asyncio.sleep(self.backoff.delay(failures))
                    failures += 1
            except Expired as e:
                # Our resourceVersion fell out of the server's history: only a list repairs it.
                log.info("informer %s: %s; re-listing", self.resource.plural, e)
                self.last_error = e
                need_list = True
            except KubeError as e:
                self.last_error = e
                # Honour a delay the server asked for (429/503 Retry-After); otherwise our
                # own jittered backoff decides.
                asked = isinstance(e, TransientError) and e.status is not None
                floor = e.delay if isinstance(e, TransientError) and asked else 0.0
                delay = self.backoff.delay(failures, floor)
                failures += 1
                log.warning("informer %s: %s; retry in %.1fs", self.resource.plural, e, delay)
                await asyncio.sleep(delay)

    # Internals --------------------------------------------------------------------------------

    async def _list(self) -> None:
        answer = await self.client.list(
            self.resource, label_selector=self.label_selector, field_selector=self.field_selector
        )
        items = answer.get("items") or []
        fresh: dict[str, JSON] = {}
        for item in items:
            # List items carry no kind/apiVersion; add them so objects look like watch objects.
            item.setdefault("kind", self.resource.kind)
            item.setdefault("apiVersion", self.resource.api_version)
            fresh[_name(item)] = item
        rv = str(answer.get("metadata", {}).get("resourceVersion", ""))
        changes: list[tuple[str, JSON]] = []
        for name, obj in fresh.items():
            old = self._cache.get(name)
            if old is None:
                changes.append(("ADDED", obj))
            elif _rv(old) != _rv(obj):
                changes.append(("MODIFIED", obj))
        for name, obj in self._cache.items():
            if name not in fresh:
                changes.append(("DELETED", obj))
        # The API answered with a complete list, so replacing the cache is correct here; this is
        # the only place objects disappear without a DELETED event.
        self._cache = fresh
        self.resource_version = rv
        if self.synced:
            self.relists += 1
        self.last_error = None
        first = not self.synced
        self.synced = True
        self._synced_event.set()
        if changes or first:
            await self._changed(changes)

    async def _watch_once(self) -> int:
        """Follow one watch until it ends; return how many events it delivered."""
        count = 0
        events = self.client.watch(
            self.resource,
            resource_version=self.resource_version,
            timeout_seconds=self.watch_timeout,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
        )
        try:
            async for event in events:
                count += 1
                self.last_error = None
                await self._apply(event)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        return count

    async def _apply(self, event: JSON) -> None:
        kind, obj = event.get("type"), event["object"]
        rv = _rv(obj)
        if kind == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        name = _name(obj)
        if kind in ("ADDED", "MODIFIED"):
            self._cache[name] = obj
        elif kind == "DELETED":
            self._cache.pop(name, None)
        else:
            log.warning("informer %s: ignoring event type %r", self.resource.plural, kind)
            return
        if rv:
            self.resource_version = rv
        await self._changed([(str(kind), obj)])

    async def _changed(self, changes: list[tuple[str, Any]]) -> None:
        for kind, obj in changes:
            for listener in self._listeners:
                try:
                    listener(kind, obj)
                except Exception:  # a broken listener must not kill the watch
                    log.exception("informer %s: listener failed", self.resource.plural)
        await self._gen.bump()
