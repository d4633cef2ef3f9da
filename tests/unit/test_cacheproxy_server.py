"""The proxy between real clients and the real API server, online and through an outage."""

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch

from raven.lab.apiserver.kubeconfig import write_kubeconfig
from raven.lab.testing.apiserver import ApiServerHandle, api_client, run_apiserver
from raven.lab.testing.cacheproxy import ProxyHandle, proxy_client, run_proxy


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[ApiServerHandle, ProxyHandle]]:
    with run_apiserver(tmp_path / "api") as api:
        tls = (api.pki.server_cert, api.pki.server_key)  # a 127.0.0.1 cert from the same CA
        with run_proxy(api.url, api.ca_cert, tmp_path / "cache", tls=tls) as proxy:
            yield api, proxy


def make_node(api: ApiServerHandle, name: str, labels: dict[str, str]) -> None:
    k8s_client.CoreV1Api(api_client(api)).create_node(
        k8s_client.V1Node(metadata=k8s_client.V1ObjectMeta(name=name, labels=labels))
    )


def raw(
    proxy: ProxyHandle, method: str, path: str, token: str | None, body: bytes | None = None
) -> tuple[int, dict]:
    req = urllib.request.Request(proxy.url + path, method=method, data=body)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5, context=proxy.proxy.ssl_ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_online_passthrough_client_and_kubectl(env, tmp_path: Path) -> None:
    api, proxy = env
    v1 = k8s_client.CoreV1Api(proxy_client(proxy, api.token, ca_cert=api.ca_cert))
    v1.create_node(k8s_client.V1Node(metadata=k8s_client.V1ObjectMeta(name="n1")))
    assert [n.metadata.name for n in v1.list_node().items] == ["n1"]
    kc = write_kubeconfig(tmp_path / "kc", proxy.url, api.ca_cert, api.token)
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(kc), "get", "nodes", "-o", "name"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "node/n1"
    metrics = (
        urllib.request.urlopen(proxy.url + "/metrics", timeout=5, context=proxy.proxy.ssl_ctx)
        .read()
        .decode()
    )
    assert 'raven_cacheproxy_requests_total{action="forward"}' in metrics


def test_two_selectors_served_offline_with_stored_version(env) -> None:
    api, proxy = env
    make_node(api, "a1", {"pool": "a"})
    make_node(api, "b1", {"pool": "b"})
    v1 = k8s_client.CoreV1Api(proxy_client(proxy, api.token, ca_cert=api.ca_cert))
    la = v1.list_node(label_selector="pool=a")
    lb = v1.list_node(label_selector="pool=b")
    api.stop()
    proxy.wait_cloud(False)
    ra = v1.list_node(label_selector="pool=a")
    rb = v1.list_node(label_selector="pool=b")
    assert [n.metadata.name for n in ra.items] == ["a1"]
    assert [n.metadata.name for n in rb.items] == ["b1"]
    assert ra.metadata.resource_version == la.metadata.resource_version
    assert rb.metadata.resource_version == lb.metadata.resource_version
    with pytest.raises(k8s_client.ApiException) as miss:
        v1.read_node("never-read")
    assert miss.value.status == 503 and "not cached" in json.loads(miss.value.body)["message"]
    metrics = (
        urllib.request.urlopen(proxy.url + "/metrics", timeout=5, context=proxy.proxy.ssl_ctx)
        .read()
        .decode()
    )
    assert "raven_cacheproxy_cache_hits_total 2.0" in metrics
    assert "raven_cacheproxy_cloud_healthy 0.0" in metrics
    assert (
        urllib.request.urlopen(
            proxy.url + "/healthz", timeout=5, context=proxy.proxy.ssl_ctx
        ).status
        == 200
    )
    with pytest.raises(urllib.error.HTTPError) as ready:
        urllib.request.urlopen(proxy.url + "/readyz", timeout=5, context=proxy.proxy.ssl_ctx)
    assert ready.value.code == 503


def test_offline_unknown_credentials_learn_nothing_of_what_is_cached(env) -> None:
    api, proxy = env
    make_node(api, "n1", {})
    assert raw(proxy, "GET", "/api/v1/nodes", api.token)[0] == 200
    # Online, a bad token is judged by the API server itself.
    assert raw(proxy, "GET", "/api/v1/nodes", "forged")[0] == 401
    api.stop()
    proxy.wait_cloud(False)
    assert raw(proxy, "GET", "/api/v1/nodes", api.token)[0] == 200
    # No credential, an unknown one, or a known one for data it never read: one answer, the
    # same whether the path is cached or not.
    answers = {
        (token, path): raw(proxy, "GET", path, token)
        for token in (None, "forged", api.token)
        for path in ("/api/v1/nodes", "/api/v1/namespaces")
        if (token, path) != (api.token, "/api/v1/nodes")
    }
    for (token, path), (code, body) in answers.items():
        assert code == 503 and body["kind"] == "Status" and "items" not in body, (token, path)
        assert (code, body) == answers[(None, path)], (token, path)


