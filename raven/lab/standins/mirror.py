"""One component's in-memory copy of one resource, as a client-go informer's store holds it.

Pure: the reflector (:mod:`.reflector`) feeds it lists and watch events with the time each
arrived; it keeps the objects by ``namespace/name``, the last resourceVersion seen (where the
next watch starts), counters, and a bounded record of arrivals (which object, at which
resourceVersion, when) that the benchmark matches with the writes it made.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]

# Arrivals kept per resource: about 100 bytes each, so 100,000 are ~10 MB. An hour of the
# benchmark's default churn at ten nodes is far fewer.
MAX_ARRIVALS = 100_000


@dataclass(frozen=True)
class Arrival:
    """An object's version reached this component: by a watch event or by a (re)list."""

    type: str  # ADDED, MODIFIED, DELETED, or LIST when a list brought a version not held before
    key: str  # namespace/name (name alone for a cluster-scoped kind)
    rv: str
    at: float  # Unix time it arrived

    def as_list(self) -> list[Any]:
        return [self.type, self.key, self.rv, self.at]


def key_of(obj: JSON) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name', '')}" if ns else str(meta.get("name", ""))


def _rv(obj: JSON) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class Mirror:
    """The objects of one resource as one component sees them."""

    def __init__(self, resource: str, *, max_arrivals: int = MAX_ARRIVALS) -> None:
        self.resource = resource
        self.objects: dict[str, JSON] = {}
        self.rv = ""  # the version the next watch starts from
        self.synced = False
        self.lists = 0
        self.watches = 0
        self.expired = 0  # watches ended by 410 Gone (each followed by a relist)
        self.events = 0
        self.bookmarks = 0
        self.arrivals: deque[Arrival] = deque(maxlen=max_arrivals)

    def replace(self, items: Iterable[JSON], rv: str, at: float) -> None:
        """A (re)list's answer: its items become the copy; versions not held before arrive."""
        fresh = {key_of(o): o for o in items}
        for key, obj in sorted(fresh.items()):
            held = self.objects.get(key)
            if held is None or _rv(held) != _rv(obj):
                self.arrivals.append(Arrival("LIST", key, _rv(obj), at))
        self.objects = fresh
        self.rv = rv
        self.lists += 1
        self.synced = True

    def apply(self, kind: str, obj: JSON, at: float) -> None:
        """One watch event; a BOOKMARK only moves the version the next watch starts from."""
        rv = _rv(obj)
        if rv:
            self.rv = rv
        if kind == "BOOKMARK":
            self.bookmarks += 1
            return
        key = key_of(obj)
        if kind == "DELETED":
            self.objects.pop(key, None)
        elif kind in ("ADDED", "MODIFIED"):
            self.objects[key] = obj
        else:
            return
        self.events += 1
        self.arrivals.append(Arrival(kind, key, rv, at))

    def dump(self, *, since: float = 0.0) -> JSON:
        """Everything a test or the benchmark compares: the objects, counters, and the
        arrivals at or after ``since``."""
        return {
            "resourceVersion": self.rv,
            "synced": self.synced,
            "lists": self.lists,
            "watches": self.watches,
            "expired": self.expired,
            "events": self.events,
            "bookmarks": self.bookmarks,
            "objects": dict(sorted(self.objects.items())),
            "arrivals": [a.as_list() for a in self.arrivals if a.at >= since],
        }
