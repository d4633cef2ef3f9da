"""An answer's shape: a list taken apart into its items, and put together again. Pure.

A list (any JSON object with an ``items`` array) is stored as its *shell* (the document without
the items: kind, apiVersion, metadata) and one entry per item, keyed by namespace and name, with
each item's JSON exactly as the API server sent it. A ``Table`` (kubectl's ``as=Table``) splits
the same way on its ``rows``. Anything else is a blob with, when it has one, its
``metadata.resourceVersion``.

:func:`split` walks the document one value at a time rather than parsing it whole, so taking a
9 MB list apart is 5,000 short steps (the event loop, or another thread, gets a turn between
them) and the item bytes are slices of the original, never re-encoded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_decoder = json.JSONDecoder()
_space = re.compile(r"[ \t\n\r]*")
SPLIT_FIELDS = ("items", "rows")


@dataclass(frozen=True)
class Item:
    namespace: str
    name: str
    body: bytes | memoryview  # a slice of the answer it came in, when that could be kept


@dataclass
class ListDoc:
    shell: dict[str, Any]  # the document without its items
    array: str  # "items", or "rows" for a Table
    items: list[Item] = field(default_factory=list)

    @property
    def table(self) -> bool:
        return self.array == "rows"

    @property
    def resource_version(self) -> str | None:
        return _rv(self.shell)

    @property
    def continue_token(self) -> str | None:
        meta = self.shell.get("metadata")
        token = meta.get("continue") if isinstance(meta, dict) else None
        return token if isinstance(token, str) and token else None


@dataclass(frozen=True)
class Blob:
    resource_version: str | None


def _rv(doc: dict[str, Any]) -> str | None:
    meta = doc.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return rv if isinstance(rv, str) and rv else None


def _skip(text: str, i: int) -> int:
    return _space.match(text, i).end()  # type: ignore[union-attr]  # [ \t..]* always matches


def _array(text: str, raw: memoryview | None, i: int, named: bool) -> tuple[list[Item], int]:
    """Elements of the array at ``text[i] == '['``; the index after it. ``raw``: the bytes of
    ``text`` when their indexes are the same (ASCII), so items are slices, not copies."""
    items: list[Item] = []
    i = _skip(text, i + 1)
    if text[i] == "]":
        return items, i + 1
    while True:
        value, end = _decoder.raw_decode(text, i)
        ns = name = ""
        if named:
            meta = value.get("metadata") if isinstance(value, dict) else None
            if not isinstance(meta, dict):
                raise ValueError("a list item without metadata")
            ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        items.append(Item(ns, name, raw[i:end] if raw is not None else text[i:end].encode()))
        i = _skip(text, end)
        if text[i] == "]":
            return items, i + 1
        if text[i] != ",":
            raise ValueError(f"expected , or ] at {i}")
        i = _skip(text, i + 1)


def split(body: bytes) -> ListDoc | Blob:
    """Take an answer apart: a :class:`ListDoc` for a list or Table, else a :class:`Blob`."""
    try:
        text = body.decode()
        raw = memoryview(body) if len(text) == len(body) else None
        i = _skip(text, 0)
        if text[i : i + 1] != "{":
            return Blob(None)
        shell: dict[str, Any] = {}
        arrays: dict[str, tuple[list[Item], int]] = {}
        i = _skip(text, i + 1)
        if text[i] != "}":
            while True:
                key, i = _decoder.raw_decode(text, i)
                i = _skip(text, i)
                if not isinstance(key, str) or text[i] != ":":
                    return Blob(None)
                i = _skip(text, i + 1)
                if key in SPLIT_FIELDS and text[i] == "[":
                    start = i
                    # Items are named; a Table's rows are not (their order is the answer's).
                    items, i = _array(text, raw, i, named=key == "items")
                    arrays[key] = (items, start)
                else:
                    shell[key], i = _decoder.raw_decode(text, i)
                i = _skip(text, i)
                if text[i] == "}":
                    break
                if text[i] != ",":
                    return Blob(None)
                i = _skip(text, i + 1)
        if "items" in arrays:
            return ListDoc(shell, "items", arrays["items"][0])
        if "rows" in arrays and shell.get("kind") == "Table":
            return ListDoc(shell, "rows", arrays["rows"][0])
        return Blob(_rv(shell))
    except (ValueError, IndexError, UnicodeDecodeError):
        return Blob(None)


def join(shell: dict[str, Any], array: str, bodies: Iterable[bytes | memoryview]) -> bytearray:
    """The document ``shell`` with ``bodies`` as its ``array``, written into one buffer (no
    second copy of a large list, no list of its parts)."""
    head = json.dumps(shell, separators=(",", ":")).encode()
    out = bytearray(head[:-1])
    if shell:
        out += b","
    out += json.dumps(array).encode() + b":["
    first = True
    for body in bodies:
        if not first:
            out += b","
        out += body
        first = False
    out += b"]}"
    return out
