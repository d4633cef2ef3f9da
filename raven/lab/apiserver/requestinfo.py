"""What a request asks to do, in the terms authorization and the audit log use.

:func:`request_info` reads the method, path and query the way kube-apiserver's RequestInfoFactory
does: ``/api/v1/...`` and ``/apis/<group>/<version>/...`` are resource requests, anything else a
non-resource request (``/healthz``, ``/version``, ``/openapi/v3``). The verb is the API verb
(``get``, ``list``, ``watch``, ``create``, ``update``, ``patch``, ``delete``,
``deletecollection``) for resources and the lower-cased HTTP method for the rest.

Two details kube-apiserver has and RBAC depends on: a namespace's own path
(``/api/v1/namespaces/NAME``) carries NAME as the request's namespace as well as its name, and a
list or watch with ``fieldSelector=metadata.name=X`` is a request for the object named X (so a
rule with ``resourceNames`` can allow it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Subresources of a namespace, as opposed to resources inside it.
_NAMESPACE_SUBRESOURCES = ("status", "finalize")


@dataclass(frozen=True)
class RequestInfo:
    verb: str
    path: str
    resource_request: bool = False
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""

    @property
    def resource_path(self) -> str:
        """``resource`` or ``resource/subresource``, as RBAC rules name it."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def _truthy(value: str | None) -> bool:
    return value in ("true", "1", "True")


def _name_from_field_selector(selector: str | None) -> str:
    for term in (selector or "").split(","):
        key, op, value = term.partition("==") if "==" in term else term.partition("=")
        if op and key.strip() == "metadata.name":
            return value.strip()
    return ""


def request_info(method: str, path: str, query: Mapping[str, str]) -> RequestInfo:
    """The attributes of one HTTP request (``query`` holds single values per key)."""
    clean = "/" + path.strip("/")
    parts = [p for p in clean.split("/") if p]
    method = method.upper()
    non_resource = RequestInfo(verb=method.lower(), path=clean)
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return non_resource  # /api, /apis, /apis/<group>, /version, /healthz, /openapi/...
    if not rest:
        return non_resource  # discovery of one group/version
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if method == "GET":
        if name:
            verb = "get"
        else:
            verb = "watch" if _truthy(query.get("watch")) else "list"
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = method.lower()
    if verb in ("list", "watch") and not name:
        name = _name_from_field_selector(query.get("fieldSelector"))
    return RequestInfo(
        verb=verb,
        path=clean,
        resource_request=True,
        api_group=group,
        api_version=version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
    )
