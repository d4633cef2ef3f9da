"""A minimal OpenAPI v3 so ``kubectl apply`` validates without ``--validate=false``.

kubectl (1.27+) decides how to validate by looking, in /openapi/v3/<group-version>, for a PATCH
operation tagged with the object's group/version/kind that accepts the ``fieldValidation`` query
parameter. When it finds one it leaves validation to the server and skips client-side schema
checks; this module publishes exactly that for every served kind (plus the CRD schemas).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from raven.lab.apiserver.resources import Registry, ResourceType

_QUERY = ("dryRun", "fieldManager", "fieldValidation", "force")


def _path(t: ResourceType) -> str:
    prefix = f"/apis/{t.group}/{t.version}" if t.group else f"/api/{t.version}"
    ns = "/namespaces/{namespace}" if t.namespaced else ""
    return f"{prefix}{ns}/{t.plural}/{{name}}"


def gv_key(t: ResourceType) -> str:
    return f"apis/{t.group}/{t.version}" if t.group else f"api/{t.version}"


def _schema_name(t: ResourceType) -> str:
    group = ".".join(reversed(t.group.split("."))) if t.group else "io.k8s.api.core"
    return f"{group}.{t.version}.{t.kind}"


def gv_document(registry: Registry, key: str) -> dict[str, Any] | None:
    types = [t for t in registry.all() if gv_key(t) == key]
    if not types:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for t in types:
        gvk = {"group": t.group, "version": t.version, "kind": t.kind}
        ref = {"$ref": f"#/components/schemas/{_schema_name(t)}"}
        # Strategic merge patch is deliberately not advertised: kubectl would then compute
        # apply patches from these (schema-less) documents; without it, it uses its built-in
        # knowledge of the kinds, which is what we want.
        body = {
            "content": {
                m: {"schema": {"type": "object"}}
                for m in (
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/apply-patch+yaml",
                )
            }
        }
        paths[_path(t)] = {
            "get": {
                "operationId": f"read{t.kind}",
                "x-kubernetes-action": "get",
                "x-kubernetes-group-version-kind": gvk,
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": ref}}}
                },
            },
            "patch": {
                "operationId": f"patch{t.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    {"name": q, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
                    for q in _QUERY
                ],
                "requestBody": body,
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": ref}}}
                },
            },
        }
        schema: dict[str, Any] = dict(t.schema) if t.schema else {"type": "object"}
        schema["x-kubernetes-group-version-kind"] = [gvk]
        schemas[_schema_name(t)] = schema
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _digest(doc: dict[str, Any]) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:64].upper()


def root(registry: Registry) -> dict[str, Any]:
    keys = sorted({gv_key(t) for t in registry.all()})
    paths = {}
    for key in keys:
        doc = gv_document(registry, key)
        assert doc is not None
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={_digest(doc)}"}
    return {"paths": paths}
