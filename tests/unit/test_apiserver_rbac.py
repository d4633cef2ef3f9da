"""RBAC as kube-apiserver evaluates it, and what a request asks for (pure, no server)."""

from __future__ import annotations

import pytest

from raven.lab.apiserver.authn import ADMIN, UserInfo, service_account_user
from raven.lab.apiserver.bootstrap import CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES
from raven.lab.apiserver.rbac import Rbac, forbidden
from raven.lab.apiserver.requestinfo import RequestInfo, request_info

AGENT = service_account_user("raven-system", "raven-agent")
OTHER_SA = service_account_user("other", "raven-agent")
ALICE = UserInfo("alice", ("devs", "system:authenticated"))

CLUSTER_ROLE = {
    "metadata": {"name": "raven-agent"},
    "rules": [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["raven.io"], "resources": ["gateways"], "verbs": ["get", "create"]},
        {"apiGroups": ["raven.io"], "resources": ["gateways/status"], "verbs": ["patch"]},
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "verbs": ["get"],
            "resourceNames": ["raven-config"],
        },
    ],
}
LEASE_ROLE = {
    "metadata": {"name": "leases", "namespace": "raven-system"},
    "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]}],
}
ANY_STATUS = {
    "metadata": {"name": "status-reader"},
    "rules": [{"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["get"]}],
}


def binding(name, role_kind, role, subjects, namespace=None):
    meta = {"name": name} | ({"namespace": namespace} if namespace else {})
    return {
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": subjects,
    }


SA_SUBJECT = {"kind": "ServiceAccount", "name": "raven-agent", "namespace": "raven-system"}

RBAC = Rbac(
    cluster_roles=[CLUSTER_ROLE, ANY_STATUS, *CLUSTER_ROLES],
    roles=[LEASE_ROLE],
    cluster_role_bindings=[
        binding("raven-agent", "ClusterRole", "raven-agent", [SA_SUBJECT]),
        binding("devs", "ClusterRole", "status-reader", [{"kind": "Group", "name": "devs"}]),
        binding("ghost", "ClusterRole", "missing", [{"kind": "User", "name": "alice"}]),
        *CLUSTER_ROLE_BINDINGS,
    ],
    role_bindings=[
        # no namespace on the subject: the binding's own
        binding(
            "leases",
            "Role",
            "leases",
            [{"kind": "ServiceAccount", "name": "raven-agent"}],
            "raven-system",
        ),
        binding("cm", "ClusterRole", "raven-agent", [{"kind": "User", "name": "alice"}], "apps"),
    ],
)


def req(verb, resource, *, group="", namespace="", name="", sub=""):
    return RequestInfo(verb, "", True, group, "v1", namespace, resource, sub, name)


def path(verb, p):
    return RequestInfo(verb, p)


@pytest.mark.parametrize(
    ("scenario", "user", "info", "allowed"),
    [
        ("agent/patches a node", AGENT, req("patch", "nodes", name="n1"), True),
        ("agent/may not delete a node", AGENT, req("delete", "nodes", name="n1"), False),
        (
            "agent/patches gateway status",
            AGENT,
            req("patch", "gateways", group="raven.io", name="a", sub="status"),
            True,
        ),
        (
            "agent/may not patch the gateway itself",
            AGENT,
            req("patch", "gateways", group="raven.io", name="a"),
            False,
        ),
        (
            "agent/gateways in another group are not its",
            AGENT,
            req("get", "gateways", group="gateway.networking.k8s.io", name="a"),
            False,
        ),
        (
            "agent/leases in its namespace",
            AGENT,
            req(
                "update", "leases", group="coordination.k8s.io", namespace="raven-system", name="x"
            ),
            True,
        ),
        (
            "agent/leases elsewhere",
            AGENT,
            req("update", "leases", group="coordination.k8s.io", namespace="kube-system", name="x"),
            False,
        ),
        (
            "same name, other namespace/not the agent",
            OTHER_SA,
            req(
                "update", "leases", group="coordination.k8s.io", namespace="raven-system", name="x"
            ),
            False,
        ),
        (
            "resourceNames/the named configmap",
            AGENT,
            req("get", "configmaps", namespace="x", name="raven-config"),
            True,
        ),
        (
            "resourceNames/another configmap",
            AGENT,
            req("get", "configmaps", namespace="x", name="other"),
            False,
        ),
        (
            "resourceNames/a list is not a named get",
            AGENT,
            req("list", "configmaps", namespace="x"),
            False,
        ),
        (
            "*/status/any status",
            ALICE,
            req("get", "gateways", group="raven.io", name="a", sub="status"),
            True,
        ),
        (
            "*/status/not the object",
            ALICE,
            req("get", "gateways", group="raven.io", name="a"),
            False,
        ),
        (
            "rolebinding to a clusterrole/inside its namespace",
            ALICE,
            req("get", "nodes", namespace="apps", name="n1"),
            True,
        ),
        (
            "rolebinding to a clusterrole/cluster scope",
            ALICE,
            req("get", "nodes", name="n1"),
            False,
        ),
        ("discovery/any authenticated user", AGENT, path("get", "/apis/raven.io/v1alpha1"), True),
        ("discovery/version", AGENT, path("get", "/version"), True),
        ("discovery/openapi", AGENT, path("get", "/openapi/v3/api/v1"), True),
        ("non-resource/posting is not reading", AGENT, path("post", "/apis"), False),
        (
            "self review/everyone",
            AGENT,
            req("create", "selfsubjectaccessreviews", group="authorization.k8s.io"),
            True,
        ),
        ("system:masters/anything", ADMIN, req("delete", "nodes", name="n1"), True),
    ],
)
def test_authorization(scenario, user, info, allowed):
    assert RBAC.authorize(user, info).allowed is allowed, scenario


def test_an_allow_names_the_binding_that_granted_it():
    decision = RBAC.authorize(AGENT, req("get", "nodes", name="n1"))
    assert decision.reason == (
        'RBAC: allowed by ClusterRoleBinding "raven-agent" of ClusterRole "raven-agent" to '
        'ServiceAccount "raven-agent/raven-system"'
    )


def test_a_binding_to_a_missing_role_is_named_in_the_denial():
    decision = RBAC.authorize(ALICE, req("delete", "nodes", name="n1"))
    assert not decision.allowed
    assert decision.reason == 'RBAC: clusterrole.rbac.authorization.k8s.io "missing" not found'


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (
            req("patch", "nodes", name="n1"),
            'nodes "n1" is forbidden: User "system:serviceaccount:raven-system:raven-agent" cannot '
            'patch resource "nodes" in API group "" at the cluster scope',
        ),
        (
            req("list", "leases", group="coordination.k8s.io", namespace="kube-system"),
            'leases.coordination.k8s.io is forbidden: User "system:serviceaccount:raven-system:'
            'raven-agent" cannot list resource "leases" in API group "coordination.k8s.io" in the '
            'namespace "kube-system"',
        ),
        (
            req("update", "gateways", group="raven.io", name="a", sub="status"),
            'gateways.raven.io "a" is forbidden: User "system:serviceaccount:raven-system:raven-'
            'agent" cannot update resource "gateways/status" in API group "raven.io" at the '
            "cluster scope",
        ),
        (
            path("get", "/metrics"),
            'forbidden: User "system:serviceaccount:raven-system:raven-agent" cannot get path '
            '"/metrics"',
        ),
    ],
)
def test_forbidden_messages_are_kube_apiservers(info, message):
    error = forbidden(AGENT, info)
    body = error.status()
    assert (error.code, body["reason"], body["message"]) == (403, "Forbidden", message)


