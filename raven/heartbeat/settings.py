"""``raven-heartbeat``'s settings, each with its unit and what it costs.

Costs per node, with the defaults: one HTTPS ``GET /healthz`` to the API server every 2 s over a
kept-alive connection (about 30 small requests a minute; no credential, no write), one loopback
``GET`` to the kubelet and one to the agent per interval. While the node's own path is down, one
``GET /relay`` per pool member per interval until a relay is chosen, then one to that relay. API
writes happen only on transitions (a Lease merge patch and an Event at each start and end of a
delegation, plus the taint when asked for), never per interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raven.heartbeat.admission import Limits
from raven.names import POOL_LABEL


@dataclass(frozen=True)
class Settings:
    node: str  # this node's name (env RAVEN_NODE_NAME)
    kubeconfig: Path | None  # the node's identity, through its cache-proxy (None: in-cluster)
    upstream: str  # the API server, https://host:port, probed directly
    ca_cert: Path | None  # the API server's CA for the direct probe
    path_file: Path  # where the cloud path goes (the cache-proxy follows it)
    #: Seconds between probes. Smaller detects a cut sooner (after about ``interval *
    #: fail_after``) and costs proportionally more probes.
    probe_interval: float = 2.0
    #: Seconds a probe may take; a slower answer is a failure. Keep it below the interval.
    probe_timeout: float = 1.0
    #: Consecutive failed direct probes that mark the node's own path down (3 x 2 s = about 6 s
    #: to delegate; 1 would flap on a single lost packet).
    fail_after: int = 3
    #: Consecutive successful direct probes that mark it up again: the heal is followed about
    #: ``interval * recover_after`` after it happens (within one interval by default, and the
    #: Lease's delegation marks go with it); more rides out a flapping link, at the price of
    #: staying on the neighbour's relay that much longer.
    recover_after: int = 1
    #: Consecutive failed kubelet health checks that make it unhealthy (then no delegation).
    kubelet_fail_after: int = 2
    kubelet_healthz: str = "http://127.0.0.1:10248/healthz"
    agent_role: str = "http://127.0.0.1:10262/role"
    pool_label: str = POOL_LABEL
    #: The relay: every node listens, members of its pool only may use it.
    relay_host: str = "0.0.0.0"
    relay_port: int = 10264
    relay_limits: Limits = field(default_factory=Limits)
    #: Seconds to wait for a member's ``/relay`` answer (asked concurrently).
    relay_timeout: float = 1.0
    #: Taint the Node ``node.openyurt.io/unschedulable:NoSchedule`` while delegated.
    taint_delegated: bool = False
    health_host: str = "0.0.0.0"
    health_port: int = 10265
    #: Seconds between look-ups of the API server's name (when --upstream names a host) for the
    #: relay's allowed destinations.
    resolve_every: float = 60.0

    def __post_init__(self) -> None:
        if not self.node:
            raise ValueError("the node's name is required (--node or RAVEN_NODE_NAME)")
        if not self.upstream.startswith("https://"):
            raise ValueError(f"--upstream {self.upstream!r}: expected https://host:port")
        if self.probe_interval <= 0 or self.probe_timeout <= 0 or self.relay_timeout <= 0:
            raise ValueError("intervals and timeouts must be positive")
        if self.probe_timeout > self.probe_interval:
            raise ValueError("--probe-timeout must not exceed --probe-interval")
        if min(self.fail_after, self.recover_after, self.kubelet_fail_after) < 1:
            raise ValueError("thresholds must be at least 1")
