"""What the server does to an object on create and update, per kind (kube-apiserver "strategies").

- create: server-owned metadata (uid, creationTimestamp, generation=1); custom resources with a
  status subresource lose any status sent on create; namespaces start Active; CRDs get status.
- update of the main resource: server-owned metadata is kept; with a status subresource the old
  status is kept. Update of ``/status``: only the status is taken from the request.
- generation moves only when something other than metadata and status changes.
"""

from __future__ import annotations

import copy
import datetime as dt
import secrets
import uuid
from typing import Any

from raven.lab.apiserver import errors, kinds
from raven.lab.apiserver.resources import ResourceType
from raven.lab.apiserver.schema import prune, schema_problems
from raven.lab.apiserver.validation import crd_problems, metadata_problems

# Metadata the server owns: requests cannot set or change it.
_SERVER_OWNED = ("uid", "creationTimestamp", "generation", "resourceVersion", "selfLink")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_shape(rtype: ResourceType, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise errors.bad_request("the request body must be a JSON object")
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if kind is not None and kind != rtype.kind:
        raise errors.bad_request(
            f"the kind of the provided object ({kind}) does not match the resource ({rtype.kind})"
        )
    if api_version is not None and api_version != rtype.api_version:
        raise errors.bad_request(
            f"the API version of the provided object ({api_version}) does not match the request "
            f"({rtype.api_version})"
        )
    meta = obj.get("metadata")
    if meta is None:
        obj["metadata"] = {}
    elif not isinstance(meta, dict):
        raise errors.bad_request("metadata must be an object")
    obj["kind"], obj["apiVersion"] = rtype.kind, rtype.api_version
    return obj


def _prune(rtype: ResourceType, obj: dict[str, Any], *, strict: bool) -> None:
    if not (rtype.custom and rtype.schema):
        return
    unknown = prune(rtype.schema, obj)
    if unknown and strict:
        fields = ", ".join(f'unknown field "{u}"' for u in unknown)
        raise errors.bad_request(
            f'{rtype.kind} in version "{rtype.version}" cannot be handled as a {rtype.kind}: '
            f"strict decoding error: {fields}"
        )


def _validate(rtype: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
    problems = metadata_problems(rtype, obj["metadata"])
    if not rtype.custom:
        problems += kinds.problems(rtype.group, rtype.plural, obj, old)
    if rtype.plural == "customresourcedefinitions" and rtype.group == "apiextensions.k8s.io":
        problems += crd_problems(obj)
    if rtype.custom and rtype.schema:
        for part in ("spec", "status"):
            if part in obj:
                sub = (rtype.schema.get("properties") or {}).get(part)
                if sub:
                    problems += schema_problems(sub, obj[part], part)
    if problems:
        name = obj["metadata"].get("name") or ""
        raise errors.invalid(rtype.kind, rtype.group, name, problems)


def _set_namespace(rtype: ResourceType, obj: dict[str, Any], namespace: str) -> None:
    meta = obj["metadata"]
    if rtype.namespaced:
        given = meta.get("namespace")
        if given and given != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)


def crd_status(crd: dict[str, Any], old_status: dict[str, Any] | None) -> dict[str, Any]:
    spec = crd["spec"]
    names = dict(spec["names"])
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", names["kind"] + "List")
    stamp = now_rfc3339()
    if old_status and old_status.get("conditions"):
        conditions = old_status["conditions"]
    else:
        conditions = [
            {"type": t, "status": "True", "lastTransitionTime": stamp, "reason": r, "message": m}
            for t, r, m in (
                ("NamesAccepted", "NoConflicts", "no conflicts found"),
                ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            )
        ]
    stored = list((old_status or {}).get("storedVersions") or [])
    for version in spec["versions"]:
        if version.get("storage") and version["name"] not in stored:
            stored.append(version["name"])
    return {"acceptedNames": names, "conditions": conditions, "storedVersions": stored}


_NODE_INFO_FIELDS = (
    "machineID",
    "systemUUID",
    "bootID",
    "kernelVersion",
    "osImage",
    "containerRuntimeVersion",
    "kubeletVersion",
    "kubeProxyVersion",
    "operatingSystem",
    "architecture",
)


def _go_defaults(rtype: ResourceType, obj: dict[str, Any]) -> None:
    """Fields Go always serializes for built-ins; clients (the Python one) require them."""
    if rtype.custom or rtype.group or rtype.plural != "nodes":
        return
    status = obj.get("status")
    if not isinstance(status, dict):
        status = obj["status"] = {}
    info = status.get("nodeInfo")
    if not isinstance(info, dict):
        info = status["nodeInfo"] = {}
    for key in _NODE_INFO_FIELDS:
        if info.get(key) is None:
            info[key] = ""
    endpoints = status.setdefault("daemonEndpoints", {})
    if isinstance(endpoints, dict):
        endpoints.setdefault("kubeletEndpoint", {"Port": 0})


def _generate_name(prefix: str) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # what kube-apiserver uses: no vowels, no 0/1/3
    return prefix + "".join(secrets.choice(alphabet) for _ in range(5))


def prepare_create(
    rtype: ResourceType, body: Any, namespace: str, *, strict: bool = False
) -> dict[str, Any]:
    """``strict``: unknown fields of a custom resource are an error instead of dropped."""
    obj = _check_shape(rtype, copy.deepcopy(body))
    _prune(rtype, obj, strict=strict)
    meta = obj["metadata"]
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = _generate_name(str(meta["generateName"]))
    _set_namespace(rtype, obj, namespace)
    for key in _SERVER_OWNED + ("deletionTimestamp", "deletionGracePeriodSeconds"):
        meta.pop(key, None)
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = now_rfc3339()
    meta["generation"] = 1
    if rtype.status_subresource and (rtype.custom or rtype.plural in ("services", "daemonsets")):
        obj.pop("status", None)  # their status starts empty, whatever the request said
    if not rtype.custom:
        kinds.apply_defaults(rtype.group, rtype.plural, obj)
    if not rtype.custom and rtype.plural in ("nodes", "leases", "namespaces"):
        # Go structs always serialize spec (and node status), so clients may patch into them.
        obj.setdefault("spec", {})
        if rtype.plural == "nodes":
            obj.setdefault("status", {})
    if rtype.plural == "namespaces" and not rtype.group:
        obj["spec"].setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
    _go_defaults(rtype, obj)
    _validate(rtype, obj)
    if rtype.plural == "customresourcedefinitions" and rtype.group:
        obj["status"] = crd_status(obj, None)
    return obj


def _without(obj: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


def prepare_update(
    rtype: ResourceType,
    old: dict[str, Any],
    body: Any,
    *,
    subresource: str | None,
    strict: bool = False,
) -> dict[str, Any]:
    """The object to store for a PUT (or a patch result) over ``old``."""
    new = _check_shape(rtype, copy.deepcopy(body))
    _prune(rtype, new, strict=strict)
    meta, old_meta = new["metadata"], old["metadata"]
    if meta.get("name") not in (None, old_meta["name"]):
        raise errors.bad_request(
            f"the name of the object ({meta.get('name')}) does not match the name on the URL "
            f"({old_meta['name']})"
        )
    if rtype.namespaced and meta.get("namespace") not in (None, "", old_meta.get("namespace")):
        raise errors.bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    if subresource == "status":
        result = copy.deepcopy(old)
        if "status" in new:
            result["status"] = new["status"]
        else:
            result.pop("status", None)
        new = result
    else:
        if rtype.status_subresource:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        for key in _SERVER_OWNED + (
            "name",
            "namespace",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
    _go_defaults(rtype, new)
    if not rtype.custom and subresource != "status":
        kinds.apply_defaults(rtype.group, rtype.plural, new)
    ignored = ("metadata", "status") if rtype.status_subresource else ("metadata",)
    if _without(new, ignored) != _without(old, ignored):
        new["metadata"]["generation"] = int(old_meta.get("generation", 1)) + 1
    _validate(rtype, new, old)
    if rtype.plural == "customresourcedefinitions" and rtype.group:
        new["status"] = crd_status(new, old.get("status"))
    return new
