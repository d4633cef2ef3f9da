"""The kinds this server serves: built-in types plus one type per served version of each CRD.

A :class:`ResourceType` carries what the rest of the server needs to know about a kind (scope,
names, whether it has a status subresource, printer columns); the :class:`Registry` maps
request paths (group, version, plural) to types and feeds discovery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raven.lab.apiserver import errors

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
CRD_GROUP = "apiextensions.k8s.io"
RBAC_GROUP = "rbac.authorization.k8s.io"


@dataclass(frozen=True)
class Subresource:
    """A subresource other than ``status``, served by the API itself (e.g. TokenRequest)."""

    name: str
    verbs: tuple[str, ...]
    group: str = ""
    version: str = ""
    kind: str = ""


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    # Custom resources drop status on create when they have a status subresource; built-ins keep it.
    custom: bool = False
    printer_columns: tuple[dict[str, Any], ...] = ()
    categories: tuple[str, ...] = ()
    # Field selectors the kind accepts beyond metadata.name / metadata.namespace.
    extra_fields: tuple[str, ...] = ()
    # The CRD's openAPIV3Schema for this version (custom resources only).
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    verbs: tuple[str, ...] = VERBS
    subresources: tuple[Subresource, ...] = ()
    # Reviews (access, rules, self): answered from the request, never stored.
    virtual: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def storage_key(self) -> str:
        """Objects are stored per group and plural, shared by all versions of a CRD."""
        return f"{self.group or 'core'}/{self.plural}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def field_selectors(self) -> tuple[str, ...]:
        base = ("metadata.name", "metadata.namespace") if self.namespaced else ("metadata.name",)
        return base + self.extra_fields


_EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)

_POD_FIELDS = (
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
)

BUILTINS: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "nodes", "node", "Node", False, ("no",), status_subresource=True),
    ResourceType(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        False,
        ("ns",),
        status_subresource=True,
        extra_fields=("status.phase",),
    ),
    ResourceType("", "v1", "events", "event", "Event", True, ("ev",), extra_fields=_EVENT_FIELDS),
    # Served (empty in the lab) so that `kubectl describe node` can list a node's pods.
    ResourceType(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        True,
        ("po",),
        status_subresource=True,
        categories=("all",),
        extra_fields=_POD_FIELDS,
    ),
    ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", True),
    ResourceType(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        True,
        ("sa",),
        subresources=(
            Subresource("token", ("create",), "authentication.k8s.io", "v1", "TokenRequest"),
        ),
    ),
    ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", True, ("cm",)),
    ResourceType("", "v1", "secrets", "secret", "Secret", True, extra_fields=("type",)),
    ResourceType(
        "",
        "v1",
        "services",
        "service",
        "Service",
        True,
        ("svc",),
        status_subresource=True,
        categories=("all",),
        extra_fields=("spec.clusterIP", "spec.type"),
    ),
    ResourceType(
        "discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", True
    ),
    ResourceType(
        "apps",
        "v1",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        True,
        ("ds",),
        status_subresource=True,
        categories=("all",),
    ),
    ResourceType(RBAC_GROUP, "v1", "roles", "role", "Role", True),
    ResourceType(RBAC_GROUP, "v1", "clusterroles", "clusterrole", "ClusterRole", False),
    ResourceType(RBAC_GROUP, "v1", "rolebindings", "rolebinding", "RoleBinding", True),
    ResourceType(
        RBAC_GROUP, "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", False
    ),
    ResourceType(
        "scheduling.k8s.io",
        "v1",
        "priorityclasses",
        "priorityclass",
        "PriorityClass",
        False,
        ("pc",),
    ),
    ResourceType(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        "SelfSubjectAccessReview",
        False,
        verbs=("create",),
        virtual=True,
    ),
    ResourceType(
        "authorization.k8s.io",
        "v1",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        "SelfSubjectRulesReview",
        False,
        verbs=("create",),
        virtual=True,
    ),
    ResourceType(
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "selfsubjectreview",
        "SelfSubjectReview",
        False,
        verbs=("create",),
        virtual=True,
    ),
    ResourceType(
        CRD_GROUP,
        "v1",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        False,
        ("crd", "crds"),
        status_subresource=True,
        categories=("api-extensions",),
    ),
)

CRD_TYPE = next(t for t in BUILTINS if t.plural == "customresourcedefinitions")
NAMESPACE_TYPE = next(t for t in BUILTINS if t.plural == "namespaces")
EVENT_TYPE = next(t for t in BUILTINS if t.plural == "events")
SERVICE_ACCOUNT_TYPE = next(t for t in BUILTINS if t.plural == "serviceaccounts")


def builtin(group: str, plural: str) -> ResourceType:
    """The built-in type serving ``plural`` in ``group`` ("" for the core group)."""
    return next(t for t in BUILTINS if t.group == group and t.plural == plural)


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """One type per served version of a (validated) CRD object."""
    spec = crd["spec"]
    names = spec["names"]
    out = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        out.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                singular=names.get("singular") or names["kind"].lower(),
                kind=names["kind"],
                namespaced=spec.get("scope") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                status_subresource="status" in (version.get("subresources") or {}),
                custom=True,
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
                categories=tuple(names.get("categories") or ()),
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
            )
        )
    return out


class Registry:
    """Resource types by (group, version, plural); CRD-backed types come and go with their CRD."""

    def __init__(self) -> None:
        self._builtin = {(t.group, t.version, t.plural): t for t in BUILTINS}
        self._crds: dict[str, list[ResourceType]] = {}

    def set_crd(self, crd: dict[str, Any]) -> None:
        self._crds[crd["metadata"]["name"]] = types_from_crd(crd)

    def remove_crd(self, name: str) -> None:
        self._crds.pop(name, None)

    def all(self) -> list[ResourceType]:
        types = list(self._builtin.values())
        for name in sorted(self._crds):
            types.extend(self._crds[name])
        return types

    def lookup(self, group: str, version: str, plural: str) -> ResourceType:
        found = self.find(group, version, plural)
        if found is None:
            path = f"/apis/{group}/{version}/{plural}" if group else f"/api/{version}/{plural}"
            raise errors.no_such_resource(path)
        return found

    def find(self, group: str, version: str, plural: str) -> ResourceType | None:
        key = (group, version, plural)
        if key in self._builtin:
            return self._builtin[key]
        for types in self._crds.values():
            for t in types:
                if (t.group, t.version, t.plural) == key:
                    return t
        return None

    def group_versions(self) -> dict[str, list[str]]:
        """Group name → served versions (first = preferred), core group excluded."""
        groups: dict[str, list[str]] = {}
        for t in self.all():
            if t.group and t.version not in groups.setdefault(t.group, []):
                groups[t.group].append(t.version)
        return groups

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [t for t in self.all() if t.group == group and t.version == version]
