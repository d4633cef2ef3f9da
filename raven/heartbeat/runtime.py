"""The ``raven-heartbeat`` process: a thin executor around :func:`raven.heartbeat.decide.decide`.

Every interval (one :meth:`Heartbeat.tick`): probe the own path, the kubelet and the agent's role
at once; debounce; update the relay's view (its node reaches the cloud only while the own path is
up; tunnels it carries are ended when that stops); while the own path is down, ask the pool's
relays (only the current one while it stays ready); decide; write the cloud path file when the
route changed; hand the marks and Events to the reporter.

The reporter runs in a task of its own, so a slow API server never delays the probes: it writes
after every change and retries every interval while anything wanted is unwritten, except while
the path is ``none`` (nothing can reach the API server then).

On stop the path file is left as it is: the cache-proxy keeps the route it has, and a heartbeat
restarted on a cut node resumes from it instead of going direct for a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from raven.aio import cancel_and_wait
from raven.cloudpath import NONE, VIA, CloudPath, CloudPathError, read_path, write_path
from raven.healthserver import HealthServer
from raven.heartbeat.admission import RelayView, normal_ip
from raven.heartbeat.decide import (
    Decision,
    Inputs,
    RelayAnswer,
    State,
    Verdict,
    debounce,
    decide,
    relays_to_ask,
)
from raven.heartbeat.members import Member, PoolMembers
from raven.heartbeat.metrics import HeartbeatMetrics
from raven.heartbeat.probes import Probes, ProbeTargets
from raven.heartbeat.relay import Relay
from raven.heartbeat.report import Reporter
from raven.heartbeat.settings import Settings
from raven.kube import KubeClient, load_config

USER_AGENT = "raven-heartbeat"
log = logging.getLogger(__name__)


def upstream_address(upstream: str) -> tuple[str, int]:
    """(host lowercased or canonical IP, port) of an https:// URL (port 443 when not given)."""
    parts = urlsplit(upstream)
    host = parts.hostname or ""
    return normal_ip(host) or host.lower(), parts.port or 443


async def resolve_targets(upstream: str) -> frozenset[tuple[str, int]]:
    """The API server's address as the relay allows it: the URL's host:port and, when the host
    is a name, the addresses it resolves to (a failed look-up yields the name alone)."""
    host, port = upstream_address(upstream)
    targets = {(host, port)}
    if normal_ip(host) is None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            for *_, sockaddr in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                ip = normal_ip(str(sockaddr[0]))
                if ip is not None:
                    targets.add((ip, port))
    return frozenset(targets)


def _start(coro: Awaitable[None], name: str) -> asyncio.Task[None]:
    """A named task whose unexpected end is logged (a dead loop must not go unnoticed)."""

    async def guarded() -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task %s failed", name)
            raise

    return asyncio.create_task(guarded(), name=name)


