"""The node's own clients (kubelet, raven-heartbeat) authenticate to the proxy with the node's
client certificate and reach the API server as the node; nobody else can speak as the node
through it, bearer clients work as before, and offline each credential gets only its own reads."""

from __future__ import annotations

import json
import logging
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from raven.lab.apiserver.kubeconfig import write_kubeconfig
from raven.lab.apiserver.pki import make_pki, node_client_name, node_clients
from raven.lab.testing.apiserver import ApiServerHandle, run_apiserver
from raven.lab.testing.cacheproxy import ProxyHandle, run_proxy

NODE, OTHER = "edge-a-1", "edge-a-2"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[ApiServerHandle, ProxyHandle, tuple[Path, Path]]]:
    with run_apiserver(tmp_path / "api", nodes=[NODE, OTHER]) as api:
        # The node's pair where kubelet keeps it, so a test can rotate it.
        cert, key = api.node_client_pair(NODE)
        node_pair = (tmp_path / "node" / "client.crt", tmp_path / "node" / "client.key")
        node_pair[0].parent.mkdir()
        shutil.copy(cert, node_pair[0])
        shutil.copy(key, node_pair[1])
        with run_proxy(
            api.url,
            api.ca_cert,
            tmp_path / "cache",
            tls=(api.pki.server_cert, api.pki.server_key),
            node=node_pair,
        ) as proxy:
            yield api, proxy, node_pair


def via_proxy(api: ApiServerHandle, proxy: ProxyHandle, tmp_path: Path, node: str) -> Path:
    cert, key = api.node_client_pair(node)
    return write_kubeconfig(
        tmp_path / f"{node}.proxy.kubeconfig",
        proxy.url,
        api.ca_cert,
        client_cert=cert,
        client_key=key,
    )


