"""Read what ``raven status`` and ``raven graph`` show: one list per kind, nothing watched.

Nodes and Gateways are required; Events, node Leases and the pools' Leases only add detail, so
a kind the caller may not list (RBAC) or an API server without it is left out with a note
instead of failing the command.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raven.kube import GATEWAYS, NODES, KubeClient, KubeError, Resource, Timeouts, load_config
from raven.kube.events import EVENTS
from raven.names import LEASE_POOL_LABEL, NODE_LEASE_NAMESPACE, POOL_LABEL
from raven.overview.cluster import Overview, overview

#: Leases in every namespace (the pools' Leases live in the agents' lease namespace).
ALL_LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
NODE_LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", NODE_LEASE_NAMESPACE)


@dataclass
class Objects:
    nodes: list[Any] = field(default_factory=list)
    gateways: list[Any] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    node_leases: list[Any] = field(default_factory=list)
    pool_leases: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be read, and why


async def read_objects(client: KubeClient) -> Objects:
    """Every object the overview reads, listed at once."""

    async def items(resource: Resource, **kw: Any) -> list[Any]:
        found = await client.list(resource, **kw)
        return list(found.get("items") or [])

    results = await asyncio.gather(
        items(NODES),
        items(GATEWAYS),
        items(EVENTS, field_selector="involvedObject.kind=Gateway"),
        items(NODE_LEASES),
        items(ALL_LEASES, label_selector=LEASE_POOL_LABEL),
        return_exceptions=True,
    )
    found: list[list[Any]] = []
    notes = []
    names = ("Nodes", "Gateways", "Events", "node Leases", "pool Leases")
    for index, (what, value) in enumerate(zip(names, results, strict=True)):
        if isinstance(value, KubeError) and index >= 2:  # detail only: say so and go on
            notes.append(f"cannot list {what}: {value}")
            value = []
        if isinstance(value, BaseException):
            raise value
        found.append(value)
    nodes, gateways, events, node_leases, pool_leases = found
    return Objects(nodes, gateways, events, node_leases, pool_leases, notes)


async def read_overview(
    kubeconfig: Path | None, *, pool_label: str = POOL_LABEL
) -> tuple[Overview, list[str]]:
    """The overview of the cluster ``kubeconfig`` names (else $KUBECONFIG, in-cluster,
    ~/.kube/config), and notes on what could not be read."""
    config = load_config(kubeconfig, timeouts=Timeouts(connect=5.0, read=15.0))
    async with KubeClient(config, user_agent="raven-status") as client:
        objects = await read_objects(client)
    return (
        overview(
            objects.nodes,
            objects.gateways,
            events=objects.events,
            node_leases=objects.node_leases,
            pool_leases=objects.pool_leases,
            pool_label=pool_label,
        ),
        objects.notes,
    )
