"""What kube-apiserver does for the built-in kinds a deployment uses, beyond metadata.

For ServiceAccount, ConfigMap, Secret, Service, EndpointSlice, DaemonSet, the four RBAC kinds and
PriorityClass:
:func:`apply_defaults` fills the fields kube-apiserver defaults (so ``kubectl get -o yaml`` and a
server-side dry run show what a cluster would store) and :func:`problems` returns the basic
validation errors as (field path, message) pairs for a 422, worded as kube-apiserver words them,
including the fields that may not change on update. A DaemonSet is only stored: no controller
runs it, so its status stays at zero.

Not covered (a cluster would check them): pod-spec details beyond containers, RBAC's escalation
check (that one may only grant what one holds; the lab writes RBAC as ``system:masters``, which
passes it anyway), aggregated ClusterRoles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raven.lab.apiserver import endpointslices as eps
from raven.lab.apiserver import rbac_objects as rbac
from raven.lab.apiserver import workloads as wl
from raven.lab.apiserver.rbac_objects import RBAC_GROUP
from raven.lab.apiserver.workloads import SYSTEM_PRIORITY_CLASSES

Problems = list[tuple[str, str]]
Obj = dict[str, Any]

__all__ = ["RBAC_GROUP", "SYSTEM_PRIORITY_CLASSES", "apply_defaults", "problems"]

_DEFAULTS: dict[tuple[str, str], Callable[[Obj], None]] = {
    ("", "secrets"): wl.default_secret,
    ("", "services"): wl.default_service,
    ("discovery.k8s.io", "endpointslices"): eps.default_endpointslice,
    ("apps", "daemonsets"): wl.default_daemonset,
    (RBAC_GROUP, "rolebindings"): rbac.default_binding,
    (RBAC_GROUP, "clusterrolebindings"): rbac.default_binding,
    ("scheduling.k8s.io", "priorityclasses"): wl.default_priority_class,
}


def apply_defaults(group: str, plural: str, obj: Obj) -> None:
    """Fill the fields kube-apiserver defaults for this built-in kind, in place."""
    fill = _DEFAULTS.get((group, plural))
    if fill is not None:
        fill(obj)


_CHECKS: dict[tuple[str, str], Callable[[Obj, Obj | None], Problems]] = {
    ("", "configmaps"): wl.configmap_problems,
    ("", "secrets"): wl.secret_problems,
    ("", "services"): wl.service_problems,
    ("discovery.k8s.io", "endpointslices"): eps.endpointslice_problems,
    ("apps", "daemonsets"): wl.daemonset_problems,
    (RBAC_GROUP, "roles"): rbac.role_problems,
    (RBAC_GROUP, "clusterroles"): rbac.cluster_role_problems,
    (RBAC_GROUP, "rolebindings"): lambda o, old: rbac.binding_problems(o, old, namespaced=True),
    (RBAC_GROUP, "clusterrolebindings"): lambda o, old: rbac.binding_problems(
        o, old, namespaced=False
    ),
    ("scheduling.k8s.io", "priorityclasses"): wl.priority_class_problems,
}


def problems(group: str, plural: str, obj: Obj, old: Obj | None = None) -> Problems:
    """Validation errors of a built-in object (``old``: the stored one, on update)."""
    check = _CHECKS.get((group, plural))
    return check(obj, old) if check is not None else []
