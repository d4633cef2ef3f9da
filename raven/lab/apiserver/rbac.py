"""RBAC as kube-apiserver evaluates it, over the stored Roles, ClusterRoles and their bindings.

Pure: :class:`Rbac` is built from the objects (plain dicts) and answers :meth:`Rbac.authorize`
for one request's :class:`Attributes`. Members of ``system:masters`` are allowed everything
before RBAC is asked, as kube-apiserver's privileged-group authorizer does.

Matching follows kube-apiserver: a rule allows a request when its verbs, apiGroups and
resources (``resource/subresource``; ``*`` and ``*/subresource`` match) cover it, and its
resourceNames (if any) name the object; a non-resource request (``/healthz``) needs a
ClusterRole rule whose nonResourceURLs hold the path (``/apis/*`` matches by prefix). A
ClusterRoleBinding grants its ClusterRole everywhere; a RoleBinding grants its Role or
ClusterRole in its own namespace only. A ServiceAccount subject without a namespace means the
binding's namespace. A denial gets kube-apiserver's message word for word (:func:`forbidden`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from raven.lab.apiserver import errors
from raven.lab.apiserver.authn import UserInfo
from raven.lab.apiserver.requestinfo import RequestInfo

RBAC_GROUP = "rbac.authorization.k8s.io"
PRIVILEGED_GROUP = "system:masters"

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""  # why (allowed), or the RBAC errors met on the way (denied)


def _has(items: Any, value: str) -> bool:
    return isinstance(items, list) and ("*" in items or value in items)


def _resource_matches(rule: Obj, info: RequestInfo) -> bool:
    resources = rule.get("resources") or []
    for r in resources:
        if r == "*" or r == info.resource_path:
            return True
        if info.subresource and r == f"*/{info.subresource}":
            return True
    return False


def rule_allows(rule: Obj, info: RequestInfo) -> bool:
    """Whether one PolicyRule covers the request."""
    if not _has(rule.get("verbs"), info.verb):
        return False
    if not info.resource_request:
        for url in rule.get("nonResourceURLs") or []:
            if url in ("*", info.path):
                return True
            if url.endswith("*") and info.path.startswith(url[:-1]):
                return True
        return False
    if not _has(rule.get("apiGroups"), info.api_group) or not _resource_matches(rule, info):
        return False
    names = rule.get("resourceNames") or []
    return not names or info.name in names


def _subject_matches(subject: Obj, user: UserInfo, binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return user.name == name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user.name == f"system:serviceaccount:{namespace}:{name}"
    return False


def _describe_subject(subject: Obj, binding_namespace: str) -> str:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "ServiceAccount":
        return f'ServiceAccount "{name}/{subject.get("namespace") or binding_namespace}"'
    return f'{kind} "{name}"'


@dataclass(frozen=True)
class Grant:
    """The rules one binding gives one subject, and where they apply ('' = everywhere)."""

    namespace: str
    rules: tuple[Obj, ...]
    source: str  # 'ClusterRoleBinding "b" of ClusterRole "r" to User "u"'


class Rbac:
    def __init__(
        self,
        *,
        cluster_roles: Iterable[Obj] = (),
        roles: Iterable[Obj] = (),
        cluster_role_bindings: Iterable[Obj] = (),
        role_bindings: Iterable[Obj] = (),
    ) -> None:
        self._cluster_roles = {r["metadata"]["name"]: r for r in cluster_roles}
        self._roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in roles}
        self._crbs = sorted(cluster_role_bindings, key=lambda b: b["metadata"]["name"])
        self._rbs = sorted(
            role_bindings, key=lambda b: (b["metadata"]["namespace"], b["metadata"]["name"])
        )

    def _role_rules(self, ref: Obj, namespace: str) -> tuple[tuple[Obj, ...] | None, str]:
        kind, name = ref.get("kind"), ref.get("name")
        if kind == "ClusterRole":
            role = self._cluster_roles.get(name)
            what = f'clusterrole.{RBAC_GROUP} "{name}" not found'
        elif kind == "Role" and namespace:
            role = self._roles.get((namespace, name))
            what = f'role.{RBAC_GROUP} "{name}" not found'
        else:
            return None, f"unknown roleRef kind {kind!r}"
        if role is None:
            return None, what
        return tuple(r for r in role.get("rules") or [] if isinstance(r, Mapping)), ""

    def grants(self, user: UserInfo, namespace: str | None) -> tuple[list[Grant], list[str]]:
        """What applies to ``user``: cluster-wide grants, plus those of RoleBindings in
        ``namespace`` (all namespaces' when None); and the errors met (missing roles)."""
        out: list[Grant] = []
        problems: list[str] = []
        for binding in self._crbs:
            self._collect(binding, "", user, out, problems)
        for binding in self._rbs:
            ns = binding["metadata"]["namespace"]
            if namespace is None or ns == namespace:
                self._collect(binding, ns, user, out, problems)
        return out, problems

    def _collect(
        self, binding: Obj, ns: str, user: UserInfo, out: list[Grant], problems: list[str]
    ) -> None:
        for subject in binding.get("subjects") or []:
            if not isinstance(subject, Mapping) or not _subject_matches(subject, user, ns):
                continue
            ref = binding.get("roleRef") or {}
            rules, problem = self._role_rules(ref, ns)
            if rules is None:
                problems.append(problem)
                return
            kind = "RoleBinding" if ns else "ClusterRoleBinding"
            name = f"{binding['metadata']['name']}/{ns}" if ns else binding["metadata"]["name"]
            source = (
                f'{kind} "{name}" of {ref.get("kind")} "{ref.get("name")}" to '
                f"{_describe_subject(subject, ns)}"
            )
            out.append(Grant(ns, rules, source))
            return

    def authorize(self, user: UserInfo, info: RequestInfo) -> Decision:
        if PRIVILEGED_GROUP in user.groups:
            return Decision(True)
        grants, problems = self.grants(user, info.namespace if info.resource_request else "")
        for grant in grants:
            if grant.namespace and (not info.resource_request or grant.namespace != info.namespace):
                continue  # a RoleBinding grants nothing outside its namespace
            if any(rule_allows(rule, info) for rule in grant.rules):
                return Decision(True, f"RBAC: allowed by {grant.source}")
        if not problems:
            return Decision(False)
        # worded like Go's aggregated errors: one alone, several in brackets
        listed = problems[0] if len(problems) == 1 else f"[{', '.join(problems)}]"
        return Decision(False, f"RBAC: {listed}")


def forbidden_message(user: UserInfo, info: RequestInfo) -> str:
    """kube-apiserver's text for a refused request (without the "... is forbidden: " head)."""
    if not info.resource_request:
        return f'User "{user.name}" cannot {info.verb} path "{info.path}"'
    where = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
    return (
        f'User "{user.name}" cannot {info.verb} resource "{info.resource_path}" in API group '
        f'"{info.api_group}" {where}'
    )


def forbidden(user: UserInfo, info: RequestInfo, reason: str = "") -> errors.ApiError:
    """403 Forbidden with kube-apiserver's message, e.g. ``nodes "n1" is forbidden: User
    "system:serviceaccount:raven-system:raven-agent" cannot patch resource "nodes" in API group
    "" at the cluster scope``."""
    detail = forbidden_message(user, info)
    if reason:
        detail = f"{detail}: {reason}"
    if not info.resource_request:
        message = f"forbidden: {detail}"
    else:
        qualified = f"{info.resource}.{info.api_group}" if info.api_group else info.resource
        message = (
            f'{qualified} "{info.name}" is forbidden: {detail}'
            if info.name
            else f"{qualified} is forbidden: {detail}"
        )
    return errors.ApiError(
        403,
        "Forbidden",
        message,
        name=info.name if info.resource_request else None,
        group=info.api_group,
        kind=info.resource if info.resource_request else None,
    )


class RbacCache:
    """The current :class:`Rbac`, rebuilt from ``load`` only after :meth:`invalidate` (called
    on every write to a Role, ClusterRole or binding), so a request costs no store scan."""

    def __init__(self, load: Callable[[], Rbac]) -> None:
        self._load = load
        self._current: Rbac | None = None

    def invalidate(self, *_: object) -> None:
        self._current = None

    def get(self) -> Rbac:
        if self._current is None:
            self._current = self._load()
        return self._current
