"""The on-disk cache: versions only move forward, keys never become paths, crashes are survived."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raven.cacheproxy.cache import Cache, cache_key

JSON = "application/json"


def node(name: str, rv: int, label: str = "a") -> dict:
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "resourceVersion": str(rv), "labels": {"l": label}},
    }


def test_object_not_replaced_by_older_version(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    k = cache_key("ua", "/api/v1/nodes/n1", "", JSON)
    assert c.put(k, 200, JSON, json.dumps(node("n1", 7, "new")).encode(), "h1")
    assert not c.put(k, 200, JSON, json.dumps(node("n1", 5, "old")).encode(), "h2")
    e = c.get(k)
    assert e is not None and json.loads(e.body)["metadata"]["labels"]["l"] == "new"
    assert e.resource_version == "7"
    assert e.credentials == {"h1", "h2"}  # the older answer still proved h2 may read it


def test_watch_event_with_older_version_ignored(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    k = cache_key("ua", "/api/v1/nodes", "", JSON)
    lst = {
        "kind": "NodeList",
        "metadata": {"resourceVersion": "9"},
        "items": [node("n1", 9, "new")],
    }
    c.put(k, 200, JSON, json.dumps(lst).encode(), "h1")
    assert not c.apply_event(k, {"type": "MODIFIED", "object": node("n1", 4, "old")})
    assert c.apply_event(k, {"type": "ADDED", "object": node("n2", 10)})
    doc = json.loads(c.get(k).body)  # type: ignore[union-attr]
    assert {i["metadata"]["name"]: i["metadata"]["labels"]["l"] for i in doc["items"]} == {
        "n1": "new",
        "n2": "a",
    }
    assert doc["metadata"]["resourceVersion"] == "10"
    assert c.apply_event(k, {"type": "DELETED", "object": node("n1", 11)})
    assert [i["metadata"]["name"] for i in json.loads(c.get(k).body)["items"]] == ["n2"]  # type: ignore[union-attr]


def test_lists_replaced_whole(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    k = cache_key("ua", "/api/v1/nodes", "", JSON)
    c.put(
        k,
        200,
        JSON,
        json.dumps(
            {"kind": "NodeList", "metadata": {"resourceVersion": "9"}, "items": [node("n1", 9)]}
        ).encode(),
        None,
    )
    c.put(
        k,
        200,
        JSON,
        json.dumps(
            {"kind": "NodeList", "metadata": {"resourceVersion": "3"}, "items": []}
        ).encode(),
        None,
    )
    assert json.loads(c.get(k).body)["items"] == []  # type: ignore[union-attr]


def test_keys_separate_components_and_selectors() -> None:
    base = cache_key("kubelet", "/api/v1/nodes", "labelSelector=a%3D1", JSON)
    assert base != cache_key("kube-proxy", "/api/v1/nodes", "labelSelector=a%3D1", JSON)
    assert base != cache_key("kubelet", "/api/v1/nodes", "labelSelector=a%3D2", JSON)
    assert base == cache_key(
        "kubelet", "/api/v1/nodes", "labelSelector=a%3D1&timeoutSeconds=5", JSON
    )


def test_path_traversal_names_stay_inside_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    c = Cache(root)
    for evil in ("../../etc/passwd", "..%2F..%2Fx", "/abs", "a/../../b", "\x00"):
        k = cache_key("ua", f"/api/v1/nodes/{evil}", "", JSON)
        c.put(k, 200, JSON, b"{}", "h")
    assert sorted(p.parent for p in tmp_path.rglob("*") if p.is_file()) == [root] * 5
    with pytest.raises(ValueError, match="hex SHA-256"):
        c.get("../../etc/passwd")


WRITER = """
import json, sys
from pathlib import Path
from raven.cacheproxy.cache import Cache, cache_key
c = Cache(Path(sys.argv[1]))
print("ready", flush=True)
i = 0
while True:
    i += 1
    items = [{"metadata": {"name": f"n{j}", "resourceVersion": str(i)}} for j in range(2000)]
    body = json.dumps({"kind": "NodeList", "metadata": {"resourceVersion": str(i)}, "items": items})
    c.put(cache_key("ua", f"/api/v1/nodes", f"labelSelector=k%3D{i % 3}", "application/json"),
          200, "application/json", body.encode(), "h")
"""


def test_killed_mid_write_restarts_consistent(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        time.sleep(0.6)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    # Add a torn temp file and a torn entry as a crash without rename could leave them.
    (root / ("a" * 64 + ".123.tmp")).write_bytes(b'{"status": 200, "cont')
    (root / ("b" * 64)).write_bytes(
        b'{"status": 200, "content_type": "x", "creds": [], "length": 99}\nshort'
    )
    c = Cache(root)
    assert ("a" * 64 + ".123.tmp") in c.recovered and ("b" * 64) in c.recovered
    files = list(root.iterdir())
    assert files and not any(f.name.endswith(".tmp") for f in files)
    for f in files:
        e = c.get(f.name)
        assert e is not None
        doc = json.loads(e.body)
        assert (
            len(doc["items"]) == 2000 and e.resource_version == doc["metadata"]["resourceVersion"]
        )
