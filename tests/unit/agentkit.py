"""Building blocks for the agent's tests: a small cluster as Kubernetes JSON, with real key pairs.

Pools: ``cloud`` (the relay; c1 c2), ``edge-a`` (a1 a2 a3 on 192.168.1.0/24), ``edge-b`` (b1).
"""

from __future__ import annotations

from typing import Any

from gateway.keys import _generate, public_key_of
from raven.model import LocalAddress
from raven.names import (
    POOL_LABEL,
    PROBE_ANNOTATION,
    PUBLIC_KEY_ANNOTATION,
)

PRIVATE = {name: _generate() for name in ("c1", "c2", "a1", "a2", "a3", "b1", "r1")}
KEY = {name: public_key_of(private) for name, private in PRIVATE.items()}
IP = {"c1": "198.18.0.12", "c2": "198.18.0.13"}
IP |= {"a1": "192.168.1.11", "a2": "192.168.1.12", "a3": "192.168.1.13"}
IP |= {"b1": "192.168.2.21", "r1": "192.168.9.31"}
POOL = {"c1": "cloud", "c2": "cloud", "a1": "edge-a", "a2": "edge-a", "a3": "edge-a"}
POOL |= {"b1": "edge-b", "r1": "edge-a"}
CIDR = {"c1": "10.244.0.0/24", "c2": "10.244.1.0/24"}
CIDR |= {"a1": "10.244.10.0/24", "a2": "10.244.11.0/24", "a3": "10.244.12.0/24"}
CIDR |= {"b1": "10.244.20.0/24", "r1": "10.244.13.0/24"}
PREFIX = {"c1": 24, "c2": 24, "a1": 24, "a2": 24, "a3": 24, "b1": 24, "r1": 24}
#: The same cluster on loopback, where agents in one test process can exchange real beacons.
LOOPBACK = {"c1": "127.0.0.12", "c2": "127.0.0.13"}
LOOPBACK |= {"a1": "127.0.1.11", "a2": "127.0.1.12", "a3": "127.0.1.13", "b1": "127.0.2.21"}


def probe_address(name: str) -> str:
    return CIDR[name].rsplit(".", 1)[0] + ".1"


def node(
    name: str,
    *,
    pool: str | None = "",
    key: bool = True,
    probe: bool = True,
    ready: bool = True,
    labels: dict[str, str] | None = None,
    created: str = "2026-01-01T00:00:00Z",
    ip: str | None = None,
) -> dict[str, Any]:
    """A Node as the API returns it; ``pool=""`` means its usual pool, None no pool."""
    pool = POOL[name] if pool == "" else pool
    annotations = {}
    if key:
        annotations[PUBLIC_KEY_ANNOTATION] = KEY[name]
    if probe:
        annotations[PROBE_ANNOTATION] = probe_address(name)
    all_labels = {"kubernetes.io/hostname": name, **(labels or {})}
    if pool:
        all_labels[POOL_LABEL] = pool
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": all_labels,
            "annotations": annotations,
            "creationTimestamp": created,
            "resourceVersion": "1",
        },
        "spec": {"podCIDR": CIDR[name], "podCIDRs": [CIDR[name]]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip or IP[name]}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def gateway(pool: str, *, relay: bool = False, uid: str = "", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"relay": True} if relay else {}
    body.update(spec)
    return {
        "apiVersion": "raven.io/v1alpha1",
        "kind": "Gateway",
        "metadata": {"name": pool, "uid": uid or f"uid-{pool}", "generation": 1},
        "spec": body,
    }


def lease(pool: str, holder: str | None) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": f"raven-gw-{pool}", "namespace": "kube-system"},
        "spec": {"holderIdentity": holder or ""},
    }


def addresses(
    name: str, *, dev: str = "eth0", mtu: int = 1500, ip: str | None = None
) -> tuple[LocalAddress, ...]:
    """What the kernel of node ``name`` reports: its InternalIP on ``dev`` and its probe
    address (the CNI's first address in its pod CIDR) on the pod bridge."""
    return (
        LocalAddress(ip or IP[name], PREFIX[name], dev, mtu, 4),
        LocalAddress(probe_address(name), 32, "pod0", 1500, 4),
    )


def cluster(*names: str) -> dict[str, dict[str, Any]]:
    return {name: node(name) for name in names}


def without(objs: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in objs.items() if k not in names}
