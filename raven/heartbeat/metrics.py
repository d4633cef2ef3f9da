"""The heartbeat's Prometheus figures, on its health port's ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from raven.cloudpath import MODES
from raven.heartbeat.admission import REASONS


class HeartbeatMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.path_mode = Gauge(
            "raven_heartbeat_path_mode",
            "1 for the node's current cloud path (direct, via, none), 0 for the others",
            ["mode"],
            registry=self.registry,
        )
        self.direct_up = Gauge(
            "raven_heartbeat_direct_up",
            "1 while the node's own path to the API server is up (debounced)",
            registry=self.registry,
        )
        self.kubelet_healthy = Gauge(
            "raven_heartbeat_kubelet_healthy",
            "1 while the kubelet's health check passes (debounced)",
            registry=self.registry,
        )
        self.members = Gauge(
            "raven_heartbeat_pool_members",
            "Other members of the pool known",
            registry=self.registry,
        )
        self.tunnels = Gauge(
            "raven_heartbeat_relay_tunnels_open",
            "Tunnels this node's relay carries for pool members now",
            registry=self.registry,
        )
        self.refusals = Counter(
            "raven_heartbeat_relay_refusals",
            "Requests this node's relay refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.transitions = Counter(
            "raven_heartbeat_path_changes", "Changes of the cloud path", registry=self.registry
        )
        for reason in REASONS:
            self.refusals.labels(reason)
        for mode in MODES:
            self.path_mode.labels(mode)

    def show_mode(self, mode: str) -> None:
        for each in MODES:
            self.path_mode.labels(each).set(1 if each == mode else 0)
