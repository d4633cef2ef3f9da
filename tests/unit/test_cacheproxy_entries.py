"""Through the real proxy and the lab API server: what becomes a cache entry, for how long, for
which credential; and that the disk is never in a client's way."""

from __future__ import annotations

import http.client
import json
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s_client

from raven.cacheproxy.cache import CacheConfig
from raven.cacheproxy.store import DB_NAME
from raven.lab.testing.apiserver import ApiServerHandle, api_client, run_apiserver
from raven.lab.testing.cacheproxy import ProxyHandle, run_proxy

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
UA = "raven-test"  # one component: its watches continue its lists


def make_node(api: ApiServerHandle, name: str) -> None:
    k8s_client.CoreV1Api(api_client(api)).create_node(
        k8s_client.V1Node(metadata=k8s_client.V1ObjectMeta(name=name))
    )


def get(
    proxy: ProxyHandle, path: str, auth: str | None, accept: str = "application/json"
) -> tuple[int, dict]:
    req = urllib.request.Request(proxy.url + path, headers={"Accept": accept, "User-Agent": UA})
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=15, context=proxy.proxy.ssl_ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(check: Callable[[], bool], timeout: float, *, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def entries(proxy: ProxyHandle) -> int:
    return int(proxy.metrics()["raven_cacheproxy_cache_entries"])


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[ApiServerHandle, ProxyHandle]]:
    with run_apiserver(tmp_path / "api") as api:
        tls = (api.pki.server_cert, api.pki.server_key)
        with run_proxy(api.url, api.ca_cert, tmp_path / "cache", tls=tls) as proxy:
            yield api, proxy


def test_pages_make_one_entry_and_are_served_whole_offline(env) -> None:
    api, proxy = env
    for i in range(12):
        make_node(api, f"n{i:02}")
    bearer = f"Bearer {api.token}"
    tokens: list[str] = []
    for _ in range(3):  # three paged lists: new continue tokens every time
        path, names = "/api/v1/nodes?limit=5", []
        while True:
            status, page = get(proxy, path, bearer)
            assert status == 200
            names += [i["metadata"]["name"] for i in page["items"]]
            token = page["metadata"].get("continue")
            if not token:
                break
            tokens.append(token)
            path = "/api/v1/nodes?limit=5&continue=" + urllib.parse.quote(token)
        assert len(names) == 12
    assert entries(proxy) == 1
    api.stop()
    proxy.wait_cloud(False)
    status, whole = get(proxy, "/api/v1/nodes?limit=5", bearer)
    assert status == 200 and "continue" not in whole["metadata"]
    assert [i["metadata"]["name"] for i in whole["items"]] == [f"n{i:02}" for i in range(12)]
    status, _ = get(
        proxy, "/api/v1/nodes?limit=5&continue=" + urllib.parse.quote(tokens[-1]), bearer
    )
    assert status == 503  # a later page is never an answer of its own


def test_exact_versions_and_include_object_are_answers_of_their_own(env) -> None:
    api, proxy = env
    make_node(api, "n1")
    bearer = f"Bearer {api.token}"
    status, listed = get(proxy, "/api/v1/nodes", bearer)
    rv = int(listed["metadata"]["resourceVersion"])
    assert (
        get(proxy, f"/api/v1/nodes?resourceVersion={rv}&resourceVersionMatch=Exact", bearer)[0]
        == 200
    )
    assert get(proxy, "/api/v1/nodes?includeObject=Object", bearer, TABLE)[0] == 200
    make_node(api, "n2")
    assert get(proxy, "/api/v1/nodes", bearer)[0] == 200  # the newest list, now with n2
    api.stop()
    proxy.wait_cloud(False)
    assert get(proxy, "/api/v1/nodes", bearer)[0] == 200
    exact = f"/api/v1/nodes?resourceVersion={rv}&resourceVersionMatch=Exact"
    status, old = get(proxy, exact, bearer)
    assert status == 200 and [i["metadata"]["name"] for i in old["items"]] == ["n1"]
    other = f"/api/v1/nodes?resourceVersion={rv + 1}&resourceVersionMatch=Exact"
    assert get(proxy, other, bearer)[0] == 503  # never answered with another snapshot
    status, table = get(proxy, "/api/v1/nodes?includeObject=Object", bearer, TABLE)
    assert status == 200 and table["rows"][0]["object"]["metadata"]["name"] == "n1"
    assert get(proxy, "/api/v1/nodes?includeObject=None", bearer, TABLE)[0] == 503
    # Not older than a version the cache has not seen: refused rather than served stale.
    assert get(proxy, f"/api/v1/nodes?resourceVersion={rv + 100}", bearer)[0] == 503


def test_entries_expire_only_with_the_cloud_reachable(tmp_path: Path) -> None:
    with run_apiserver(tmp_path / "api") as api:
        tls = (api.pki.server_cert, api.pki.server_key)
        ttl = CacheConfig(entry_ttl=2.0)
        with run_proxy(api.url, api.ca_cert, tmp_path / "cache", tls=tls, cache=ttl) as proxy:
            bearer = f"Bearer {api.token}"
            assert get(proxy, "/api/v1/nodes", bearer)[0] == 200
            assert entries(proxy) == 1
            wait_for(lambda: entries(proxy) == 0, 10, what="the entry to expire")
            assert get(proxy, "/api/v1/nodes", bearer)[0] == 200
            api.stop()
            proxy.wait_cloud(False)
            time.sleep(3)  # longer than the TTL, all of it offline
            assert get(proxy, "/api/v1/nodes", bearer)[0] == 200
            assert entries(proxy) == 1
            api.start()
            proxy.wait_cloud(True)
            wait_for(lambda: entries(proxy) == 0, 10, what="the entry to expire")


