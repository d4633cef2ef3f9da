"""How big and how deep a request and a stored object may be, and how they are measured.

The numbers are kube-apiserver's defaults, so what the lab accepts a real cluster accepts:

- a request body is at most ``MAX_REQUEST_BYTES`` (3 MiB, ``MaxRequestBodyBytes``); larger gets
  413 ``Request entity too large: limit is 3145728``. A YAML body counts at its size once its
  aliases are expanded, so a few hundred bytes of anchors cannot become megabytes;
- a stored object is at most ``MAX_OBJECT_BYTES`` (1.5 MiB, etcd's default
  ``--max-request-bytes``) as compact JSON, which is what the store writes. kube-apiserver passes
  etcd's "request is too large" on as a 500, which clients retry; here it is refused up front
  with 422 and reason ``RequestEntityTooLarge`` (what client-go's ``IsRequestEntityTooLargeError``
  recognises), so nobody retries it;
- a JSON patch has at most ``MAX_JSON_PATCH_OPERATIONS`` (10000) operations (413), and its
  ``copy`` operations may add at most ``MAX_PATCH_COPY_BYTES`` (3 MiB, ``JSONPatchMaxCopyBytes``)
  in all (422), so a short patch cannot double a document over and over;
- JSON and YAML nest at most ``MAX_DEPTH`` levels; deeper gets 400. Go decoders stop at 10000;
  Python recurses once or twice per level and its stack ends near 1000 frames, so the bound here
  is lower, and still far above any Kubernetes object (a CRD schema nests about 40 levels).

Sizes and depths are computed without recursion and without expanding shared (aliased) values,
so measuring a hostile document costs time linear in what was actually sent.
"""

from __future__ import annotations

import json
from typing import Any

from raven.lab.apiserver import errors

MAX_REQUEST_BYTES = 3 * 1024 * 1024
MAX_OBJECT_BYTES = 1536 * 1024
MAX_JSON_PATCH_OPERATIONS = 10000
MAX_PATCH_COPY_BYTES = 3 * 1024 * 1024
MAX_DEPTH = 200


def _scalar_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def encoded_size(value: Any) -> int:
    """Bytes of ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``, computed
    without building it: a value shared many times (YAML aliases) is measured once."""
    sizes: dict[int, int] = {}
    # Post-order walk with an explicit stack: (node, children already pushed?)
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, expanded = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if id(node) in sizes:
            continue
        children = list(node.values()) if isinstance(node, dict) else node
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in children if isinstance(c, (dict, list)))
            continue
        total = 2 + max(len(node) - 1, 0)  # brackets and commas
        if isinstance(node, dict):
            total += sum(_scalar_size(str(k)) + 1 for k in node)  # "key":
        for child in children:
            total += sizes[id(child)] if isinstance(child, (dict, list)) else _scalar_size(child)
        sizes[id(node)] = total  # every node lives inside ``value``, so ids stay unique
    if isinstance(value, (dict, list)):
        return sizes[id(value)]
    return _scalar_size(value)


def nesting_depth(value: Any, *, stop_above: int = MAX_DEPTH) -> int:
    """How many objects/arrays deep ``value`` nests (a scalar is 0); stops counting once past
    ``stop_above``, so the answer is exact up to it and ``stop_above + 1`` beyond."""
    deepest = 0
    seen: dict[int, int] = {}
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if seen.get(id(node), 0) >= depth:
            continue  # a shared value already walked at least this deep
        seen[id(node)] = depth
        deepest = max(deepest, depth)
        if deepest > stop_above:
            return stop_above + 1
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def check_depth(value: Any, what: str) -> None:
    """400 BadRequest when ``value`` nests deeper than :data:`MAX_DEPTH`."""
    if nesting_depth(value) > MAX_DEPTH:
        raise errors.too_deep(what, MAX_DEPTH)


def check_object(plural: str, group: str, name: str, obj: Any) -> None:
    """Refuse an object the store would not hold: too deep (400) or too large (422)."""
    check_depth(obj, f'{plural}{"." + group if group else ""} "{name}"')
    size = encoded_size(obj)
    if size > MAX_OBJECT_BYTES:
        raise errors.object_too_large(plural, group, name, size, MAX_OBJECT_BYTES)
