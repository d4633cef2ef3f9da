"""On-disk cache of what clients read, one file per (component, distinct request).

Key = SHA-256 of (User-Agent, path, Accept, namespace/label/field selectors...), so names never
become paths (no traversal) and two lists with different selectors are two entries. Each file is
one JSON header line (status, content type, resourceVersion, accepted credential hashes) followed
by the raw body. Writes are atomic: temp file, fsync, rename, fsync of the directory; ``open``
removes leftover temp files and entries that do not parse, so a crash mid-write leaves either the
old entry or the new one. A single object is only replaced by a newer resourceVersion; lists are
replaced whole. Only hashes of credentials are stored.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

# Query parameters that change what a read returns; the rest (timeouts, watch) do not.
KEY_PARAMS = ("labelSelector", "fieldSelector", "limit", "continue", "as")
# A watch folds its events into the list it continues, so its key ignores paging.
WATCH_KEY_PARAMS = ("labelSelector", "fieldSelector", "as")
TMP_SUFFIX = ".tmp"


def credential_hash(authorization: str | None) -> str | None:
    if not authorization:
        return None
    return hashlib.sha256(authorization.encode()).hexdigest()


def cache_key(user_agent: str, path: str, query: str, accept: str, *, watch: bool = False) -> str:
    wanted = WATCH_KEY_PARAMS if watch else KEY_PARAMS
    params = sorted((k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k in wanted)
    raw = json.dumps([user_agent, path, accept, params])
    return hashlib.sha256(raw.encode()).hexdigest()


def _rv(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


@dataclass
class Entry:
    status: int
    content_type: str
    body: bytes
    resource_version: str | None = None
    credentials: set[str] = field(default_factory=set)


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.recovered: list[str] = []  # what recovery removed, for logs and tests
        self._recover()

    def _recover(self) -> None:
        for p in self.root.iterdir():
            if p.name.endswith(TMP_SUFFIX):
                p.unlink(missing_ok=True)
                self.recovered.append(p.name)
            elif self._read(p) is None:
                p.unlink(missing_ok=True)
                self.recovered.append(p.name)

    def _path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be a hex SHA-256, got {key!r}")
        return self.root / key

    @staticmethod
    def _read(path: Path) -> Entry | None:
        try:
            data = path.read_bytes()
            head, sep, body = data.partition(b"\n")
            if not sep:
                return None
            meta = json.loads(head)
            if len(body) != meta["length"]:
                return None  # torn write (cannot happen with rename, but never trust the disk)
            return Entry(
                meta["status"], meta["content_type"], body, meta.get("rv"), set(meta["creds"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def get(self, key: str) -> Entry | None:
        return self._read(self._path(key))

    def _write(self, key: str, entry: Entry) -> None:
        meta = {
            "status": entry.status,
            "content_type": entry.content_type,
            "rv": entry.resource_version,
            "creds": sorted(entry.credentials),
            "length": len(entry.body),
        }
        final = self._path(key)
        tmp = final.with_name(final.name + f".{os.getpid()}{TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(meta).encode() + b"\n")
            view = memoryview(entry.body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        dfd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def put(self, key: str, status: int, content_type: str, body: bytes, cred: str | None) -> bool:
        """Store a successful read. Returns False when an older object was not stored."""
        rv: str | None = None
        is_list = False
        if "json" in content_type:
            try:
                doc = json.loads(body)
                rv = doc.get("metadata", {}).get("resourceVersion")
                is_list = str(doc.get("kind", "")).endswith("List") or "items" in doc
            except (ValueError, AttributeError):
                pass
        old = self.get(key)
        if old and old.body == body and (cred is None or cred in old.credentials):
            return True  # unchanged: skip the fsync, the dominant cost of a repeated read
        creds = set(old.credentials) if old else set()
        if cred:
            creds.add(cred)
        if old and not is_list and _rv(rv) is not None and _rv(old.resource_version) is not None:
            if _rv(rv) < _rv(old.resource_version):  # type: ignore[operator]
                if cred and cred not in old.credentials:
                    old.credentials = creds
                    self._write(key, old)
                return False
        self._write(key, Entry(status, content_type, body, rv, creds))
        return True

    def apply_event(self, key: str, event: dict) -> bool:
        """Fold one watch event into the cached list at ``key``; older versions are ignored."""
        entry = self.get(key)
        if entry is None or "json" not in entry.content_type:
            return False
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        new_rv = _rv(meta.get("resourceVersion"))
        try:
            doc = json.loads(entry.body)
        except ValueError:
            return False
        if "items" not in doc:
            return False
        if event.get("type") == "BOOKMARK":
            items = doc["items"]
        else:
            ident = (meta.get("namespace"), meta.get("name"))
            items = []
            for item in doc["items"]:
                im = item.get("metadata") or {}
                if (im.get("namespace"), im.get("name")) == ident:
                    old_rv = _rv(im.get("resourceVersion"))
                    if old_rv is not None and new_rv is not None and new_rv < old_rv:
                        return False  # never replace a newer object with an older one
                    continue
                items.append(item)
            if event.get("type") in ("ADDED", "MODIFIED"):
                items.append(obj)
        doc["items"] = items
        list_rv = _rv(doc.get("metadata", {}).get("resourceVersion"))
        if new_rv is not None and (list_rv is None or new_rv > list_rv):
            doc.setdefault("metadata", {})["resourceVersion"] = str(new_rv)
        entry.body = json.dumps(doc).encode()
        entry.resource_version = doc.get("metadata", {}).get("resourceVersion")
        self._write(key, entry)
        return True
