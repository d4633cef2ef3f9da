"""The embedded API server through kubectl v1.32 (subprocess, --kubeconfig)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from raven.lab.testing.apiserver import api_client, run_apiserver

CRD_FILE = Path(__file__).resolve().parents[2] / "deploy" / "crds" / "gateways.raven.io.yaml"
GW = ("raven.io", "v1alpha1", "gateways")

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


class Kubectl:
    def __init__(self, kubeconfig: Path, cache: Path) -> None:
        self.base = ["kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache)]

    def __call__(
        self, *args: str, ok: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess:
        r = subprocess.run(
            self.base + list(args), capture_output=True, text=True, input=stdin, timeout=30
        )
        if ok:
            assert r.returncode == 0, f"kubectl {' '.join(args)} failed: {r.stderr}"
        return r

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.base + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )


@pytest.fixture
def server(tmp_path):
    with run_apiserver(tmp_path / "api") as handle:
        yield handle


@pytest.fixture
def kubectl(server, tmp_path):
    return Kubectl(server.kubeconfig, tmp_path / "kube-cache")


@pytest.fixture
def with_crd(kubectl):
    out = kubectl("apply", "-f", str(CRD_FILE)).stdout
    assert "customresourcedefinition.apiextensions.k8s.io/gateways.raven.io created" in out


@pytest.fixture
def custom(server):
    with api_client(server) as api:
        yield client.CustomObjectsApi(api)


def _gw_yaml(name: str, port: int = 51820) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "raven.io/v1alpha1",
            "kind": "Gateway",
            "metadata": {"name": name},
            "spec": {"tunnelPort": port},
        }
    )


def test_apply_crd_validates_and_is_idempotent(kubectl, with_crd):
    again = kubectl("apply", "-f", str(CRD_FILE))
    assert "unchanged" in again.stdout or "configured" in again.stdout
    assert "gateways.raven.io" in kubectl("get", "crd").stdout


def test_api_resources_lists_builtins_and_gateways(kubectl, with_crd):
    out = kubectl("api-resources").stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    for name in ("nodes", "namespaces", "events", "leases", "customresourcedefinitions"):
        assert name in rows, out
    assert rows["gateways"][1] == "gw" and rows["gateways"][2] == "raven.io/v1alpha1"
    assert rows["gateways"][-1] == "Gateway"


def test_create_and_get_gateway_wide_with_printer_columns(kubectl, with_crd, custom):
    assert (
        "gateway.raven.io/edge-a created"
        in kubectl("create", "-f", "-", stdin=_gw_yaml("edge-a")).stdout
    )
    custom.patch_cluster_custom_object_status(
        *GW,
        "edge-a",
        {
            "status": {
                "activeNode": "edge-a-1",
                "endpoint": "198.18.0.2:51820",
                "peersReady": "2/2",
                "rtt": "3ms",
            }
        },
    )
    lines = kubectl("get", "gw", "-o", "wide").stdout.splitlines()
    assert lines[0].split() == ["NAME", "POOL", "ACTIVE", "ENDPOINT", "PEERS", "RTT", "AGE"]
    cells = lines[1].split()
    assert cells[:6] == ["edge-a", "edge-a", "edge-a-1", "198.18.0.2:51820", "2/2", "3ms"]
    assert cells[6].endswith("s")  # an age such as "0s", not a timestamp


def test_label_and_merge_patch(kubectl, with_crd, custom):
    kubectl("create", "-f", "-", stdin=_gw_yaml("edge-a"))
    kubectl("label", "gw", "edge-a", "tier=edge")
    kubectl("patch", "gw", "edge-a", "--type", "merge", "-p", '{"spec":{"tunnelPort":4000}}')
    gw = custom.get_cluster_custom_object(*GW, "edge-a")
    assert gw["metadata"]["labels"] == {"tier": "edge"}
    assert gw["spec"]["tunnelPort"] == 4000 and gw["metadata"]["generation"] == 2
    kubectl("label", "gw", "edge-a", "tier-")
    assert (
        "labels" not in custom.get_cluster_custom_object(*GW, "edge-a")["metadata"]
        or custom.get_cluster_custom_object(*GW, "edge-a")["metadata"]["labels"] == {}
    )


def test_label_and_annotate_builtins_use_strategic_merge(kubectl, server):
    with api_client(server) as api:
        v1 = client.CoreV1Api(api)
        v1.create_node({"metadata": {"name": "n1", "labels": {"keep": "me"}}})
        kubectl("label", "node", "n1", "apps.openyurt.io/nodepool=edge-a")
        kubectl("annotate", "node", "n1", "raven.io/public-key=abc")
        kubectl("label", "node", "n1", "keep-")
        node = v1.read_node("n1")
    assert node.metadata.labels == {"apps.openyurt.io/nodepool": "edge-a"}
    assert node.metadata.annotations == {"raven.io/public-key": "abc"}


def test_replace_with_stale_version_is_refused(kubectl, with_crd, custom, tmp_path):
    kubectl("create", "-f", "-", stdin=_gw_yaml("edge-a"))
    saved = kubectl("get", "gw", "edge-a", "-o", "yaml").stdout
    custom.patch_cluster_custom_object(*GW, "edge-a", {"spec": {"tunnelPort": 1}})
    stale = yaml.safe_load(saved)
    stale["spec"]["tunnelPort"] = 2
    r = kubectl("replace", "-f", "-", ok=False, stdin=yaml.safe_dump(stale))
    assert r.returncode != 0 and "Conflict" in r.stderr and "has been modified" in r.stderr
    assert custom.get_cluster_custom_object(*GW, "edge-a")["spec"]["tunnelPort"] == 1
    fresh = yaml.safe_load(kubectl("get", "gw", "edge-a", "-o", "yaml").stdout)
    fresh["spec"]["tunnelPort"] = 3
    kubectl("replace", "-f", "-", stdin=yaml.safe_dump(fresh))
    assert custom.get_cluster_custom_object(*GW, "edge-a")["spec"]["tunnelPort"] == 3


def test_get_gateways_watch_shows_changes(kubectl, with_crd, custom):
    kubectl("create", "-f", "-", stdin=_gw_yaml("edge-a"))
    proc = kubectl.popen("get", "gw", "--watch")
    try:
        time.sleep(1.5)  # kubectl lists, then opens its watch
        custom.patch_cluster_custom_object_status(
            *GW, "edge-a", {"status": {"activeNode": "edge-a-2"}}
        )
        kubectl("create", "-f", "-", stdin=_gw_yaml("edge-b"))
        time.sleep(1.0)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "POOL", "ACTIVE"], (out, err)
    assert any(line.split()[:3] == ["edge-a", "edge-a", "edge-a-2"] for line in lines[1:]), out
    assert any(line.split()[:2] == ["edge-b", "edge-b"] for line in lines[1:]), out


def test_get_nodes(kubectl):
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "edge-a-1", "labels": {"node-role.kubernetes.io/gateway": ""}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "10.1.0.2"}],
            "nodeInfo": {"kubeletVersion": "v1.32.0"},
        },
    }
    kubectl("create", "-f", "-", stdin=yaml.safe_dump(node))
    lines = kubectl("get", "nodes").stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    cells = lines[1].split()
    assert cells[:3] == ["edge-a-1", "Ready", "gateway"] and cells[4] == "v1.32.0"
    wide = kubectl("get", "nodes", "-o", "wide").stdout.splitlines()
    assert "INTERNAL-IP" in wide[0] and "10.1.0.2" in wide[1]
    described = kubectl("describe", "node", "edge-a-1").stdout
    assert "Name:               edge-a-1" in described and "(0 in total)" in described


def test_get_in_chunks_and_server_dry_run(kubectl, with_crd, custom):
    for i in range(5):
        kubectl("create", "-f", "-", stdin=_gw_yaml(f"pool-{i}"))
    names = kubectl("get", "gw", "--chunk-size=2", "-o", "name").stdout.split()
    assert names == [f"gateway.raven.io/pool-{i}" for i in range(5)]
    out = kubectl("create", "--dry-run=server", "-f", "-", stdin=_gw_yaml("ghost")).stdout
    assert "(server dry run)" in out
    assert [g["metadata"]["name"] for g in custom.list_cluster_custom_object(*GW)["items"]] == [
        f"pool-{i}" for i in range(5)
    ]


def test_apply_refuses_unknown_fields(kubectl, with_crd):
    typo = _gw_yaml("edge-a").replace("tunnelPort", "tunelPort")
    r = kubectl("apply", "-f", "-", ok=False, stdin=typo)
    assert r.returncode != 0 and 'unknown field "spec.tunelPort"' in r.stderr
    assert "No resources found" in kubectl("get", "gw").stderr


def test_create_namespace_imperatively(kubectl):
    # kubectl's generators send protobuf; the server reads the metadata it carries.
    kubectl("create", "namespace", "lab")
    assert "namespace/lab" in kubectl("get", "ns", "-o", "name").stdout.split()


def test_describe_gateway_and_events(kubectl, with_crd, server):
    kubectl("create", "-f", "-", stdin=_gw_yaml("edge-a"))
    with api_client(server) as api:
        gw = client.CustomObjectsApi(api).get_cluster_custom_object(*GW, "edge-a")
        client.CoreV1Api(api).create_namespaced_event(
            "default",
            {
                "metadata": {"name": "edge-a.1"},
                "involvedObject": {
                    "kind": "Gateway",
                    "name": "edge-a",
                    "apiVersion": "raven.io/v1alpha1",
                    "uid": gw["metadata"]["uid"],
                },
                "reason": "GatewayElected",
                "message": "edge-a-1 holds the lease",
                "type": "Normal",
                "count": 1,
                "source": {"component": "raven-agent"},
            },
        )
    out = kubectl("describe", "gw", "edge-a").stdout
    assert "Name:         edge-a" in out and "Tunnel Port:  51820" in out
    assert "GatewayElected" in out and "edge-a-1 holds the lease" in out
    assert "GatewayElected" in kubectl("get", "events", "-A").stdout


def test_namespaces_and_crd_delete(kubectl, with_crd):
    assert kubectl("get", "ns", "-o", "name").stdout.split() == [
        "namespace/default",
        "namespace/kube-node-lease",
        "namespace/kube-public",
        "namespace/kube-system",
    ]
    kubectl("create", "-f", "-", stdin=_gw_yaml("edge-a"))
    kubectl("delete", "crd", "gateways.raven.io")
    r = kubectl("get", "gw", ok=False)
    assert r.returncode != 0
