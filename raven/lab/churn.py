"""A churn of Services and their EndpointSlices: created, scaled and deleted at a set rate.

What a busy cluster's control plane sends every node: Deployments scale (an EndpointSlice gains
or loses an endpoint), Services come and go (a Service and its slice are created or deleted).
:class:`ChurnPlan` decides the operations (pure, deterministic for a seed: the same seed gives
the same operations, names and addresses); :func:`run` writes them with the admin's credentials
at ``rate`` operations a second and returns every write with the time it was sent and the
resourceVersion the API server gave it, which the benchmark matches with what each node's
components received.

The objects are what the EndpointSlice controller would write: one slice per Service named
``<service>-<5 letters>``, labelled ``kubernetes.io/service-name`` and
``endpointslice.kubernetes.io/managed-by``, owned by its Service; a headless Service's slice
also carries ``service.kubernetes.io/headless`` (kube-proxy does not watch those). Addresses
come from 10.244.128.0/17, clear of the lab's pod CIDRs; nothing routes to them.

``raven lab churn --rate R --services N [--seconds S] [--seed X]`` runs it against a lab.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raven.kube.client import KubeClient
from raven.kube.errors import Conflict, NotFound
from raven.kube.resources import Resource

NAMESPACE = "churn"
SERVICE_LABEL = "kubernetes.io/service-name"
MANAGED_BY = ("endpointslice.kubernetes.io/managed-by", "endpointslice-controller.k8s.io")
HEADLESS_LABEL = "service.kubernetes.io/headless"
ADDRESSES = ipaddress.ip_network("10.244.128.0/17")
TARGET_PORT = 8080
_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"  # what kube-apiserver's generateName draws from

CREATE, SCALE, DELETE = "create", "scale", "delete"


@dataclass(frozen=True)
class Op:
    """One operation: a Service with its slice created, its slice rewritten, or both deleted."""

    kind: str
    service: str
    slice: str
    addresses: tuple[str, ...] = ()
    headless: bool = False


@dataclass
class ChurnPlan:
    """The operations of a churn around ``services`` Services (pure).

    Each step scales a slice by one endpoint (most often), or creates or deletes a Service,
    keeping the count within ``services`` ± 20 %; a slice holds 0 to ``max_endpoints``
    endpoints; ``headless`` of the Services are headless.
    """

    services: int
    seed: int = 1
    max_endpoints: int = 8
    headless: float = 0.1
    scale_share: float = 0.8
    _rng: random.Random = field(init=False, repr=False)
    _live: dict[str, Op] = field(init=False, repr=False, default_factory=dict)
    _made: int = field(init=False, repr=False, default=0)
    _next_address: int = field(init=False, repr=False, default=1)

    def __post_init__(self) -> None:
        if self.services < 1:
            raise ValueError("a churn needs at least one Service")
        self._rng = random.Random(self.seed)

    def _address(self) -> str:
        self._next_address += 1
        return str(ADDRESSES.network_address + self._next_address % (ADDRESSES.num_addresses - 2))

    def _create(self) -> Op:
        self._made += 1
        name = f"svc-{self._made:05d}"
        suffix = "".join(self._rng.choice(_SUFFIX) for _ in range(5))
        count = self._rng.randint(1, self.max_endpoints)
        op = Op(
            CREATE,
            name,
            f"{name}-{suffix}",
            tuple(self._address() for _ in range(count)),
            headless=self._rng.random() < self.headless,
        )
        self._live[name] = op
        return op

    def initial(self) -> list[Op]:
        """The Services (and slices) the churn starts from."""
        return [self._create() for _ in range(self.services)]

    def step(self) -> Op:
        """The next operation."""
        low, high = max(1, int(self.services * 0.8)), max(2, int(self.services * 1.2 + 0.5))
        roll = self._rng.random()
        grow = (1 + self.scale_share) / 2
        if len(self._live) < low or (roll >= grow and len(self._live) < high) or not self._live:
            return self._create()
        name = self._rng.choice(sorted(self._live))
        if roll < self.scale_share or len(self._live) <= low:
            return self._scale(name)
        gone = self._live.pop(name)
        return Op(DELETE, name, gone.slice, gone.addresses, gone.headless)

    def _scale(self, name: str) -> Op:
        now = self._live[name]
        addresses = list(now.addresses)
        up = not addresses or (len(addresses) < self.max_endpoints and self._rng.random() < 0.5)
        if up:
            addresses.append(self._address())
        else:
            addresses.pop(self._rng.randrange(len(addresses)))
        op = Op(SCALE, name, now.slice, tuple(addresses), now.headless)
        self._live[name] = op
        return op

    def live(self) -> dict[str, Op]:
        """The Services there are after the operations so far, by name."""
        return dict(self._live)


# -- the objects --------------------------------------------------------------------------------

SERVICES = Resource("", "v1", "services", "Service", NAMESPACE)
SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", NAMESPACE)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace")


def service_body(op: Op) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"app": op.service},
        "ports": [{"name": "http", "port": 80, "targetPort": TARGET_PORT, "protocol": "TCP"}],
    }
    if op.headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": op.service}, "spec": spec}


def slice_body(op: Op, service_uid: str, nodes: Sequence[str] = ()) -> dict[str, Any]:
    labels = {SERVICE_LABEL: op.service, MANAGED_BY[0]: MANAGED_BY[1]}
    if op.headless:
        labels[HEADLESS_LABEL] = ""
    meta: dict[str, Any] = {"name": op.slice, "labels": labels}
    if service_uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "name": op.service,
                "uid": service_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    endpoints = []
    for i, address in enumerate(op.addresses):
        endpoint: dict[str, Any] = {
            "addresses": [address],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": f"{op.service}-{i}"},
        }
        if nodes:
            endpoint["nodeName"] = nodes[int(ipaddress.ip_address(address)) % len(nodes)]
        endpoints.append(endpoint)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
    }


# -- writing it ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One write of the churn, as the API server stored it."""

    resource: str  # services or endpointslices
    type: str  # ADDED, MODIFIED or DELETED: the watch event it makes
    key: str  # namespace/name
    rv: str
    sent: float  # Unix time the request was sent
    answered: float
    labels: tuple[tuple[str, str], ...] = ()  # the object's, so a reader's selector can be told


