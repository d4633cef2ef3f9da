"""A small cluster as the agents leave it, for ``raven status`` and ``raven graph`` tests.

Pools: ``cloud`` (the relay; cloud-1 active, cloud-2), ``edge-a`` (edge-a-1 active after a
failover from edge-a-2, whose heartbeat is delegated through edge-a-1; edge-a-3), ``edge-b``
(edge-b-1 active, its tunnel down), ``edge-c`` (no node can be its gateway: no status), and
``lonely``, a node in no pool. Gateway status has the exact shape ``gateway.status.build``
writes; :func:`populate` puts it all into an API server.
"""

from __future__ import annotations

from typing import Any

from raven.kube import GATEWAYS, NODES, KubeClient, Resource
from raven.kube.events import EVENTS
from raven.lab.testing.kube import install_crds
from raven.names import (
    DELEGATE_HEARTBEAT_ANNOTATION,
    HEARTBEAT_VIA_ANNOTATION,
    LEASE_POOL_LABEL,
    NODE_LEASE_NAMESPACE,
    POOL_LABEL,
    PUBLIC_KEY_ANNOTATION,
)

POOLS = {
    "cloud": ("cloud-1", "cloud-2"),
    "edge-a": ("edge-a-1", "edge-a-2", "edge-a-3"),
    "edge-b": ("edge-b-1",),
    "edge-c": ("edge-c-1",),
}
NAMES = [n for names in POOLS.values() for n in names]
IP = {
    n: f"198.18.0.{11 + i}" if n.startswith("cloud") else f"192.168.{i}.11"
    for i, n in enumerate(NAMES)
}
IP["lonely"] = "192.168.99.9"
KEY = {n: f"{n.upper():_<43}=" for n in NAMES}
SUBNET = {n: f"10.244.{i}.0/24" for i, n in enumerate(NAMES)}
ACTIVE = {"cloud": "cloud-1", "edge-a": "edge-a-1", "edge-b": "edge-b-1"}
LEASE_NAMESPACE = "raven-system"


