"""What the cloud hears about a delegation: the node's Lease marks, Events, and (optional) a taint.

:class:`Reporter` holds what is wanted and what was written, and :meth:`Reporter.flush` writes
the difference; the heartbeat calls it again after every change and every interval until it
succeeds, whenever the node has any path to the API server (with none, nothing can be written:
the wanted state waits for a path to return).

- Lease ``kube-node-lease/<node>``: the kubelet creates and renews it; the heartbeat never renews
  it and never touches its spec. It writes a JSON merge patch of the two annotations (null
  removes a key) whenever the wanted marks change, and once at start: one write per transition.
  It never decides from a read: the node's cache-proxy answers reads from its cache while it
  believes the cloud unreachable (for a few seconds after every change of route), and such a
  stale Lease once made a healed node's heartbeat skip the removal, leaving its marks on.
- Events about the Node (namespace ``default``, where ``kubectl describe node`` looks), at most
  ``max_events`` waiting; the oldest go first when more pile up during an outage.
- With ``taint``: ``node.openyurt.io/unschedulable:NoSchedule`` on the Node while delegated
  (OpenYurt's behaviour). A PUT with the Node's resourceVersion, so a concurrent writer is not
  overwritten (a conflict is retried at the next flush).
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import secrets
from typing import Any

from raven.heartbeat.decide import Event
from raven.kube import NODES, KubeClient, KubeError, NotFound, Resource, leases
from raven.names import (
    DELEGATE_HEARTBEAT_ANNOTATION,
    HEARTBEAT_VIA_ANNOTATION,
    NODE_LEASE_NAMESPACE,
    UNSCHEDULABLE_TAINT_KEY,
)

log = logging.getLogger(__name__)

EVENTS = Resource("", "v1", "events", "Event", "default")
COMPONENT = "raven-heartbeat"


def lease_annotations(marks: str) -> dict[str, str | None]:
    """The Lease annotations for ``marks`` (the relaying node, or "" for none)."""
    if marks:
        return {DELEGATE_HEARTBEAT_ANNOTATION: "true", HEARTBEAT_VIA_ANNOTATION: marks}
    return {DELEGATE_HEARTBEAT_ANNOTATION: None, HEARTBEAT_VIA_ANNOTATION: None}


def retaint(taints: list[Any], want: bool) -> list[Any] | None:
    """``taints`` with OpenYurt's unschedulable taint added or removed; None when unchanged."""
    others = [
        t for t in taints if not (isinstance(t, dict) and t.get("key") == UNSCHEDULABLE_TAINT_KEY)
    ]
    has = len(others) != len(taints)
    if want == has:
        return None
    if want:
        return [*others, {"key": UNSCHEDULABLE_TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    return others


class Reporter:
    def __init__(
        self, client: KubeClient, node: str, *, taint: bool = False, max_events: int = 32
    ) -> None:
        self.client, self.node, self.taint = client, node, taint
        self.marks = ""  # wanted
        self.node_uid = ""
        self._written_marks: str | None = None  # None: not known yet (read before writing)
        self._written_taint: bool | None = None
        self.events: collections.deque[Event] = collections.deque(maxlen=max_events)
        self.lease = leases(NODE_LEASE_NAMESPACE)
        self.writes = 0  # API writes made, for metrics and tests

    def want(self, marks: str, events: tuple[Event, ...] = ()) -> None:
        self.marks = marks
        self.events.extend(events)

    @property
    def done(self) -> bool:
        taint_done = not self.taint or self._written_taint == bool(self.marks)
        return self._written_marks == self.marks and not self.events and taint_done

    async def flush(self) -> bool:
        """Write what differs; True when everything wanted is written. Never raises a KubeError."""
        try:
            await self._marks()
            while self.events:
                await self._event(self.events[0])
                self.events.popleft()
            if self.taint:
                await self._taint()
        except KubeError as e:
            log.warning("cannot write the delegation state of %s yet: %s", self.node, e)
            return False
        return self.done

    async def _marks(self) -> None:
        marks = self.marks
        if self._written_marks == marks:
            return
        delta = lease_annotations(marks)
        try:
            await self.client.merge_patch(
                self.lease, self.node, {"metadata": {"annotations": delta}}
            )
        except NotFound:
            if not marks:
                self._written_marks = marks  # no Lease, so no marks on it either
                return
            raise
        self.writes += 1
        log.info("Lease %s/%s marks: %s", NODE_LEASE_NAMESPACE, self.node, delta)
        self._written_marks = marks

    async def _event(self, event: Event) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved = {"apiVersion": "v1", "kind": "Node", "name": self.node}
        if self.node_uid:
            involved["uid"] = self.node_uid
        await self.client.create(
            EVENTS,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": f"{self.node}.{secrets.token_hex(8)}",
                    "namespace": EVENTS.namespace,
                },
                "involvedObject": involved,
                "type": event.type,
                "reason": event.reason,
                "message": event.message,
                "source": {"component": COMPONENT, "host": self.node},
                "reportingComponent": COMPONENT,
                "reportingInstance": self.node,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
        )
        self.writes += 1
        log.info("Event %s: %s", event.reason, event.message)

    async def _taint(self) -> None:
        want = bool(self.marks)
        if self._written_taint == want:
            return
        node = await self.client.get(NODES, self.node)
        spec = node.setdefault("spec", {})
        taints = retaint(list(spec.get("taints") or []), want)
        if taints is not None:
            spec["taints"] = taints
            await self.client.replace(NODES, node)  # carries resourceVersion: Conflict if stale
            self.writes += 1
            log.info(
                "Node %s: %s taint %s",
                self.node,
                "added" if want else "removed",
                UNSCHEDULABLE_TAINT_KEY,
            )
        self._written_taint = want