@pytest.mark.parametrize(
    ("method", "url", "query", "expected"),
    [
        ("GET", "/api/v1/nodes", {}, req("list", "nodes")),
        ("GET", "/api/v1/nodes", {"watch": "true"}, req("watch", "nodes")),
        ("GET", "/api/v1/nodes/n1", {}, req("get", "nodes", name="n1")),
        (
            "PATCH",
            "/apis/raven.io/v1alpha1/gateways/a/status",
            {},
            RequestInfo(
                "patch",
                "/apis/raven.io/v1alpha1/gateways/a/status",
                True,
                "raven.io",
                "v1alpha1",
                "",
                "gateways",
                "status",
                "a",
            ),
        ),
        (
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases",
            {"watch": "1", "fieldSelector": "metadata.name=raven-gw-a"},
            req("watch", "leases", group="coordination.k8s.io", namespace="ns", name="raven-gw-a"),
        ),
        # a namespace's own path carries it as the namespace too
        ("GET", "/api/v1/namespaces/ns", {}, req("get", "namespaces", namespace="ns", name="ns")),
        (
            "PUT",
            "/api/v1/namespaces/ns/status",
            {},
            req("update", "namespaces", namespace="ns", name="ns", sub="status"),
        ),
        (
            "DELETE",
            "/api/v1/namespaces/ns/events",
            {},
            req("deletecollection", "events", namespace="ns"),
        ),
        (
            "POST",
            "/api/v1/namespaces/ns/serviceaccounts/sa/token",
            {},
            req("create", "serviceaccounts", namespace="ns", name="sa", sub="token"),
        ),
        ("GET", "/apis/raven.io", {}, path("get", "/apis/raven.io")),
        ("GET", "/healthz", {}, path("get", "/healthz")),
    ],
)
def test_request_info(method, url, query, expected):
    got = request_info(method, url, query)
    assert (
        got.verb,
        got.resource_request,
        got.api_group,
        got.namespace,
        got.resource,
        got.subresource,
        got.name,
    ) == (
        expected.verb,
        expected.resource_request,
        expected.api_group,
        expected.namespace,
        expected.resource,
        expected.subresource,
        expected.name,
    )
