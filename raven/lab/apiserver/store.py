"""Durable object storage with one cluster-wide resourceVersion and a bounded event history.

Objects live in memory and in SQLite (WAL, synchronous=FULL): every write is one transaction
that stores the object and the new resourceVersion together, so a crash leaves either the old or
the new state and the counter never goes back. The event history (the last ``history`` writes)
is kept in memory only; after a restart, watches can resume from the current version onwards.

An object may be written with a time to live (etcd's leases; kube-apiserver gives Events one):
its expiry is stored with it, each write starts the time again, and :meth:`Store.expire` deletes
what has expired, with DELETED events like any delete.

The store knows nothing of Kubernetes kinds beyond ``metadata.resourceVersion``; all its methods
must be called from one thread (the server's event loop).
"""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED, MODIFIED or DELETED
    resource: str  # storage key, e.g. "core/nodes"
    namespace: str
    name: str
    obj: dict[str, Any]  # the object after the write (for DELETED: as deleted, at the new rv)
    old: dict[str, Any] | None  # the object before the write
    size: int = 0  # bytes of the object as stored (JSON), what holding the event costs


class TooOld(Exception):
    """The requested resourceVersion is older than the kept history."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


Listener = Callable[[Event], None]


def _lock(path: Path) -> int:
    """Hold an exclusive lock beside the database: two servers on one state would diverge."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateInUse(f"{path} is in use by another API server (lock {lock_path})") from None
    return fd


class StateInUse(RuntimeError):
    """Another server already serves this state directory."""


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(obj))


def _size(obj: dict[str, Any]) -> int:
    return len(json.dumps(obj, separators=(",", ":")))


class Store:
    def __init__(
        self,
        path: Path | None,
        *,
        history: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` (wall-clock seconds, as expiry times outlive the process) is for tests."""
        if history < 1:
            raise ValueError(f"history must be at least 1, got {history}")
        self._lock_fd: int | None = None
        if path is not None:
            self._lock_fd = _lock(path)
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS objects (resource TEXT, namespace TEXT, name TEXT,"
                " data TEXT NOT NULL, PRIMARY KEY (resource, namespace, name))"
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(objects)")}
            if "expires" not in columns:  # a store written before objects could expire
                self._db.execute("ALTER TABLE objects ADD COLUMN expires REAL")
        row = self._db.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
        self._rv = int(row[0]) if row else 0
        self._clock = clock
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._expires: dict[tuple[str, str, str], float] = {}
        for resource, namespace, name, data, expires in self._db.execute(
            "SELECT resource, namespace, name, data, expires FROM objects"
        ):
            self._objects[(resource, namespace, name)] = json.loads(data)
            if expires is not None:
                self._expires[(resource, namespace, name)] = float(expires)
        self._history: deque[Event] = deque(maxlen=history)
        # Watches may start from any version >= floor; older ones were never or no longer kept.
        self._floor = self._rv
        self._listeners: dict[int, tuple[str, Listener]] = {}
        self._next_listener = 0

    @property
    def rv(self) -> int:
        return self._rv

    @property
    def floor(self) -> int:
        return self._floor

    def close(self) -> None:
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self._objects.get((resource, namespace, name))
        return _copy(obj) if obj is not None else None

    def list(self, resource: str, namespace: str | None = None) -> builtins.list[dict[str, Any]]:
        """Objects of one resource (optionally one namespace), sorted by namespace and name."""
        keys = sorted(
            k
            for k in self._objects
            if k[0] == resource and (namespace is None or k[1] == namespace)
        )
        return [_copy(self._objects[k]) for k in keys]

    def namespaces_in_use(self, namespace: str) -> builtins.list[tuple[str, str]]:
        return sorted((k[0], k[2]) for k in self._objects if k[1] == namespace)

    def put(
        self,
        resource: str,
        namespace: str,
        name: str,
        obj: dict[str, Any],
        *,
        ttl: float | None = None,
    ) -> dict[str, Any]:
        """Create or replace; stamps and returns the object with its new resourceVersion.

        With ``ttl`` the object expires ``ttl`` seconds after this write (see :meth:`expire`).
        """
        key = (resource, namespace, name)
        old = self._objects.get(key)
        new = _copy(obj)
        rv = self._rv + 1
        new.setdefault("metadata", {})["resourceVersion"] = str(rv)
        data = json.dumps(new, separators=(",", ":"))
        expires = self._clock() + ttl if ttl is not None else None
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO objects (resource, namespace, name, data, expires)"
                " VALUES (?, ?, ?, ?, ?)",
                (resource, namespace, name, data, expires),
            )
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('rv', ?)", (str(rv),))
        self._rv = rv
        self._objects[key] = new
        if expires is None:
            self._expires.pop(key, None)
        else:
            self._expires[key] = expires
        kind = "MODIFIED" if old else "ADDED"
        self._emit(Event(rv, kind, resource, namespace, name, new, old, len(data)))
        return _copy(new)

    def delete(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        old = self._objects.get(key)
        if old is None:
            return None
        rv = self._rv + 1
        with self._db:
            self._db.execute("DELETE FROM objects WHERE resource=? AND namespace=? AND name=?", key)
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('rv', ?)", (str(rv),))
        self._rv = rv
        del self._objects[key]
        self._expires.pop(key, None)
        gone = _copy(old)
        gone["metadata"]["resourceVersion"] = str(rv)
        self._emit(Event(rv, "DELETED", resource, namespace, name, gone, old, _size(gone)))
        return _copy(gone)

    def expire(self) -> int:
        """Delete every object whose time to live has run out; returns how many."""
        now = self._clock()
        due = sorted(k for k, at in self._expires.items() if at <= now)
        for resource, namespace, name in due:
            self.delete(resource, namespace, name)
        return len(due)

    def _emit(self, event: Event) -> None:
        if len(self._history) == self._history.maxlen:
            self._floor = self._history[0].rv
        self._history.append(event)
        for resource, listener in list(self._listeners.values()):
            if resource == event.resource:
                listener(event)

    def subscribe(self, resource: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every later write to ``resource``; returns the unsubscribe."""
        token = self._next_listener
        self._next_listener += 1
        self._listeners[token] = (resource, listener)
        return lambda: self._listeners.pop(token, None) and None

    def events_since(self, resource: str, rv: int) -> builtins.list[Event]:
        """Kept events of ``resource`` after ``rv``; :class:`TooOld` if some may be missing."""
        if rv < self._floor:
            raise TooOld(rv, self._floor)
        return [e for e in self._history if e.rv > rv and e.resource == resource]
