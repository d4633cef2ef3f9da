"""One watch: replay (or the current objects as ADDED), then live events, filtered, with bookmarks.

Subscribing and reading the replay happen in one synchronous step on the store's thread, so no
write can fall between them: a watch started from a list's resourceVersion sees every later
write exactly once. When a write makes an object start or stop matching the selectors the watch
reports ADDED or DELETED, as kube-apiserver does.

Live events wait in a bounded queue until the client takes them: at most ``max_events`` events
and ``max_bytes`` bytes of objects. A watcher that falls further behind (a stopped client that
no longer reads) is closed, as kube-apiserver's cacher closes a watcher whose buffer stays full:
the stream stops listening at once, drops what it held and ends, and the client resumes with a
new watch from the last resourceVersion it saw (or relists after 410). The replay and the
initial ADDED events are not counted: they are bounded by the history and the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

from raven.lab.apiserver.store import Event, Store

Matcher = Callable[[Mapping[str, Any]], bool]
WatchEvent = tuple[str, dict[str, Any]]

# Seconds between checks that an idle watch's client is still connected.
ALIVE_POLL = 5.0
# kube-apiserver's largest watch buffer is 1000 events (maxWatchChanSizeWithIndexWithoutTrigger).
MAX_QUEUED_EVENTS = 1000
# Bytes of (JSON) objects one watcher may hold: ten of the largest objects the store accepts.
MAX_QUEUED_BYTES = 16 * 1024 * 1024


class WatchStream:
    def __init__(
        self,
        store: Store,
        resource: str,
        *,
        namespace: str | None,
        match: Matcher,
        since: int | None,
        bookmark: Callable[[int], dict[str, Any]] | None = None,
        max_events: int = MAX_QUEUED_EVENTS,
        max_bytes: int = MAX_QUEUED_BYTES,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        """``since=None`` sends the current objects first; otherwise events after ``since``.

        Raises :class:`raven.lab.apiserver.store.TooOld` when ``since`` is older than the history.
        ``bookmark`` builds a BOOKMARK object for a version (None: no bookmarks).
        ``on_overflow`` is called once if the stream is closed for falling behind.
        """
        if max_events < 1 or max_bytes < 1:
            raise ValueError("a watch queue needs room for at least one event")
        self._store = store
        self._namespace = namespace
        self._match = match
        self._bookmark = bookmark
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._on_overflow = on_overflow
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._queued_bytes = 0
        self._closed = False
        self.overflowed = False
        self._pending: list[WatchEvent | Event] = []
        if since is None:
            self._last = store.rv
            for obj in store.list(resource, namespace):
                if match(obj):
                    self._pending.append(("ADDED", obj))
        else:
            self._pending.extend(store.events_since(resource, since))
            self._last = since
        self._unsubscribe = store.subscribe(resource, self._offer)

    @property
    def queued(self) -> tuple[int, int]:
        """(events, bytes) of live events waiting for the client."""
        if self._closed:
            return 0, 0
        return self._queue.qsize(), self._queued_bytes

    def _offer(self, event: Event) -> None:
        if self._closed:
            return
        if (
            self._queue.qsize() >= self._max_events
            or self._queued_bytes + event.size > self._max_bytes
        ):
            self._overflow()
            return
        self._queued_bytes += event.size
        self._queue.put_nowait(event)

    def _overflow(self) -> None:
        self.overflowed = True
        self._drop()
        if self._on_overflow is not None:
            self._on_overflow()

    def _drop(self) -> None:
        self._closed = True
        self._unsubscribe()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queued_bytes = 0
        self._pending = []
        self._queue.put_nowait(None)

    def close(self) -> None:
        """End the stream (server shutdown); safe to call more than once."""
        if not self._closed:
            self._drop()

    def _translate(self, event: Event) -> WatchEvent | None:
        if self._namespace is not None and event.namespace != self._namespace:
            return None
        now = event.type != "DELETED" and self._match(event.obj)
        before = event.old is not None and self._match(event.old)
        if event.type == "DELETED":
            return ("DELETED", event.obj) if self._match(event.obj) else None
        if now and before:
            return ("MODIFIED", event.obj)
        if now:
            return ("ADDED", event.obj)
        if before:
            return ("DELETED", event.obj)
        return None

    async def events(
        self,
        *,
        timeout: float,
        bookmark_interval: float = 5.0,
        first_bookmark: float = 1.0,
        alive: Callable[[], bool] | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Yield (type, object) until ``timeout`` seconds pass or :meth:`close` is called.

        ``alive`` is polled every few seconds while idle; when it returns False the stream ends
        (the HTTP client went away and nothing else would tell us).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + first_bookmark
        try:
            pending, self._pending = self._pending, []
            for item in pending:
                if self._closed:
                    return
                if isinstance(item, Event):
                    self._last = max(self._last, item.rv)
                    translated = self._translate(item)
                    if translated is not None:
                        yield translated
                else:
                    yield item
            while True:
                now = loop.time()
                if now >= deadline:
                    return
                wait = deadline - now
                if self._bookmark is not None:
                    wait = min(wait, max(next_bookmark - now, 0))
                if alive is not None:
                    if not alive():
                        return
                    wait = min(wait, ALIVE_POLL)
                if self._queue.empty():
                    try:
                        if wait <= 0:  # wait_for(get(), 0) times out even with an event queued
                            raise TimeoutError
                        event = await asyncio.wait_for(self._queue.get(), wait)
                    except TimeoutError:
                        if (
                            self._bookmark is not None
                            and loop.time() >= next_bookmark
                            and self._queue.empty()
                        ):
                            # Nothing is queued, so every write up to the store's version was
                            # seen: a bookmark never runs ahead of an event still to be sent.
                            self._last = max(self._last, self._store.rv)
                            yield ("BOOKMARK", self._bookmark(self._last))
                            next_bookmark = loop.time() + bookmark_interval
                        continue
                else:
                    event = self._queue.get_nowait()
                if event is None:
                    return
                self._queued_bytes -= event.size
                self._last = max(self._last, event.rv)
                translated = self._translate(event)
                if translated is not None:
                    yield translated
        finally:
            self._unsubscribe()
