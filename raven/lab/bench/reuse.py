"""``raven bench reuse``: what every node's reads of Services and EndpointSlices cost each edge
pool's uplink, and how long an EndpointSlice change takes to reach every node.

Builds a lab of its own (the default one, or ``--nodes-per-pool N`` nodes in each edge pool),
with agents, cache-proxies, kubelet stand-ins and heartbeats as ``raven lab up`` starts them,
seeds ``services`` Services with their EndpointSlices (:mod:`raven.lab.churn`), and counts
the bytes crossing each edge pool's NAT router to and from the API server (two iptables rules
in the router's FORWARD path, read before and after each window). In one run:

1. **sync**: the kube-proxy and CoreDNS stand-ins start on every node and list everything;
2. **a window per mode**: every node's cache-proxy restarts into the mode (its clients watch
   again; what that costs is ``resync_bytes``), then the same churn for ``churn_seconds``.
   ``direct``: every component of every node lists and watches the API server through its
   own node's cache-proxy, no reuse (``--share none``). ``node``: node-level reuse, one
   upstream list+watch of Services and of EndpointSlices per node, every component answered
   from it (the proxy's default). The pool-scope traffic is the window's bytes minus the
   rest's (3). Every EndpointSlice write is matched with its arrival at every stand-in that
   selects it: p50 and p99 of each delivery and of the time until the last node had it, and
   what never arrived; then every stand-in's copy is compared with the API server's, object
   by object; and the cache-proxies' CPU (over the window) and resident memory (at its end).
   ``pool``: node- and pool-level reuse, the pool gateway's cache-proxy the only one of its
   pool reading the API server, the others reading its pool feed;
3. **rest**, last, when the lab has long settled (measured first, it carried the lab's own
   start-up: 23 agents listing, the heartbeats learning their pools): the stand-ins stop, the
   proxies restart without shared copies, and the same churn shows what the pool's agents,
   kubelets and heartbeats cost the uplink anyway.

``--modes direct,node,pool`` names the modes to measure, in that order.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from raven.kube.client import KubeClient, load_config
from raven.lab import engine, netns, proxies
from raven.lab.bench import resources
from raven.lab.bench.reusefigures import (
    DOWN,
    UP,
    Reader,
    deliveries,
    parse_counters,
    per_minute,
    topology,
    uplink,
)
from raven.lab.churn import Churn, ChurnPlan
from raven.lab.standins import control
from raven.lab.standins.components import COMPONENTS
from raven.lab.state import LabState
from raven.lab.topology import Lab

MODES = ("direct", "node", "pool")
SETTLE_S = 3.0  # after a churn window, for the last events to arrive
RESYNC_S = 5.0  # after the proxies restart into a mode, for every client to watch again
# ... and in pool mode at most this long more, until every member reads its gateway's feed (a
# member that asked before its gateway was in sync reads the API server for a few seconds).
SETTLE_POOL_S = 60.0
# The cache-proxies' --share in each mode, and whether pool-level reuse is on (the rest window
# runs with none).
SHARE = {"direct": ("none", False), "node": ("", False), "pool": ("", True)}


class BenchError(Exception):
    """The benchmark could not run or could not measure; the message says what failed."""


def check_modes(text: str) -> tuple[str, ...]:
    """The modes asked for, each known; BenchError otherwise."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes:
        raise BenchError("--modes: name at least one of direct, node, pool")
    for mode in modes:
        if mode not in MODES:
            raise BenchError(f"--modes: unknown mode {mode!r} (modes: {', '.join(MODES)})")
    return modes


# -- counting at the NAT routers ----------------------------------------------------------------


def _chain(lab: Lab) -> str:
    return f"{lab.prefix.upper()}-APIBYTES"


def install_counters(lab: Lab) -> None:
    """In each edge pool's NAT router: count what it forwards to and from the API server."""
    chain, api = _chain(lab), f"{lab.api_ip}/32"
    for router in lab.routers:
        rules = (
            f"*filter\n:{chain} - [0:0]\n-I FORWARD 1 -j {chain}\n"
            f"-A {chain} -d {api} -p tcp --dport {lab.api_port} "
            f'-m comment --comment "{UP}" -j RETURN\n'
            f"-A {chain} -s {api} -p tcp --sport {lab.api_port} "
            f'-m comment --comment "{DOWN}" -j RETURN\nCOMMIT\n'
        )
        subprocess.run(
            netns.in_netns(router.netns, ["iptables-restore", "-w", "--noflush"]),
            input=rules, text=True, check=True, capture_output=True,
        )  # fmt: skip


