"""A small structural check of custom resources against their CRD's openAPIV3Schema.

Covers what CRDs here use: ``type``, ``properties``, ``items``, ``required``, ``enum``,
``minimum``/``maximum``, ``minLength``/``maxLength``, ``nullable``. Unknown fields are accepted
(the real server prunes them; clients here never depend on that).
"""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def schema_problems(schema: dict[str, Any], value: Any, path: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if value is None:
        if not schema.get("nullable") and schema.get("type"):
            problems.append(
                (path, f'Invalid value: "null": {path} in body must be of type {schema["type"]}')
            )
        return problems
    typ = schema.get("type")
    if typ in _TYPES:
        ok = isinstance(value, _TYPES[typ]) and not (
            typ in ("integer", "number") and isinstance(value, bool)
        )
        if not ok and typ == "string" and schema.get("format") == "int-or-string":
            ok = isinstance(value, int)
        if schema.get("x-kubernetes-int-or-string") and isinstance(value, (int, str)):
            ok = True
        if not ok:
            found = type(value).__name__
            return [
                (path, f'Invalid value: "{found}": {path} in body must be of type {typ}: "{found}"')
            ]
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"])
        problems.append((path, f"Unsupported value: {value!r}: supported values: {allowed}"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(
                (
                    path,
                    f"Invalid value: {value}: {path} in body should be greater than or equal "
                    f"to {schema['minimum']}",
                )
            )
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(
                (
                    path,
                    f"Invalid value: {value}: {path} in body should be less than or equal "
                    f"to {schema['maximum']}",
                )
            )
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(
                (
                    path,
                    f"Invalid value: {value!r}: {path} in body should be at least "
                    f"{schema['minLength']} chars long",
                )
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(
                (path, f"Too long: {path} may not be longer than {schema['maxLength']}")
            )
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for req in schema.get("required") or []:
            if req not in value:
                problems.append((f"{path}.{req}", "Required value"))
        for key, sub in props.items():
            if key in value:
                problems += schema_problems(sub, value[key], f"{path}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                if key not in props:
                    problems += schema_problems(extra, item, f"{path}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += schema_problems(schema["items"], item, f"{path}[{i}]")
    return problems


def _prune(schema: dict[str, Any], value: Any, path: str, unknown: list[str]) -> None:
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _prune(schema["items"], item, f"{path}[{i}]", unknown)
        return
    if not isinstance(value, dict):
        return
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    for key in list(value):
        child = f"{path}.{key}" if path else key
        if key in props:
            _prune(props[key], value[key], child, unknown)
        elif isinstance(extra, dict):
            _prune(extra, value[key], child, unknown)
        elif not preserve and extra is not True:
            unknown.append(child)
            del value[key]


def prune(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Drop fields the structural schema does not declare, as kube-apiserver does for custom
    resources; returns their paths (for ``fieldValidation=Strict``). Metadata is never pruned."""
    unknown: list[str] = []
    keep: dict[str, Any] = {k: obj[k] for k in ("apiVersion", "kind", "metadata") if k in obj}
    rest = {k: v for k, v in obj.items() if k not in keep}
    _prune(schema, rest, "", unknown)
    obj.clear()
    obj.update(keep)
    obj.update(rest)
    return unknown
