"""``meta.k8s.io/v1 Table`` rendering, which ``kubectl get`` asks for and prints as-is.

Custom resources get Name plus their CRD's additionalPrinterColumns (simple JSONPaths such as
``.status.activeNode``); built-ins get the columns kubectl users know. ``date`` columns are sent
as an age ("5m"), which is what kube-apiserver sends for them too.
"""

from __future__ import annotations

import json
import re
from typing import Any

from raven.lab.apiserver import printers
from raven.lab.apiserver.durations import age
from raven.lab.apiserver.resources import ResourceType

_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "priority": 0,
    "description": "Name must be unique within a namespace. More info: "
    "http://kubernetes.io/docs/user-guide/identifiers#names",
}


_PATH_PART = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


def jsonpath(obj: Any, path: str) -> tuple[bool, Any]:
    """Evaluate a simple JSONPath (``.a.b``, ``.a[0]``, ``.a['b.c']``); (found, value)."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    pos, cur = 0, obj
    while pos < len(path):
        m = _PATH_PART.match(path, pos)
        if not m:
            return False, None
        pos = m.end()
        if m.group(2) is not None:
            idx = int(m.group(2))
            if not isinstance(cur, list) or idx >= len(cur):
                return False, None
            cur = cur[idx]
        else:
            key = next(g for g in (m.group(1), m.group(3), m.group(4)) if g is not None)
            if not isinstance(cur, dict) or key not in cur:
                return False, None
            cur = cur[key]
    return True, cur


def _cell(col_type: str, value: Any) -> Any:
    if col_type == "date":
        return age(value)
    if col_type == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        return json.dumps(value, separators=(",", ":"))
    if col_type == "integer":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if col_type == "number":
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if col_type == "boolean":
        return value if isinstance(value, bool) else None
    return value


def _col(
    name: str, typ: str = "string", description: str = "", priority: int = 0, fmt: str = ""
) -> dict[str, Any]:
    return {
        "name": name,
        "type": typ,
        "format": fmt,
        "description": description,
        "priority": priority,
    }


def _node_status(node: dict[str, Any]) -> str:
    ready = "Unknown"
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = "Ready" if cond.get("status") == "True" else "NotReady"
    if (node.get("spec") or {}).get("unschedulable"):
        ready += ",SchedulingDisabled"
    return ready


def _node_roles(node: dict[str, Any]) -> str:
    roles = set()
    for key, value in ((node.get("metadata") or {}).get("labels") or {}).items():
        if key.startswith("node-role.kubernetes.io/"):
            roles.add(key.split("/", 1)[1])
        elif key == "kubernetes.io/role":
            roles.add(value)
    return ",".join(sorted(r for r in roles if r)) or "<none>"


def _node_address(node: dict[str, Any], kind: str) -> str:
    for addr in (node.get("status") or {}).get("addresses") or []:
        if addr.get("type") == kind:
            return str(addr.get("address"))
    return "<none>"


def _builtin(rtype: ResourceType) -> tuple[list[dict[str, Any]], Any] | None:
    meta_age = lambda o: age((o.get("metadata") or {}).get("creationTimestamp"))  # noqa: E731
    if rtype.plural == "nodes":
        info = lambda o: (o.get("status") or {}).get("nodeInfo") or {}  # noqa: E731
        cols = [
            _col("Status", description="The status of the node"),
            _col("Roles", description="The roles of the node"),
            _col("Age", description="CreationTimestamp"),
            _col("Version", description="Kubelet Version reported by the node."),
            _col("Internal-IP", priority=1, description="List of addresses reachable to the node."),
            _col("External-IP", priority=1, description="List of addresses reachable to the node."),
            _col("OS-Image", priority=1, description="OS Image reported by the node."),
            _col("Kernel-Version", priority=1, description="Kernel Version reported by the node."),
            _col("Container-Runtime", priority=1, description="Container Runtime Version."),
        ]
        return cols, lambda o: [
            _node_status(o),
            _node_roles(o),
            meta_age(o),
            info(o).get("kubeletVersion", ""),
            _node_address(o, "InternalIP"),
            _node_address(o, "ExternalIP"),
            info(o).get("osImage") or "<unknown>",
            info(o).get("kernelVersion") or "<unknown>",
            info(o).get("containerRuntimeVersion") or "<unknown>",
        ]
    if rtype.plural == "namespaces" and not rtype.group:
        cols = [_col("Status", description="The status of the namespace"), _col("Age")]
        return cols, lambda o: [(o.get("status") or {}).get("phase", ""), meta_age(o)]
    if rtype.plural == "leases":
        cols = [_col("Holder", description="The holder of the lease"), _col("Age")]
        return cols, lambda o: [(o.get("spec") or {}).get("holderIdentity") or "", meta_age(o)]
    if rtype.plural == "events" and not rtype.group:

        def event_cells(o: dict[str, Any]) -> list[Any]:
            inv = o.get("involvedObject") or {}
            last = (
                o.get("lastTimestamp")
                or o.get("eventTime")
                or (o.get("metadata") or {}).get("creationTimestamp")
            )
            return [
                age(last),
                o.get("type", ""),
                o.get("reason", ""),
                f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}",
                o.get("message", ""),
            ]

        cols = [_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")]
        return cols, event_cells
    if rtype.plural == "customresourcedefinitions":
        cols = [_col("Created At", typ="date")]
        return cols, lambda o: [(o.get("metadata") or {}).get("creationTimestamp", "")]
    found = printers.PRINTERS.get((rtype.group, rtype.plural))
    if found is not None:
        specs, fn = found
        return [_col(name, typ, desc, prio) for name, typ, prio, desc in specs], fn
    return None


def columns_and_cells(rtype: ResourceType) -> tuple[list[dict[str, Any]], Any]:
    """Column definitions (Name first) and a function object -> cells."""
    if rtype.custom and rtype.printer_columns:
        cols = [dict(_NAME_COLUMN)]
        specs = list(rtype.printer_columns)
        for spec in specs:
            cols.append(
                _col(
                    spec["name"],
                    spec.get("type", "string"),
                    spec.get("description", ""),
                    int(spec.get("priority", 0)),
                    spec.get("format", ""),
                )
            )

        def cells(o: dict[str, Any]) -> list[Any]:
            out: list[Any] = [o["metadata"]["name"]]
            for spec in specs:
                found, value = jsonpath(o, spec["jsonPath"])
                out.append(
                    _cell(spec.get("type", "string"), value)
                    if found and value is not None
                    else None
                )
            return out

        return cols, cells
    builtin = _builtin(rtype)
    if builtin is not None:
        cols, fn = builtin
        return [dict(_NAME_COLUMN)] + cols, lambda o: [o["metadata"]["name"]] + fn(o)
    cols = [dict(_NAME_COLUMN), _col("Age", typ="date", description="CreationTimestamp")]
    return cols, lambda o: [
        o["metadata"]["name"],
        age((o.get("metadata") or {}).get("creationTimestamp")),
    ]


def _row_object(obj: dict[str, Any], include: str, table_version: str) -> dict[str, Any] | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"meta.k8s.io/{table_version}",
        "metadata": obj.get("metadata", {}),
    }


def to_table(
    rtype: ResourceType,
    objects: list[dict[str, Any]],
    *,
    resource_version: str | None = None,
    continue_token: str | None = None,
    include_object: str = "Metadata",
    table_version: str = "v1",
    with_columns: bool = True,
) -> dict[str, Any]:
    cols, cells = columns_and_cells(rtype)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": cells(obj)}
        ro = _row_object(obj, include_object, table_version)
        if ro is not None:
            row["object"] = ro
        rows.append(row)
    meta: dict[str, Any] = {}
    if resource_version:
        meta["resourceVersion"] = resource_version
    if continue_token:
        meta["continue"] = continue_token
    table: dict[str, Any] = {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{table_version}",
        "metadata": meta,
        "columnDefinitions": cols if with_columns else [],
        "rows": rows,
    }
    return table
