"""Defaults and validation of Roles, ClusterRoles and their bindings, as kube-apiserver applies
them (see :mod:`raven.lab.apiserver.kinds`)."""

from __future__ import annotations

from typing import Any

Problems = list[tuple[str, str]]
Obj = dict[str, Any]

RBAC_GROUP = "rbac.authorization.k8s.io"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def default_binding(obj: Obj) -> None:
    # A ServiceAccount subject's apiGroup defaults to "", which Go leaves out of the JSON.
    for subject in _list(obj.get("subjects")):
        if isinstance(subject, dict) and not subject.get("apiGroup"):
            if subject.get("kind") in ("User", "Group"):
                subject["apiGroup"] = RBAC_GROUP


def _rules(obj: Obj, *, namespaced: bool) -> Problems:
    problems: Problems = []
    for i, rule in enumerate(_list(obj.get("rules"))):
        at = f"rules[{i}]"
        if not isinstance(rule, dict):
            problems.append((at, "Invalid value: must be an object"))
            continue
        if not rule.get("verbs"):
            problems.append(
                (f"{at}.verbs", "Required value: verbs must contain at least one value")
            )
        if rule.get("nonResourceURLs"):
            if namespaced:
                problems.append(
                    (
                        f"{at}.nonResourceURLs",
                        "Invalid value: namespaced rules cannot apply to non-resource URLs",
                    )
                )
            if rule.get("apiGroups") or rule.get("resources"):
                problems.append(
                    (
                        f"{at}.nonResourceURLs",
                        "Invalid value: rules cannot apply to both regular "
                        "resources and non-resource URLs",
                    )
                )
            continue
        if not rule.get("apiGroups"):
            problems.append(
                (
                    f"{at}.apiGroups",
                    "Required value: resource rules must supply at least one api group",
                )
            )
        if not rule.get("resources"):
            problems.append(
                (
                    f"{at}.resources",
                    "Required value: resource rules must supply at least one resource",
                )
            )
    return problems


def role_problems(obj: Obj, old: Obj | None) -> Problems:
    return _rules(obj, namespaced=True)


def cluster_role_problems(obj: Obj, old: Obj | None) -> Problems:
    return _rules(obj, namespaced=False)


def binding_problems(obj: Obj, old: Obj | None, *, namespaced: bool) -> Problems:
    problems: Problems = []
    ref = obj.get("roleRef")
    if not isinstance(ref, dict):
        problems.append(("roleRef", "Required value"))
    else:
        if ref.get("apiGroup") != RBAC_GROUP:
            problems.append(
                (
                    "roleRef.apiGroup",
                    f'Unsupported value: {ref.get("apiGroup")!r}: supported values: "{RBAC_GROUP}"',
                )
            )
        kinds = ("ClusterRole", "Role") if namespaced else ("ClusterRole",)
        if ref.get("kind") not in kinds:
            allowed = ", ".join(f'"{k}"' for k in kinds)
            problems.append(
                (
                    "roleRef.kind",
                    f"Unsupported value: {ref.get('kind')!r}: supported values: {allowed}",
                )
            )
        if not ref.get("name"):
            problems.append(("roleRef.name", "Required value"))
    for i, subject in enumerate(_list(obj.get("subjects"))):
        at = f"subjects[{i}]"
        if not isinstance(subject, dict):
            problems.append((at, "Invalid value: must be an object"))
            continue
        kind, name = subject.get("kind"), subject.get("name")
        if not name:
            problems.append((f"{at}.name", "Required value"))
        if kind == "ServiceAccount":
            if subject.get("apiGroup"):
                problems.append(
                    (
                        f"{at}.apiGroup",
                        f'Unsupported value: {subject["apiGroup"]!r}: supported values: ""',
                    )
                )
            if not namespaced and not subject.get("namespace"):
                problems.append((f"{at}.namespace", "Required value"))
        elif kind in ("User", "Group"):
            if subject.get("apiGroup") != RBAC_GROUP:
                problems.append(
                    (
                        f"{at}.apiGroup",
                        f"Unsupported value: {subject.get('apiGroup')!r}: "
                        f'supported values: "{RBAC_GROUP}"',
                    )
                )
        else:
            problems.append(
                (
                    f"{at}.kind",
                    f'Unsupported value: {kind!r}: supported values: "Group", '
                    '"ServiceAccount", "User"',
                )
            )
    if old is not None and old.get("roleRef") != ref:
        problems.append(("roleRef", f"Invalid value: {ref!r}: cannot change roleRef"))
    return problems
