"""Console entry ``raven-heartbeat``: keep this node's heartbeat reaching the cloud through a pool
member when its own uplink is gone; run until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from raven.heartbeat.admission import Limits
from raven.heartbeat.settings import Settings
from raven.logs import configure as configure_logging
from raven.names import POOL_LABEL

DESCRIPTION = """\
Runs beside the agent and the cache-proxy on every node. It probes the node's own path to the
API server and the kubelet's health; when the own path is down and the kubelet is healthy, it
points the node's cache-proxy (through --path-file) at the relay of a pool member that still
reaches the cloud, the pool's gateway first, and marks the node's Lease as delegated
(openyurt.io/delegate-heartbeat, raven.io/heartbeat-via) with an Event at start and end. Its own
relay (an HTTP CONNECT proxy to the API server's address only, for its pool's members only)
serves the other members in turn. A node whose kubelet is dead is never kept alive.

Costs with the defaults: one HTTPS GET /healthz to the API server every --probe-interval over a
kept-alive connection; one loopback GET to the kubelet and one to the agent per interval; while
cut, one GET /relay per pool member per interval until a relay is chosen, then one to it. API
writes only at the start and end of a delegation.
"""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="raven-heartbeat",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = Settings(node="n", kubeconfig=None, upstream="https://x", ca_cert=None, path_file=Path("x"))
    limits = Limits()
    p.add_argument(
        "--node", default=_env("RAVEN_NODE_NAME", ""), help="this node's name (env RAVEN_NODE_NAME)"
    )
    p.add_argument(
        "--kubeconfig",
        type=Path,
        help="the node's identity (client certificate CN=system:node:NAME) through its own "
        "cache-proxy, https://127.0.0.1:10261; default in-cluster",
    )
    p.add_argument(
        "--upstream", required=True, help="the API server, https://host:port, probed directly"
    )
    p.add_argument("--ca-cert", type=Path, help="the API server's CA for the direct probe")
    p.add_argument(
        "--path-file",
        type=Path,
        required=True,
        help="where the node's cloud path is written; the cache-proxy follows it",
    )
    p.add_argument(
        "--probe-interval",
        type=float,
        default=d.probe_interval,
        help="seconds between probes: a cut is noticed after about interval x --fail-after; "
        f"each costs one small HTTPS request to the API server (default {d.probe_interval:g})",
    )
    p.add_argument(
        "--probe-timeout",
        type=float,
        default=d.probe_timeout,
        help=f"seconds a probe may take, at most the interval (default {d.probe_timeout:g})",
    )
    p.add_argument(
        "--fail-after",
        type=int,
        default=d.fail_after,
        help="consecutive failed direct probes that mark the own path down; 1 flaps on one lost "
        f"packet (default {d.fail_after})",
    )
    p.add_argument(
        "--recover-after",
        type=int,
        default=d.recover_after,
        help="consecutive successful direct probes that mark it up again: going direct after a "
        f"heal takes about interval x this (default {d.recover_after})",
    )
    p.add_argument(
        "--kubelet-fail-after",
        type=int,
        default=d.kubelet_fail_after,
        help="consecutive failed kubelet checks that stop delegation "
        f"(default {d.kubelet_fail_after})",
    )
    p.add_argument(
        "--kubelet-healthz", default=d.kubelet_healthz, help=f"(default {d.kubelet_healthz})"
    )
    p.add_argument(
        "--agent-role",
        default=d.agent_role,
        help="the agent's role endpoint; unreachable means not the gateway "
        f"(default {d.agent_role})",
    )
    p.add_argument("--pool-label", default=POOL_LABEL, help=f"(default {POOL_LABEL})")
    p.add_argument("--relay-host", default=d.relay_host, help=f"(default {d.relay_host})")
    p.add_argument(
        "--relay-port",
        type=int,
        default=d.relay_port,
        help=f"the relay every node offers its pool's members (default {d.relay_port})",
    )
    p.add_argument(
        "--relay-timeout",
        type=float,
        default=d.relay_timeout,
        help=f"seconds to wait for a member's /relay answer (default {d.relay_timeout:g})",
    )
    p.add_argument(
        "--relay-max-tunnels",
        type=int,
        default=limits.max_tunnels,
        help=f"tunnels the relay carries at most, in all (default {limits.max_tunnels})",
    )
    p.add_argument(
        "--relay-max-per-source",
        type=int,
        default=limits.max_per_source,
        help=f"tunnels the relay carries at most per member (default {limits.max_per_source})",
    )
    p.add_argument(
        "--taint-delegated",
        action="store_true",
        help="taint the Node node.openyurt.io/unschedulable:NoSchedule while delegated "
        "(OpenYurt's behaviour, for operators who want no new pods on a node that reaches the "
        "cloud through a neighbour); off by default. Needs a credential that may change the "
        "Node's taints: kube-apiserver's NodeRestriction refuses that to the node itself.",
    )
    p.add_argument("--health-host", default=d.health_host, help=f"(default {d.health_host})")
    p.add_argument(
        "--health-port",
        type=int,
        default=d.health_port,
        help=f"/healthz, /readyz and /metrics; -1 for none (default {d.health_port})",
    )
    p.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=_env("RAVEN_LOG_FORMAT", "console"),
        help="console (readable lines) or json (one object per line); env RAVEN_LOG_FORMAT",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    a = p.parse_args(argv)
    configure_logging(a.log_format)
    try:
        settings = Settings(
            node=a.node,
            kubeconfig=a.kubeconfig,
            upstream=a.upstream,
            ca_cert=a.ca_cert,
            path_file=a.path_file,
            probe_interval=a.probe_interval,
            probe_timeout=a.probe_timeout,
            fail_after=a.fail_after,
            recover_after=a.recover_after,
            kubelet_fail_after=a.kubelet_fail_after,
            kubelet_healthz=a.kubelet_healthz,
            agent_role=a.agent_role,
            pool_label=a.pool_label,
            relay_host=a.relay_host,
            relay_port=a.relay_port,
            relay_limits=Limits(
                max_tunnels=a.relay_max_tunnels, max_per_source=a.relay_max_per_source
            ),
            relay_timeout=a.relay_timeout,
            taint_delegated=a.taint_delegated,
            health_host=a.health_host,
            health_port=a.health_port,
        )
    except ValueError as e:
        p.error(str(e))
    from raven.heartbeat.runtime import Heartbeat

    asyncio.run(Heartbeat(settings).run())


if __name__ == "__main__":
    main()