def read_counters(lab: Lab) -> dict[str, dict[str, int]]:
    """Bytes so far to and from the API server, per edge pool."""
    out = {}
    for router in lab.routers:
        res = subprocess.run(
            netns.in_netns(router.netns, ["iptables", "-w", "-nvxL", _chain(lab)]),
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        out[router.pool] = parse_counters(res.stdout)
    return out


# -- the churn, in windows ----------------------------------------------------------------------


def _admin(state_dir: Path) -> KubeClient:
    return KubeClient(load_config(str(state_dir / "kubeconfig")), user_agent="raven-bench-reuse")


def churn_window(
    state_dir: Path, churn: Churn, plan: ChurnPlan, rate: float, seconds: float
) -> int:
    async def go() -> int:
        churn.kube = _admin(state_dir)
        try:
            return await churn.run(plan, rate=rate, seconds=seconds)
        finally:
            await churn.kube.close()

    return asyncio.run(go())


def seed(state_dir: Path, churn: Churn, plan: ChurnPlan) -> None:
    async def go() -> None:
        churn.kube = _admin(state_dir)
        try:
            await churn.seed(plan)
        finally:
            await churn.kube.close()

    asyncio.run(go())


# -- the window with the stand-ins --------------------------------------------------------------


def _proxy_pids(st: LabState, nodes: list[str]) -> dict[str, int]:
    return {n: int(st.processes(proxies.ROLE, n)[-1]["pid"]) for n in nodes
            if st.processes(proxies.ROLE, n)}  # fmt: skip


def proxy_routes(ns: str) -> tuple[bool, int]:
    """Of the cache-proxy in namespace ``ns``: whether its shared copies read a pool feed now,
    and its source switches since it started (from its /metrics; (False, 0) if it says none)."""
    try:
        text = netns.run_in(ns, ["curl", "-sk", "--max-time", "5", f"{proxies.PROXY_URL}/metrics"])
    except netns.LabNetError:
        return False, 0
    feed, switches = False, 0
    for line in text.splitlines():
        if line.startswith("raven_cacheproxy_shared_source{") and line.endswith(" 1.0"):
            feed = feed or 'gateway=""' not in line
        elif line.startswith("raven_cacheproxy_pool_source_switches "):
            switches = int(float(line.split()[-1]))
    return feed, switches


def settle_pools(lab: Lab, deadline: float) -> bool:
    """Wait until, in every pool, all nodes but one read a pool feed; False after ``deadline``
    seconds (the window is measured anyway, and says how many did)."""
    pools: dict[str, list[str]] = {}
    for n in lab.nodes:
        pools.setdefault(n.pool, []).append(n.netns)
    end = time.monotonic() + deadline
    while True:
        if all(
            sum(1 for ns in spaces if proxy_routes(ns)[0]) == len(spaces) - 1
            for spaces in pools.values()
        ):
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.5)


def _proxies_in(lab: Lab, st: LabState, state_dir: Path, mode: str) -> None:
    """Every node's cache-proxy restarted with the ``--share`` of ``mode``."""
    share, pool = SHARE[mode]
    proxies.set_share(st, share, pool=pool)
    try:
        proxies.restart_all(lab, st, state_dir)
    except proxies.ProxyError as e:
        raise BenchError(str(e)) from e


def _server_versions(state_dir: Path, selector: str) -> dict[str, str]:
    async def go() -> dict[str, str]:
        kube = _admin(state_dir)
        try:
            params = {"labelSelector": selector} if selector else None
            listing = await kube.request(
                "GET", "/apis/discovery.k8s.io/v1/endpointslices", params=params
            )
        finally:
            await kube.close()
        return {
            f"{o['metadata']['namespace']}/{o['metadata']['name']}": o["metadata"][
                "resourceVersion"
            ]
            for o in listing.get("items") or []
        }

    return asyncio.run(go())


