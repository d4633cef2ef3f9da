"""One resource as the API server's watch cache keeps it: the current objects, the version they
are at, and a bounded history of changes, from which any number of clients are answered with
their own selector. Pure: the reflector feeds it, the server reads it.

- **The state** is every object of the resource by (namespace, name), each as the JSON the API
  server sent, and the version ``rv`` of the whole (an event's or a bookmark's).
- **The history** keeps the last ``capacity`` changes. A watch from version ``X`` is answered
  from it while ``X`` is at or after ``floor`` (every change after ``floor`` is kept); an older
  ``X`` gets :data:`TOO_OLD`, which the server turns into the API server's 410 Expired.
- **Selectors** are applied as the API server's watch cache applies them: an object that starts
  to match is ADDED for that client, one that stops matching is DELETED (carrying its new
  state), one that never matched is not shown at all.
- **A relist** (:meth:`WatchCache.replace`) starts a new *epoch*: the history is gone and the
  floor moves to the new list's version, so a client that was watching cannot be told what it
  missed; the server ends its watch, and its next one from its old version gets a 410.
- A change at or before ``rv`` is already in the state and is ignored, so a watch restarted from
  an overlapping version never applies (or shows) anything twice.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from raven.selectors import FieldSelector, LabelSelector

ObjectKey = tuple[str, str]  # (namespace, name)
DEFAULT_CAPACITY = 4096
CHANGE_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED"})


class WatchCacheError(ValueError):
    """An object or event the cache cannot place (no name, no numeric version)."""


@dataclass(frozen=True)
class Stored:
    """One object as the API server sent it, with what selectors look at."""

    namespace: str
    name: str
    rv: int
    labels: Mapping[str, str]
    body: bytes  # the object's JSON

    @property
    def key(self) -> ObjectKey:
        return (self.namespace, self.name)

    def fields(self) -> dict[str, Any]:
        """What a field selector over metadata.name and metadata.namespace reads."""
        return {"metadata": {"name": self.name, "namespace": self.namespace}}


@dataclass(frozen=True)
class Change:
    type: str  # ADDED, MODIFIED or DELETED, as the API server reported it
    rv: int
    obj: Stored
    prev: Stored | None  # the object's state before, when the cache had it


@dataclass(frozen=True)
class Selection:
    """What one client sees: its namespace (``""``: all) and its selectors."""

    namespace: str = ""
    labels: LabelSelector = LabelSelector()
    fields: FieldSelector = FieldSelector()

    def matches(self, obj: Stored | None) -> bool:
        if obj is None:
            return False
        if self.namespace and obj.namespace != self.namespace:
            return False
        return self.labels.matches(obj.labels) and self.fields.matches(obj.fields())


EVERYTHING = Selection()


class _TooOld:
    def __repr__(self) -> str:
        return "TOO_OLD"


TOO_OLD = _TooOld()


def stored(obj: Mapping[str, Any], body: bytes | None = None) -> Stored:
    """An object from its parsed JSON (``body``: its bytes as received, else encoded here)."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise WatchCacheError("an object without metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise WatchCacheError("an object without metadata.name")
    rv = version(meta.get("resourceVersion"))
    if rv is None:
        raise WatchCacheError(f"{name}: resourceVersion {meta.get('resourceVersion')!r}")
    labels = meta.get("labels") if isinstance(meta.get("labels"), Mapping) else {}
    return Stored(
        namespace=str(meta.get("namespace") or ""),
        name=name,
        rv=rv,
        labels={str(k): str(v) for k, v in (labels or {}).items()},
        body=body if body is not None else json.dumps(obj, separators=(",", ":")).encode(),
    )


def version(text: object) -> int | None:
    """A resourceVersion as a number (the API server's are etcd revisions); None otherwise."""
    if isinstance(text, bool):
        return None
    try:
        value = int(str(text))
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def shown(change: Change, selection: Selection) -> tuple[str, Stored] | None:
    """What a client with ``selection`` is told of ``change``, if anything."""
    now = selection.matches(change.obj)
    if change.type == "DELETED":
        return ("DELETED", change.obj) if now else None
    before = selection.matches(change.prev)
    if now and before:
        return ("MODIFIED", change.obj)
    if now:
        return ("ADDED", change.obj)
    if before:
        return ("DELETED", change.obj)
    return None


class WatchCache:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"the change history must keep at least one change, got {capacity}")
        self.capacity = capacity
        self.objects: dict[ObjectKey, Stored] = {}
        self.rv = 0
        self.floor = 0
        self.epoch = 0  # moves with every relist
        self.history: deque[Change] = deque()
        self.filled = False  # a list has been taken in

    def replace(self, items: Iterable[Stored], rv: int) -> None:
        """The state of a new list at ``rv``: a new epoch, with no history before it."""
        self.objects = {obj.key: obj for obj in items}
        self.rv = rv
        self.floor = rv
        self.history.clear()
        self.epoch += 1
        self.filled = True

    def apply(self, type_: str, obj: Stored) -> Change | None:
        """One event of the upstream watch; None when it is already in the state."""
        if type_ not in CHANGE_TYPES:
            raise WatchCacheError(f"not a change: {type_!r}")
        if obj.rv <= self.rv:
            return None
        prev = self.objects.get(obj.key)
        if type_ == "DELETED":
            self.objects.pop(obj.key, None)
        else:
            self.objects[obj.key] = obj
        change = Change(type_, obj.rv, obj, prev)
        self.history.append(change)
        if len(self.history) > self.capacity:
            self.floor = self.history.popleft().rv
        self.rv = obj.rv
        return change

    def bookmark(self, rv: int) -> bool:
        """The upstream watch says the state is complete up to ``rv``; True when that moved it."""
        if rv <= self.rv:
            return False
        self.rv = rv
        return True

    def listing(self, selection: Selection = EVERYTHING) -> tuple[int, list[Stored]]:
        """The matching objects in the API server's order (namespace, then name), and the
        version they are at."""
        return self.rv, [o for k, o in sorted(self.objects.items()) if selection.matches(o)]

    def since(
        self, rv: int, selection: Selection = EVERYTHING
    ) -> list[tuple[str, Stored]] | _TooOld:
        """What a client at version ``rv`` is told next, oldest first."""
        if rv < self.floor:
            return TOO_OLD
        out = []
        for change in reversed(self.history):  # versions only grow: stop at the client's
            if change.rv <= rv:
                break
            seen = shown(change, selection)
            if seen is not None:
                out.append(seen)
        out.reverse()
        return out

    def size(self) -> int:
        """Bytes of object JSON held (the state and the history share unchanged objects)."""
        held = {id(o): len(o.body) for o in self.objects.values()}
        for change in self.history:
            held[id(change.obj)] = len(change.obj.body)
        return sum(held.values())
