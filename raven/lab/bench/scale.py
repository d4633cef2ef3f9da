"""``raven bench scale``: what a fleet of P pools × N nodes costs the API server, and how fast a
crashed gateway is replaced at that size.

Each phase starts its own API server (``python -m raven.lab.apiserver`` on loopback, fresh state
and PKI, its own process so its CPU is apart from the agents'; watch bookmarks once a minute,
as kube-apiserver sends them), creates the Nodes (pool label, InternalIP 172.a.b.c on the
pool's /24, podCIDR, Ready, and the key and probe annotations their agents publish) and every
pool's Gateway (the relay pool's with ``relay: true``), as after an earlier run: the fleet
restarts, it is not installed, so its start is not a storm of new objects every agent reads
and plans for. It starts P × N simulated agents (:mod:`raven.lab.bench.scalefleet`),
``start_rate`` a second, in ``workers`` processes, all nodes of a pool in one process. Then:

1. startup: time until every pool has one Lease holder, every member routes through its pool's
   gateway and the relay gives every edge gateway its pool's AllowedIPs (steady state);
2. steady window: after ``settle`` seconds more, the API server's counters (its ``/metrics``)
   and the workers' (client-side, per role, and CPU and RSS) are read at the start and the end
   of ``window`` seconds; the bench itself sends the API server nothing in between;
3. crashes: ``trials`` times, one edge pool's gateway is crashed (no Lease release) and the
   bench times, on the host's monotonic clock, until the new gateway plans its tunnel, every
   other member of that pool has planned its routes through it, and the relay has moved the
   pool's AllowedIPs to it; the crashed node is started again between trials.

Many agents share one event loop here, where each would have its own process: a loop that
runs late (``worker_lag_max_s``) delays beacons as a busy node would, and a gateway whose
beacons are late past ``beacon_timeout`` is taken over though alive (``window_preemptions``
counts takeovers in the steady window, where there should be none). Both are reported, not
hidden: when they are not zero the machine did not hold that size.

Phases: ``lease-only`` (today's election: Lease duration 2 s, renew 0.5 s, retry 0.25 s, no
beacons) at ``baseline_pools``, then ``beacons`` (the agent's defaults) at every size in
``pools``. The figures, their ratios and the arithmetic to 1,000 pools × 20 nodes are in
:mod:`raven.lab.bench.scalereport`. Everything started is stopped, also on errors.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agent.config import AgentSettings
from gateway import keys
from raven.kube import GATEWAYS, NODES, KubeClient, load_config
from raven.lab.apiserver.kubeconfig import write_kubeconfig
from raven.lab.apiserver.pki import make_pki
from raven.lab.apiserver_proc import ApiServerError, wait_ready
from raven.lab.bench import scalereport
from raven.lab.bench.scalefleet import FleetConfig, SimNode, worker_main
from raven.lab.testing.kube import install_crds
from raven.names import POOL_LABEL, PROBE_ANNOTATION, PUBLIC_KEY_ANNOTATION

RELAY_POOL = "cloud"
#: kube-apiserver sends a watch BOOKMARK about once a minute; the lab server's default is 5 s.
BOOKMARK_INTERVAL = 60.0
CRASH_TIMEOUT = 30.0
#: A worker whose agents keep its loop busy (a startup storm) answers late, but answers.
COMMAND_TIMEOUT = 300.0
render = scalereport.render


class BenchError(Exception):
    """The benchmark could not run or could not measure; the message says what failed."""


class Unsteady(BenchError):
    """The fleet did not reach a steady state in time (the message says what was missing)."""


@dataclass(frozen=True)
class Mode:
    """Election timings of a phase."""

    name: str
    lease_duration: float
    lease_renew: float
    lease_retry: float
    beacon_interval: float
    beacon_timeout: float
    beacon_stagger: float


def _default(name: str) -> float:
    return float(AgentSettings.model_fields[name].default)


BEACONS = Mode(
    "beacons",
    _default("lease_duration"),
    _default("lease_renew"),
    _default("lease_retry"),
    _default("beacon_interval"),
    _default("beacon_timeout"),
    _default("beacon_stagger"),
)
#: Today's election: crashes noticed by the Lease's expiry alone. Beacons are sent once and
#: then every 10 minutes, and a holder is presumed dead only after an hour of silence: off.
LEASE_ONLY = Mode("lease-only", 2.0, 0.5, 0.25, 600.0, 3600.0, 0.25)


# The cluster ------------------------------------------------------------------------------------


def layout(pools: int, nodes: int) -> list[list[SimNode]]:
    """Pool 0 is the relay pool ``cloud``, the others ``edge-001`` …; pool p's LAN is
    172.(16 + p // 250).(p % 250).0/24, node n has .(n + 1) on it; pod CIDRs are 10.x.y.0/24.
    Each node's beacon socket listens on the loopback address with the same last three bytes
    (127.(1 + p // 250).(p % 250).(n + 1)): the agents of one process tell each other apart
    there, as nodes do by their InternalIPs."""
    out = []
    for p in range(pools):
        pool = RELAY_POOL if p == 0 else f"edge-{p:03d}"
        members = []
        for n in range(nodes):
            k = p * nodes + n
            members.append(
                SimNode(
                    name=f"{pool}-{n:02d}",
                    pool=pool,
                    ip=f"172.{16 + p // 250}.{p % 250}.{n + 1}",
                    loopback=f"127.{1 + p // 250}.{p % 250}.{n + 1}",
                    pod_cidr=f"10.{k // 256}.{k % 256}.0/24",
                )
            )
        out.append(members)
    return out


def _node_body(node: SimNode, public_key: str) -> dict[str, Any]:
    """The Node, with the annotations its agent publishes already there (module docstring)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {POOL_LABEL: node.pool, "kubernetes.io/hostname": node.name},
            "annotations": {
                PUBLIC_KEY_ANNOTATION: public_key,
                PROBE_ANNOTATION: node.probe_address,
            },
        },
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
    }


def _node_status(node: SimNode) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.ip},
                {"type": "Hostname", "address": node.name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        }
    }


