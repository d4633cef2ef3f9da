"""How one watch's events change the cached list it continues. Pure.

A cached list is a snapshot at its resourceVersion ``E``: every change up to ``E`` is in it. So
an event at ``V <= E`` is already there and is skipped, and an event at ``V > E`` is applied and
moves the list to ``V`` (a BOOKMARK moves only the version). This is right exactly when the watch
delivers every change after ``E`` in order, that is when it started at or before ``E``: a watch
started from a version newer than the list (the client listed elsewhere) or from ``""``/``0``
(it starts with the current objects and never reports what was deleted before) does not fold.
Several watches of one list fold together safely, each skipping what another already applied.

A new list answer replaces the entry (a new *generation*); a watch keeps folding into it only if
it has not already passed the new list's version, so nothing between them can be missed. Any
event the fold cannot place (an ERROR, a version that is not a number) stops that watch's fold;
the events still go to the client.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, replace
from typing import Any


class Op(enum.Enum):
    NONE = "none"  # this watch does not fold
    SKIP = "skip"  # already in the list
    UPSERT = "upsert"  # store the object, move the list to the event's version
    DELETE = "delete"  # remove the object, move the list to the event's version
    ADVANCE = "advance"  # a bookmark: move the list's version only
    STOP = "stop"  # the fold cannot go on; the list stays as it is


@dataclass(frozen=True)
class Event:
    type: str
    rv: int | None
    namespace: str
    name: str
    obj: dict[str, Any]


@dataclass(frozen=True)
class ListState:
    """What the fold needs to know of the cached list: its version and generation."""

    rv: int | None
    generation: int


@dataclass(frozen=True)
class Follower:
    """One watch's place: the generation it folds into (None: not folding), its last version."""

    generation: int | None
    position: int | None


def version(text: object) -> int | None:
    try:
        value = int(str(text))
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def parse_event(line: bytes) -> Event | None:
    """One line of a JSON watch stream; None when it is not a watch event."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("object"), dict):
        return None
    obj = doc["object"]
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return Event(
        str(doc.get("type", "")),
        version(meta.get("resourceVersion")),
        str(meta.get("namespace") or ""),
        str(meta.get("name") or ""),
        obj,
    )


def begin(entry: ListState | None, start: str) -> Follower:
    """A watch from resourceVersion ``start`` on the list ``entry`` (None: no list cached)."""
    at = version(start)
    if entry is None or entry.rv is None or at is None or at == 0 or at > entry.rv:
        return Follower(None, None)
    return Follower(entry.generation, at)


def step(follower: Follower, entry: ListState | None, event: Event) -> tuple[Op, Follower]:
    """What ``event`` does to the list; the follower's new place."""
    if follower.generation is None:
        return Op.NONE, follower
    stopped = Follower(None, None)
    if entry is None or entry.rv is None:
        return Op.STOP, stopped
    if entry.generation != follower.generation:
        if follower.position is None or follower.position > entry.rv:
            return Op.STOP, stopped  # the new list is older than where this watch is
        follower = replace(follower, generation=entry.generation)
    if event.rv is None or event.type not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
        return Op.STOP, stopped
    position = max(event.rv, follower.position or 0)
    moved = replace(follower, position=position)
    if event.rv <= entry.rv:
        return Op.SKIP, moved
    if event.type == "BOOKMARK":
        return Op.ADVANCE, moved
    if event.type == "DELETED":
        return Op.DELETE, moved
    return Op.UPSERT, moved
