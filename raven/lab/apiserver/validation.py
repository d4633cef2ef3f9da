"""Checks on incoming objects; each returns (field path, problem) pairs for a 422 Invalid."""

from __future__ import annotations

import re
from typing import Any

from raven.lab.apiserver.resources import ResourceType

Problems = list[tuple[str, str]]

BUILTIN_GROUPS = (
    "apiextensions.k8s.io",
    "apps",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "meta.k8s.io",
    "rbac.authorization.k8s.io",
    "scheduling.k8s.io",
)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def dns_subdomain(value: str) -> str | None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        return (
            f"Invalid value: {value!r}: a lowercase RFC 1123 subdomain must consist of lower case "
            "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
            "character"
        )
    return None


def dns_label(value: str) -> str | None:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        return (
            f"Invalid value: {value!r}: a lowercase RFC 1123 label must consist of lower case "
            "alphanumeric characters or '-', and must start and end with an alphanumeric character"
        )
    return None


def qualified_key(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and dns_subdomain(prefix):
        return f"Invalid value: {key!r}: prefix part must be a DNS subdomain"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return (
            f"Invalid value: {key!r}: name part must consist of alphanumeric characters, '-', '_' "
            "or '.', and must start and end with an alphanumeric character (at most 63)"
        )
    return None


def path_segment(value: str) -> str | None:
    """RBAC objects may have any name that is one URL path segment (``system:discovery``)."""
    if value in (".", "..") or "/" in value or "%" in value:
        return f"Invalid value: {value!r}: may not be '.' or '..' and may not contain '/' or '%'"
    return None


def metadata_problems(rtype: ResourceType, meta: dict[str, Any]) -> Problems:
    problems: Problems = []
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        problems.append(("metadata.name", "Required value: name or generateName is required"))
    else:
        if rtype.plural == "namespaces":
            check = dns_label
        elif rtype.group == "rbac.authorization.k8s.io" and not rtype.custom:
            check = path_segment
        else:
            check = dns_subdomain
        if (msg := check(name)) is not None:
            problems.append(("metadata.name", msg))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        problems.append(("metadata.labels", "Invalid value: must be a map of strings"))
    else:
        for key, value in labels.items():
            if (msg := qualified_key(key)) is not None:
                problems.append(("metadata.labels", msg))
            if not isinstance(value, str):
                problems.append((f"metadata.labels.{key}", "Invalid value: must be a string"))
            elif len(value) > 63 or not _LABEL_VALUE.match(value):
                problems.append(
                    (
                        "metadata.labels",
                        f"Invalid value: {value!r}: a valid label must be an empty string or "
                        "consist of alphanumeric characters, '-', '_' or '.', and must start and "
                        "end with an alphanumeric character (at most 63)",
                    )
                )
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        problems.append(("metadata.annotations", "Invalid value: must be a map of strings"))
    else:
        for key, value in annotations.items():
            if (msg := qualified_key(key)) is not None:
                problems.append(("metadata.annotations", msg))
            if not isinstance(value, str):
                problems.append((f"metadata.annotations.{key}", "Invalid value: must be a string"))
    return problems


def crd_problems(crd: dict[str, Any]) -> Problems:
    """What kube-apiserver would refuse in a CustomResourceDefinition we rely on."""
    problems: Problems = []
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        return [("spec", "Required value")]
    group = spec.get("group")
    names = spec.get("names") or {}
    if not isinstance(group, str) or not group or dns_subdomain(group) or "." not in group:
        problems.append(
            ("spec.group", f"Invalid value: {group!r}: should be a domain with at least one dot")
        )
    if group in BUILTIN_GROUPS:
        problems.append(
            ("spec.group", f"Invalid value: {group!r}: served by the API server itself")
        )
    plural = names.get("plural")
    if not isinstance(plural, str) or dns_label(plural):
        problems.append(("spec.names.plural", f"Invalid value: {plural!r}"))
    kind = names.get("kind")
    if not isinstance(kind, str) or not re.match(r"^[A-Za-z][A-Za-z0-9]*$", kind or ""):
        problems.append(("spec.names.kind", f"Invalid value: {kind!r}"))
    if plural and group and crd.get("metadata", {}).get("name") != f"{plural}.{group}":
        problems.append(
            (
                "metadata.name",
                f'Invalid value: must be spec.names.plural+"."+spec.group ({plural}.{group})',
            )
        )
    if spec.get("scope") not in ("Cluster", "Namespaced"):
        problems.append(
            (
                "spec.scope",
                f"Unsupported value: {spec.get('scope')!r}: supported values: "
                '"Cluster", "Namespaced"',
            )
        )
    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        problems.append(
            (
                "spec.versions",
                "Invalid value: must have exactly one version marked as storage version",
            )
        )
        return problems
    storage = [v for v in versions if isinstance(v, dict) and v.get("storage")]
    if len(storage) != 1:
        problems.append(
            (
                "spec.versions",
                "Invalid value: must have exactly one version marked as storage version",
            )
        )
    for i, version in enumerate(versions):
        if not isinstance(version, dict) or not isinstance(version.get("name"), str):
            problems.append((f"spec.versions[{i}].name", "Required value"))
            continue
        for j, col in enumerate(version.get("additionalPrinterColumns") or []):
            where = f"spec.versions[{i}].additionalPrinterColumns[{j}]"
            if not col.get("name"):
                problems.append((f"{where}.name", "Required value"))
            if col.get("type") not in ("string", "integer", "number", "boolean", "date"):
                problems.append((f"{where}.type", f"Unsupported value: {col.get('type')!r}"))
            if not str(col.get("jsonPath", "")).startswith("."):
                problems.append(
                    (
                        f"{where}.jsonPath",
                        f"Invalid value: {col.get('jsonPath')!r}: must be a simple json path "
                        "starting with .",
                    )
                )
    return problems
