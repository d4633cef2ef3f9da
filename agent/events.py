"""Kubernetes Events about Gateways: election, failover and refused input.

An Event is best effort: failing to record one is logged and never stops a reconcile.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets

from raven.kube import GATEWAYS, KubeClient, KubeError, Resource

log = logging.getLogger("raven.agent.events")

EVENTS = Resource("", "v1", "events", "Event", "default")


class EventRecorder:
    """Writes core/v1 Events whose involvedObject is a Gateway (cluster-scoped, so `default`)."""

    def __init__(self, client: KubeClient, node_name: str, *, component: str = "raven-agent"):
        self.client = client
        self.node_name = node_name
        self.component = component

    async def gateway_event(self, pool: str, type_: str, reason: str, message: str) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{pool}.{secrets.token_hex(8)}", "namespace": EVENTS.namespace},
            "involvedObject": {
                "apiVersion": GATEWAYS.api_version,
                "kind": GATEWAYS.kind,
                "name": pool,
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": self.component, "host": self.node_name},
            "reportingComponent": self.component,
            "reportingInstance": self.node_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.client.create(EVENTS, event)
        except KubeError as error:
            log.warning("cannot record event %s on Gateway %s: %s", reason, pool, error)