def node(name: str, pool: str | None, *, ready: bool = True) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name} | ({POOL_LABEL: pool} if pool else {})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {PUBLIC_KEY_ANNOTATION: KEY.get(name, "")},
        },
        "spec": {"podCIDR": SUBNET.get(name, "10.244.99.0/24")},
        "status": {
            "addresses": [{"type": "InternalIP", "address": IP[name]}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": 1,
        "lastTransitionTime": "2026-03-01T10:00:00Z",
    }


def peer(
    name: str, *, up: bool, rtt: float | None, loss: float | None, allowed: list[str]
) -> dict[str, Any]:
    pool = next(p for p, names in POOLS.items() if name in names)
    return {
        "node": name,
        "pool": pool,
        "publicKey": KEY[name],
        "endpoint": f"{IP[name]}:51820",
        "allowedIPs": allowed,
        "state": "Up" if up else "Down",
        "lastHandshake": "2026-03-01T10:04:55Z" if up else "2026-03-01T09:00:00Z",
        "rttMs": rtt,
        "lossPercent": loss,
    }


def status(pool: str, peers: list[dict[str, Any]]) -> dict[str, Any]:
    active = ACTIVE[pool]
    rtts = [p["rttMs"] for p in peers if p["rttMs"] is not None]
    return {
        "activeNode": active,
        "endpoint": f"{IP[active]}:51820",
        "publicKey": KEY[active],
        "subnets": [SUBNET[n] for n in POOLS[pool]],
        "nodes": list(POOLS[pool]),
        "observedGeneration": 1,
        "conditions": [
            condition("SpecValid", True, "Valid", "spec is valid"),
            condition("GatewayElected", True, "Elected", f"{active} holds the pool's lease"),
        ],
        "peers": peers,
        "peersReady": f"{sum(p['state'] == 'Up' for p in peers)}/{len(peers)}",
        "rtt": f"{max(rtts):.1f}ms" if rtts else "",
        "probeWindowSeconds": 10,
    }


STATUS = {
    "cloud": status(
        "cloud",
        [
            peer(
                "edge-a-1",
                up=True,
                rtt=12.5,
                loss=0.0,
                allowed=[SUBNET[n] for n in POOLS["edge-a"]],
            ),
            peer("edge-b-1", up=False, rtt=None, loss=100.0, allowed=[SUBNET["edge-b-1"]]),
        ],
    ),
    "edge-a": status(
        "edge-a", [peer("cloud-1", up=True, rtt=12.25, loss=10.0, allowed=["10.244.0.0/23"])]
    ),
    "edge-b": status(
        "edge-b", [peer("cloud-1", up=True, rtt=None, loss=None, allowed=["10.244.0.0/23"])]
    ),
}
EDGE_C_STATUS = {
    "activeNode": "",
    "endpoint": "",
    "publicKey": "",
    "subnets": [SUBNET["edge-c-1"]],
    "nodes": ["edge-c-1"],
    "conditions": [
        condition("GatewayElected", False, "NoCandidate", "no node of the pool can be gateway")
    ],
}

#: (pool, reason, type, message, time, reporting node), as the agents record them.
EVENTS_RECORDED = [
    (
        "edge-a",
        "GatewayElected",
        "Normal",
        "edge-a-2 is now the active gateway of pool edge-a",
        "2026-03-01T09:00:00Z",
        "edge-a-2",
    ),
    (
        "edge-a",
        "GatewayStepDown",
        "Warning",
        "the tunnel to the relay answered none of the last 3 probes",
        "2026-03-01T10:00:00Z",
        "edge-a-2",
    ),
    (
        "edge-a",
        "GatewayFailover",
        "Normal",
        "edge-a-1 took over pool edge-a from edge-a-2",
        "2026-03-01T10:00:01Z",
        "edge-a-1",
    ),
    (
        "cloud",
        "GatewayElected",
        "Normal",
        "cloud-1 is now the active gateway of pool cloud",
        "2026-03-01T08:00:00Z",
        "cloud-1",
    ),
    (
        "edge-b",
        "GatewayStepDown",
        "Warning",
        "an old step-down, before the last election",
        "2026-03-01T07:00:00Z",
        "edge-b-1",
    ),
    (
        "edge-b",
        "GatewayElected",
        "Normal",
        "edge-b-1 is now the active gateway of pool edge-b",
        "2026-03-01T08:00:00Z",
        "edge-b-1",
    ),
]


async def populate(kube: KubeClient) -> dict[str, str]:
    """Create the whole cluster; returns each Gateway's uid."""
    await install_crds(kube)
    for pool, names in POOLS.items():
        for name in names:
            await _node(kube, node(name, pool))
    await _node(kube, node("lonely", None))
    uids = {}
    for pool in POOLS:
        spec = {"relay": True} if pool == "cloud" else {}
        gw = await kube.create(
            GATEWAYS,
            {
                "apiVersion": "raven.io/v1alpha1",
                "kind": "Gateway",
                "metadata": {"name": pool},
                "spec": spec,
            },
        )
        uids[pool] = gw["metadata"]["uid"]
        body = STATUS.get(pool, EDGE_C_STATUS)
        await kube.merge_patch(GATEWAYS, pool, {"status": body}, subresource="status")
    for i, (pool, reason, type_, message, at, host) in enumerate(EVENTS_RECORDED):
        await kube.create(
            EVENTS,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{pool}.{i:04x}", "namespace": "default"},
                "involvedObject": {
                    "apiVersion": "raven.io/v1alpha1",
                    "kind": "Gateway",
                    "name": pool,
                    "uid": uids[pool],
                },
                "type": type_,
                "reason": reason,
                "message": message,
                "source": {"component": "raven-agent", "host": host},
                "firstTimestamp": at,
                "lastTimestamp": at,
                "count": 1,
            },
        )
    node_leases = Resource("coordination.k8s.io", "v1", "leases", "Lease", NODE_LEASE_NAMESPACE)
    for name in NAMES:
        annotations = {}
        if name == "edge-a-2":
            annotations = {
                DELEGATE_HEARTBEAT_ANNOTATION: "true",
                HEARTBEAT_VIA_ANNOTATION: "edge-a-1",
            }
        await kube.create(
            node_leases,
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": NODE_LEASE_NAMESPACE,
                    "annotations": annotations,
                },
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40},
            },
        )
    namespaces = Resource("", "v1", "namespaces", "Namespace")
    await kube.create(
        namespaces, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LEASE_NAMESPACE}}
    )
    pool_leases = Resource("coordination.k8s.io", "v1", "leases", "Lease", LEASE_NAMESPACE)
    for pool, holder in ACTIVE.items():
        await kube.create(
            pool_leases,
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": f"raven-gw-{pool}",
                    "namespace": LEASE_NAMESPACE,
                    "labels": {LEASE_POOL_LABEL: pool},
                },
                "spec": {"holderIdentity": holder},
            },
        )
    return uids


async def _node(kube: KubeClient, body: dict[str, Any]) -> None:
    status = body.pop("status")
    await kube.create(NODES, body)
    await kube.merge_patch(
        NODES, body["metadata"]["name"], {"status": status}, subresource="status"
    )
