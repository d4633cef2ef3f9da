"""Bounds on what one request can make the API server build or hold (kube-apiserver's numbers):
3 MiB request bodies (YAML counted with its aliases expanded), 1.5 MiB stored objects, JSON
patches of at most 10000 operations whose copies add at most 3 MiB, and a nesting depth."""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest

from raven.lab.apiserver import limits

NODES = "/api/v1/nodes"


def call(
    api: Any, method: str, path: str, body: bytes, content_type: str = "application/json"
) -> tuple[int, dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=str(api.ca_cert))
    req = urllib.request.Request(
        api.url + path,
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {api.token}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def node(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}


def nodes(api: Any) -> list[str]:
    status, listing = call(api, "GET", NODES, b"")
    assert status == 200
    return [n["metadata"]["name"] for n in listing["items"]]


def alias_bomb(levels: int, fanout: int = 10) -> bytes:
    """A few hundred bytes of YAML whose aliases expand to ~100 * fanout**levels bytes."""
    lines = [f"l0: &l0 ['{'x' * 100}']"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]")
    doc = "\n".join("  " + line for line in lines)
    return f"apiVersion: v1\nkind: Node\nmetadata: {{name: bomb}}\nspec:\n{doc}\n".encode()


def test_yaml_aliases_expanding_past_the_request_limit_get_413(apiserver):
    body = alias_bomb(5)  # ~10 MB once expanded
    assert len(body) < 500
    status, answer = call(apiserver, "POST", NODES, body, "application/yaml")
    assert status == 413, answer
    assert answer["reason"] == "RequestEntityTooLarge"
    assert answer["message"].startswith("Request entity too large: limit is 3145728")
    assert "bomb" not in nodes(apiserver)


def test_yaml_aliases_making_an_object_past_the_storage_limit_get_422(apiserver):
    body = alias_bomb(4, fanout=12)  # ~2.2 MB expanded: a legal request, too big to store
    status, answer = call(apiserver, "POST", NODES, body, "application/yaml")
    assert status == 422, answer
    assert answer["reason"] == "RequestEntityTooLarge"
    assert answer["message"].startswith("Request entity too large: limit is 1572864")
    assert 'nodes "bomb"' in answer["message"]
    assert "bomb" not in nodes(apiserver)


def test_request_body_over_3_mib_gets_413_as_from_kube_apiserver(apiserver):
    body = json.dumps(node("big", blob="x" * limits.MAX_REQUEST_BYTES)).encode()
    status, answer = call(apiserver, "POST", NODES, body)
    assert (status, answer["message"]) == (413, "Request entity too large: limit is 3145728")
    assert "big" not in nodes(apiserver)


def test_object_over_1_5_mib_gets_422_and_one_just_under_is_stored(apiserver):
    status, answer = call(
        apiserver, "POST", NODES, json.dumps(node("big", blob="x" * 1600000)).encode()
    )
    assert (status, answer["reason"]) == (422, "RequestEntityTooLarge")
    status, _ = call(
        apiserver, "POST", NODES, json.dumps(node("fits", blob="x" * 1500000)).encode()
    )
    assert status == 201
    assert nodes(apiserver) == ["fits"]


def _copy_ops(n: int) -> bytes:
    # each copy appends the whole list to itself: the document doubles every operation
    return json.dumps(
        [{"op": "copy", "from": "/spec/l", "path": "/spec/l/-"} for _ in range(n)]
    ).encode()


def test_json_patch_copies_are_stopped_at_3_mib_of_growth(apiserver):
    call(apiserver, "POST", NODES, json.dumps(node("n1", l=["x" * 700])).encode())
    status, answer = call(
        apiserver, "PATCH", f"{NODES}/n1", _copy_ops(14), "application/json-patch+json"
    )
    assert status == 422, answer
    assert "the accumulated size increase of copy is" in answer["message"]
    assert "exceeding the limit 3145728" in answer["message"]
    status, stored = call(apiserver, "GET", f"{NODES}/n1", b"")
    assert stored["spec"]["l"] == ["x" * 700]


def test_json_patch_growing_an_object_past_1_5_mib_gets_422(apiserver):
    call(apiserver, "POST", NODES, json.dumps(node("n1", l=["x" * 700])).encode())
    status, answer = call(  # 2**12 * ~700 bytes: ~2.9 MB, under the copy limit
        apiserver, "PATCH", f"{NODES}/n1", _copy_ops(12), "application/json-patch+json"
    )
    assert (status, answer["reason"]) == (422, "RequestEntityTooLarge"), answer
    assert call(apiserver, "GET", f"{NODES}/n1", b"")[1]["spec"]["l"] == ["x" * 700]


def test_json_patch_with_more_than_10000_operations_gets_413(apiserver):
    call(apiserver, "POST", NODES, json.dumps(node("n1")).encode())
    ops = [{"op": "add", "path": "/metadata/labels", "value": {}}] * 10001
    status, answer = call(
        apiserver, "PATCH", f"{NODES}/n1", json.dumps(ops).encode(), "application/json-patch+json"
    )
    assert status == 413
    assert answer["message"] == (
        "Request entity too large: The allowed maximum operations in a JSON patch is 10000, "
        "got 10001"
    )


@pytest.mark.parametrize(
    ("content_type", "depth"),
    [
        ("application/json", 100000),  # deeper than Python's parser goes
        ("application/json", limits.MAX_DEPTH + 5),  # parses, but deeper than allowed
        ("application/yaml", 5000),
    ],
)
def test_deeply_nested_bodies_get_400_and_one_log_line(apiserver, caplog, content_type, depth):
    nested = "[" * depth + "]" * depth
    text = json.dumps(node("deep")).replace('"spec": {}', f'"spec": {{"x": {nested}}}')
    with caplog.at_level(logging.WARNING, logger="raven.lab.apiserver"):
        status, answer = call(apiserver, "POST", NODES, text.encode(), content_type)
    assert status == 400, answer
    assert f"more than {limits.MAX_DEPTH} levels deep" in answer["message"]
    assert not any(r.exc_info for r in caplog.records), "no traceback for a client's mistake"
    assert "deep" not in nodes(apiserver)


def test_a_patch_that_nests_an_object_too_deeply_gets_400(apiserver):
    call(apiserver, "POST", NODES, json.dumps(node("n1", x=[])).encode())
    half = limits.MAX_DEPTH // 2 + 5
    value: Any = []
    for _ in range(half):
        value = [value]
    ops = [
        {"op": "add", "path": "/spec/x", "value": value},
        {"op": "add", "path": "/spec/x" + "/0" * (half - 1) + "/-", "value": value},
    ]
    status, answer = call(
        apiserver, "PATCH", f"{NODES}/n1", json.dumps(ops).encode(), "application/json-patch+json"
    )
    assert status == 400, answer
    assert call(apiserver, "GET", f"{NODES}/n1", b"")[1]["spec"]["x"] == []


def test_ordinary_nesting_is_accepted(apiserver):
    value: Any = "leaf"
    for i in range(60):  # deeper than any CRD schema
        value = {f"k{i}": value}
    status, _ = call(apiserver, "POST", NODES, json.dumps(node("n1", x=value)).encode())
    assert status == 201


@pytest.mark.parametrize(
    "value",
    [{"a": [1, 2.5, None, True, 'é"\\'], "b": {}}, [], "x", {"k": [[{}]]}],
)
def test_encoded_size_is_the_compact_json_size(value):
    assert limits.encoded_size(value) == len(
        json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    )
