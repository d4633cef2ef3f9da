"""Paged lists (``limit`` and ``continue``) assembled into the one entry of the whole list.

The first page (no ``continue`` in the request, one in the answer) opens an assembly under the
whole list's key; each next page continues it when it asks with the token the previous page
gave and carries the same credential; the page without a ``continue`` completes it, and the
whole list is stored as if it had come in one answer (at the first page's resourceVersion, which
the API server reports on every page). No page is ever an entry of its own.

Assemblies live in memory only, bounded: at most ``MAX_ASSEMBLIES`` at once and
``MAX_BYTES`` of pages in all (the oldest is dropped to make room), and one whose next page has
not come within ``MAX_AGE`` seconds is dropped. A dropped assembly costs nothing but the cache
entry it would have made. Pure: the caller passes the time.
"""

from __future__ import annotations

from dataclasses import dataclass

from raven.cacheproxy.listdoc import ListDoc

MAX_ASSEMBLIES = 16
MAX_BYTES = 64 * 1024 * 1024
MAX_AGE = 60.0


@dataclass
class _Assembly:
    key: str
    credential: str
    doc: ListDoc
    size: int
    touched: float


class Pages:
    def __init__(self) -> None:
        self._open: dict[str, _Assembly] = {}  # by the continue token the next page will bring

    def __len__(self) -> int:
        return len(self._open)

    @property
    def size(self) -> int:
        return sum(a.size for a in self._open.values())

    def add(
        self, key: str, token: str | None, page: ListDoc, credential: str, now: float
    ) -> ListDoc | None:
        """One page of the list at ``key``, asked with ``token`` (None: the first page).

        Returns the whole list once this page completes it, else None."""
        self._expire(now)
        size = sum(len(i.body) for i in page.items)
        if token is None:
            if page.continue_token is None:
                return page  # not paged after all: the whole list in one answer
            assembly = _Assembly(key, credential, page, size, now)
        else:
            found = self._open.get(token)
            if found is None or found.key != key or found.credential != credential:
                return None  # a page of an assembly we do not have (or someone else's)
            del self._open[token]
            assembly = found
            assembly.doc.items.extend(page.items)
            assembly.size += size
            assembly.touched = now
            if page.continue_token is None:
                return _whole(assembly.doc)
        assert page.continue_token is not None
        self._open[page.continue_token] = assembly
        self._bound()
        return None

    def _expire(self, now: float) -> None:
        for token, assembly in list(self._open.items()):
            if now - assembly.touched > MAX_AGE:
                del self._open[token]

    def _bound(self) -> None:
        while self._open and (len(self._open) > MAX_ASSEMBLIES or self.size > MAX_BYTES):
            oldest = min(self._open, key=lambda t: self._open[t].touched)
            del self._open[oldest]


def _whole(doc: ListDoc) -> ListDoc:
    meta = doc.shell.get("metadata")
    if isinstance(meta, dict):
        meta.pop("continue", None)
        meta.pop("remainingItemCount", None)
    return doc