def compare(state_dir: Path, dumps: dict[str, dict[str, Any]]) -> list[str]:
    """Every stand-in whose EndpointSlices differ from the API server's (by key and version)."""
    wanted: dict[str, dict[str, str]] = {}
    wrong = []
    for name, dump in dumps.items():
        selector = next(
            w.label_selector for w in COMPONENTS[dump["component"]].watches
            if w.resource.plural == "endpointslices"
        )  # fmt: skip
        if selector not in wanted:
            wanted[selector] = _server_versions(state_dir, selector)
        objects = dump["resources"]["endpointslices"]["objects"]
        held = {k: o["metadata"]["resourceVersion"] for k, o in objects.items()}
        if held != wanted[selector]:
            wrong.append(name)
    return wrong


def measure(
    lab: Lab,
    settings: engine.Settings,
    *,
    modes: tuple[str, ...],
    rate: float,
    services: int,
    churn_seconds: float,
    seed_value: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    state_dir = settings.state_dir
    st, _ = engine.load(settings)
    edge = {r.pool: [n.name for n in lab.nodes if n.pool == r.pool] for r in lab.routers}
    everyone = [n.name for n in lab.nodes]
    install_counters(lab)
    _proxies_in(lab, st, state_dir, "direct")
    churn = Churn(_admin(state_dir), nodes=everyone)
    plan = ChurnPlan(services=services, seed=seed_value)
    log(f"seeding {services} Services")
    seed(state_dir, churn, plan)

    log("sync: starting kube-proxy and CoreDNS stand-ins on every node")
    pre_sync, t0 = read_counters(lab), time.monotonic()
    try:
        control.start_all(st, state_dir, list(lab.nodes), timeout=120)
    except control.StandInError as e:
        raise BenchError(str(e)) from e
    synced = read_counters(lab)
    sync_s = time.monotonic() - t0

    figures: dict[str, Any] = {
        "nodes": {p: len(n) for p, n in edge.items()},
        "churn_rate": rate,
        "services": services,
        "churn_seconds": churn_seconds,
        "seed": seed_value,
        "standins_per_node": len(COMPONENTS),
        "sync_seconds": round(sync_s, 1),
        "modes": {},
    }
    for mode in modes:
        log(f"{mode}: every cache-proxy restarts into the {mode} mode")
        pre_mode, t0 = read_counters(lab), time.monotonic()
        _proxies_in(lab, st, state_dir, mode)
        time.sleep(RESYNC_S)
        if mode == "pool":
            settled = settle_pools(lab, SETTLE_POOL_S)
            log(f"pool: every member on its gateway's feed: {'yes' if settled else 'NOT'}")
        resynced = read_counters(lab)
        resync_s = time.monotonic() - t0
        log(f"{mode}: {churn_seconds:.0f} s of churn with the stand-ins")
        pids = _proxy_pids(st, everyone)
        cpu0 = {n: resources.read(p) for n, p in pids.items()}
        first_write = len(churn.writes)
        routes0 = {n.name: proxy_routes(n.netns) for n in lab.nodes}
        before, t0, wall0 = read_counters(lab), time.monotonic(), time.time()
        ops = churn_window(state_dir, churn, plan, rate, churn_seconds)
        after, window_s = read_counters(lab), time.monotonic() - t0
        cpu1 = {n: resources.read(p) for n, p in pids.items()}
        routes1 = {n.name: proxy_routes(n.netns) for n in lab.nodes}
        time.sleep(SETTLE_S)
        dumps = {
            f"{c}@{n}": control.dump(st, state_dir, c, n) for c in COMPONENTS for n in everyone
        }
        readers = [
            Reader(
                name,
                next(
                    w.label_selector
                    for w in COMPONENTS[d["component"]].watches
                    if w.resource.plural == "endpointslices"
                ),  # fmt: skip
                {
                    (a[1], a[2]): float(a[3])
                    for a in d["resources"]["endpointslices"]["arrivals"]
                    if float(a[3]) >= wall0 - 1
                },
            )
            for name, d in sorted(dumps.items())
        ]
        got = deliveries(churn.writes[first_write:], readers)
        pools: dict[str, Any] = {}
        for pool, names in edge.items():
            total = uplink(before[pool], after[pool], window_s, len(names))
            samples = [(cpu0.get(n), cpu1.get(n)) for n in names]
            cpu = [(b.cpu_s - a.cpu_s) / window_s * 1000 for a, b in samples if a and b]
            rss = [b.rss_kib / 1024 for _, b in samples if b]
            pools[pool] = {
                **total,
                "sync_bytes": sum(synced[pool].values()) - sum(pre_sync[pool].values()),
                "resync_bytes": sum(resynced[pool].values()) - sum(pre_mode[pool].values()),
                "proxy_cpu_millicores_max": round(max(cpu), 1) if cpu else None,
                "proxy_cpu_millicores_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
                "proxy_rss_mib_max": round(max(rss), 1) if rss else None,
                # Where the nodes' shared copies read from at the window's end, and how often
                # they moved during it (pool mode: every member on its gateway's feed, 0).
                "reading_a_feed": sum(1 for n in names if routes1[n][0]),
                "source_switches": sum(routes1[n][1] - routes0[n][1] for n in names),
            }
        figures["modes"][mode] = {
            "window_seconds": round(window_s, 1),
            "resync_seconds": round(resync_s, 1),
            "operations": ops,
            "slice_writes": sum(
                1 for w in churn.writes[first_write:] if w.resource == "endpointslices"
            ),
            "operations_per_min": per_minute(ops, window_s),
            "pools": pools,
            "latency": got.summary(),
            "diverged": compare(state_dir, dumps),
        }

    # The rest, last, once the lab has long settled: what the uplink carries without any reader
    # of Services and EndpointSlices (no stand-ins, proxies without shared copies).
    log(f"rest: {churn_seconds:.0f} s of churn without stand-ins")
    control.stop_all(st, everyone)
    _proxies_in(lab, st, state_dir, "direct")
    time.sleep(RESYNC_S)
    before, t0 = read_counters(lab), time.monotonic()
    churn_window(state_dir, churn, plan, rate, churn_seconds)
    after, rest_s = read_counters(lab), time.monotonic() - t0
    for pool, names in edge.items():
        rest = uplink(before[pool], after[pool], rest_s, len(names))["bytes_per_min"]
        for m in figures["modes"].values():
            p = m["pools"][pool]
            scope = p["bytes_per_min"] - rest
            p["rest_bytes_per_min"] = rest
            p["pool_scope_bytes_per_min"] = round(scope, 1)
            p["pool_scope_bytes_per_node_per_min"] = round(scope / len(names), 1)
    figures["versus_direct"] = versus_direct(figures["modes"])
    return figures


def versus_direct(modes: dict[str, Any]) -> dict[str, Any]:
    """Per mode but direct, per pool: its pool-scope bytes and its slowest delivery as a
    fraction of direct's, measured in the same run (the goal: bytes about 1/N)."""
    direct = modes.get("direct")
    if direct is None:
        return {}
    out: dict[str, Any] = {}
    for mode, m in modes.items():
        if mode == "direct":
            continue
        pools = {}
        for pool, p in m["pools"].items():
            base = direct["pools"][pool]["pool_scope_bytes_per_min"]
            pools[pool] = round(p["pool_scope_bytes_per_min"] / base, 3) if base > 0 else None
        lat, base_lat = m["latency"], direct["latency"]
        out[mode] = {
            "pool_scope_bytes": pools,
            "all_nodes_p50": _ratio(lat.get("all_nodes_p50_ms"), base_lat.get("all_nodes_p50_ms")),
            "all_nodes_p99": _ratio(lat.get("all_nodes_p99_ms"), base_lat.get("all_nodes_p99_ms")),
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


@contextmanager
def own_lab(
    prefix: str, state_dir: Path, topology_file: Path | None
) -> Iterator[tuple[Lab, engine.Settings]]:
    settings = engine.Settings(state_dir=state_dir, prefix=prefix)
    try:
        result = engine.up(topology_file, settings, agents=True, log=lambda *_: None)
    except engine.LabError as e:
        raise BenchError(f"lab up failed: {e}") from e
    try:
        yield result.lab, settings
    finally:
        engine.down(settings, log=lambda *_: None)


def run(
    *,
    modes: str = "direct,node,pool",
    nodes_per_pool: int = 3,
    edge_nodes: dict[str, int] | None = None,
    rate: float = 5.0,
    services: int = 50,
    churn_seconds: float = 60.0,
    seed: int = 1,
    prefix: str | None = None,
    state_dir: str | Path | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Build a lab, measure each mode under churn, take the lab down; the figures.

    ``edge_nodes`` (Python only) sets each edge pool's size apart, e.g. ``{"edge-a": 2,
    "edge-b": 4}``; otherwise both get ``nodes_per_pool``."""
    chosen = check_modes(modes)
    if os.geteuid() != 0:
        raise BenchError("the reuse benchmark needs root (network namespaces, iptables)")
    if rate <= 0 or services < 1 or churn_seconds <= 0:
        raise BenchError("--rate, --services and --seconds must be positive")
    sizes = edge_nodes or {"edge-a": nodes_per_pool, "edge-b": nodes_per_pool}

    def log(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    prefix = prefix or f"ru{os.getpid() % 100000}"
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="raven-bench-reuse-") as tmp:
        try:
            spec = topology(sizes)
        except ValueError as e:
            raise BenchError(str(e)) from e
        topo = Path(tmp) / "topology.yaml"
        topo.write_text(yaml.safe_dump(spec, sort_keys=False))
        state = Path(state_dir) if state_dir else Path(tmp) / "lab"
        log(f"lab up: {', '.join(f'{p} {n}' for p, n in sizes.items())} nodes")
        with own_lab(prefix, state, topo) as (lab, settings):
            figures = measure(
                lab,
                settings,
                modes=chosen,
                rate=rate,
                services=services,
                churn_seconds=churn_seconds,
                seed_value=seed,
                log=log,
            )
    figures["seconds_total"] = round(time.monotonic() - t0, 1)
    return figures


def render(figures: dict[str, Any]) -> str:
    """The figures as a table per mode."""
    lines = [
        f"churn: {figures['churn_rate']} operations/s around {figures['services']} Services, "
        f"{figures['churn_seconds']:.0f} s per window; stand-ins synced in "
        f"{figures['sync_seconds']} s; {figures['seconds_total']} s in all",
    ]
    for mode, m in figures["modes"].items():
        lat = m["latency"]
        lines.append(
            f"\n[{mode}] {m['operations']} operations ({m['slice_writes']} EndpointSlice writes) "
            f"in {m['window_seconds']} s"
        )
        lines.append(
            f"{'pool':<8} {'nodes':>5} {'total B/min':>12} {'rest B/min':>11} "
            f"{'pool-scope B/min':>17} {'per node':>9} {'sync B':>9} {'resync B':>9} "
            f"{'proxy m':>8} {'MiB':>6} {'feed':>5} {'moves':>5}"
        )
        for pool, p in m["pools"].items():
            lines.append(
                f"{pool:<8} {figures['nodes'][pool]:>5} {p['bytes_per_min']:>12,.0f} "
                f"{p['rest_bytes_per_min']:>11,.0f} {p['pool_scope_bytes_per_min']:>17,.0f} "
                f"{p['pool_scope_bytes_per_node_per_min']:>9,.0f} {p['sync_bytes'] or 0:>9,} "
                f"{p['resync_bytes'] or 0:>9,} "
                f"{p['proxy_cpu_millicores_max'] or 0:>8} {p['proxy_rss_mib_max'] or 0:>6} "
                f"{p.get('reading_a_feed', 0):>5} {p.get('source_switches', 0):>5}"
            )
        lines.append(
            f"EndpointSlice change -> stand-in: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms "
            f"({lat['deliveries']} deliveries, {lat['missing']} missing); to every node: p50 "
            f"{lat['all_nodes_p50_ms']} ms, p99 {lat['all_nodes_p99_ms']} ms"
        )
        lines.append(
            "every stand-in equals the API server" if not m["diverged"]
            else f"DIVERGED from the API server: {', '.join(m['diverged'])}"
        )  # fmt: skip
    for mode, v in figures.get("versus_direct", {}).items():
        share = ", ".join(
            f"{pool} {r:.2f} (pool-level goal 1/{figures['nodes'][pool]})"
            if r is not None else f"{pool} n/a"
            for pool, r in v["pool_scope_bytes"].items()
        )  # fmt: skip
        lines.append(
            f"\n[{mode} vs direct] pool-scope bytes: {share}; time to every node: p50 "
            f"x{v['all_nodes_p50']}, p99 x{v['all_nodes_p99']}"
        )
    return "\n".join(lines)