def test_a_token_the_api_server_refused_is_no_longer_served(tmp_path: Path) -> None:
    with run_apiserver(tmp_path / "api") as api:
        tls = (api.pki.server_cert, api.pki.server_key)
        with run_proxy(api.url, api.ca_cert, tmp_path / "cache", tls=tls) as proxy:
            old = api.token
            assert get(proxy, "/api/v1/nodes", f"Bearer {old}")[0] == 200
            api.pki.token_file.write_text("a-new-token\n")  # the old token is revoked
            api.restart()
            proxy.wait_cloud(True)
            assert get(proxy, "/api/v1/namespaces", f"Bearer {old}")[0] == 401
            api.stop()
            proxy.wait_cloud(False)
            status, body = get(proxy, "/api/v1/nodes", f"Bearer {old}")
            assert status == 503 and "items" not in body
            api.start()


def test_the_credential_is_the_bearer_token_as_the_api_server_reads_it(env) -> None:
    api, proxy = env
    make_node(api, "n1")
    assert get(proxy, "/api/v1/nodes", f"Bearer {api.token}")[0] == 200
    # kube-apiserver reads "Bearer  <token>" (two spaces) as no token at all. (The lab API
    # server accepts it; the proxy must not take its answer as proof of a credential.)
    assert get(proxy, "/api/v1/namespaces", f"Bearer  {api.token}")[0] == 200
    api.stop()
    proxy.wait_cloud(False)
    for same in (f"bearer {api.token}", f"BEARER {api.token}", f"Bearer {api.token} extra",
                 f"  Bearer {api.token}"):  # fmt: skip
        assert get(proxy, "/api/v1/nodes", same)[0] == 200, same
    assert get(proxy, "/api/v1/namespaces", f"Bearer  {api.token}")[0] == 503
    assert get(proxy, "/api/v1/nodes", f"Bearer  {api.token}")[0] == 503


def test_a_watch_event_writes_one_object_to_disk_not_the_list(env) -> None:
    api, proxy = env
    for i in range(200):
        k8s_client.CoreV1Api(api_client(api)).create_node(
            k8s_client.V1Node(
                metadata=k8s_client.V1ObjectMeta(name=f"n{i:03}", annotations={"pad": "x" * 1000})
            )
        )
    status, listed = get(proxy, "/api/v1/nodes", f"Bearer {api.token}")
    list_bytes = len(json.dumps(listed))
    assert status == 200 and list_bytes > 200_000
    written = proxy.metrics()["raven_cacheproxy_store_written_bytes"]
    watch = connect(proxy)
    rv = listed["metadata"]["resourceVersion"]
    watch.request(
        "GET",
        f"/api/v1/nodes?watch=true&resourceVersion={rv}",
        headers={
            "Authorization": f"Bearer {api.token}",
            "Accept": "application/json",
            "User-Agent": UA,
        },
    )
    resp = watch.getresponse()
    v1 = k8s_client.CoreV1Api(api_client(api))
    for i in range(10):
        v1.patch_node(f"n{i:03}", {"metadata": {"labels": {"changed": "yes"}}})
    events = [json.loads(resp.readline()) for _ in range(10)]
    assert [e["object"]["metadata"]["name"] for e in events] == [f"n{i:03}" for i in range(10)]
    # What reaches the disk is the ten objects, byte for byte, and nothing list-sized.
    objects = sum(len(json.dumps(e["object"], separators=(",", ":"))) for e in events)

    def written_since() -> float:
        return proxy.metrics()["raven_cacheproxy_store_written_bytes"] - written

    wait_for(lambda: written_since() >= objects, 10, what="the events to reach the cache")
    watch.close()
    assert written_since() == objects < list_bytes


def connect(proxy: ProxyHandle) -> http.client.HTTPSConnection:
    host, port = proxy.url.removeprefix("https://").split(":")
    return http.client.HTTPSConnection(host, int(port), context=proxy.proxy.ssl_ctx, timeout=10)


def test_a_stuck_disk_holds_up_no_client(env, tmp_path: Path) -> None:
    api, proxy = env
    bearer = f"Bearer {api.token}"
    status, listed = get(proxy, "/api/v1/nodes", bearer)
    proxy.call(proxy.proxy.cache.flush)
    # Someone else holds the database's write lock: every write of the proxy must wait for it.
    other = sqlite3.connect(tmp_path / "cache" / DB_NAME, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        watch = connect(proxy)
        watch.request(
            "GET",
            f"/api/v1/nodes?watch=1&resourceVersion={listed['metadata']['resourceVersion']}",
            headers={"Authorization": bearer, "Accept": "application/json", "User-Agent": UA},
        )
        resp = watch.getresponse()
        for i in range(5):
            make_node(api, f"n{i}")
            assert json.loads(resp.readline())["object"]["metadata"]["name"] == f"n{i}"
            assert get(proxy, f"/api/v1/nodes/n{i}", bearer)[0] == 200
            assert (
                urllib.request.urlopen(proxy.url + "/healthz", context=proxy.proxy.ssl_ctx).status
                == 200
            )
        assert proxy.metrics()["raven_cacheproxy_store_backlog_bytes"] > 0  # all still queued
        watch.close()
    finally:
        other.execute("ROLLBACK")
        other.close()
    proxy.call(proxy.proxy.cache.flush)  # and then it all reaches the disk
    api.stop()
    proxy.wait_cloud(False)
    status, offline = get(proxy, "/api/v1/nodes", bearer)
    assert status == 200 and len(offline["items"]) == 5