async def _populate(kubeconfig: Path, cluster: list[list[SimNode]], state_root: Path) -> None:
    async with KubeClient(load_config(kubeconfig)) as kube:
        await install_crds(kube)
        limit = asyncio.Semaphore(16)

        async def gateway(pool: str) -> None:
            async with limit:
                await kube.create(
                    GATEWAYS,
                    {
                        "apiVersion": GATEWAYS.api_version,
                        "kind": GATEWAYS.kind,
                        "metadata": {"name": pool},
                        "spec": {"relay": True} if pool == RELAY_POOL else {},
                    },
                )

        await asyncio.gather(*(gateway(members[0].pool) for members in cluster))

        async def one(node: SimNode) -> None:
            key = keys.load_or_create(state_root / node.name).public_key
            async with limit:
                await kube.create(NODES, _node_body(node, key))
                await kube.merge_patch(NODES, node.name, _node_status(node), subresource="status")

        await asyncio.gather(*(one(n) for pool in cluster for n in pool))


# The API server ---------------------------------------------------------------------------------


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class ApiServer:
    proc: subprocess.Popen[bytes]
    url: str
    kubeconfig: Path
    ca_cert: Path
    token: str

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The server's counters: (sample name, sorted labels) -> value."""
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        request = urllib.request.Request(
            f"{self.url}/metrics", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, context=ctx, timeout=30) as answer:
            text = answer.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
        return out

    def cpu_s(self) -> float:
        return _proc_cpu_s(self.proc.pid)

    def rss_mb(self) -> float:
        return _proc_rss_mb(self.proc.pid)


