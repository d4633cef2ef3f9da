"""The cache on disk: one SQLite database, written by a thread of its own in batched commits.

Tables: ``entries`` (one row per cached answer: status, content type, resourceVersion, the
credential hashes the API server accepted for it, and the answer itself, or for a list its shell
without items) and ``items`` (one row per object of a cached list, keyed by entry, namespace and
name). So one watch event writes one item row and the entry's version, whatever the list's size,
and a list is put together from its rows when it is served.

Every change is queued to the writer thread and applied there in order; the event loop never
waits for the disk. The writer groups what arrives within ``flush_interval`` seconds of the first
change into one transaction and commits it (WAL, ``synchronous=FULL``: one fsync per commit), so
the disk sees at most one commit per interval however many events arrive. A crash, of the process
or of the machine, loses at most the changes not yet committed: those received in the last
``flush_interval`` seconds, plus any the disk had not caught up with (``backlog``; normally none,
bounded by the cache's ``max_backlog``). What is left is always a state the cache was in at a
commit: a list and its items are changed in one transaction, never apart. On open, SQLite rolls
back whatever a crash left half-written; a database that does not pass ``PRAGMA quick_check`` (a
damaged disk) is removed and the cache starts empty.

Answers are read back (to serve them offline) by :func:`pieces`, from a read-only connection of
their own in one read transaction: a consistent snapshot, streamed in pieces while the writer goes
on; :meth:`Store.flush` before it puts every change queued so far into that snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raven.cacheproxy import listdoc

log = logging.getLogger("raven.cacheproxy.store")

DB_NAME = "cache.sqlite"
SCHEMA_VERSION = 1
# What the cache directory held before it was a database: one file per entry, and temp files.
_OLD_ENTRY = re.compile(r"^[0-9a-f]{64}(\.\d+\.tmp)?$")

BUSY_TIMEOUT = 60.0
PIECE = 256 * 1024  # bytes per piece of an answer read back
# A batch that wrote more than this returns SQLite's page cache memory after its commit.
SHRINK_AFTER = 1024 * 1024

Op = Callable[[sqlite3.Connection], Any]


@dataclass(frozen=True)
class StoredEntry:
    """An entry as the database holds it, without its answer (the in-memory index at start)."""

    key: str
    kind: str  # "blob" or "list"
    status: int
    content_type: str
    resource_version: str | None
    credentials: frozenset[str]
    digest: bytes | None


class _Barrier:
    """Queued after changes: resolved once everything before it is committed."""

    def __init__(self, done: Callable[[], None]) -> None:
        self.done = done


_STOP = object()


class Store:
    def __init__(self, root: Path, *, flush_interval: float = 1.0) -> None:
        if not 0 <= flush_interval <= 60:
            raise ValueError(f"flush_interval must be 0..60 s, got {flush_interval}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.flush_interval = flush_interval
        self.recovered: list[str] = []  # what opening removed, for logs and tests
        for p in self.root.iterdir():
            if _OLD_ENTRY.match(p.name):
                p.unlink(missing_ok=True)
                self.recovered.append(p.name)
        self.path = self.root / DB_NAME
        self._db = self._open()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._on_lost: Callable[[set[str]], None] | None = None
        self.submitted_bytes = 0  # written on the event loop only
        self.applied_bytes = 0  # written by the writer thread only
        self.commits = 0

    # -- opening ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # A long busy timeout: something else holding the file (a backup) makes the writer
        # wait, never lose a change.
        db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT
        )
        # 16 kB pages hold a typical object (2-3 kB) without overflow pages: a list of 5,000
        # Nodes is read back in a few ms. (Takes effect when the database is created.)
        db.execute("PRAGMA page_size=16384")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA journal_size_limit=16777216")  # keep the WAL at most 16 MB on disk
        return db

    def _open(self) -> sqlite3.Connection:
        try:
            db = self._connect()
            ok = db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            if ok and db.execute("PRAGMA user_version").fetchone()[0] not in (0, SCHEMA_VERSION):
                ok = False  # another layout: the cache is disposable, start again
        except sqlite3.DatabaseError as e:
            log.warning("cache database %s unreadable (%s): starting empty", self.path, e)
            ok, db = False, None
        if not ok or db is None:
            if db is not None:
                db.close()
            for suffix in ("", "-wal", "-shm"):
                p = self.path.with_name(self.path.name + suffix)
                if p.exists():
                    p.unlink()
                    self.recovered.append(p.name)
            db = self._connect()
        db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS entries (
                key TEXT PRIMARY KEY, kind TEXT NOT NULL, status INTEGER NOT NULL,
                content_type TEXT NOT NULL, rv TEXT, creds TEXT NOT NULL,
                digest BLOB, body BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS items (
                key TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL, body BLOB NOT NULL,
                PRIMARY KEY (key, ns, name));
            PRAGMA user_version = {SCHEMA_VERSION};
            DELETE FROM items WHERE key NOT IN (SELECT key FROM entries);
            """
        )
        return db

    def load(self) -> list[StoredEntry]:
        """Every entry, without answers (call before :meth:`start`)."""
        rows = self._db.execute(
            "SELECT key, kind, status, content_type, rv, creds, digest FROM entries"
        ).fetchall()
        return [
            StoredEntry(k, kind, st, ct, rv, frozenset(json.loads(creds)), dg)
            for k, kind, st, ct, rv, creds, dg in rows
        ]

    # -- the writer thread -------------------------------------------------------------------

    def start(self, on_lost: Callable[[set[str]], None] | None = None) -> None:
        """Start writing. ``on_lost(keys)`` is called (from the writer thread) when a batch
        could not be committed: those entries are no longer what the index says."""
        self._on_lost = on_lost
        # A daemon: a proxy that dies without close() must not hang in its exit waiting for
        # the writer; what the writer had not committed is lost as in any crash.
        self._thread = threading.Thread(
            target=self._run, name="raven-cacheproxy-store", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        db = self._db
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            # Of the batch only what its end needs is kept: a change (a list's items, a read's
            # answer) is let go as soon as it is applied.
            keys: set[str] = set()
            size = 0
            barriers: list[_Barrier] = []
            failed = False
            deadline = time.monotonic() + self.flush_interval
            db.execute("BEGIN")
            while True:
                if isinstance(item, _Barrier):
                    barriers.append(item)
                    urgent = True
                else:
                    if item.key is not None:
                        keys.add(item.key)
                    size += item.size
                    urgent = item.urgent
                    if not failed:
                        failed = not self._apply(db, item)
                item = None
                if urgent:
                    break
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
            self._finish(db, keys, size, failed)
            self.applied_bytes += size
            for barrier in barriers:
                barrier.done()
            del barriers
        db.close()

    @staticmethod
    def _apply(db: sqlite3.Connection, change: _Change) -> bool:
        try:
            change.op(db)
            return True
        except Exception:
            log.exception("cache write failed; its batch will not be committed")
            return False

    def _finish(self, db: sqlite3.Connection, keys: set[str], size: int, failed: bool) -> None:
        """Commit the batch; if any change in it failed (a full disk), commit none of it and
        remove the entries it touched (``keys``), so that what is on disk is never half a
        change."""
        if not failed:
            try:
                db.execute("COMMIT")
                self.commits += 1
                if size > SHRINK_AFTER:
                    db.execute("PRAGMA shrink_memory")  # give back the pages a big batch took
                return
            except sqlite3.Error:
                log.exception("cache commit failed")
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        lost = keys
        if not lost:
            return
        try:
            db.execute("BEGIN")
            for key in lost:
                drop(key)(db)
            db.execute("COMMIT")
        except sqlite3.Error:
            log.exception("could not remove the entries of a lost batch")
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        if self._on_lost is not None:
            self._on_lost(lost)

    # -- the event loop's side ---------------------------------------------------------------

    def submit(
        self, op: Op, *, key: str | None = None, size: int = 0, urgent: bool = False
    ) -> None:
        """Queue a change to entry ``key``; ``urgent`` commits it (and what came before)
        without waiting for the interval."""
        self.submitted_bytes += size
        self._queue.put(_Change(op, key, size, urgent))

    @property
    def backlog(self) -> int:
        """Bytes of queued changes not yet applied."""
        return self.submitted_bytes - self.applied_bytes

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Barrier(lambda: _settle_soon(loop, future)))
        await future

    def close(self) -> None:
        """Commit what is queued and stop the writer (blocking)."""
        if self._thread is None:
            self._db.close()
            return
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None


