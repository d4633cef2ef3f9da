"""The node-lifecycle controller of kube-controller-manager, as the lab needs it: a node whose
heartbeat (its ``kube-node-lease`` Lease) stops goes ``Unknown`` and is tainted unreachable.

:func:`decide` is pure: from the Nodes, the node Leases and the time it returns the writes to
make, only where something changes. :class:`NodeLifecycle` runs it every ``period`` inside the
API server's process and applies its answer through :class:`raven.lab.apiserver.api.Api`, the
same write path requests take, so watchers see every change (a change whose Node moved on in
the meantime is dropped, as a conflict, and decided again next period).

What it does, with kube-controller-manager's defaults (``--node-monitor-period`` 5 s,
``--node-monitor-grace-period`` 40 s):

- A Node whose Lease was last renewed more than ``grace`` ago: its ``Ready`` condition (and
  ``MemoryPressure``, ``DiskPressure``, ``PIDPressure`` where present) turns ``Unknown`` with
  reason ``NodeStatusUnknown`` and message ``Kubelet stopped posting node status.``,
  ``lastTransitionTime`` now (a Node without a ``Ready`` condition gets one, reason
  ``NodeStatusNeverUpdated``). A stale Lease beats a ``Ready=True`` condition.
- Taints follow the ``Ready`` condition, as the controller's tainting passes do:
  ``Unknown`` → ``node.kubernetes.io/unreachable`` with effects ``NoExecute`` (with
  ``timeAdded``) and ``NoSchedule``; ``False`` → ``node.kubernetes.io/not-ready`` likewise;
  ``True`` → neither. So the taints go only once the Lease is fresh again *and* the kubelet has
  posted ``Ready=True`` (the kubelet sets Ready, never this controller).
- The grace counts from a Lease's ``renewTime`` (the lab's processes share one clock), but never
  from before the controller started: like kube-controller-manager, which counts from when it
  first saw a node, a restarted server gives every node a full grace.

Deviation, on purpose: a Node that has no Lease is left alone (kube-controller-manager would turn
it ``Unknown`` after the grace); the lab's benchmark fleets register Nodes without kubelets.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raven.lab.apiserver import errors
from raven.lab.apiserver.api import Api
from raven.lab.apiserver.resources import builtin

log = logging.getLogger("raven.lab.apiserver.lifecycle")

# kube-controller-manager's defaults
DEFAULT_MONITOR_PERIOD = 5.0
DEFAULT_GRACE_PERIOD = 40.0

NODE_LEASE_NAMESPACE = "kube-node-lease"
UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
PRESSURE = ("MemoryPressure", "DiskPressure", "PIDPressure")
STOPPED = ("NodeStatusUnknown", "Kubelet stopped posting node status.")
NEVER = ("NodeStatusNeverUpdated", "Kubelet never posted node status.")

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class NodeChange:
    """What to write to one Node: new ``status.conditions`` and/or new ``spec.taints`` (None:
    unchanged), decided on the Node at ``resource_version``."""

    node: str
    resource_version: str
    conditions: tuple[dict[str, Any], ...] | None = None
    taints: tuple[dict[str, Any], ...] | None = None


def stamp(when: dt.datetime) -> str:
    """A Kubernetes timestamp (metav1.Time: seconds, UTC)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def renewed_at(lease: Obj) -> dt.datetime | None:
    """When a Lease was last renewed: ``renewTime``, else ``acquireTime``, else its creation."""
    spec = lease.get("spec") or {}
    for value in (spec.get("renewTime"), spec.get("acquireTime")):
        when = _parse(value)
        if when is not None:
            return when
    return _parse((lease.get("metadata") or {}).get("creationTimestamp"))


def _stale_conditions(node: Obj, now: dt.datetime) -> list[dict[str, Any]]:
    conditions = [dict(c) for c in (node.get("status") or {}).get("conditions") or []]
    if not any(c.get("type") == "Ready" for c in conditions):
        created = (node.get("metadata") or {}).get("creationTimestamp") or stamp(now)
        reason, message = NEVER
        conditions.append(
            {
                "type": "Ready",
                "status": "Unknown",
                "lastHeartbeatTime": created,
                "lastTransitionTime": stamp(now),
                "reason": reason,
                "message": message,
            }
        )
    for condition in conditions:
        if condition.get("type") in ("Ready", *PRESSURE) and condition.get("status") != "Unknown":
            reason, message = STOPPED
            condition.update(
                status="Unknown",
                reason=reason,
                message=message,
                lastTransitionTime=stamp(now),
            )
    return conditions


def _ready(conditions: Sequence[Obj]) -> str | None:
    for condition in conditions:
        if condition.get("type") == "Ready":
            return str(condition.get("status"))
    return None


def _wanted_taint_key(ready: str | None) -> str | None:
    if ready == "Unknown":
        return UNREACHABLE
    if ready == "False":
        return NOT_READY
    return None