class Heartbeat:
    def __init__(
        self,
        settings: Settings,
        *,
        client: KubeClient | None = None,
        probes: Probes | None = None,
    ) -> None:
        self.settings = s = settings
        self.client = client or KubeClient(load_config(s.kubeconfig), user_agent=USER_AGENT)
        self.probes = probes or Probes(
            ProbeTargets(
                upstream=s.upstream,
                ca_cert=str(s.ca_cert) if s.ca_cert else None,
                kubelet=s.kubelet_healthz,
                agent_role=s.agent_role,
                timeout=s.probe_timeout,
                keepalive=max(30.0, 3 * s.probe_interval),
            )
        )
        self.metrics = HeartbeatMetrics()
        self.members = PoolMembers(self.client, s.node, s.pool_label)
        self.reporter = Reporter(self.client, s.node, taint=s.taint_delegated)
        self.relay = Relay(
            RelayView(node=s.node),
            host=s.relay_host,
            port=s.relay_port,
            limits=s.relay_limits,
            on_refusal=lambda reason: self.metrics.refusals.labels(reason).inc(),
        )
        self.metrics.tunnels.set_function(lambda: self.relay.open_tunnels)
        self.direct = Verdict()
        self.kubelet = Verdict()
        self.gateway = False
        self.targets = frozenset({upstream_address(s.upstream)})
        try:
            current = read_path(s.path_file)
        except CloudPathError as e:
            log.warning("ignoring the path file: %s", e)
            current = CloudPath()
        self.state = State(current, current.via if current.mode == VIA else "")
        self.written: CloudPath | None = current  # the route the path file holds
        self.reporter.want(self.state.marks)
        self.metrics.show_mode(current.mode)
        self.health: HealthServer | None = None
        self.ticks = 0
        self._last_tick = time.monotonic()
        self._stopping = asyncio.Event()
        self._report_wake = asyncio.Event()

    # Lifecycle --------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def start(self) -> None:
        """Open the relay and the health port and start following the pool."""
        await self.relay.start()
        if self.settings.health_port >= 0:
            self.health = HealthServer(
                alive=self._alive,
                ready=self._ready,
                registry=self.metrics.registry,
                host=self.settings.health_host,
                port=self.settings.health_port,
            )
            await self.health.start()
        self.members.start()

    async def run(self, *, handle_signals: bool = True) -> None:
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        await self.start()
        # One line on stdout once the relay listens, as the cache-proxy prints its own.
        print(f"raven-heartbeat relay listening on port {self.relay.port}", flush=True)
        log.info(
            "heartbeat node=%s relay=%s:%d path=%s",
            self.settings.node,
            self.settings.relay_host,
            self.relay.port,
            self.state.path.describe(),
        )
        tasks = [
            _start(self._every(self.settings.probe_interval, self.tick), "heartbeat-ticks"),
            _start(self._report_loop(), "heartbeat-report"),
            _start(self._every(self.settings.resolve_every, self._resolve), "heartbeat-resolve"),
        ]
        try:
            await asyncio.wait(
                [*tasks, asyncio.ensure_future(self._stopping.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in tasks:
                await cancel_and_wait(task)
            await self.close()

    async def close(self) -> None:
        log.info("heartbeat stopping; the path file stays %s", self.state.path.describe())
        await self.relay.stop()
        await self.members.stop()
        if self.health is not None:
            await self.health.stop()
        await self.probes.close()
        await self.client.close()

    async def _every(self, interval: float, step: Callable[[], Awaitable[object]]) -> None:
        """Run ``step`` at a fixed rate (a slow step delays the next one, never doubles it)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await step()
            except Exception:  # one bad interval must not end the heartbeat
                log.exception("heartbeat step failed")
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    # One interval -----------------------------------------------------------------------------

    async def tick(self) -> Decision:
        s = self.settings
        direct_ok, kubelet_ok, gateway = await asyncio.gather(
            self.probes.direct(), self.probes.kubelet(), self.probes.gateway()
        )
        self.direct = debounce(
            self.direct, direct_ok, fail_after=s.fail_after, recover_after=s.recover_after
        )
        self.kubelet = debounce(
            self.kubelet, kubelet_ok, fail_after=s.kubelet_fail_after, recover_after=1
        )
        self.gateway = gateway
        members = self.members.members()
        await self._update_relay(members)
        answers: tuple[RelayAnswer, ...] = ()
        if self.direct.up is False and self.kubelet.up:
            answers = await self._ask_relays(members)
        decision = decide(Inputs(self.direct.up, self.kubelet.up, answers, time.time()), self.state)
        self._follow(decision)
        self.ticks += 1
        self._last_tick = time.monotonic()
        self.metrics.direct_up.set(1 if self.direct.up else 0)
        self.metrics.kubelet_healthy.set(1 if self.kubelet.up else 0)
        self.metrics.members.set(len(members))
        return decision

    async def _update_relay(self, members: tuple[Member, ...]) -> None:
        old = self.relay.view
        view = RelayView(
            node=self.settings.node,
            pool=self.members.pool,
            members=frozenset(ip for m in members for ip in m.addresses),
            targets=self.targets,
            reaches_cloud=self.direct.up is True,
            gateway=self.gateway,
        )
        self.relay.view = view
        if old.reaches_cloud and not view.reaches_cloud and self.relay.open_tunnels:
            log.warning(
                "own path to the API server is down: ending %d relayed tunnels so members "
                "move to another relay",
                self.relay.open_tunnels,
            )
            await self.relay.close_tunnels()

    async def _ask_relays(self, members: tuple[Member, ...]) -> tuple[RelayAnswer, ...]:
        port, timeout = self.settings.relay_port, self.settings.relay_timeout
        urls = {m.name: m.relay_url(port) for m in members}
        first = relays_to_ask(self.state.path, tuple(urls))
        answers = await self.probes.relays(((n, urls[n]) for n in first), timeout)
        if len(first) < len(urls) and not any(a.ready for a in answers):
            rest = [(n, u) for n, u in urls.items() if n not in first]
            answers += await self.probes.relays(rest, timeout)
        return answers

    def _follow(self, decision: Decision) -> None:
        old, new = self.state.path, decision.state.path
        self.state = decision.state
        if not new.same_route(old):
            self.metrics.transitions.inc()
            self.metrics.show_mode(new.mode)
            log.warning(
                "cloud path %s -> %s (own path %s, kubelet %s)",
                old.describe(),
                new.describe(),
                "up" if self.direct.up else "down",
                "healthy" if self.kubelet.up else "unhealthy",
            )
        if self.written is None or not new.same_route(self.written):
            try:
                write_path(self.settings.path_file, new)
                self.written = new
            except OSError as e:
                self.written = None  # try again next interval
                log.error("cannot write the path file %s: %s", self.settings.path_file, e)
        if decision.events or self.reporter.marks != decision.state.marks:
            self.reporter.want(decision.state.marks, decision.events)
            self._report_wake.set()

    async def _report_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.probe_interval):
                    await self._report_wake.wait()
            self._report_wake.clear()
            if self.state.path.mode == NONE or self.reporter.done:
                continue
            self.reporter.node_uid = self.members.node_uid
            await self.reporter.flush()

    async def _resolve(self) -> None:
        self.targets = await resolve_targets(self.settings.upstream)

    # Health -----------------------------------------------------------------------------------

    def _alive(self) -> tuple[bool, str]:
        late = time.monotonic() - self._last_tick
        limit = 3 * self.settings.probe_interval + 10.0
        if late > limit:
            return False, f"no probe interval completed for {late:.0f}s"
        return True, ""

    def _ready(self) -> tuple[bool, str]:
        if not self.members.known:
            return False, "the pool's members are not known yet"
        if self.direct.up is None:
            return False, "no path decided yet"
        return True, ""