def test_write_offline_gets_503_status(env) -> None:
    api, proxy = env
    api.stop()
    proxy.wait_cloud(False)
    code, body = raw(
        proxy,
        "POST",
        "/api/v1/nodes",
        api.token,
        json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "x"}}).encode(),
    )
    assert code == 503 and body["kind"] == "Status" and body["reason"] == "ServiceUnavailable"
    assert "unreachable" in body["message"] and "NOT applied" in body["message"]
    api.start()
    proxy.wait_cloud(True)
    names = [n.metadata.name for n in k8s_client.CoreV1Api(api_client(api)).list_node().items]
    assert "x" not in names  # never a silent success


def test_watch_streams_updates_cache_held_offline_closed_on_return(env) -> None:
    api, proxy = env
    make_node(api, "n1", {"v": "1"})
    v1 = k8s_client.CoreV1Api(proxy_client(proxy, api.token, ca_cert=api.ca_cert))
    lst = v1.list_node()
    events: list[str] = []
    done = threading.Event()

    def watch() -> None:
        w = k8s_watch.Watch()
        for ev in w.stream(
            v1.list_node, resource_version=lst.metadata.resource_version, timeout_seconds=30
        ):
            events.append(ev["object"].metadata.name)
            if ev["object"].metadata.name == "n2":
                w.stop()
        done.set()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    time.sleep(0.3)
    make_node(api, "n2", {})
    assert done.wait(10) and events == ["n2"]
    api.stop()
    proxy.wait_cloud(False)
    # The list cached before the watch now holds the object the watch carried.
    assert sorted(n.metadata.name for n in v1.list_node().items) == ["n1", "n2"]
    # An offline watch stays open and silent, then ends when the cloud returns.
    got: list[object] = []
    ended = threading.Event()

    def offline_watch() -> None:
        resp = v1.list_node(watch=True, _preload_content=False, _request_timeout=30)
        got.append(resp.read())
        ended.set()

    t2 = threading.Thread(target=offline_watch, daemon=True)
    t2.start()
    assert not ended.wait(1.0)
    started = time.monotonic()
    api.start()
    proxy.wait_cloud(True)
    assert ended.wait(10) and got == [b""]
    assert time.monotonic() - started < 10


def test_kubectl_works_offline_and_writes_fail_loudly(env, tmp_path: Path) -> None:
    api, proxy = env
    make_node(api, "n1", {"pool": "edge-a"})
    kc = write_kubeconfig(tmp_path / "kc", proxy.url, api.ca_cert, api.token)

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(kc), *args], capture_output=True, text=True, timeout=30
        )

    assert kubectl("get", "nodes").returncode == 0  # warms discovery and the list
    api.stop()
    proxy.wait_cloud(False)
    out = kubectl("get", "nodes")
    assert out.returncode == 0, out.stderr
    assert "n1" in out.stdout
    bad = kubectl("label", "node", "n1", "x=y")
    assert bad.returncode != 0
    assert "unreachable" in bad.stderr or "not cached" in bad.stderr


def test_path_traversal_names_through_the_proxy(env, tmp_path: Path) -> None:
    api, proxy = env
    for evil in ("..%2F..%2F..%2Fetc%2Fpasswd", "%2E%2E", "a%00b"):
        assert raw(proxy, "GET", f"/api/v1/nodes/{evil}", api.token)[0] in (400, 404)
        # A read that succeeds (and so is cached) with the hostile text in its key.
        assert raw(proxy, "GET", f"/api/v1/nodes?labelSelector=x%3D{evil}", api.token)[0] in (
            200,
            400,
        )
    assert raw(proxy, "GET", "/api/v1/nodes?fieldSelector=metadata.name%3D..", api.token)[0] == 200
    # Names never become paths: the cache directory holds its database and nothing else.
    files = {p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("*")}
    assert "cache.sqlite" in files and files <= {
        "cache.sqlite",
        "cache.sqlite-wal",
        "cache.sqlite-shm",
    }
    assert not (tmp_path / "etc").exists()


def test_stop_releases_held_watches_promptly(tmp_path: Path) -> None:
    with run_apiserver(tmp_path / "api") as api:
        tls = (api.pki.server_cert, api.pki.server_key)
        with run_proxy(api.url, api.ca_cert, tmp_path / "cache", tls=tls) as proxy:
            v1 = k8s_client.CoreV1Api(proxy_client(proxy, api.token, ca_cert=api.ca_cert))
            v1.list_node()
            api.stop()
            proxy.wait_cloud(False)
            held = threading.Thread(
                target=lambda: v1.list_node(watch=True, _preload_content=False).read(),
                daemon=True,
            )
            held.start()
            time.sleep(0.3)
            assert held.is_alive()
            started = time.monotonic()
        assert time.monotonic() - started < 5
        held.join(5)
        assert not held.is_alive()
        api.start()  # so run_apiserver's own teardown has a server to stop