@dataclass
class Churn:
    """Writes a plan's operations with ``kube`` (admin credentials)."""

    kube: KubeClient
    nodes: Sequence[str] = ()
    clock: Callable[[], float] = time.time
    writes: list[Write] = field(default_factory=list)
    _uids: dict[str, str] = field(default_factory=dict)

    async def ensure_namespace(self) -> None:
        try:
            await self.kube.create(NAMESPACES, {"metadata": {"name": NAMESPACE}})
        except Conflict:
            pass

    async def _write(self, resource: str, kind: str, key: str, call: Any) -> dict[str, Any]:
        sent = self.clock()
        obj = await call
        meta = obj.get("metadata") or {}
        rv = str(meta.get("resourceVersion", ""))
        labels = tuple(sorted((meta.get("labels") or {}).items()))
        self.writes.append(
            Write(resource, kind, f"{NAMESPACE}/{key}", rv, sent, self.clock(), labels)
        )
        return dict(obj)

    async def apply(self, op: Op) -> None:
        if op.kind == CREATE:
            svc = await self._write(
                "services", "ADDED", op.service, self.kube.create(SERVICES, service_body(op))
            )
            uid = str(svc["metadata"].get("uid", ""))
            self._uids[op.service] = uid
            body = slice_body(op, uid, self.nodes)
            await self._write("endpointslices", "ADDED", op.slice, self.kube.create(SLICES, body))
        elif op.kind == SCALE:
            body = slice_body(op, self._uids.get(op.service, ""), self.nodes)
            await self._write(
                "endpointslices", "MODIFIED", op.slice, self.kube.replace(SLICES, body)
            )
        elif op.kind == DELETE:
            # The garbage collector deletes a slice after its Service; here both at once.
            for resource, api, name in (
                ("services", SERVICES, op.service),
                ("endpointslices", SLICES, op.slice),
            ):
                try:
                    await self._write(resource, "DELETED", name, self.kube.delete(api, name))
                except NotFound:
                    pass
            self._uids.pop(op.service, None)
        else:
            raise ValueError(f"unknown churn operation {op.kind!r}")

    async def run(self, plan: ChurnPlan, *, rate: float, seconds: float) -> int:
        """``rate`` operations a second for ``seconds``, on a fixed schedule (operations that
        fell behind it are made at once, so every window of a run holds the same count);
        returns how many were made."""
        if rate <= 0:
            raise ValueError("the churn rate must be positive")
        loop = asyncio.get_running_loop()
        start = loop.time()
        done = 0
        while True:
            due = start + done / rate
            if due - start >= seconds:
                return done
            await asyncio.sleep(max(0.0, due - loop.time()))
            if loop.time() - start >= seconds:
                return done
            await self.apply(plan.step())
            done += 1

    async def seed(self, plan: ChurnPlan) -> None:
        """The plan's initial Services and slices, as fast as the server takes them."""
        await self.ensure_namespace()
        for op in plan.initial():
            await self.apply(op)
