"""One watch: replay (or the current objects as ADDED), then live events, filtered, with bookmarks.

Subscribing and reading the replay happen in one synchronous step on the store's thread, so no
write can fall between them: a watch started from a list's resourceVersion sees every later
write exactly once. When a write makes an object start or stop matching the selectors the watch
reports ADDED or DELETED, as kube-apiserver does.
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
    ) -> None:
        """``since=None`` sends the current objects first; otherwise events after ``since``.

        Raises :class:`raven.lab.apiserver.store.TooOld` when ``since`` is older than the history.
        ``bookmark`` builds a BOOKMARK object for a version (None: no bookmarks).
        """
        self._store = store
        self._namespace = namespace
        self._match = match
        self._bookmark = bookmark
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._pending: list[WatchEvent] = []
        if since is None:
            self._last = store.rv
            for obj in store.list(resource, namespace):
                if match(obj):
                    self._pending.append(("ADDED", obj))
        else:
            replay = store.events_since(resource, since)
            self._last = since
            for event in replay:
                self._queue.put_nowait(event)
        self._unsubscribe = store.subscribe(resource, self._queue.put_nowait)

    def close(self) -> None:
        """End the stream (server shutdown); safe to call more than once."""
        self._unsubscribe()
        self._queue.put_nowait(None)

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
            for item in self._pending:
                yield item
            self._pending = []
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
                try:
                    event = await asyncio.wait_for(self._queue.get(), wait)
                except TimeoutError:
                    if self._bookmark is not None and loop.time() >= next_bookmark:
                        # The queue is empty, so every write up to the store's version was seen.
                        self._last = max(self._last, self._store.rv)
                        yield ("BOOKMARK", self._bookmark(self._last))
                        next_bookmark = loop.time() + bookmark_interval
                    continue
                if event is None:
                    return
                self._last = max(self._last, event.rv)
                translated = self._translate(event)
                if translated is not None:
                    yield translated
        finally:
            self._unsubscribe()
