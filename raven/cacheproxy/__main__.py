"""Console entry ``raven-cache-proxy``: run the caching proxy until SIGTERM/SIGINT.

Node identity (``--node-cert``, ``--node-key``, ``--client-ca``), the cloud path
(``--path-file``) and node-level reuse (``--share``) are described in
raven/cacheproxy/identity.py, upstream.py and sharing.py.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
from pathlib import Path

from raven.cacheproxy.access import DEFAULT_TTL as DEFAULT_REVIEW_TTL
from raven.cacheproxy.cache import CacheConfig
from raven.cacheproxy.health import HealthConfig
from raven.cacheproxy.memory import fix_thresholds
from raven.cacheproxy.nodecert import NodeCertificateError
from raven.cacheproxy.pool import DEFAULT_FEED_PORT
from raven.cacheproxy.server import DEFAULT_PORT, CacheProxy, ProxyConfig
from raven.cacheproxy.sharing import DEFAULT_SHARED, KNOWN, parse_shared
from raven.cacheproxy.upstream import POLL_INTERVAL
from raven.cacheproxy.watchcache import DEFAULT_CAPACITY
from raven.logs import configure as configure_logging


async def _run(config: ProxyConfig) -> None:
    proxy = CacheProxy(config)
    await proxy.start()
    # What was made to start (modules, the app) lives as long as the process: keep it out of
    # the collector's full passes, which would otherwise walk it all and pause every client.
    gc.collect()
    gc.freeze()
    scheme = "https" if config.tls_cert else "http"
    print(f"raven-cache-proxy listening on {scheme}://{config.host}:{proxy.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="raven-cache-proxy")
    p.add_argument("--upstream", required=True, help="API server URL (https://...)")
    p.add_argument("--ca-cert", required=True, type=Path)
    p.add_argument("--cache-dir", required=True, type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--tls-cert", type=Path, help="serve HTTPS (needed for client-go tokens)")
    p.add_argument("--tls-key", type=Path)
    p.add_argument(
        "--node-cert",
        type=Path,
        help="the node's own client certificate (kubelet-client-current.pem on a cluster): "
        "clients whose certificate has the same subject (CN=system:node:NAME, O=system:nodes) "
        "are forwarded with it, so the API server sees the node; other client certificates "
        "get 403. Costs a stat of both files per such request (a rotated one is reloaded). "
        "Needs --tls-cert",
    )
    p.add_argument(
        "--node-key",
        type=Path,
        help="its private key (may be the same file as --node-cert); read only to open TLS "
        "connections, never logged or written",
    )
    p.add_argument(
        "--client-ca",
        type=Path,
        help="CA that client certificates must chain to (default: --ca-cert); a certificate "
        "from another CA fails the TLS handshake",
    )
    p.add_argument(
        "--path-file",
        type=Path,
        help="the node's cloud path as raven-heartbeat writes it: while it says via NODE, all "
        "upstream traffic (requests, watches, the health probe) goes through that node's HTTP "
        "CONNECT relay, TLS end to end. A change of route ends open watches (clients watch "
        "again at once). Missing file: direct",
    )
    p.add_argument(
        "--path-poll",
        type=float,
        default=POLL_INTERVAL,
        help="seconds between looks at --path-file (a stat; read only when changed): the "
        f"longest a route change waits (default {POLL_INTERVAL:g})",
    )
    p.add_argument("--probe-interval", type=float, default=1.0)
    p.add_argument("--healthy-after", type=int, default=3, help="consecutive successes")
    p.add_argument(
        "--share",
        default=",".join(r.name for r in DEFAULT_SHARED),
        help="resources every client of the node reads from one upstream list+watch "
        "(node-level reuse; needs --node-cert, whose identity reads them), comma-separated as "
        f"kubectl names them: {', '.join(sorted(KNOWN))}; or none "
        "(default %(default)s)",
    )
    p.add_argument(
        "--share-history",
        type=int,
        default=DEFAULT_CAPACITY,
        help="changes each shared copy keeps for watches resuming from an older version; an "
        "older one gets 410 Expired and lists again (default %(default)s)",
    )
    p.add_argument(
        "--access-review-ttl",
        type=float,
        default=DEFAULT_REVIEW_TTL,
        help="seconds the API server's answer to a client's access review is trusted while "
        "the cloud is reachable (default %(default)s)",
    )
    p.add_argument(
        "--agent-role",
        help="the agent's /role URL (http://127.0.0.1:10262/role): pool-level reuse, the shared "
        "copies read from the pool gateway's feed while it says it is ready (needs --node-cert)",
    )
    p.add_argument(
        "--pool-listen",
        metavar="IP",
        help="serve the pool feed on this address (the node's InternalIP) while this node is "
        "its pool's gateway; needs --agent-role, --pool-cert and --pool-key",
    )
    p.add_argument(
        "--pool-port",
        type=int,
        default=DEFAULT_FEED_PORT,
        help="the pool feed's port, served and dialled (default %(default)s)",
    )
    p.add_argument(
        "--pool-cert",
        type=Path,
        help="the node's serving certificate for the feed (kubelet-server-current.pem: "
        "CN=system:node:NAME with the node's IPs); members verify it with --ca-cert",
    )
    p.add_argument("--pool-key", type=Path, help="its key (may be the same file)")
    defaults = CacheConfig()
    p.add_argument(
        "--flush-interval",
        type=float,
        default=defaults.flush_interval,
        help="seconds of cache changes per disk commit; a crash loses at most about this much "
        f"(default {defaults.flush_interval:g})",
    )
    p.add_argument(
        "--entry-ttl",
        type=float,
        default=defaults.entry_ttl,
        help="drop an entry nothing asked for during this many seconds with the cloud "
        f"reachable (default {defaults.entry_ttl:g})",
    )
    p.add_argument(
        "--max-entries",
        type=int,
        default=defaults.max_entries,
        help=f"entries at most, least recently used dropped first (default {defaults.max_entries})",
    )
    p.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=os.environ.get("RAVEN_LOG_FORMAT", "console"),
        help="console (readable lines) or json (one object per line); env RAVEN_LOG_FORMAT",
    )
    a = p.parse_args(argv)
    configure_logging(a.log_format)
    try:
        config = ProxyConfig(
            a.upstream,
            a.ca_cert,
            a.cache_dir,
            a.host,
            a.port,
            HealthConfig(interval=a.probe_interval, success_threshold=a.healthy_after),
            a.tls_cert,
            a.tls_key,
            CacheConfig(
                flush_interval=a.flush_interval, entry_ttl=a.entry_ttl, max_entries=a.max_entries
            ),
            node_cert=a.node_cert,
            node_key=a.node_key,
            client_ca=a.client_ca,
            path_file=a.path_file,
            path_poll=a.path_poll,
            share=parse_shared(a.share),
            share_history=a.share_history,
            review_ttl=a.access_review_ttl,
            agent_role=a.agent_role,
            pool_port=a.pool_port,
            pool_listen=a.pool_listen,
            pool_cert=a.pool_cert,
            pool_key=a.pool_key,
        )
    except ValueError as e:
        p.error(str(e))
    fix_thresholds()
    try:
        asyncio.run(_run(config))
    except NodeCertificateError as e:
        p.exit(2, f"raven-cache-proxy: {e}\n")


if __name__ == "__main__":
    main()
