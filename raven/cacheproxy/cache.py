"""The cache of what clients read: an index in memory, the answers on disk (:mod:`.store`).

One entry per (component, distinct request) — see :mod:`.keys` for what makes two requests
distinct. The index holds, per entry, what the proxy decides with (status, content type,
resourceVersion, the credential hashes the API server accepted for it, a digest of a blob, the
generation of a list) and never an answer, so its memory does not grow with the lists' sizes.
Every change is made in the index at once and queued to the store, in order.

Rules:

- A single object (any answer that is not a list) is only replaced by a newer resourceVersion;
  an older answer still proves that its credential may read the entry. An unchanged answer
  writes nothing (or only the new credential).
- A list answer replaces the list whole (a new generation), unless it is at the version the
  entry already is at: a list at a resourceVersion is one snapshot, so it is the same list.
- Watch events change one item each (:mod:`.fold` decides which).
- Bounded: an entry nothing asked for (no read, no open or held watch) during
  ``entry_ttl`` seconds of time *with the cloud reachable* is dropped (an outage never empties
  the cache); at most ``max_entries`` entries, the least recently used dropped first; while more
  than ``max_backlog`` bytes of changes wait for the disk, a new answer is not stored (its entry
  is dropped so that the cache never serves a half-applied state).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import queue
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from pathlib import Path

from raven.cacheproxy import store
from raven.cacheproxy.fold import Event, ListState, Op, version
from raven.cacheproxy.listdoc import ListDoc


@dataclass(frozen=True)
class CacheConfig:
    # Seconds the writer gathers changes before one commit (one fsync). A crash loses at most
    # the changes of this last interval (plus any backlog); shorter costs more fsyncs.
    flush_interval: float = 1.0
    # Seconds of reachable-cloud time after which an entry nothing asked for is dropped.
    entry_ttl: float = 24 * 3600.0
    # Entries at most; the least recently used goes first.
    max_entries: int = 4096
    # Bytes of changes waiting for the disk beyond which new answers are not stored.
    max_backlog: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 0 <= self.flush_interval <= 60:
            raise ValueError(f"flush interval must be 0..60 s, got {self.flush_interval}")
        if self.entry_ttl <= 0:
            raise ValueError(f"entry TTL must be positive, got {self.entry_ttl}")
        if self.max_entries < 1:
            raise ValueError(f"max entries must be at least 1, got {self.max_entries}")
        if self.max_backlog < 1:
            raise ValueError(f"max backlog must be at least 1 byte, got {self.max_backlog}")


@dataclass
class Entry:
    kind: str  # "blob" or "list"
    status: int
    content_type: str
    resource_version: str | None
    credentials: set[str]
    digest: bytes | None  # a blob's SHA-256
    generation: int
    last_used: float


async def _pieces(first: bytes, it: Generator[bytes, None, None]) -> AsyncGenerator[bytes, None]:
    try:
        piece: bytes | None = first
        while piece is not None:
            yield piece
            piece = await asyncio.to_thread(next, it, None)
    finally:
        await asyncio.to_thread(it.close)  # closes its connection, also when the client left


def digest(body: bytes | bytearray) -> bytes:
    return hashlib.sha256(body).digest()


class Cache:
    def __init__(
        self,
        root: Path,
        config: CacheConfig | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock``: seconds of reachable-cloud time (what the TTL counts); default: a
        monotonic clock that always runs."""
        self.config = config or CacheConfig()
        self.clock = clock or time.monotonic
        self.store = store.Store(Path(root), flush_interval=self.config.flush_interval)
        self.recovered = self.store.recovered
        self._generations = itertools.count(1)
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._watched: dict[str, int] = {}  # open watches per list entry
        now = self.clock()
        for s in self.store.load():  # a restart gives every entry a full TTL again
            self._entries[s.key] = Entry(
                s.kind,
                s.status,
                s.content_type,
                s.resource_version,
                set(s.credentials),
                s.digest,
                next(self._generations),
                now,
            )
        self.evicted = 0  # entries dropped for the TTL or the count bound
        self.skipped = 0  # answers not stored because the disk was behind
        self.lost = 0  # entries dropped because their changes could not be committed
        self._lost: queue.SimpleQueue[set[str]] = queue.SimpleQueue()
        self.store.start(on_lost=self._lost.put)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    # -- reading the index --------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Forget entries whose changes the store could not commit (it removed them)."""
        while not self._lost.empty():
            for key in self._lost.get():
                if self._entries.pop(key, None) is not None:
                    self.lost += 1

    def get(self, key: str) -> Entry | None:
        if not self._lost.empty():
            self._reconcile()
        return self._entries.get(key)

    def touch(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.last_used = self.clock()
            self._entries.move_to_end(key)

    def list_state(self, key: str) -> ListState | None:
        entry = self._entries.get(key)
        if entry is None or entry.kind != "list":
            return None
        return ListState(version(entry.resource_version), entry.generation)

    async def answer(self, key: str) -> AsyncGenerator[bytes, None] | None:
        """The entry's answer from disk, in pieces (a list put together from its items), with
        every change queued before it; None when there is no such entry."""
        if key not in self._entries:
            return None
        await self.store.flush()  # what is queued goes into the snapshot the answer is read from
        it = await asyncio.to_thread(store.pieces, self.store.path, key)
        first = await asyncio.to_thread(next, it, None)
        if first is None:
            return None
        return _pieces(first, it)

    # -- storing answers ----------------------------------------------------------------------

    def _credit(self, key: str, entry: Entry, credential: str) -> None:
        if credential not in entry.credentials:
            entry.credentials.add(credential)
            self.store.submit(store.set_credentials(key, frozenset(entry.credentials)), key=key)

    def _room(self, key: str, size: int) -> bool:
        if self.store.backlog + size <= self.config.max_backlog:
            return True
        self.skipped += 1
        self.drop(key)
        return False

    def _set(self, key: str, entry: Entry) -> None:
        if key not in self._entries:
            while len(self._entries) >= self.config.max_entries:
                oldest = next(iter(self._entries))
                self.drop(oldest)
                self.evicted += 1
        self._entries[key] = entry
        self._entries.move_to_end(key)

    def remember_blob(
        self,
        key: str,
        status: int,
        content_type: str,
        body: bytes | bytearray,
        resource_version: str | None,
        credential: str,
        body_digest: bytes | None = None,
    ) -> bool:
        """Store an answer that is not a list; False when an older one was not stored."""
        body_digest = body_digest or digest(body)
        old = self._entries.get(key)
        if old is not None and old.kind == "blob":
            new_v, old_v = version(resource_version), version(old.resource_version)
            older = new_v is not None and old_v is not None and new_v < old_v
            if old.digest == body_digest or older:
                self._credit(key, old, credential)
                self.touch(key)
                return not older
        if not self._room(key, len(body)):
            return False
        creds = (old.credentials if old is not None else set()) | {credential}
        entry = Entry(
            "blob",
            status,
            content_type,
            resource_version,
            creds,
            body_digest,
            next(self._generations),
            self.clock(),
        )
        self._set(key, entry)
        self.store.submit(
            store.put_blob(
                key,
                "blob",
                status,
                content_type,
                resource_version,
                frozenset(creds),
                body_digest,
                body,
            ),
            key=key,
            size=len(body),
        )
        return True

    def remember_list(
        self, key: str, status: int, content_type: str, doc: ListDoc, credential: str
    ) -> bool:
        """Store a whole list answer (items taken apart)."""
        rv = doc.resource_version
        old = self._entries.get(key)
        if old is not None and old.kind == "list" and rv is not None and old.resource_version == rv:
            self._credit(key, old, credential)  # the same snapshot: nothing to write
            self.touch(key)
            return True
        size = sum(len(i.body) for i in doc.items)
        if not self._room(key, size):
            return False
        creds = (old.credentials if old is not None else set()) | {credential}
        entry = Entry(
            "list", status, content_type, rv, creds, None, next(self._generations), self.clock()
        )
        self._set(key, entry)
        self.store.submit(
            store.put_list(key, status, content_type, rv, frozenset(creds), doc),
            key=key,
            size=size,
        )
        return True

    def fold(self, key: str, op: Op, event: Event) -> None:
        """Apply one watch event to the list at ``key`` as :func:`fold.step` decided."""
        entry = self._entries.get(key)
        if entry is None or entry.kind != "list" or event.rv is None:
            return
        rv = str(event.rv)
        if op is Op.UPSERT:
            body = json.dumps(event.obj, separators=(",", ":")).encode()
            if not self._room(key, len(body)):
                return
            self.store.submit(
                store.upsert_item(key, event.namespace, event.name, body, rv),
                key=key,
                size=len(body),
            )
        elif op is Op.DELETE:
            self.store.submit(store.delete_item(key, event.namespace, event.name, rv), key=key)
        elif op is Op.ADVANCE:
            self.store.submit(store.set_version(key, rv), key=key)
        else:
            return
        entry.resource_version = rv
        self.touch(key)

    # -- credentials --------------------------------------------------------------------------

    def revoke(self, credential: str) -> int:
        """The API server refused ``credential`` (401): no entry is served to it any more.
        Committed at once, not with the next batch."""
        changed = 0
        for key, entry in self._entries.items():
            if credential in entry.credentials:
                entry.credentials.discard(credential)
                creds = frozenset(entry.credentials)
                self.store.submit(store.set_credentials(key, creds), key=key)
                changed += 1
        if changed:
            self.store.submit(lambda db: None, urgent=True)
        return changed

    def forbid(self, key: str, credential: str) -> None:
        """The API server refused ``credential`` this data (403)."""
        entry = self._entries.get(key)
        if entry is not None and credential in entry.credentials:
            entry.credentials.discard(credential)
            self.store.submit(
                store.set_credentials(key, frozenset(entry.credentials)), key=key, urgent=True
            )

    # -- bounds -------------------------------------------------------------------------------

    def drop(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            self.store.submit(store.drop(key), key=key)

    def watched(self, key: str, delta: int) -> None:
        """A watch continuing the list at ``key`` opened (+1) or ended (-1): while one is open,
        the list is in use however quiet it is."""
        count = self._watched.get(key, 0) + delta
        if count > 0:
            self._watched[key] = count
        else:
            self._watched.pop(key, None)
        self.touch(key)

    @property
    def open_watches(self) -> int:
        return sum(self._watched.values())

    def sweep(self) -> int:
        """Drop entries nothing asked for during the TTL; how many went."""
        deadline = self.clock() - self.config.entry_ttl
        dropped = 0
        for _ in range(len(self._entries)):
            key, entry = next(iter(self._entries.items()))
            if entry.last_used >= deadline:
                break
            if key in self._watched:
                self.touch(key)  # a watch holds it: in use
                continue
            self.drop(key)
            dropped += 1
        self.evicted += dropped
        return dropped

    # -- lifecycle ----------------------------------------------------------------------------

    async def flush(self) -> None:
        await self.store.flush()

    def close(self) -> None:
        """Commit what is queued and stop the writer (blocking)."""
        self.store.close()
