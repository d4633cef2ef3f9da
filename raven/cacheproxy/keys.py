"""Which cache entry holds the answer to a read, and which list a watch continues. Pure.

An entry's key is the SHA-256 of everything that changes the answer: the component (its
User-Agent), the raw (still encoded) path, the Accept header, the impersonation headers and
every query parameter but those that cannot change it:

- ``timeoutSeconds``, and the watch-only ``watch``, ``allowWatchBookmarks`` and
  ``sendInitialEvents`` (a read ignores them);
- ``resourceVersion`` when it only asks for freshness: unset (most recent), ``0`` (any) and
  ``N`` not-older-than (the default) all want the same snapshot, the newest; one entry keeps the
  newest answer and ``N`` becomes a condition for serving it offline (the entry must be at least
  at ``N``). ``resourceVersionMatch=Exact`` (and a list's ``N`` with ``limit`` and no match, which
  the API server also reads as exact) asks for one particular snapshot: its own entry;
- on lists, ``limit`` and ``continue``: pages are assembled into the whole list's entry (see
  :mod:`raven.cacheproxy.pages`), so paging never makes an entry per page; offline, a paged
  request gets the whole list in one answer without ``continue``, which the API server's own
  contract allows ("the server may return all results").

A watch continues the entry of the list with its own selectors: its key drops what only says
where and how the watch runs (``resourceVersion``, ``timeoutSeconds``, bookmarks, ...).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from raven.cacheproxy.request import RequestInfo

Pairs = Sequence[tuple[str, str]]

NEVER = frozenset({"timeoutSeconds", "watch", "allowWatchBookmarks", "sendInitialEvents"})
VERSION = frozenset({"resourceVersion", "resourceVersionMatch"})
PAGING = frozenset({"limit", "continue"})


@dataclass(frozen=True)
class ReadKey:
    key: str  # the entry holding the whole answer
    min_rv: int | None = None  # serve the entry only if it is at least at this version
    paged: bool = False  # limit given: the client takes the whole list in one answer too
    continue_token: str | None = None  # a later page: assembled under ``key``, never served


def _first(query: Pairs, name: str) -> str:
    return next((v for k, v in query if k == name), "")


def _version(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) > 0 else None


def _digest(user_agent: str, path: str, accept: str, identity: Pairs, params: Pairs) -> str:
    raw = json.dumps(
        [user_agent, path, accept, sorted((k.lower(), v) for k, v in identity), sorted(params)]
    )
    return hashlib.sha256(raw.encode()).hexdigest()


def identity_headers(headers: Pairs) -> list[tuple[str, str]]:
    """The headers that change who the API server answers as (impersonation)."""
    return [(k, v) for k, v in headers if k.lower().startswith("impersonate-")]


def read_key(
    info: RequestInfo,
    *,
    user_agent: str,
    raw_path: str,
    query: Pairs,
    accept: str,
    identity: Pairs = (),
) -> ReadKey:
    """The entry for a read (``get`` or ``list``; not a watch)."""
    params = [(k, v) for k, v in query if k not in NEVER and k not in VERSION]
    rv, match = _first(query, "resourceVersion"), _first(query, "resourceVersionMatch")
    if info.verb != "list":
        if match:  # not valid on a get: keep it whole, the API server will answer it
            params += [("resourceVersion", rv), ("resourceVersionMatch", match)]
            return ReadKey(_digest(user_agent, raw_path, accept, identity, params))
        return ReadKey(_digest(user_agent, raw_path, accept, identity, params), _version(rv))
    limit_text, token = _first(query, "limit"), _first(query, "continue")
    paged = limit_text.isdigit() and int(limit_text) > 0
    params = [(k, v) for k, v in params if k not in PAGING]
    min_rv = None
    if match == "Exact" or (not match and rv not in ("", "0") and paged):
        params += [("resourceVersion", rv), ("resourceVersionMatch", "Exact")]
    elif match not in ("", "NotOlderThan"):
        params += [("resourceVersion", rv), ("resourceVersionMatch", match)]
    else:
        min_rv = _version(rv)
    key = _digest(user_agent, raw_path, accept, identity, params)
    return ReadKey(key, min_rv, paged, token or None)


def collection_path(info: RequestInfo, raw_path: str) -> str:
    """The list's path for a watch given in the old ``/watch/`` form; else the path itself."""
    if not info.verb_via_path:
        return raw_path
    segments = raw_path.split("/")
    at = 3 if segments[1:2] == ["api"] else 4  # "", "api", v | "", "apis", g, v
    return "/".join(segments[:at] + segments[at + 1 :])


def watch_key(
    info: RequestInfo,
    *,
    user_agent: str,
    raw_path: str,
    query: Pairs,
    accept: str,
    identity: Pairs = (),
) -> str:
    """The entry of the (fresh, whole) list this watch continues."""
    params = [(k, v) for k, v in query if k not in NEVER and k not in VERSION | PAGING]
    return _digest(user_agent, collection_path(info, raw_path), accept, identity, params)
