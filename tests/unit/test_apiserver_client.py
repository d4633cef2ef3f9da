"""The embedded API server through the official ``kubernetes`` Python client."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from raven.lab.testing.apiserver import api_client, run_apiserver

CRD_FILE = Path(__file__).resolve().parents[2] / "deploy" / "crds" / "gateways.raven.io.yaml"
GW = ("raven.io", "v1alpha1", "gateways")


@pytest.fixture
def server(tmp_path):
    with run_apiserver(tmp_path / "api", history=50, bookmark_interval=0.5) as handle:
        yield handle


@pytest.fixture
def api(server):
    with api_client(server) as c:
        yield c


@pytest.fixture
def gateways(api):
    """CustomObjectsApi with the Gateway CRD from deploy/ applied."""
    client.ApiextensionsV1Api(api).create_custom_resource_definition(
        yaml.safe_load(CRD_FILE.read_text())
    )
    return client.CustomObjectsApi(api)


def _gateway(name: str, **spec) -> dict:
    return {
        "apiVersion": "raven.io/v1alpha1",
        "kind": "Gateway",
        "metadata": {"name": name},
        "spec": spec,
    }


def _status(e: ApiException) -> dict:
    import json

    return json.loads(e.body)


def test_node_crud(api):
    v1 = client.CoreV1Api(api)
    created = v1.create_node({"metadata": {"name": "n1", "labels": {"pool": "a"}}})
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.generation == 1
    got = v1.read_node("n1")
    assert got.metadata.resource_version == created.metadata.resource_version
    got.metadata.labels["pool"] = "b"
    replaced = v1.replace_node("n1", got)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    patched = v1.patch_node("n1", {"metadata": {"annotations": {"k": "v"}}})
    assert patched.metadata.annotations == {"k": "v"} and patched.metadata.labels == {"pool": "b"}
    json_patched = v1.patch_node(
        "n1", [{"op": "add", "path": "/spec/podCIDR", "value": "10.0.0.0/24"}]
    )
    assert json_patched.spec.pod_cidr == "10.0.0.0/24"
    listing = v1.list_node()
    assert [n.metadata.name for n in listing.items] == ["n1"]
    assert listing.metadata.resource_version == json_patched.metadata.resource_version
    v1.delete_node("n1")
    with pytest.raises(ApiException) as e:
        v1.read_node("n1")
    assert e.value.status == 404
    body = _status(e.value)
    assert body["kind"] == "Status" and body["reason"] == "NotFound"
    assert body["details"] == {"name": "n1", "kind": "nodes"}


def test_lease_crud_in_namespaces(api):
    coord = client.CoordinationV1Api(api)
    lease = {
        "metadata": {"name": "edge-a"},
        "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 10},
    }
    created = coord.create_namespaced_lease("kube-node-lease", lease)
    assert created.metadata.namespace == "kube-node-lease"
    with pytest.raises(ApiException) as e:
        coord.create_namespaced_lease("kube-node-lease", lease)
    assert e.value.status == 409 and _status(e.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as e:
        coord.create_namespaced_lease("no-such-ns", lease)
    assert e.value.status == 404
    coord.create_namespaced_lease("default", lease)
    everywhere = coord.list_lease_for_all_namespaces()
    assert sorted(x.metadata.namespace for x in everywhere.items) == ["default", "kube-node-lease"]
    created.spec.holder_identity = "n2"
    updated = coord.replace_namespaced_lease("edge-a", "kube-node-lease", created)
    assert updated.spec.holder_identity == "n2"
    assert coord.read_namespaced_lease("edge-a", "default").spec.holder_identity == "n1"
    coord.delete_namespaced_lease("edge-a", "kube-node-lease")
    assert [x.metadata.namespace for x in coord.list_lease_for_all_namespaces().items] == [
        "default"
    ]


def test_builtin_namespaces_exist(api):
    names = [n.metadata.name for n in client.CoreV1Api(api).list_namespace().items]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]


def test_gateway_crud(gateways):
    created = gateways.create_cluster_custom_object(*GW, _gateway("edge-a", tunnelPort=51820))
    assert created["metadata"]["generation"] == 1
    assert gateways.get_cluster_custom_object(*GW, "edge-a")["spec"] == {"tunnelPort": 51820}
    patched = gateways.patch_cluster_custom_object(*GW, "edge-a", {"spec": {"relay": True}})
    assert patched["spec"] == {"tunnelPort": 51820, "relay": True}
    listed = gateways.list_cluster_custom_object(*GW)
    assert listed["kind"] == "GatewayList" and [g["metadata"]["name"] for g in listed["items"]] == [
        "edge-a"
    ]
    gateways.delete_cluster_custom_object(*GW, "edge-a")
    with pytest.raises(ApiException) as e:
        gateways.get_cluster_custom_object(*GW, "edge-a")
    assert _status(e.value)["details"] == {
        "name": "edge-a",
        "group": "raven.io",
        "kind": "gateways",
    }


def test_invalid_gateway_is_rejected_naming_the_field(gateways):
    with pytest.raises(ApiException) as e:
        gateways.create_cluster_custom_object(*GW, _gateway("edge-a", tunnelPort=70000))
    body = _status(e.value)
    assert e.value.status == 422 and body["reason"] == "Invalid"
    assert "spec.tunnelPort" in body["message"]
    assert body["details"]["kind"] == "Gateway"
    with pytest.raises(ApiException) as e:
        gateways.create_cluster_custom_object(*GW, _gateway("Edge_A"))
    assert e.value.status == 422 and "metadata.name" in _status(e.value)["message"]


def test_second_writer_gets_conflict(api, server):
    v1 = client.CoreV1Api(api)
    v1.create_node({"metadata": {"name": "n1"}})
    with api_client(server) as other:
        mine = v1.read_node("n1")
        theirs = client.CoreV1Api(other).read_node("n1")
        mine.metadata.labels = {"writer": "one"}
        v1.replace_node("n1", mine)
        theirs.metadata.labels = {"writer": "two"}
        with pytest.raises(ApiException) as e:
            client.CoreV1Api(other).replace_node("n1", theirs)
    assert e.value.status == 409
    body = _status(e.value)
    assert body["reason"] == "Conflict" and body["details"]["name"] == "n1"
    assert v1.read_node("n1").metadata.labels == {"writer": "one"}
    # A patch that carries a stale resourceVersion is refused too; one without it is not.
    stale = theirs.metadata.resource_version
    with pytest.raises(ApiException) as e:
        v1.patch_node("n1", {"metadata": {"resourceVersion": stale, "labels": {"w": "3"}}})
    assert e.value.status == 409
    assert v1.patch_node("n1", {"metadata": {"labels": {"w": "3"}}}).metadata.labels["w"] == "3"


def _collect(stream, n: int) -> list[tuple[str, str, str]]:
    out = []
    for ev in stream:
        if ev["type"] == "BOOKMARK":
            continue
        out.append((ev["type"], ev["object"].metadata.name, ev["object"].metadata.resource_version))
        if len(out) == n:
            break
    return out


def test_watch_resumes_without_missed_or_duplicated_events(api):
    v1 = client.CoreV1Api(api)
    v1.create_node({"metadata": {"name": "before"}})
    start = v1.list_node().metadata.resource_version
    made = []
    for i in range(3):
        made.append(
            (
                "ADDED",
                f"n{i}",
                v1.create_node({"metadata": {"name": f"n{i}"}}).metadata.resource_version,
            )
        )
    w = watch.Watch()
    first = _collect(w.stream(v1.list_node, resource_version=start, timeout_seconds=5), 2)
    w.stop()
    assert first == made[:2]
    made.append(
        (
            "MODIFIED",
            "n0",
            v1.patch_node("n0", {"metadata": {"labels": {"x": "y"}}}).metadata.resource_version,
        )
    )
    v1.delete_node("n1")
    gone = v1.list_node().metadata.resource_version
    made.append(("DELETED", "n1", gone))
    rest = _collect(
        watch.Watch().stream(v1.list_node, resource_version=first[-1][2], timeout_seconds=5), 3
    )
    assert first + rest == made


def test_watch_without_version_sends_current_objects_then_follows(api):
    v1 = client.CoreV1Api(api)
    v1.create_node({"metadata": {"name": "a"}})
    result: list = []

    def run():
        result.extend(_collect(watch.Watch().stream(v1.list_node, timeout_seconds=5), 2))

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.5)
    v1.create_node({"metadata": {"name": "b"}})
    t.join(10)
    assert [(k, n) for k, n, _ in result] == [("ADDED", "a"), ("ADDED", "b")]


def test_bookmarks_carry_the_current_version(api):
    v1 = client.CoreV1Api(api)
    rv = v1.create_node({"metadata": {"name": "a"}}).metadata.resource_version
    w = watch.Watch()
    seen = []
    for ev in w.stream(
        v1.list_node, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=3
    ):
        seen.append(ev)
        if ev["type"] == "BOOKMARK":
            break
    w.stop()
    assert seen and seen[0]["type"] == "BOOKMARK"
    raw = seen[0]["raw_object"]
    assert raw == {"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": rv}}
    # Without allowWatchBookmarks there are none.
    events = list(watch.Watch().stream(v1.list_node, resource_version=rv, timeout_seconds=1))
    assert events == []


def test_expired_version_gives_410_then_relist_works(tmp_path):
    with run_apiserver(tmp_path / "api", history=5) as server, api_client(server) as api:
        v1 = client.CoreV1Api(api)
        old = v1.list_node().metadata.resource_version
        for i in range(8):
            v1.create_node({"metadata": {"name": f"n{i}"}})
        with pytest.raises(ApiException) as e:
            list(watch.Watch().stream(v1.list_node, resource_version=old, timeout_seconds=2))
        assert e.value.status == 410 and "Expired" in e.value.reason
        listing = v1.list_node()
        assert len(listing.items) == 8
        v1.delete_node("n3")
        events = _collect(
            watch.Watch().stream(
                v1.list_node, resource_version=listing.metadata.resource_version, timeout_seconds=3
            ),
            1,
        )
        assert [(k, n) for k, n, _ in events] == [("DELETED", "n3")]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("pool=a", ["n1", "n2"]),
        ("pool==a", ["n1", "n2"]),
        ("pool!=a", ["n3", "n4"]),
        ("pool in (a,b)", ["n1", "n2", "n3"]),
        ("pool notin (a)", ["n3", "n4"]),
        ("gw", ["n2"]),
        ("!gw", ["n1", "n3", "n4"]),
        ("pool=a,!gw", ["n1"]),
    ],
)
def test_label_selectors_on_list(api, selector, expected):
    v1 = client.CoreV1Api(api)
    for name, labels in (
        ("n1", {"pool": "a"}),
        ("n2", {"pool": "a", "gw": ""}),
        ("n3", {"pool": "b"}),
        ("n4", {}),
    ):
        v1.create_node({"metadata": {"name": name, "labels": labels}})
    assert [n.metadata.name for n in v1.list_node(label_selector=selector).items] == expected


def test_field_selectors_and_bad_selectors(api):
    v1 = client.CoreV1Api(api)
    coord = client.CoordinationV1Api(api)
    for ns in ("default", "kube-system"):
        coord.create_namespaced_lease(ns, {"metadata": {"name": "l"}, "spec": {}})
        coord.create_namespaced_lease(ns, {"metadata": {"name": "m"}, "spec": {}})
    found = coord.list_lease_for_all_namespaces(
        field_selector="metadata.namespace=kube-system,metadata.name!=l"
    )
    assert [(x.metadata.namespace, x.metadata.name) for x in found.items] == [("kube-system", "m")]
    assert len(coord.list_lease_for_all_namespaces(field_selector="metadata.name==l").items) == 2
    for bad in (
        {"label_selector": "a in (b"},
        {"label_selector": "=x"},
        {"field_selector": "spec.holderIdentity=x"},
        {"field_selector": "nonsense"},
    ):
        with pytest.raises(ApiException) as e:
            coord.list_lease_for_all_namespaces(**bad)
        assert e.value.status == 400 and _status(e.value)["reason"] == "BadRequest"
    with pytest.raises(ApiException) as e:
        list(watch.Watch().stream(v1.list_node, label_selector="a in b", timeout_seconds=1))
    assert e.value.status == 400


def test_watch_with_selector_reports_objects_entering_and_leaving(api):
    v1 = client.CoreV1Api(api)
    rv = v1.create_node({"metadata": {"name": "n1"}}).metadata.resource_version
    v1.patch_node("n1", {"metadata": {"labels": {"pool": "a"}}})
    v1.patch_node("n1", {"metadata": {"labels": {"other": "x"}}})
    v1.patch_node("n1", {"metadata": {"labels": {"pool": "b"}}})
    v1.create_node({"metadata": {"name": "n2"}})
    events = _collect(
        watch.Watch().stream(
            v1.list_node, label_selector="pool=a", resource_version=rv, timeout_seconds=3
        ),
        3,
    )
    assert [(k, n) for k, n, _ in events] == [
        ("ADDED", "n1"),
        ("MODIFIED", "n1"),
        ("DELETED", "n1"),
    ]


def test_status_subresource_semantics(gateways):
    created = gateways.create_cluster_custom_object(
        *GW, _gateway("edge-a", tunnelPort=1000) | {"status": {"activeNode": "sneaky"}}
    )
    assert "status" not in created  # status is not set on create when it is a subresource
    after_status = gateways.patch_cluster_custom_object_status(
        *GW, "edge-a", {"spec": {"tunnelPort": 9}, "status": {"activeNode": "n1"}}
    )
    assert after_status["status"] == {"activeNode": "n1"}
    assert after_status["spec"] == {"tunnelPort": 1000}  # spec ignored on /status
    main = gateways.patch_cluster_custom_object(
        *GW, "edge-a", {"spec": {"tunnelPort": 2000}, "status": {"activeNode": "n2"}}
    )
    assert main["spec"] == {"tunnelPort": 2000} and main["status"] == {"activeNode": "n1"}
    full = gateways.get_cluster_custom_object(*GW, "edge-a")
    full["status"]["activeNode"] = "n3"
    replaced = gateways.replace_cluster_custom_object_status(*GW, "edge-a", full)
    assert replaced["status"]["activeNode"] == "n3"


def test_node_status_subresource(api):
    v1 = client.CoreV1Api(api)
    node = v1.create_node(
        {
            "metadata": {"name": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
    )
    assert node.status.conditions[0].status == "True"  # nodes keep status on create
    v1.patch_node("n1", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert v1.read_node("n1").status.conditions[0].status == "True"
    v1.patch_node_status("n1", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert v1.read_node("n1").status.conditions[0].status == "False"


def test_generation_rules(api, gateways):
    gateways.create_cluster_custom_object(*GW, _gateway("edge-a", tunnelPort=1))
    gen = lambda: gateways.get_cluster_custom_object(*GW, "edge-a")["metadata"]["generation"]  # noqa: E731
    gateways.patch_cluster_custom_object(*GW, "edge-a", {"metadata": {"labels": {"a": "b"}}})
    gateways.patch_cluster_custom_object_status(*GW, "edge-a", {"status": {"activeNode": "x"}})
    assert gen() == 1
    gateways.patch_cluster_custom_object(*GW, "edge-a", {"spec": {"tunnelPort": 2}})
    assert gen() == 2
    gateways.patch_cluster_custom_object(*GW, "edge-a", {"spec": {"tunnelPort": 2}})
    assert gen() == 2  # no change, no new generation
    v1 = client.CoreV1Api(api)
    v1.create_node({"metadata": {"name": "n1"}})
    assert v1.patch_node("n1", {"metadata": {"labels": {"a": "b"}}}).metadata.generation == 1
    assert v1.patch_node_status("n1", {"status": {"phase": "x"}}).metadata.generation == 1
    assert v1.patch_node("n1", {"spec": {"unschedulable": True}}).metadata.generation == 2
    coord = client.CoordinationV1Api(api)
    coord.create_namespaced_lease(
        "default", {"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}
    )
    assert (
        coord.patch_namespaced_lease(
            "l", "default", {"spec": {"holderIdentity": "b"}}
        ).metadata.generation
        == 2
    )


def test_state_survives_restart(server, tmp_path):
    with api_client(server) as api:
        client.ApiextensionsV1Api(api).create_custom_resource_definition(
            yaml.safe_load(CRD_FILE.read_text())
        )
        client.CustomObjectsApi(api).create_cluster_custom_object(*GW, _gateway("edge-a"))
        node = client.CoreV1Api(api).create_node({"metadata": {"name": "n1"}})
    port = server.port
    server.restart()
    assert server.port == port
    with api_client(server) as api:
        v1 = client.CoreV1Api(api)
        assert v1.read_node("n1").metadata.uid == node.metadata.uid
        gw = client.CustomObjectsApi(api).get_cluster_custom_object(*GW, "edge-a")
        assert gw["metadata"]["name"] == "edge-a"
        newer = v1.create_node({"metadata": {"name": "n2"}})
        assert int(newer.metadata.resource_version) > int(gw["metadata"]["resourceVersion"])
        # A watch from the version before the restart resumes cleanly.
        events = _collect(
            watch.Watch().stream(
                v1.list_node, resource_version=node.metadata.resource_version, timeout_seconds=2
            ),
            1,
        )
        assert [(k, n) for k, n, _ in events] == [("ADDED", "n2")]


def test_requests_without_valid_token_get_401(server):
    import json
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(server.ca_cert))
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        req = urllib.request.Request(server.url + "/api/v1/nodes", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, context=ctx, timeout=5)
        assert e.value.code == 401
        body = json.loads(e.value.read())
        assert body["kind"] == "Status" and body["reason"] == "Unauthorized" and body["code"] == 401
    for path in ("/healthz", "/readyz", "/livez"):
        with urllib.request.urlopen(server.url + path, context=ctx, timeout=5) as r:
            assert r.status == 200 and r.read() == b"ok"


def test_list_pages_with_limit_and_continue(api):
    v1 = client.CoreV1Api(api)
    for i in range(5):
        v1.create_node({"metadata": {"name": f"n{i}"}})
    first = v1.list_node(limit=2)
    assert [n.metadata.name for n in first.items] == ["n0", "n1"]
    assert first.metadata.remaining_item_count == 3 and first.metadata._continue
    names, token = [n.metadata.name for n in first.items], first.metadata._continue
    while token:
        page = v1.list_node(limit=2, _continue=token)
        assert page.metadata.resource_version == first.metadata.resource_version
        names += [n.metadata.name for n in page.items]
        token = page.metadata._continue
    assert names == [f"n{i}" for i in range(5)]
    with pytest.raises(ApiException) as e:
        v1.list_node(limit=2, _continue="not-a-token")
    assert e.value.status == 400


def test_nodes_read_back_whole_for_the_python_client(api):
    """Go always serializes nodeInfo; the Python client refuses a Node without its fields."""
    v1 = client.CoreV1Api(api)
    v1.create_node({"metadata": {"name": "n1"}})
    v1.patch_node_status(
        "n1", [{"op": "add", "path": "/status/nodeInfo", "value": {"kubeletVersion": "v1.32.0"}}]
    )
    info = v1.read_node("n1").status.node_info
    assert info.kubelet_version == "v1.32.0" and info.os_image == ""


def test_undeclared_fields_are_pruned_except_where_preserved(gateways):
    body = _gateway("edge-a", tunnelPort=1, tunelPort=2, candidateSelector={"any": {"thing": 1}})
    body["extra"] = True
    created = gateways.create_cluster_custom_object(*GW, body)
    assert created["spec"] == {"tunnelPort": 1, "candidateSelector": {"any": {"thing": 1}}}
    assert "extra" not in created
    status = gateways.patch_cluster_custom_object_status(
        *GW, "edge-a", {"status": {"activeNode": "n1", "custom": {"x": 1}}}
    )
    assert status["status"] == {"activeNode": "n1", "custom": {"x": 1}}


def test_json_patch_setting_a_stale_version_conflicts(api):
    v1 = client.CoreV1Api(api)
    old = v1.create_node({"metadata": {"name": "n1"}}).metadata.resource_version
    v1.patch_node("n1", {"metadata": {"labels": {"a": "b"}}})
    stale = [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": old},
        {"op": "add", "path": "/metadata/labels/c", "value": "d"},
    ]
    with pytest.raises(ApiException) as e:
        v1.patch_node("n1", stale)
    assert e.value.status == 409
    assert v1.read_node("n1").metadata.labels == {"a": "b"}


def test_watch_gateways(gateways):
    rv = gateways.create_cluster_custom_object(*GW, _gateway("edge-a"))["metadata"][
        "resourceVersion"
    ]
    gateways.patch_cluster_custom_object_status(*GW, "edge-a", {"status": {"activeNode": "n1"}})
    gateways.delete_cluster_custom_object(*GW, "edge-a")
    events = []
    for ev in watch.Watch().stream(
        gateways.list_cluster_custom_object, *GW, resource_version=rv, timeout_seconds=3
    ):
        obj = ev["object"]
        events.append((ev["type"], obj["apiVersion"], obj.get("status", {}).get("activeNode")))
        if len(events) == 2:
            break
    assert events == [
        ("MODIFIED", "raven.io/v1alpha1", "n1"),
        ("DELETED", "raven.io/v1alpha1", "n1"),
    ]


def test_finalizers_hold_deletion_until_removed(gateways):
    body = _gateway("edge-a")
    body["metadata"]["finalizers"] = ["raven.io/cleanup"]
    rv = gateways.create_cluster_custom_object(*GW, body)["metadata"]["resourceVersion"]
    gateways.delete_cluster_custom_object(*GW, "edge-a")
    held = gateways.get_cluster_custom_object(*GW, "edge-a")
    assert held["metadata"]["deletionTimestamp"]
    gateways.patch_cluster_custom_object(*GW, "edge-a", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as e:
        gateways.get_cluster_custom_object(*GW, "edge-a")
    assert e.value.status == 404
    kinds = [
        ev["type"]
        for ev in watch.Watch().stream(
            gateways.list_cluster_custom_object, *GW, resource_version=rv, timeout_seconds=1
        )
    ]
    assert kinds == ["MODIFIED", "DELETED"]
