"""The three patch formats of PATCH requests: JSON merge (RFC 7386), JSON patch (RFC 6902) and
Kubernetes strategic merge patch (the subset kubectl label/annotate/patch send for built-ins).

All functions return a new document and never modify their arguments. Malformed patches raise
:class:`PatchError` with a message naming the offending operation or path; a JSON patch with
too many operations raises :class:`PatchTooLarge`, and one whose ``copy`` operations would add
more than :data:`~raven.lab.apiserver.limits.MAX_PATCH_COPY_BYTES` stops with a PatchError
before it grows the document any further (see :mod:`raven.lab.apiserver.limits`).
"""

from __future__ import annotations

import copy
from typing import Any

from raven.lab.apiserver.limits import (
    MAX_JSON_PATCH_OPERATIONS,
    MAX_PATCH_COPY_BYTES,
    encoded_size,
)

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"


class PatchError(ValueError):
    """A patch document that cannot be applied."""


class PatchTooLarge(PatchError):
    """A JSON patch with more operations than kube-apiserver accepts."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Lists that strategic merge patch merges by a key instead of replacing (the ones our kinds have:
# Node, Namespace, Lease, DaemonSet's pod template, Service). Where one field name means two
# lists, the first key the list's items carry decides: a container's ports merge by
# containerPort, a Service's by port.
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "conditions": ("type",),
    "addresses": ("type",),
    "taints": ("key",),
    "ownerReferences": ("uid",),
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "volumes": ("name",),
    "env": ("name",),
    "ports": ("containerPort", "port"),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "hostAliases": ("ip",),
    "topologySpreadConstraints": ("topologyKey",),
    "readinessGates": ("conditionType",),
}


def _merge_key(field: str, current: list[Any], patch: list[Any]) -> str:
    candidates = MERGE_KEYS[field]
    for item in [*patch, *current]:
        if isinstance(item, dict):
            for key in candidates:
                if key in item:
                    return key
    return candidates[0]


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch for maps (with ``$patch`` directives) and merge-keyed lists."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive is not None and directive != "merge":
        raise PatchError(f"unknown $patch directive {directive!r}")
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        # Ordering hints and retainKeys only matter for how the real server orders lists.
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, _merge_key(key, result[key], value))
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_list(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    out = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"list item {item!r} lacks merge key {merge_key!r}")
        idx = next(
            (
                i
                for i, e in enumerate(out)
                if isinstance(e, dict) and e.get(merge_key) == item[merge_key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
        elif idx is None:
            out.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            out[idx] = strategic_merge_patch(out[idx], item)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise PatchError(f"path {path!r} does not exist")
    return cur


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"path {path!r} does not exist")


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(f"index {last!r} out of range in {path!r}")
    else:
        raise PatchError(f"cannot add at {path!r}: parent is not an object or array")
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        parent.pop(int(last))
    else:
        raise PatchError(f"path {path!r} does not exist")
    return doc


def json_patch(target: Any, ops: Any, *, max_copy_bytes: int = MAX_PATCH_COPY_BYTES) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test.

    ``copy`` operations may add at most ``max_copy_bytes`` (JSON-encoded) in all.
    """
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    if len(ops) > MAX_JSON_PATCH_OPERATIONS:
        raise PatchTooLarge(
            f"The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, "
            f"got {len(ops)}"
        )
    copied = 0
    doc = copy.deepcopy(target)
    for n, op in enumerate(ops):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"operation {n} needs 'op' and 'path'")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {n} ({kind} {path}) needs 'value'")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)  # must exist
            doc = (
                _add(_remove(doc, path), path, copy.deepcopy(op["value"]))
                if _pointer(path)
                else copy.deepcopy(op["value"])
            )
        elif kind in ("move", "copy"):
            if "from" not in op:
                raise PatchError(f"operation {n} ({kind}) needs 'from'")
            source = _get(doc, op["from"])
            if kind == "copy":
                copied += encoded_size(source)
                if copied > max_copy_bytes:
                    raise PatchError(
                        f"Unable to complete the copy, the accumulated size increase of copy is "
                        f"{copied}, exceeding the limit {max_copy_bytes}"
                    )
            value = copy.deepcopy(source)
            if kind == "move":
                doc = _remove(doc, op["from"])
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"test operation {n} failed: value at {path!r} differs")
        else:
            raise PatchError(f"operation {n}: unknown op {kind!r}")
    return doc


def apply_patch(content_type: str, target: dict[str, Any], patch: Any) -> Any:
    """Dispatch on the request's Content-Type (parameters ignored)."""
    media = content_type.split(";")[0].strip().lower()
    if media == MERGE:
        if not isinstance(patch, dict):
            raise PatchError("a merge patch must be a JSON object")
        return merge_patch(target, patch)
    if media == JSON_PATCH:
        return json_patch(target, patch)
    if media == STRATEGIC:
        if not isinstance(patch, dict):
            raise PatchError("a strategic merge patch must be a JSON object")
        return strategic_merge_patch(target, patch)
    raise PatchError(f"unsupported patch type {media!r}")
