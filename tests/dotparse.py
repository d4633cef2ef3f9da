"""Read back the DOT ``raven graph`` prints (one statement per line) for the tests: nodes with
the cluster they are drawn in, edges, and the clusters' own attributes."""

from __future__ import annotations

import re
from typing import Any

_NODE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" \[(.*)\];$')
_EDGE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)" \[(.*)\];$')
_CLUSTER = re.compile(r'^\s*subgraph "cluster_((?:[^"\\]|\\.)*)" \{$')
_DEFAULTS = re.compile(r"^\s*(graph|node|edge) \[(.*)\];$")
_ATTR = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def parse_dot(text: str) -> dict[str, Any]:
    """Nodes (name -> attributes, with the cluster they are drawn in), edges ((tail, head) ->
    attributes) and clusters (name -> graph attributes) of our one-statement-per-line DOT."""
    nodes: dict[str, dict[str, str]] = {}
    edges: dict[tuple[str, str], dict[str, str]] = {}
    clusters: dict[str, dict[str, str]] = {}
    cluster: str | None = None
    lines = text.splitlines()
    assert lines[0] == "digraph raven {" and lines[-1] == "}"
    for line in lines[1:-1]:
        if m := _CLUSTER.match(line):
            cluster = _unescape(m.group(1))
            continue
        if line.strip() == "}":
            cluster = None
            continue
        if m := _EDGE.match(line):
            key = (_unescape(m.group(1)), _unescape(m.group(2)))
            assert key not in edges, f"edge {key} twice"
            edges[key] = {k: _unescape(v) for k, v in _ATTR.findall(m.group(3))}
            continue
        if m := _DEFAULTS.match(line):
            if m.group(1) == "graph" and cluster is not None:
                clusters[cluster] = {k: _unescape(v) for k, v in _ATTR.findall(m.group(2))}
            continue
        if m := _NODE.match(line):
            attrs = {k: _unescape(v) for k, v in _ATTR.findall(m.group(2))}
            nodes[_unescape(m.group(1))] = attrs | {"cluster": cluster or ""}
            continue
        raise AssertionError(f"unexpected DOT line: {line!r}")
    return {"nodes": nodes, "edges": edges, "clusters": clusters}