@contextmanager
def api_server(directory: Path) -> Iterator[ApiServer]:
    pki = make_pki(directory / "pki", ["127.0.0.1"])
    port = _free_port(socket.SOCK_STREAM)
    url = f"https://127.0.0.1:{port}"
    log_file = directory / "apiserver.log"
    argv = [
        sys.executable,
        "-m",
        "raven.lab.apiserver",
        "--state-dir",
        str(directory / "state"),
        "--listen",
        f"127.0.0.1:{port}",
        "--cert",
        str(pki.server_cert),
        "--key",
        str(pki.server_key),
        "--token-file",
        str(pki.token_file),
        "--bookmark-interval",
        str(BOOKMARK_INTERVAL),
    ]
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        try:
            wait_ready(url, pki.ca_cert, proc, timeout=30, log_file=log_file)
        except ApiServerError as e:
            raise BenchError(str(e)) from e
        kubeconfig = write_kubeconfig(directory / "kubeconfig", url, pki.ca_cert, pki.token)
        yield ApiServer(proc, url, kubeconfig, pki.ca_cert, pki.token)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# The workers ------------------------------------------------------------------------------------


class Workers:
    """``count`` worker processes; one command at a time to each."""

    def __init__(self, count: int, config: FleetConfig, log_dir: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.logs = [log_dir / f"worker-{i}.log" for i in range(count)]
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        self._ident = 0
        for i in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(child, config, str(self.logs[i])),
                name=f"raven-scale-worker-{i}",
                daemon=True,
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def send(self, i: int, verb: str, *args: Any) -> int:
        self._ident += 1
        self.conns[i].send((self._ident, verb, args))
        return self._ident

    def receive(self, i: int, ident: int, timeout: float) -> Any:
        conn = self.conns[i]
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not conn.poll(left):
                raise BenchError(f"worker {i} did not answer within {timeout:.0f}s")
            try:
                got, ok, result = conn.recv()
            except (EOFError, OSError):
                raise BenchError(f"worker {i} died; its log: {self._tail(i)}") from None
            if got != ident:
                continue
            if not ok:
                raise BenchError(f"worker {i}: {result}; its log: {self._tail(i)}")
            return result

    def call(self, i: int, verb: str, *args: Any, timeout: float = COMMAND_TIMEOUT) -> Any:
        return self.receive(i, self.send(i, verb, *args), timeout)

    def call_all(
        self, verb: str, per_worker: list[tuple[Any, ...]] | None = None, timeout: float = 60
    ) -> list[Any]:
        idents = [
            self.send(i, verb, *(per_worker[i] if per_worker else ()))
            for i in range(len(self.conns))
        ]
        return [self.receive(i, ident, timeout) for i, ident in enumerate(idents)]

    def _tail(self, i: int) -> str:
        try:
            return self.logs[i].read_text(errors="replace")[-1500:] or "(empty)"
        except OSError:
            return "(none)"

    def close(self) -> None:
        for i in range(len(self.conns)):
            try:
                self.receive(i, self.send(i, "stop"), 30)
            except (BenchError, OSError):
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# Steady state -----------------------------------------------------------------------------------


def unsteady(states: list[dict[str, Any]], relay_pool: str, expected: int) -> str | None:
    """Why the fleet is not in steady state yet (None: it is): all ``expected`` agents run,
    every pool has one Lease holder, every other node routes through it, the relay carries
    every edge gateway."""
    if len(states) < expected:
        return f"{len(states)} of {expected} agents started"
    pools: dict[str, list[dict[str, Any]]] = {}
    for state in states:
        if state["failed"]:
            return f"the agent of {state['name']} ended"
        pools.setdefault(state["pool"], []).append(state)
    gateway_keys = set()
    relay: dict[str, Any] | None = None
    for pool, members in sorted(pools.items()):
        holders = [s for s in members if s["holder"]]
        if len(holders) != 1:
            return f"pool {pool} has {len(holders)} gateways"
        gw = holders[0]
        if pool == relay_pool:
            relay = gw
        else:
            gateway_keys.add(gw["key"])
        for s in members:
            if s is not gw and s["via"] != [gw["ip"]]:
                return f"{s['name']} routes via {s['via'] or 'nothing'}, not {gw['name']}"
    if relay is None:
        return f"no gateway in the relay pool {relay_pool}"
    if set(relay["carrying"]) != gateway_keys:
        missing = len(gateway_keys - set(relay["carrying"]))
        return f"the relay {relay['name']} does not carry {missing} edge gateways yet"
    return None


def _wait_steady(workers: Workers, expected: int, deadline_s: float, say: Any) -> float:
    started = time.monotonic()
    why = "not asked yet"
    told = started
    while time.monotonic() - started < deadline_s:
        states = [s for part in workers.call_all("state", timeout=COMMAND_TIMEOUT) for s in part]
        why = unsteady(states, RELAY_POOL, expected) or ""
        if not why:
            return time.monotonic() - started
        if time.monotonic() - told >= 15:
            told = time.monotonic()
            say(f"  {told - started:.0f}s: {why}")
        time.sleep(1.0)
    raise Unsteady(f"no steady state after {deadline_s:.0f}s: {why}")


# One phase --------------------------------------------------------------------------------------


def _phase(
    mode: Mode,
    pools: int,
    nodes: int,
    workers_n: int,
    window: float,
    settle: float,
    trials: int,
    start_rate: float,
    root: Path,
    say: Any,
) -> dict[str, Any]:
    directory = root / f"{mode.name}-{pools}x{nodes}"
    directory.mkdir(parents=True)
    cluster = layout(pools, nodes)
    workers_n = max(1, min(workers_n, pools))
    share: list[list[SimNode]] = [[] for _ in range(workers_n)]
    owner: dict[str, int] = {}
    for p, members in enumerate(cluster):
        share[p % workers_n] += members
        owner[members[0].pool] = p % workers_n
    agents = pools * nodes
    with api_server(directory / "api") as api:
        asyncio.run(_populate(api.kubeconfig, cluster, directory / "nodes"))
        config = FleetConfig(
            kubeconfig=str(api.kubeconfig),
            state_root=str(directory / "nodes"),
            relay_pool=RELAY_POOL,
            beacon_port=_free_port(socket.SOCK_DGRAM),
            lease_duration=mode.lease_duration,
            lease_renew=mode.lease_renew,
            lease_retry=mode.lease_retry,
            beacon_interval=mode.beacon_interval,
            beacon_timeout=mode.beacon_timeout,
            beacon_stagger=mode.beacon_stagger,
        )
        workers = Workers(workers_n, config, directory)
        try:
            workers.call_all("state", timeout=120)  # every worker is up and idle
            say(
                f"{mode.name} {pools}x{nodes}: starting {agents} agents in {workers_n} workers,"
                f" {start_rate:g} a second"
            )

            interval = workers_n / start_rate
            workers.call_all("start", [(s, interval) for s in share], timeout=COMMAND_TIMEOUT)
            startup: float | None = None
            try:
                startup = _wait_steady(workers, agents, 60 + agents / 2, say)
            except Unsteady as e:
                # Measured all the same (what a churning fleet costs), and said so; no crashes.
                say(f"  {e}; measuring {window:.0f}s anyway")
                unsteady_why: str | None = str(e)
                trials = 0
            else:
                unsteady_why = None
                say(f"  steady after {startup:.1f}s; settling {settle:.0f}s, window {window:.0f}s")
            time.sleep(settle)
            before = _snapshot(api, workers)
            time.sleep(window)
            after = _snapshot(api, workers)
            states = [
                s for part in workers.call_all("state", timeout=COMMAND_TIMEOUT) for s in part
            ]
            steady_still = unsteady(states, RELAY_POOL, agents)
            crashes = []
            for trial in range(min(trials, pools - 1)):
                pool = cluster[1 + trial][0].pool
                try:
                    _wait_steady(workers, agents, 60, say)
                except Unsteady as e:
                    say(f"  crash trials stopped: {e}")
                    crashes.append({"pool": pool, "old": None, "new": None, "skipped": str(e)})
                    break
                time.sleep(2)  # the candidates hear the gateway's beacons in its term
                crashes.append(_crash(workers, owner, pool))
                say(f"  crash {pool}: {scalereport.crash_line(crashes[-1])}")
            return scalereport.phase_figures(
                mode=mode.name,
                pools=pools,
                nodes=nodes,
                workers=workers_n,
                startup_s=startup,
                unsteady=unsteady_why,
                start_rate=start_rate,
                before=before,
                after=after,
                states=states,
                steady_after_window=steady_still,
                crashes=crashes,
            )
        finally:
            workers.close()


def _snapshot(api: ApiServer, workers: Workers) -> dict[str, Any]:
    samples = workers.call_all("sample", timeout=COMMAND_TIMEOUT)
    return {
        "at": time.monotonic(),
        "api": api.scrape(),
        "api_cpu_s": api.cpu_s(),
        "api_rss_mb": api.rss_mb(),
        "workers": samples,
    }


def _crash(workers: Workers, owner: dict[str, int], pool: str) -> dict[str, Any]:
    result: dict[str, Any] = workers.call(
        owner[pool], "crash", pool, CRASH_TIMEOUT, timeout=CRASH_TIMEOUT + 30
    )
    result["pool"] = pool
    if result.get("new"):
        deadline = time.monotonic() + 15
        moved = None
        while moved is None and time.monotonic() < deadline:
            moved = workers.call(
                owner[RELAY_POOL], "relay_moved", result["new_key"], result["crashed_at"]
            )
            if moved is None:
                time.sleep(0.1)
        result["relay_s"] = None if moved is None else moved - result["crashed_at"]
    workers.call(owner[pool], "restart", result["old"])
    return result


# The benchmark ----------------------------------------------------------------------------------


def run(
    pools: str = "10,50",
    nodes: int = 10,
    workers: int | None = None,
    window: float = 60.0,
    settle: float = 5.0,
    trials: int = 3,
    baseline_pools: int = 10,
    start_rate: float = 20.0,
    verbose: bool = False,
) -> dict[str, Any]:
    try:
        sizes = sorted({int(p) for p in str(pools).split(",") if p.strip()})
    except ValueError:
        raise BenchError(f"--pools {pools!r}: expected sizes like 10,50") from None
    if not sizes or any(not 2 <= p <= 2000 for p in sizes):
        raise BenchError(f"--pools {pools!r}: every size must be 2..2000 pools")
    if not 2 <= nodes <= 250:
        raise BenchError(f"--nodes {nodes}: expected 2..250 (one /24 of loopback per pool)")
    if baseline_pools and not 2 <= baseline_pools <= 2000:
        raise BenchError(f"--baseline-pools {baseline_pools}: expected 0 (none) or 2..2000")
    if window <= 0 or settle < 0:
        raise BenchError(f"--window {window} must be > 0 and --settle {settle} >= 0")
    if not 0 < start_rate <= 10_000:
        raise BenchError(f"--start-rate {start_rate}: expected agents a second in (0, 10000]")
    if trials < 0:
        raise BenchError(f"--trials {trials}: expected >= 0")
    cores = os.cpu_count() or 1
    workers = workers or cores
    if not 1 <= workers <= 64:
        raise BenchError(f"--workers {workers}: expected 1..64")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the API server inherits it
    needed = 6 * max(sizes + [baseline_pools]) * nodes + 100
    if hard < needed:
        raise BenchError(f"the open-file limit {hard} is below the {needed} this size needs")

    def say(line: str) -> None:
        if verbose:
            print(line, file=sys.stderr, flush=True)

    root = Path(tempfile.mkdtemp(prefix="raven-bench-scale-"))
    phases = []
    began = time.monotonic()
    try:
        if baseline_pools:
            phases.append(
                _phase(
                    LEASE_ONLY,
                    baseline_pools,
                    nodes,
                    workers,
                    window,
                    settle,
                    trials,
                    start_rate,
                    root,
                    say,
                )
            )
        for size in sizes:
            phases.append(
                _phase(BEACONS, size, nodes, workers, window, settle, trials, start_rate, root, say)
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return scalereport.summary(phases, cores=cores, took_s=time.monotonic() - began)