def _taints(node: Obj, ready: str | None, now: dt.datetime) -> list[dict[str, Any]]:
    wanted = _wanted_taint_key(ready)
    current = [dict(t) for t in (node.get("spec") or {}).get("taints") or []]
    kept = [
        t for t in current if t.get("key") not in (UNREACHABLE, NOT_READY) or t["key"] == wanted
    ]
    if wanted is not None:
        for effect in ("NoSchedule", "NoExecute"):
            if not any(t.get("key") == wanted and t.get("effect") == effect for t in kept):
                taint: dict[str, Any] = {"key": wanted, "effect": effect}
                if effect == "NoExecute":
                    taint["timeAdded"] = stamp(now)
                kept.append(taint)
    return kept


def decide(
    nodes: Iterable[Obj],
    leases: Iterable[Obj],
    now: dt.datetime,
    grace: float,
    *,
    started: dt.datetime | None = None,
) -> list[NodeChange]:
    """The writes that bring ``nodes`` in line with their heartbeats (``leases``: the Leases of
    ``kube-node-lease``; others are ignored) at ``now``. ``grace`` in seconds; ``started``: when
    the controller started (no Lease counts as older than that). Nothing for a Node that is as
    it should be, or that has no Lease."""
    renewals: dict[str, dt.datetime] = {}
    for lease in leases:
        meta = lease.get("metadata") or {}
        when = renewed_at(lease)
        if meta.get("namespace") == NODE_LEASE_NAMESPACE and when is not None:
            renewals[str(meta.get("name"))] = when
    changes = []
    for node in nodes:
        meta = node.get("metadata") or {}
        name = str(meta.get("name"))
        renewed = renewals.get(name)
        if renewed is None:
            continue
        if started is not None:
            renewed = max(renewed, started)
        conditions = list((node.get("status") or {}).get("conditions") or [])
        if (now - renewed).total_seconds() > grace:
            conditions = _stale_conditions(node, now)
        taints = _taints(node, _ready(conditions), now)
        old_conditions = (node.get("status") or {}).get("conditions") or []
        old_taints = (node.get("spec") or {}).get("taints") or []
        new_conditions = tuple(conditions) if conditions != old_conditions else None
        new_taints = tuple(taints) if taints != old_taints else None
        if new_conditions is not None or new_taints is not None:
            changes.append(
                NodeChange(name, str(meta.get("resourceVersion", "")), new_conditions, new_taints)
            )
    return changes


NODE_TYPE = builtin("", "nodes")
LEASE_TYPE = builtin("coordination.k8s.io", "leases")


class NodeLifecycle:
    """Runs :func:`decide` every ``period`` seconds and writes its changes through ``api``."""

    def __init__(
        self,
        api: Api,
        *,
        grace: float = DEFAULT_GRACE_PERIOD,
        period: float = DEFAULT_MONITOR_PERIOD,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if grace <= 0 or period <= 0:
            raise ValueError("the node monitor period and grace period must be positive")
        self._api = api
        self.grace = grace
        self.period = period
        self._clock = clock
        self._started = self._now()
        self._task: asyncio.Task[None] | None = None

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), dt.UTC)

    def tick(self) -> int:
        """One monitoring pass; returns the number of writes made."""
        store = self._api.store
        changes = decide(
            store.list(NODE_TYPE.storage_key),
            store.list(LEASE_TYPE.storage_key, NODE_LEASE_NAMESPACE),
            self._now(),
            self.grace,
            started=self._started,
        )
        writes = 0
        for change in changes:
            try:
                writes += self._apply(change)
            except errors.ApiError as e:  # changed or gone meanwhile: decided again next time
                log.debug("node %s: %s", change.node, e.message)
        return writes

    def _apply(self, change: NodeChange) -> int:
        writes = 0
        version = change.resource_version
        if change.conditions is not None:
            node = self._api.get(NODE_TYPE, None, change.node)
            node["metadata"]["resourceVersion"] = version
            node.setdefault("status", {})["conditions"] = list(change.conditions)
            stored = self._api.replace(NODE_TYPE, None, change.node, node, subresource="status")
            version = stored["metadata"]["resourceVersion"]
            writes += 1
            log.info("node %s: conditions now %s", change.node, _summary(change.conditions))
        if change.taints is not None:
            node = self._api.get(NODE_TYPE, None, change.node)
            node["metadata"]["resourceVersion"] = version
            spec = node.setdefault("spec", {})
            if change.taints:
                spec["taints"] = list(change.taints)
            else:
                spec.pop("taints", None)
            self._api.replace(NODE_TYPE, None, change.node, node)
            writes += 1
            log.info("node %s: taints now %s", change.node, _summary(change.taints))
        return writes

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                self.tick()
            except Exception:  # a failed pass is retried at the next one
                log.exception("node lifecycle pass failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="node-lifecycle")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _summary(items: Sequence[Obj]) -> str:
    return (
        ", ".join(
            f"{i.get('type') or i.get('key')}={i.get('status') or i.get('effect')}" for i in items
        )
        or "none"
    )
