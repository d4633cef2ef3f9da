"""EndpointSlices (``discovery.k8s.io/v1``) in the embedded API server, as kube-proxy, CoreDNS
and kubectl use them: validation and defaults, discovery, label and field selectors, kubectl's
columns, and the ``kubernetes`` client's list and watch (from a version, 410, bookmarks)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from raven.lab.apiserver.api import Api
from raven.lab.apiserver.endpointslices import endpointslice_problems
from raven.lab.apiserver.errors import ApiError
from raven.lab.apiserver.resources import builtin
from raven.lab.apiserver.store import Store
from raven.lab.testing.apiserver import api_client, run_apiserver

SLICES = builtin("discovery.k8s.io", "endpointslices")
SERVICE_LABEL = "kubernetes.io/service-name"


def eps(name: str, service: str, *addresses: str, **extra) -> dict:
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {SERVICE_LABEL: service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
        "ports": [{"name": "http", "port": 80}],
    }
    body.update(extra)
    return body


@pytest.mark.parametrize(
    ("scenario", "changes", "fields"),
    [
        ("good", {}, []),
        ("no addressType", {"addressType": None}, ["addressType"]),
        ("unknown addressType", {"addressType": "IP"}, ["addressType"]),
        ("endpoint without address", {"endpoints": [{"addresses": []}]},
         ["endpoints[0].addresses"]),
        ("not IPv4", {"endpoints": [{"addresses": ["10.0.0.300"]}]}, ["endpoints[0].addresses[0]"]),
        ("IPv6 in IPv4 slice", {"endpoints": [{"addresses": ["fd00::1"]}]},
         ["endpoints[0].addresses[0]"]),
        ("loopback", {"endpoints": [{"addresses": ["127.0.0.1"]}]}, ["endpoints[0].addresses[0]"]),
        ("link-local", {"endpoints": [{"addresses": ["169.254.1.1"]}]},
         ["endpoints[0].addresses[0]"]),
        ("FQDN", {"addressType": "FQDN", "endpoints": [{"addresses": ["db.example.com"]}]}, []),
        ("too many addresses",
         {"endpoints": [{"addresses": [f"10.0.{i // 200}.{i % 200 + 1}" for i in range(101)]}]},
         ["endpoints[0].addresses"]),
        ("duplicate port names", {"ports": [{"name": "a", "protocol": "TCP", "port": 1},
                                            {"name": "a", "protocol": "TCP", "port": 2}]},
         ["ports[1].name"]),
        ("port name not a label", {"ports": [{"name": "Web_1", "protocol": "TCP"}]},
         ["ports[0].name"]),
        ("unknown protocol", {"ports": [{"name": "", "protocol": "HTTP", "port": 80}]},
         ["ports[0].protocol"]),
    ],
)  # fmt: skip
def test_validation_as_kube_apiserver(scenario, changes, fields):
    obj = eps("web-abc", "web", "10.244.1.5")
    obj["ports"][0]["protocol"] = "TCP"
    obj.update(changes)
    assert [f for f, _ in endpointslice_problems(obj, None)] == fields


def test_stored_with_defaults_and_addresstype_is_immutable(tmp_path):
    api = Api(Store(tmp_path / "db.sqlite"))
    stored = api.create(SLICES, "default", eps("web-abc", "web", "10.244.1.5"))
    assert stored["ports"] == [{"name": "http", "port": 80, "protocol": "TCP"}]
    empty = api.create(SLICES, "default", eps("idle-abc", "idle", endpoints=[], ports=[]))
    assert empty["endpoints"] is None and empty["ports"] is None  # Go's nil slices
    with pytest.raises(ApiError) as e:
        api.replace(SLICES, "default", "web-abc", dict(stored, addressType="IPv6"))
    assert e.value.code == 422 and "addressType" in e.value.message


@pytest.fixture
def server(tmp_path):
    with run_apiserver(tmp_path / "api", history=20, bookmark_interval=0.3) as handle:
        yield handle


@pytest.fixture
def discovery_api(server):
    with api_client(server) as c:
        yield client.DiscoveryV1Api(c)


def _kubectl(server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return server.kubectl(*args, stdin=stdin)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_applies_lists_and_selects_endpointslices(server):
    docs = [eps(f"web-{i}", "web", *[f"10.244.1.{j}" for j in range(1, 2 + i * 3)])
            for i in range(2)]  # fmt: skip
    docs.append(eps("db-0", "db", "10.244.2.1", ports=[{"name": "", "port": 5432},
                                                        {"name": "b"},
                                                        {"name": "c"},
                                                        {"name": "d"}]))  # fmt: skip
    docs.append(eps("none-0", "none", endpoints=[], ports=[]))
    r = _kubectl(server, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    assert r.returncode == 0, r.stderr
    assert "endpointslice.discovery.k8s.io/web-0 created" in r.stdout

    r = _kubectl(server, "api-resources", "--api-group=discovery.k8s.io")
    assert r.returncode == 0, r.stderr
    assert "endpointslices" in r.stdout and "EndpointSlice" in r.stdout

    r = _kubectl(server, "get", "endpointslices")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == ["db-0", "none-0", "web-0", "web-1"]
    assert rows["web-0"].split()[1:4] == ["IPv4", "80", "10.244.1.1"]
    assert "10.244.1.1,10.244.1.2,10.244.1.3 + 1 more..." in rows["web-1"]
    assert "5432,b,c + 1 more..." in rows["db-0"]
    assert rows["none-0"].split()[1:4] == ["IPv4", "<unset>", "<unset>"]

    r = _kubectl(server, "get", "endpointslices", "-l", f"{SERVICE_LABEL}=web", "-o", "name")
    assert r.stdout.split() == [
        "endpointslice.discovery.k8s.io/web-0",
        "endpointslice.discovery.k8s.io/web-1",
    ]
    r = _kubectl(server, "get", "endpointslices", "--field-selector", "metadata.name=db-0",
                 "-o", "name")  # fmt: skip
    assert r.stdout.split() == ["endpointslice.discovery.k8s.io/db-0"]
    r = _kubectl(server, "get", "endpointslices", "--field-selector", "addressType=IPv4")
    assert r.returncode != 0 and 'field label not supported: "addressType"' in r.stderr

    bad = eps("bad-0", "bad", "127.0.0.1")
    r = _kubectl(server, "apply", "-f", "-", stdin=json.dumps(bad))
    assert r.returncode != 0 and "endpoints[0].addresses[0]" in r.stderr


def test_client_lists_by_service_and_watches_from_a_version(discovery_api):
    d = discovery_api
    d.create_namespaced_endpoint_slice("default", eps("web-a", "web", "10.244.1.1"))
    d.create_namespaced_endpoint_slice("default", eps("db-a", "db", "10.244.2.1"))
    listing = d.list_namespaced_endpoint_slice("default", label_selector=f"{SERVICE_LABEL}=web")
    assert [s.metadata.name for s in listing.items] == ["web-a"]
    assert listing.items[0].endpoints[0].addresses == ["10.244.1.1"]
    everywhere = d.list_endpoint_slice_for_all_namespaces(label_selector=f"{SERVICE_LABEL}")
    assert sorted(s.metadata.name for s in everywhere.items) == ["db-a", "web-a"]

    since = listing.metadata.resource_version
    scaled = eps("web-a", "web", "10.244.1.1", "10.244.1.2")
    d.replace_namespaced_endpoint_slice("web-a", "default", scaled)
    d.patch_namespaced_endpoint_slice("db-a", "default", {"metadata": {"labels": {"x": "y"}}})
    d.create_namespaced_endpoint_slice("default", eps("web-b", "web", "10.244.1.3"))
    d.delete_namespaced_endpoint_slice("web-a", "default")
    seen = []
    for ev in watch.Watch().stream(
        d.list_namespaced_endpoint_slice,
        "default",
        label_selector=f"{SERVICE_LABEL}=web",
        resource_version=since,
        timeout_seconds=2,
    ):
        seen.append((ev["type"], ev["object"].metadata.name, len(ev["object"].endpoints)))
        if len(seen) == 3:
            break
    # Only the slices of Service web, each change once and in the order written.
    assert seen == [("MODIFIED", "web-a", 2), ("ADDED", "web-b", 1), ("DELETED", "web-a", 2)]


def test_watch_gone_when_too_old_and_bookmarks_when_allowed(discovery_api):
    d = discovery_api
    old = d.list_endpoint_slice_for_all_namespaces().metadata.resource_version
    for i in range(25):  # the server keeps 20 writes of history
        d.create_namespaced_endpoint_slice("default", eps(f"s-{i}", "s", f"10.244.3.{i + 1}"))
    with pytest.raises(ApiException) as e:
        list(watch.Watch().stream(
            d.list_endpoint_slice_for_all_namespaces, resource_version=old, timeout_seconds=2
        ))  # fmt: skip
    assert e.value.status == 410

    rv = d.list_endpoint_slice_for_all_namespaces().metadata.resource_version
    for ev in watch.Watch().stream(
        d.list_endpoint_slice_for_all_namespaces,
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=3,
    ):
        assert ev["type"] == "BOOKMARK"
        assert ev["raw_object"]["kind"] == "EndpointSlice"
        assert ev["raw_object"]["metadata"]["resourceVersion"] == rv
        break
    else:
        pytest.fail("no BOOKMARK within 3 s")


def test_a_node_reads_endpointslices_but_may_not_write_them(tmp_path):
    with run_apiserver(tmp_path / "api", nodes=["n1"]) as server:
        with api_client(server) as admin:
            client.DiscoveryV1Api(admin).create_namespaced_endpoint_slice(
                "default", eps("web-a", "web", "10.244.1.1")
            )
        r = server.kubectl("get", "endpointslices", "-A", "-o", "name",
                           kubeconfig=server.node_kubeconfig("n1"))  # fmt: skip
        assert r.stdout.split() == ["endpointslice.discovery.k8s.io/web-a"], r.stderr
        r = server.kubectl("delete", "endpointslice", "web-a",
                           kubeconfig=server.node_kubeconfig("n1"))  # fmt: skip
        assert r.returncode != 0 and "forbidden" in r.stderr


def test_kube_proxy_user_reads_what_kube_proxy_reads(server):
    r = server.kubectl("auth", "can-i", "--list", "--as", "system:kube-proxy")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert "endpointslices.discovery.k8s.io" in text and "services" in text
    for verb, what, allowed in (
        ("watch", "endpointslices.discovery.k8s.io", "yes"),
        ("list", "services", "yes"),
        ("create", "services", "no"),
        ("list", "secrets", "no"),
    ):
        r = server.kubectl("auth", "can-i", verb, what, "--as", "system:kube-proxy")
        assert r.stdout.strip() == allowed, (verb, what, r.stdout, r.stderr)
