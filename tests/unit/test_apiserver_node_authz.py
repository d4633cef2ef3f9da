"""What a node identity may do, as kube-apiserver's Node authorizer and NodeRestriction allow a
kubelet: renew its own Lease and post its own Node's status, never another node's; through
kubectl v1.32 with the node's client certificate, refusals word for word."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from raven.lab.apiserver import nodeauthz
from raven.lab.apiserver.authn import ADMIN, node_user, service_account_user
from raven.lab.apiserver.requestinfo import RequestInfo
from raven.lab.testing.apiserver import run_apiserver

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")

ME, OTHER = "edge-a-1", "edge-a-2"
SAME_LEASE = "can only access node lease with the same name as the requesting node"


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(result, text: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Forbidden" in result.stderr or "forbidden" in result.stderr, result.stderr
    assert text in result.stderr, result.stderr


def lease(name: str, holder: str | None = None) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": holder or name,
                "leaseDurationSeconds": 40,
                "renewTime": "2030-01-01T00:00:00.000000Z",
            },
        }
    )


def node(name: str) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with run_apiserver(tmp_path_factory.mktemp("api"), nodes=[ME, OTHER]) as handle:
        for name in (ME, OTHER):
            ok(handle.kubectl("create", "-f", "-", stdin=node(name)))
            ok(handle.kubectl("create", "-f", "-", stdin=lease(name)))
        handle.me = handle.node_kubeconfig(ME)  # type: ignore[attr-defined]
        yield handle


def as_node(api, *args: str, stdin: str | None = None):
    return api.kubectl(*args, kubeconfig=api.me, stdin=stdin)


RENEW = '{"spec":{"renewTime":"2030-01-01T00:00:10.000000Z"}}'


# -- leases ------------------------------------------------------------------------------------


@needs_kubectl
def test_a_node_renews_its_own_lease_by_patch_and_by_update(api):
    ok(as_node(api, "patch", "lease", ME, "-n", "kube-node-lease", "--type=merge", "-p", RENEW))
    current = json.loads(ok(as_node(api, "get", "lease", ME, "-n", "kube-node-lease", "-o=json")))
    assert current["spec"]["renewTime"] == "2030-01-01T00:00:10.000000Z"
    current["spec"]["renewTime"] = "2030-01-01T00:00:20.000000Z"
    ok(as_node(api, "replace", "-f", "-", stdin=json.dumps(current)))
    again = json.loads(ok(api.kubectl("get", "lease", ME, "-n", "kube-node-lease", "-o=json")))
    assert again["spec"]["renewTime"] == "2030-01-01T00:00:20.000000Z"
    renewals = [
        e
        for e in api.audit_events()
        if e.get("objectRef", {}).get("resource") == "leases"
        and e["verb"] in ("patch", "update")
        and e["objectRef"].get("name") == ME
    ]
    assert {e["user"]["username"] for e in renewals} == {f"system:node:{ME}"}
    assert {e["responseStatus"]["code"] for e in renewals} == {200}


@needs_kubectl
def test_a_node_cannot_touch_another_nodes_lease(api):
    before = ok(api.kubectl("get", "lease", OTHER, "-n", "kube-node-lease", "-o=json"))
    refused(
        as_node(api, "patch", "lease", OTHER, "-n", "kube-node-lease", "--type=merge", "-p", RENEW),
        f'leases.coordination.k8s.io "{OTHER}" is forbidden: User "system:node:{ME}" cannot '
        f'patch resource "leases" in API group "coordination.k8s.io" in the namespace '
        f'"kube-node-lease": {SAME_LEASE}',
    )
    refused(as_node(api, "replace", "-f", "-", stdin=lease(OTHER, holder=ME)), SAME_LEASE)
    refused(as_node(api, "delete", "lease", OTHER, "-n", "kube-node-lease"), SAME_LEASE)
    # on create the name comes from the body: NodeRestriction's words
    refused(
        as_node(api, "create", "-f", "-", stdin=lease("edge-a-9")),
        f'leases.coordination.k8s.io "edge-a-9" is forbidden: {SAME_LEASE}',
    )
    assert ok(api.kubectl("get", "lease", OTHER, "-n", "kube-node-lease", "-o=json")) == before
    assert not ok(
        api.kubectl("get", "lease", "edge-a-9", "-n", "kube-node-lease", "--ignore-not-found")
    )
    # reading the pool's heartbeats is fine
    names = ok(as_node(api, "get", "leases", "-n", "kube-node-lease", "-o=name"))
    assert f"lease.coordination.k8s.io/{OTHER}" in names.split()


@needs_kubectl
def test_a_node_recreates_its_own_lease_but_leases_elsewhere_are_not_its_business(api):
    ok(as_node(api, "delete", "lease", ME, "-n", "kube-node-lease"))
    ok(as_node(api, "create", "-f", "-", stdin=lease(ME)))
    elsewhere = lease(ME).replace("kube-node-lease", "default")
    refused(
        as_node(api, "create", "-f", "-", stdin=elsewhere),
        'can only access leases in the "kube-node-lease" system namespace',
    )


# -- its Node, Events, everything else ------------------------------------------------------------

READY = json.dumps(
    {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": "2030-01-01T00:00:00Z",
                    "lastTransitionTime": "2030-01-01T00:00:00Z",
                }
            ]
        }
    }
)


@needs_kubectl
def test_a_node_posts_its_own_status_not_another_nodes(api):
    ok(as_node(api, "patch", "node", ME, "--subresource=status", "--type=merge", "-p", READY))
    mine = json.loads(ok(api.kubectl("get", "node", ME, "-o=json")))
    assert mine["status"]["conditions"][0]["reason"] == "KubeletReady"
    refused(
        as_node(api, "patch", "node", OTHER, "--subresource=status", "--type=merge", "-p", READY),
        f'nodes "{OTHER}" is forbidden: node "{ME}" is not allowed to modify node "{OTHER}"',
    )
    refused(
        as_node(api, "label", "node", OTHER, "x=y"),
        f'node "{ME}" is not allowed to modify node "{OTHER}"',
    )
    refused(as_node(api, "create", "-f", "-", stdin=node("edge-a-9")), "not allowed to modify")
    ok(as_node(api, "label", "node", ME, "x=y"))
    assert f"{ME} " in ok(as_node(api, "get", "nodes", "-l", "x=y", "--no-headers"))
    other = json.loads(ok(api.kubectl("get", "node", OTHER, "-o=json")))
    assert "conditions" not in other.get("status", {}) and "x" not in other["metadata"].get(
        "labels", {}
    )


@needs_kubectl
def test_a_node_creates_events_anywhere(api):
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{ME}.1", "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": ME},
        "reason": "Starting",
        "message": "kubelet started",
        "type": "Normal",
    }
    ok(as_node(api, "create", "-f", "-", stdin=json.dumps(event)))
    assert "Starting" in ok(api.kubectl("get", "events", "-n", "default"))


@needs_kubectl
def test_anything_else_is_rbacs_to_grant(api):
    refused(
        as_node(api, "get", "secrets", "-n", "default"),
        f'secrets is forbidden: User "system:node:{ME}" cannot list resource "secrets" in API '
        'group "" in the namespace "default"',
    )
    refused(as_node(api, "create", "namespace", "x"), "cannot create resource")
    assert ok(as_node(api, "auth", "can-i", "patch", f"leases/{ME}", "-n", "kube-node-lease"))
    no = as_node(api, "auth", "can-i", "patch", f"leases/{OTHER}", "-n", "kube-node-lease")
    assert no.returncode == 1 and no.stdout.strip() == f"no - {SAME_LEASE}"
    grant = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "read-secrets"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "nodes-read-secrets"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "read-secrets",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
            ],
        },
    ]
    ok(api.kubectl("create", "-f", "-", stdin=yaml.safe_dump_all(grant)))
    ok(as_node(api, "get", "secrets", "-n", "default"))


# -- the rules, as a table ---------------------------------------------------------------------


def req(verb: str, resource: str, name: str = "", *, group: str = "", ns: str = "", sub: str = ""):
    return RequestInfo(
        verb=verb,
        path="/x",
        resource_request=True,
        api_group=group,
        namespace=ns,
        resource=resource,
        subresource=sub,
        name=name,
    )


COORD = "coordination.k8s.io"


@pytest.mark.parametrize(
    ("info", "allowed", "reason"),
    [
        (req("get", "nodes", OTHER), True, ""),
        (req("watch", "nodes"), True, ""),
        (req("patch", "nodes", ME, sub="status"), True, ""),
        (req("delete", "nodes", ME), None, ""),
        (req("get", "nodes", OTHER, sub="status"), True, ""),
        (req("update", "nodes", OTHER, sub="status"), True, ""),  # NodeRestriction's to refuse
        (req("update", "leases", ME, group=COORD, ns="kube-node-lease"), True, ""),
        (req("create", "leases", group=COORD, ns="kube-node-lease"), True, ""),
        (req("list", "leases", group=COORD, ns="kube-node-lease"), True, ""),
        (req("patch", "leases", OTHER, group=COORD, ns="kube-node-lease"), False, SAME_LEASE),
        (req("delete", "leases", OTHER, group=COORD, ns="kube-node-lease"), False, SAME_LEASE),
        (req("get", "leases", ME, group=COORD, ns="default"), False, "system namespace"),
        (req("deletecollection", "leases", group=COORD, ns="kube-node-lease"), False, "only get"),
        (req("create", "events", ns="default"), True, ""),
        (req("patch", "events", "e", group="events.k8s.io", ns="x"), True, ""),
        (req("delete", "events", "e", ns="x"), None, ""),
        (req("list", "endpointslices", group="discovery.k8s.io"), True, ""),
        (req("watch", "services"), True, ""),
        (req("get", "endpoints", "kubernetes", ns="default"), True, ""),
        (req("list", "pods"), True, ""),
        (req("create", "pods", ns="default"), None, ""),
        (req("get", "secrets", "s", ns="default"), None, ""),
    ],
)
def test_node_authorizer_table(info, allowed, reason):
    decision = nodeauthz.authorize(node_user(ME), info)
    if allowed is None:
        assert decision is None
    else:
        assert decision is not None and decision.allowed is allowed
        assert reason in decision.reason


@pytest.mark.parametrize(
    "user",
    [ADMIN, service_account_user("kube-system", "node"), node_user(ME).__class__("system:node:x")],
)
def test_only_a_node_in_system_nodes_is_a_node(user):
    assert nodeauthz.authorize(user, req("get", "nodes", "n")) is None
    nodeauthz.admit(user, req("patch", "nodes", "n"), "n")  # not NodeRestriction's business
