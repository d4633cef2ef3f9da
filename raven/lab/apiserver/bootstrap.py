"""The objects every cluster starts with, created by the server when missing.

As kube-apiserver does on start: the four initial namespaces, the default ClusterRoles and
ClusterRoleBindings a cluster relies on (``cluster-admin`` for ``system:masters``;
``system:discovery``, ``system:basic-user`` and ``system:public-info-viewer``, which let every
authenticated user read discovery, /version, /healthz and /openapi and review its own access;
``system:node-proxier``, what kube-proxy reads, bound to the user ``system:kube-proxy``),
and the two built-in PriorityClasses ``system-node-critical`` and ``system-cluster-critical``.
They are ordinary stored objects: ``kubectl get clusterroles`` lists them.
"""

from __future__ import annotations

from typing import Any

from raven.lab.apiserver.kinds import RBAC_GROUP, SYSTEM_PRIORITY_CLASSES

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

_LABELS = {"kubernetes.io/bootstrapping": "rbac-defaults"}
_ANNOTATIONS = {"rbac.authorization.kubernetes.io/autoupdate": "true"}

_DISCOVERY_URLS = [
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/openapi",
    "/openapi/*",
    "/readyz",
    "/version",
    "/version/",
]
_PUBLIC_URLS = ["/healthz", "/livez", "/readyz", "/version", "/version/"]


def _meta(name: str) -> dict[str, Any]:
    return {"name": name, "labels": dict(_LABELS), "annotations": dict(_ANNOTATIONS)}


def _group(name: str) -> dict[str, str]:
    return {"apiGroup": RBAC_GROUP, "kind": "Group", "name": name}


def _user(name: str) -> dict[str, str]:
    return {"apiGroup": RBAC_GROUP, "kind": "User", "name": name}


_EVENT_WRITES = {
    "apiGroups": ["", "events.k8s.io"],
    "resources": ["events"],
    "verbs": ["create", "patch", "update"],
}


CLUSTER_ROLES: tuple[dict[str, Any], ...] = (
    {
        "metadata": _meta("cluster-admin"),
        "rules": [
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"nonResourceURLs": ["*"], "verbs": ["*"]},
        ],
    },
    {
        "metadata": _meta("system:discovery"),
        "rules": [{"nonResourceURLs": _DISCOVERY_URLS, "verbs": ["get"]}],
    },
    {
        "metadata": _meta("system:basic-user"),
        "rules": [
            {
                "apiGroups": ["authorization.k8s.io"],
                "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                "verbs": ["create"],
            },
            {
                "apiGroups": ["authentication.k8s.io"],
                "resources": ["selfsubjectreviews"],
                "verbs": ["create"],
            },
        ],
    },
    {
        "metadata": _meta("system:public-info-viewer"),
        "rules": [{"nonResourceURLs": _PUBLIC_URLS, "verbs": ["get"]}],
    },
    {
        "metadata": _meta("system:node-proxier"),
        "rules": [
            {"apiGroups": [""], "resources": ["endpoints", "services"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            _EVENT_WRITES,
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    },
)

CLUSTER_ROLE_BINDINGS: tuple[dict[str, Any], ...] = tuple(
    {
        "metadata": _meta(name),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
        "subjects": subjects,
    }
    for name, subjects in (
        ("cluster-admin", [_group("system:masters")]),
        ("system:discovery", [_group("system:authenticated")]),
        ("system:basic-user", [_group("system:authenticated")]),
        (
            "system:public-info-viewer",
            [_group("system:authenticated"), _group("system:unauthenticated")],
        ),
        ("system:node-proxier", [_user("system:kube-proxy")]),
    )
)

_PRIORITY_DESCRIPTIONS = {
    "system-node-critical": "Used for system critical pods that must not be moved from their "
    "current node.",
    "system-cluster-critical": "Used for system critical pods that must run in the cluster, but "
    "can be moved to another node if necessary.",
}

PRIORITY_CLASSES: tuple[dict[str, Any], ...] = tuple(
    {
        "metadata": {"name": name},
        "value": value,
        "description": _PRIORITY_DESCRIPTIONS[name],
        "preemptionPolicy": "PreemptLowerPriority",
    }
    for name, value in SYSTEM_PRIORITY_CLASSES.items()
)
