"""Many simulated agents in one process, for ``raven bench scale``.

A worker process runs the agents of whole pools on one event loop: each a real
:class:`agent.runtime.Agent` (informers, election, round, status writer, beacons over real UDP
on its own loopback address) with its own API client, and a recording data plane instead of the
kernel. The bench drives a worker through a pipe (:func:`worker_main`): start agents, report
their state and counters, crash a pool's gateway and time the failover, restart a node, stop.

What a worker counts about its agents is client-side (:class:`CountingClient`: requests by verb,
watch events by resource and type); the API server's own counters are the primary figures,
these are the cross-check and give the per-role split.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent.config import AgentSettings
from agent.runtime import Agent
from agent.steps import EnsureTunnel, SetPeers, SetRoutes, Step
from gateway import keys
from raven.kube import KubeClient, load_config
from raven.kube.client import JSON, ClientConfig, Timeouts
from raven.kube.resources import Resource
from raven.lab.apiserver.metrics import classify
from raven.lab.testing.dataplane import RecordingDataPlane
from raven.model import LocalAddress, Role

log = logging.getLogger("raven.bench.scale")

#: Steps each node's data plane keeps (with their times) for timing a failover.
STAMPS = 256
#: Seconds between the loop-lag probe's wake-ups, and between freezes of the heap.
LAG_TICK = 0.1
FREEZE_EVERY = 5.0


@dataclass(frozen=True)
class SimNode:
    """One simulated node: its pool, its InternalIP on the pool's /24, the loopback address its
    beacon socket binds (stand-in for the InternalIP in one process), and its pod CIDR."""

    name: str
    pool: str
    ip: str
    pod_cidr: str
    loopback: str = ""

    @property
    def probe_address(self) -> str:
        """The first address of the pod CIDR, as a CNI bridge would hold it."""
        return self.pod_cidr.rsplit(".", 1)[0] + ".1"

    def addresses(self) -> tuple[LocalAddress, ...]:
        return (
            LocalAddress(self.ip, 24, "eth0", 1500, 4),
            LocalAddress(self.probe_address, 32, "pod0", 1500, 4),
        )


@dataclass(frozen=True)
class FleetConfig:
    """What every agent of a fleet shares: the API server, the beacon port, the timings."""

    kubeconfig: str
    state_root: str
    relay_pool: str
    beacon_port: int
    lease_duration: float
    lease_renew: float
    lease_retry: float
    beacon_interval: float
    beacon_timeout: float
    beacon_stagger: float
    resync: float = 10.0


class CountingClient(KubeClient):
    """A :class:`KubeClient` that counts its requests by verb and its watch events."""

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        self.requests: Counter[str] = Counter()
        self.events: Counter[str] = Counter()  # "<resource> <type>"

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, **kw: Any
    ) -> JSON:
        self.requests[classify(method, path, params).verb] += 1
        return await super().request(method, path, params=params, **kw)

    async def watch(  # type: ignore[override]
        self, resource: Resource, **kw: Any
    ) -> AsyncIterator[JSON]:
        self.requests["watch"] += 1
        inner = super().watch(resource, **kw)
        try:
            async for event in inner:
                self.events[f"{resource.plural} {event.get('type')}"] += 1
                yield event
        finally:
            await inner.aclose()  # type: ignore[attr-defined]


class StampedPlane(RecordingDataPlane):
    """A recording data plane that keeps the last :data:`STAMPS` steps with their monotonic
    times (and no more: the fleet runs for minutes)."""

    def __init__(self, node: SimNode, public_key: str) -> None:
        super().__init__(node.addresses(), public_key=public_key)
        self.stamps: deque[tuple[float, Step]] = deque(maxlen=STAMPS)

    def run(self, step: Step) -> None:
        try:
            super().run(step)
        finally:
            self.stamps.append((time.monotonic(), step))
            if len(self.steps) > STAMPS:
                self.take()

    def first_after(self, since: float, kind: type, test: Any = None) -> float | None:
        """When the first step of ``kind`` (passing ``test``) ran after ``since``."""
        for at, step in list(self.stamps):
            if at > since and isinstance(step, kind) and (test is None or test(step)):
                return at
        return None


@dataclass
class SimAgent:
    node: SimNode
    agent: Agent
    plane: StampedPlane
    client: CountingClient
    task: asyncio.Task[None]

    @property
    def holder(self) -> bool:
        elector = self.agent.elector
        return elector is not None and elector.is_holder

    def role(self, relay_pool: str) -> str:
        """member, gateway, relay or relay-candidate (what the watches differ by)."""
        if self.node.pool == relay_pool:
            return "relay" if self.agent.memory.role == Role.RELAY else "relay-candidate"
        return "gateway" if self.agent.memory.role == Role.GATEWAY else "member"


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class FleetWorker:
    """The agents of one worker process."""

    config: FleetConfig
    agents: dict[str, SimAgent] = field(default_factory=dict)
    # InternalIP -> the loopback address its node's beacon socket listens on (every agent of
    # the process shares this one mapping).
    beacon_addresses: dict[str, str] = field(default_factory=dict)
    crashed: dict[str, SimNode] = field(default_factory=dict)
    lag_max: float = 0.0  # the loop's longest lateness since the last sample, seconds
    gc_max: float = 0.0  # the longest garbage collection since the last sample, seconds
    _gc_started: float = 0.0
    _starting: asyncio.Task[None] | None = None
    _lag: asyncio.Task[None] | None = None

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """Time each collection of the oldest generation (gc.callbacks)."""
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.monotonic()
        else:
            self.gc_max = max(self.gc_max, time.monotonic() - self._gc_started)

    async def watch_lag(self) -> None:
        """How late the loop runs what is due: many agents share it here, and a late loop
        delays beacons as a busy node would (a real agent has its own process).

        Every :data:`FREEZE_EVERY` seconds the heap is frozen (``gc.freeze``): a full
        collection then scans only what came since, as a real agent's scans only its own heap,
        a few MB, where a worker's holds hundreds of agents' (a full collection of that took
        over a second here, and a second's silence is a gateway's beacons missed)."""
        frozen = time.monotonic()
        while True:
            due = time.monotonic() + LAG_TICK
            await asyncio.sleep(LAG_TICK)
            now = time.monotonic()
            self.lag_max = max(self.lag_max, now - due)
            if now - frozen >= FREEZE_EVERY:
                gc.freeze()
                frozen = now

    rss_before_kb: int = field(default_factory=_rss_kb)

    def settings(self, node: SimNode) -> AgentSettings:
        c = self.config
        state = Path(c.state_root) / node.name
        state.mkdir(parents=True, exist_ok=True)
        return AgentSettings(
            node_name=node.name,
            state_dir=state,
            wg_interface="raven0",
            lease_duration=c.lease_duration,
            lease_renew=c.lease_renew,
            lease_retry=c.lease_retry,
            beacon_host=node.loopback,
            health_port=0,  # many agents share the process
            beacon_port=c.beacon_port,
            beacon_interval=c.beacon_interval,
            beacon_timeout=c.beacon_timeout,
            beacon_stagger=c.beacon_stagger,
            resync=c.resync,
        )

    def start_one(self, node: SimNode) -> SimAgent:
        client = CountingClient(
            load_config(self.config.kubeconfig, timeouts=Timeouts(connect=10, read=30))
        )
        settings = self.settings(node)
        # The agent loads the same key pair; the data plane reports its public key.
        plane = StampedPlane(node, keys.load_or_create(settings.state_dir).public_key)
        agent = Agent(
            settings,
            client=client,
            dataplane=lambda: plane,
            probing=False,
            watch_kernel=False,
            handle_signals=False,
            beacon_addresses=self.beacon_addresses,
        )
        task = asyncio.create_task(agent.run(), name=f"agent {node.name}")
        sim = SimAgent(node, agent, plane, client, task)
        self.agents[node.name] = sim
        return sim

    def start(self, nodes: list[SimNode], interval: float) -> int:
        """Start the agents of ``nodes``, one every ``interval`` seconds (in the background:
        as kubelets start a DaemonSet's pods, not all in one instant)."""

        self.beacon_addresses.update({n.ip: n.loopback for n in nodes})

        async def one_by_one() -> None:
            for node in nodes:
                self.start_one(node)
                await asyncio.sleep(interval)

        self._starting = asyncio.create_task(one_by_one(), name="start agents")
        self._lag = self._lag or asyncio.create_task(self.watch_lag(), name="loop lag")
        return len(nodes)

    def state(self) -> list[dict[str, Any]]:
        """Per agent: pool, whether it holds its pool's Lease, its role, the next hops of its
        routes, the keys of the peers it gives AllowedIPs (the relay's carried pools)."""
        out = []
        for sim in self.agents.values():
            out.append(
                {
                    "name": sim.node.name,
                    "pool": sim.node.pool,
                    "ip": sim.node.ip,
                    "key": sim.agent.keypair.public_key,
                    "holder": sim.holder,
                    "role": sim.role(self.config.relay_pool),
                    "via": sorted({r.gateway or "" for r in sim.plane.routes}),
                    "carrying": sorted(p.public_key for p in sim.plane.peers if p.allowed_ips),
                    "failed": sim.task.done(),
                }
            )
        return out

    def sample(self) -> dict[str, Any]:
        """This process's CPU seconds and RSS, and every agent's counters so far."""
        lag, self.lag_max = self.lag_max, 0.0
        gc_pause, self.gc_max = self.gc_max, 0.0
        return {
            "at": time.monotonic(),
            "lag_max_s": lag,
            "gc_max_s": gc_pause,
            "preemptions": sum(
                s.agent.elector.preemptions for s in self.agents.values() if s.agent.elector
            ),
            "conflicts": sum(
                s.agent.elector.conflicts for s in self.agents.values() if s.agent.elector
            ),
            "cpu_s": _cpu_s(),
            "rss_kb": _rss_kb(),
            "rss_before_kb": self.rss_before_kb,
            "threads": threading.active_count(),
            "agents": {
                name: {
                    "role": sim.role(self.config.relay_pool),
                    "requests": dict(sim.client.requests),
                    "events": dict(sim.client.events),
                }
                for name, sim in self.agents.items()
            },
        }

    async def crash(self, pool: str, timeout: float) -> dict[str, Any]:
        """Crash ``pool``'s gateway (no release: its Lease still names it) and wait until every
        other node of the pool has planned its routes to one new gateway; report when each did,
        on the monotonic clock shared by every process of the host."""
        holders = [s for s in self.agents.values() if s.node.pool == pool and s.holder]
        if len(holders) != 1:
            raise RuntimeError(f"pool {pool}: {len(holders)} gateways here, expected 1")
        old = holders[0]
        del self.agents[old.node.name]
        self.crashed[old.node.name] = old.node
        crashed_at = time.monotonic()
        old.agent.release_on_stop = False
        old.agent.stop()
        rest = [s for s in self.agents.values() if s.node.pool == pool]
        deadline = crashed_at + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            new = [s for s in rest if s.holder]
            if len(new) != 1:
                continue
            gw = new[0]
            took = gw.plane.first_after(crashed_at, EnsureTunnel)
            times = {}
            for sim in rest:
                if sim is gw:
                    continue
                times[sim.node.name] = sim.plane.first_after(
                    crashed_at,
                    SetRoutes,
                    lambda s, ip=gw.node.ip: (
                        bool(s.routes) and all(r.gateway == ip for r in s.routes)
                    ),
                )
            if took is None or any(t is None for t in times.values()):
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await old.task
            return {
                "old": old.node.name,
                "new": gw.node.name,
                "new_key": gw.agent.keypair.public_key,
                "crashed_at": crashed_at,
                "gateway_s": took - crashed_at,
                "members_s": max([t for t in times.values() if t is not None], default=took)
                - crashed_at,
                "preempted": gw.agent.elector.preemptions if gw.agent.elector else 0,
            }
        return {"old": old.node.name, "new": None, "crashed_at": crashed_at, "timeout": timeout}

    def relay_moved(self, public_key: str, since: float) -> float | None:
        """When this worker's relay first gave AllowedIPs to ``public_key`` after ``since``."""
        for sim in self.agents.values():
            if sim.node.pool != self.config.relay_pool:
                continue
            at = sim.plane.first_after(
                since,
                SetPeers,
                lambda s: any(p.public_key == public_key and p.allowed_ips for p in s.peers),
            )
            if at is not None:
                return at
        return None

    def restart(self, name: str) -> None:
        """Start a crashed node's agent again (same name, state and key)."""
        self.start_one(self.crashed.pop(name))

    async def stop_all(self) -> None:
        for sim in self.agents.values():
            sim.agent.stop()
        for sim in list(self.agents.values()):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await sim.task


async def _serve(conn: Connection, worker: FleetWorker) -> None:
    """Answer the bench's commands: ``(id, verb, args)`` in, ``(id, ok, result)`` out."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = None
            loop.call_soon_threadsafe(inbox.put_nowait, message)
            if message is None:
                return

    threading.Thread(target=read, name="bench-commands", daemon=True).start()

    async def handle(ident: int, verb: str, args: tuple[Any, ...]) -> None:
        try:
            if verb == "start":
                result: Any = worker.start(args[0], args[1])
            elif verb == "state":
                result = worker.state()
            elif verb == "sample":
                result = worker.sample()
            elif verb == "crash":
                result = await worker.crash(args[0], args[1])
            elif verb == "relay_moved":
                result = worker.relay_moved(args[0], args[1])
            elif verb == "restart":
                worker.restart(args[0])
                result = True
            else:
                raise ValueError(f"unknown command {verb!r}")
            conn.send((ident, True, result))
        except Exception as error:  # reported to the bench, which says what failed
            log.exception("command %s failed", verb)
            conn.send((ident, False, f"{type(error).__name__}: {error}"))

    tasks: set[asyncio.Task[None]] = set()
    while True:
        message = await inbox.get()
        if message is None or message[1] == "stop":
            break
        task = asyncio.create_task(handle(*message))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await worker.stop_all()
    if message is not None:
        conn.send((message[0], True, None))


def worker_main(conn: Connection, config: FleetConfig, log_file: str) -> None:
    """A worker process's entry point (multiprocessing, spawn)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.stderr = open(log_file, "a", buffering=1)  # noqa: SIM115 - for the process's lifetime
    logging.basicConfig(
        filename=log_file,
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Who took which Lease over, and why, is worth keeping (a few lines per failover).
    logging.getLogger("raven.kube.election").setLevel(logging.INFO)
    worker = FleetWorker(config)
    gc.callbacks.append(worker.on_gc)
    asyncio.run(_serve(conn, worker))