def get(
    proxy: ProxyHandle,
    path: str,
    *,
    token: str | None = None,
    cert: tuple[Path, Path] | None = None,
    ca: Path,
) -> tuple[int, dict]:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    req = urllib.request.Request(proxy.url + path, headers={"User-Agent": "kubelet/test"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def users(api: ApiServerHandle, resource: str) -> set[str]:
    return {
        e["user"].get("username")
        for e in api.audit_events()
        if e.get("objectRef", {}).get("resource") == resource
    }


LEASE_YAML = f"""
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {{name: {NODE}, namespace: kube-node-lease}}
spec: {{holderIdentity: {NODE}, leaseDurationSeconds: 40}}
"""


def test_a_node_client_renews_its_own_lease_through_the_proxy_as_the_node(
    env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api, proxy, node_pair = env
    caplog.set_level(logging.DEBUG)
    kc = via_proxy(api, proxy, tmp_path, NODE)
    ok(api.kubectl("create", "-f", "-", kubeconfig=kc, stdin=LEASE_YAML))
    ok(api.kubectl("get", "lease", "-n", "kube-node-lease", NODE, kubeconfig=kc))
    renew = json.dumps({"spec": {"renewTime": "2026-01-01T00:00:10.000000Z"}})
    ok(api.kubectl("patch", "lease", "-n", "kube-node-lease", NODE, "-p", renew, kubeconfig=kc))
    lease = json.loads(ok(api.kubectl("get", "lease", "-n", "kube-node-lease", NODE, "-o=json")))
    assert lease["spec"]["renewTime"] == "2026-01-01T00:00:10.000000Z"
    # The API server saw the node itself, never a token of the proxy's.
    assert users(api, "leases") == {f"system:node:{NODE}", "raven-lab-admin"}
    node_ops = {
        e["verb"]
        for e in api.audit_events()
        if e["user"].get("username") == f"system:node:{NODE}"
        and e.get("objectRef", {}).get("resource") == "leases"
    }
    assert {"create", "get", "patch"} <= node_ops
    # Invariant 6: the node's key is in no log and nothing the proxy wrote.
    key_body = "".join(node_pair[1].read_text().splitlines()[1:-1])
    assert key_body and key_body not in caplog.text
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            assert key_body.encode() not in f.read_bytes()


def test_through_the_proxy_a_node_still_cannot_renew_another_nodes_lease(
    env, tmp_path: Path
) -> None:
    api, proxy, _ = env
    other = LEASE_YAML.replace(f"name: {NODE}", f"name: {OTHER}")
    ok(api.kubectl("create", "-f", "-", stdin=other))
    kc = via_proxy(api, proxy, tmp_path, NODE)
    renew = json.dumps({"spec": {"renewTime": "2026-01-01T00:00:10.000000Z"}})
    result = api.kubectl(
        "patch", "lease", "-n", "kube-node-lease", OTHER, "-p", renew, kubeconfig=kc
    )
    assert result.returncode != 0 and "Forbidden" in result.stderr
    refused = [
        e
        for e in api.audit_events()
        if e["user"].get("username") == f"system:node:{NODE}" and e["verb"] == "patch"
    ]
    assert [e["responseStatus"]["code"] for e in refused] == [403]  # the API server's own


def test_another_nodes_certificate_is_refused_by_the_proxy(env, tmp_path: Path) -> None:
    api, proxy, _ = env
    status, body = get(proxy, LEASE, cert=api.node_client_pair(OTHER), ca=api.ca_cert)
    assert status == 403
    assert body["kind"] == "Status" and body["reason"] == "Forbidden"
    assert f"system:node:{OTHER}" in body["message"] and f"system:node:{NODE}" in body["message"]
    result = api.kubectl("get", "nodes", kubeconfig=via_proxy(api, proxy, tmp_path, OTHER))
    assert result.returncode != 0 and "Forbidden" in result.stderr
    assert f"system:node:{OTHER}" not in json.dumps(api.audit_events())
    assert proxy.metrics()["raven_cacheproxy_refused_certificates_total"] >= 2


def test_a_bearer_client_works_as_before(env, tmp_path: Path) -> None:
    api, proxy, _ = env
    kc = write_kubeconfig(tmp_path / "admin.proxy.kubeconfig", proxy.url, api.ca_cert, api.token)
    assert ok(api.kubectl("get", "ns", "kube-node-lease", "-o", "name", kubeconfig=kc)).strip() == (
        "namespace/kube-node-lease"
    )
    assert users(api, "namespaces") == {"raven-lab-admin"}


def test_a_certificate_from_another_ca_is_refused(env, tmp_path: Path) -> None:
    api, proxy, _ = env
    other = make_pki(tmp_path / "other", ["127.0.0.1"], clients=node_clients([NODE]))
    cert, key = other.extra_pair(node_client_name(NODE))
    forged = write_kubeconfig(
        tmp_path / "forged", proxy.url, api.ca_cert, client_cert=cert, client_key=key
    )
    result = api.kubectl("get", "--raw", LEASE, kubeconfig=forged)
    assert result.returncode != 0
    assert "Unable to connect to the server" in result.stderr
    # The proxy reads the shared resources as the node itself; the forged client got nothing.
    assert not [e for e in api.audit_events() if e["requestURI"] == LEASE]


def test_offline_each_credential_gets_only_its_own_reads(env) -> None:
    api, proxy, _ = env
    node_cert = api.node_client_pair(NODE)
    ok(api.kubectl("create", "-f", "-", stdin=LEASE_YAML))
    status, online = get(proxy, LEASE, cert=node_cert, ca=api.ca_cert)
    assert status == 200
    api.stop()
    proxy.wait_cloud(False)
    status, offline = get(proxy, LEASE, cert=node_cert, ca=api.ca_cert)
    assert status == 200 and offline == online
    # The same request with the admin's token: never read by it, so not served to it.
    status, body = get(proxy, LEASE, token=api.token, ca=api.ca_cert)
    assert status == 503 and "not cached for this credential" in body["message"]
    # A node client that also sends a token is the node (x509 is authenticated first).
    status, both = get(proxy, LEASE, cert=node_cert, token=api.token, ca=api.ca_cert)
    assert status == 200 and both == online


def test_a_rotated_node_certificate_is_loaded_without_a_restart(env) -> None:
    api, proxy, node_pair = env
    nodes = "/api/v1/nodes"
    assert get(proxy, nodes, cert=api.node_client_pair(NODE), ca=api.ca_cert)[0] == 200
    # The file now holds another identity (a rename over it, as kubelet's rotation does).
    cert, key = api.node_client_pair(OTHER)
    for src, dst in ((cert, node_pair[0]), (key, node_pair[1])):
        tmp = dst.with_suffix(".new")
        shutil.copy(src, tmp)
        tmp.replace(dst)
    assert get(proxy, nodes, cert=api.node_client_pair(NODE), ca=api.ca_cert)[0] == 403
    assert get(proxy, nodes, cert=api.node_client_pair(OTHER), ca=api.ca_cert)[0] == 200
    assert f"system:node:{OTHER}" in users(api, "nodes")


def test_a_client_without_a_certificate_never_rides_the_nodes_connection(env) -> None:
    api, proxy, _ = env
    node_cert = api.node_client_pair(NODE)
    ok(api.kubectl("create", "-f", "-", stdin=LEASE_YAML))
    for _ in range(3):  # the node's connection upstream is open and idle in the pool now
        assert get(proxy, LEASE, cert=node_cert, ca=api.ca_cert)[0] == 200
    status, body = get(proxy, LEASE, ca=api.ca_cert)
    assert status in (401, 403), body
    anonymous = [
        e
        for e in api.audit_events()
        if e.get("objectRef", {}).get("name") == NODE
        and e["user"].get("username") != f"system:node:{NODE}"
        and e["verb"] == "get"
    ]
    assert anonymous and all(e["responseStatus"]["code"] in (401, 403) for e in anonymous)