@dataclass(frozen=True)
class _Change:
    op: Op
    key: str | None  # the entry it changes (None: a read)
    size: int
    urgent: bool


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _settle_soon(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    loop.call_soon_threadsafe(_resolve, future)


# -- changes and reads, run on the writer's connection -----------------------------------------


def put_blob(
    key: str,
    kind: str,
    status: int,
    content_type: str,
    rv: str | None,
    creds: frozenset[str],
    digest: bytes | None,
    body: bytes | bytearray,
) -> Op:
    def op(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM items WHERE key = ?", (key,))
        db.execute(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, kind, status, content_type, rv, json.dumps(sorted(creds)), digest, body),
        )

    return op


def put_list(
    key: str,
    status: int,
    content_type: str,
    rv: str | None,
    creds: frozenset[str],
    doc: listdoc.ListDoc,
) -> Op:
    shell = json.dumps(doc.shell, separators=(",", ":")).encode()
    rows = [(key, i.namespace, i.name, i.body) for i in doc.items]

    def op(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM items WHERE key = ?", (key,))
        db.execute(
            "INSERT OR REPLACE INTO entries VALUES (?, 'list', ?, ?, ?, ?, NULL, ?)",
            (key, status, content_type, rv, json.dumps(sorted(creds)), shell),
        )
        db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)", rows)

    return op


def upsert_item(key: str, namespace: str, name: str, body: bytes, rv: str) -> Op:
    def op(db: sqlite3.Connection) -> None:
        db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)", (key, namespace, name, body))
        db.execute("UPDATE entries SET rv = ? WHERE key = ?", (rv, key))

    return op


