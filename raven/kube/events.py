"""Kubernetes Events about Gateways: election, failover, step-down and refused input.

Each Event names its Gateway with the object's uid, because ``kubectl describe gateway`` finds
Events by the involved object's name, kind and uid. Gateways are cluster-scoped, so their
Events live in ``default``, where kubectl looks for them. Recording one is best effort: a
failure is logged and never stops a reconcile. How long Events live is the API server's
business (kube-apiserver keeps them one hour by default).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets

from raven.kube.client import KubeClient
from raven.kube.errors import KubeError
from raven.kube.resources import GATEWAYS, Resource

log = logging.getLogger("raven.kube.events")

EVENTS = Resource("", "v1", "events", "Event", "default")


class EventRecorder:
    """Writes core/v1 Events whose involvedObject is a Gateway."""

    def __init__(self, client: KubeClient, node_name: str, *, component: str = "raven-agent"):
        self.client = client
        self.node_name = node_name
        self.component = component
        self.recorded = 0  # for metrics and tests

    async def gateway_event(
        self, pool: str, type_: str, reason: str, message: str, *, uid: str = ""
    ) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved = {"apiVersion": GATEWAYS.api_version, "kind": GATEWAYS.kind, "name": pool}
        if uid:
            involved["uid"] = uid
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{pool}.{secrets.token_hex(8)}", "namespace": EVENTS.namespace},
            "involvedObject": involved,
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
            self.recorded += 1
        except KubeError as error:
            log.warning("cannot record event %s on Gateway %s: %s", reason, pool, error)
