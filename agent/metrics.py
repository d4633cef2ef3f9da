"""The agent's Prometheus metrics, under the names deploy/monitoring/README.md promises.

The runtime feeds it after every round: how long the round took and whether it failed, the
kernel writes so far, who holds which pool as this agent sees it, and, on a gateway or the
relay, one entry per carrying peer (state, RTT, loss, handshake age and bytes, as built for
the Gateway status). Peer figures are exported as they were last seen, by a collector, so a
scrape never waits for ``wg``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PEER_LABELS = ("pool", "peer_pool", "peer_node")


class PeerCollector(Collector):
    """Per-peer figures of the last round, exported at scrape time."""

    def __init__(self) -> None:
        self.pool = ""
        self.entries: list[Mapping[str, Any]] = []
        self.now = 0.0

    def update(self, pool: str, entries: Iterable[Mapping[str, Any]], now: float) -> None:
        self.pool, self.entries, self.now = pool, list(entries), now

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "raven_peer_up", "1 while the tunnel to the peer works", labels=PEER_LABELS
        )
        rtt = GaugeMetricFamily(
            "raven_peer_rtt_seconds", "RTT of the last answered tunnel probe", labels=PEER_LABELS
        )
        loss = GaugeMetricFamily(
            "raven_peer_loss_ratio", "share of recent tunnel probes lost", labels=PEER_LABELS
        )
        age = GaugeMetricFamily(
            "raven_peer_handshake_age_seconds",
            "seconds since the peer's last WireGuard handshake",
            labels=PEER_LABELS,
        )
        rx = CounterMetricFamily(
            "raven_peer_receive_bytes", "bytes received from the peer", labels=PEER_LABELS
        )
        tx = CounterMetricFamily(
            "raven_peer_transmit_bytes", "bytes sent to the peer", labels=PEER_LABELS
        )
        for entry in self.entries:
            labels = [self.pool, str(entry.get("pool", "")), str(entry.get("node", ""))]
            up.add_metric(labels, 1.0 if entry.get("state") == "Up" else 0.0)
            if entry.get("rttMs") is not None:
                rtt.add_metric(labels, float(entry["rttMs"]) / 1000)
            if entry.get("lossPercent") is not None:
                loss.add_metric(labels, float(entry["lossPercent"]) / 100)
            if entry.get("handshakeAt"):
                age.add_metric(labels, max(0.0, self.now - float(entry["handshakeAt"])))
            rx.add_metric(labels, float(entry.get("rxBytes") or 0))
            tx.add_metric(labels, float(entry.get("txBytes") or 0))
        yield from (up, rtt, loss, age, rx, tx)


class AgentMetrics:
    """One registry per agent (several agents may share a process in tests and benchmarks)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.round_seconds = Histogram(
            "raven_reconcile_duration_seconds",
            "one round: observe, plan, apply, report",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.round_errors = Counter(
            "raven_reconcile_errors",
            "rounds that failed (the last applied state stays)",
            registry=r,
        )
        self.netlink_writes = Counter(
            "raven_netlink_writes", "kernel writes of the reconcilers", ["kind"], registry=r
        )
        self.ready = Gauge("raven_ready", "1 while /readyz answers 200", registry=r)
        self.elections = Counter(
            "raven_elections", "times this agent took its pool's Lease", ["pool"], registry=r
        )
        self.failovers = Counter(
            "raven_failovers",
            "times this agent saw a pool's holder move from one node to another",
            ["pool"],
            registry=r,
        )
        self.gateway_active = Gauge(
            "raven_gateway_active", "1 on its pool's active gateway", ["pool"], registry=r
        )
        self.pool_holder = Gauge(
            "raven_pool_holder", "1 while the pool's Lease names a holder", ["pool"], registry=r
        )
        self.peers = PeerCollector()
        r.register(self.peers)
        self._writes: dict[str, float] = {}
        self._holders: dict[str, str] = {}

    def kernel_writes(self, counts: Mapping[str, int]) -> None:
        """Bring the counters up to the data plane's running totals, by kind."""
        for kind, total in counts.items():
            delta = total - self._writes.get(kind, 0)
            if delta > 0:
                self.netlink_writes.labels(kind).inc(delta)
                self._writes[kind] = total

    def holders(self, holders: Mapping[str, str], *, me: str, my_pool: str | None) -> None:
        """Pool -> holder as seen this round: failovers, holder presence, our own role."""
        for pool, holder in holders.items():
            before = self._holders.get(pool)
            if before and holder and before != holder:
                self.failovers.labels(pool).inc()
            self.pool_holder.labels(pool).set(1 if holder else 0)
        for pool in set(self._holders) - set(holders):
            self.pool_holder.labels(pool).set(0)
        self._holders = dict(holders)
        if my_pool is not None:
            self.gateway_active.labels(my_pool).set(1 if holders.get(my_pool) == me else 0)