def delete_item(key: str, namespace: str, name: str, rv: str) -> Op:
    def op(db: sqlite3.Connection) -> None:
        db.execute(
            "DELETE FROM items WHERE key = ? AND ns = ? AND name = ?", (key, namespace, name)
        )
        db.execute("UPDATE entries SET rv = ? WHERE key = ?", (rv, key))

    return op


def set_version(key: str, rv: str) -> Op:
    def op(db: sqlite3.Connection) -> None:
        db.execute("UPDATE entries SET rv = ? WHERE key = ?", (rv, key))

    return op


def set_credentials(key: str, creds: frozenset[str]) -> Op:
    def op(db: sqlite3.Connection) -> None:
        db.execute("UPDATE entries SET creds = ? WHERE key = ?", (json.dumps(sorted(creds)), key))

    return op


def drop(key: str) -> Op:
    def op(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM items WHERE key = ?", (key,))
        db.execute("DELETE FROM entries WHERE key = ?", (key,))

    return op


def pieces(path: Path, key: str) -> Generator[bytes, None, None]:
    """The entry's answer as served, in pieces of about ``PIECE`` bytes, from a snapshot of the
    database: a connection of its own in one read transaction, so the writer goes on meanwhile
    and the answer is one consistent state. A list is put together from its items at its
    version. Yields nothing when the entry is not there. Pieces, not one buffer: the memory of
    a piece is reused for the next, where a buffer of a whole 9 MB list would take fresh pages
    (a page fault each) for every list served, and would make the process that much larger.

    Each ``next()`` may run on another thread, never two at once.
    """
    db = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
    )
    try:
        db.execute("BEGIN")
        row = db.execute(
            "SELECT rowid, kind, rv, body FROM entries WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return
        rowid, kind, rv, body = row
        if kind != "list":
            with db.blobopen("entries", "body", rowid, readonly=True) as blob:
                while chunk := blob.read(PIECE):
                    yield chunk
            return
        shell = json.loads(body)
        meta = shell.get("metadata")
        if isinstance(meta, dict):
            meta.pop("continue", None)
            meta.pop("remainingItemCount", None)
            if rv is not None:
                meta["resourceVersion"] = rv
        head = json.dumps(shell, separators=(",", ":")).encode()[:-1]
        piece = bytearray(head + (b"," if shell else b"") + b'"items":[')
        first = True
        for (item,) in db.execute("SELECT body FROM items WHERE key = ? ORDER BY ns, name", (key,)):
            if not first:
                piece += b","
            piece += item
            first = False
            if len(piece) >= PIECE:
                yield bytes(piece)
                piece.clear()
        piece += b"]}"
        yield bytes(piece)
    finally:
        db.close()
