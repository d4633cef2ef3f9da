"""The agent's executor: observe, run the round once, apply, report, in that order.

Everything the agent decides is decided by :func:`agent.round.decide` (pure); this module only
does I/O around it. A round starts when something the plan reads may have changed (an informer
event, the elector, a probe flipping, the kernel drifting, a silent gateway's patience running
out) or when the resync timer fires. Each round:

1. observes: the watched Nodes, Gateways and Leases (no copies), the elector's state, the
   kernel's addresses, the tunnel's peers, the probe windows, the beacons heard;
2. decides, once;
3. applies the steps to the data plane (its own thread), each one isolated from the others;
4. reports: Node annotations, Events, Gateway status;
5. hands the election its wish, narrows the Lease watch to the pools the plan needs, retargets
   probes and beacons.

Nothing is ever flushed: until the first successful list the kernel is left exactly as found,
and when the API server goes away the last plan stays applied (DESIGN invariant 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from agent.config import AgentSettings
from agent.dataplane import DataPlane, KernelDataPlane
from agent.metrics import AgentMetrics
from agent.nodestatus import ApplyRecord, Facts, Inventory, RoundRecord, StepResult, document
from agent.round import (
    BeaconPlan,
    Decision,
    ElectionState,
    ElectionWish,
    Memory,
    Observed,
    Params,
    decide,
)
from agent.steps import SetPeers, SetRoutes, Step
from gateway import beacon, keys
from gateway.probe import PROBE_INTERVAL, Prober
from gateway.status import peer_entries
from raven.aio import cancel_and_wait
from raven.healthserver import HealthServer
from raven.kube import GATEWAYS, NODES, KubeClient, KubeError, leases, load_config
from raven.kube.election import LeaseElector, LeaseTimings
from raven.kube.events import EventRecorder
from raven.kube.gateways import ensure_gateway, patch_gateway_status
from raven.kube.informer import Informer
from raven.kube.nodes import publish_node_annotations
from raven.model import PeerSpec, Role
from raven.names import LEASE_POOL_LABEL, RELAY_LABEL, lease_name, pool_of_lease
from raven.netlink.monitor import KernelWatch
from raven.view import lease_holder

log = logging.getLogger("raven.agent")


class _Unset:
    """No Lease watch chosen yet."""


UNSET = _Unset()


def lease_selector(scope: frozenset[str] | None) -> str:
    """The label selector of a Lease watch covering ``scope`` (None: every pool's)."""
    if scope is None:
        return LEASE_POOL_LABEL
    return f"{LEASE_POOL_LABEL} in ({','.join(sorted(scope))})"


@dataclass
class Stats:
    """What the agent did, for metrics and tests."""

    rounds: int = 0
    applied: int = 0
    apply_failures: int = 0
    status_writes: int = 0
    rechecks: int = 0  # resyncs that found nothing to re-plan and only checked the kernel
    annotation_writes: int = 0
    last_apply_ok: bool = False


class Agent:
    """One node's agent. ``await Agent(settings).run()`` until SIGTERM (or :meth:`stop`).

    ``dataplane`` and ``client`` replace the kernel and the kubeconfig's API server (the
    simulated fleet and the tests pass a recording data plane); ``probing=False`` turns the
    tunnel probes off where no tunnel carries packets, ``prober`` replaces the pinging one.
    ``beacon_addresses`` maps a node's InternalIP to the address its beacon socket really
    listens on, for many simulated nodes in one process (each on its own loopback address).
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        client: KubeClient | None = None,
        dataplane: Callable[[], DataPlane] | None = None,
        probing: bool = True,
        prober: Prober | None = None,
        watch_kernel: bool = True,
        handle_signals: bool = True,
        beacon_addresses: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.client = client or KubeClient(load_config(settings.kubeconfig))
        self.keypair = keys.load_or_create(settings.state_dir)
        self.params = Params(
            node_name=settings.node_name,
            public_key=self.keypair.public_key,
            pool_label=settings.pool_label,
            wg_dev=settings.wg_interface,
            vxlan_dev=settings.vxlan_dev,
            vxlan_vni=settings.vxlan_vni,
            vxlan_port=settings.vxlan_port,
            table=settings.table,
            rule_priority=settings.rule_priority,
            dead_tunnel_rounds=settings.dead_tunnel_rounds,
            beacon_timeout=settings.beacon_timeout,
            beacon_stagger=settings.beacon_stagger,
            status_refresh=settings.status_refresh,
            probing=probing,
            protected=api_addresses(self.client.config.server),
        )
        self.nodes = Informer(self.client, NODES)
        # Every Gateway until the first round says which this node needs (its own pool's and
        # the relay's, or every one on a candidate of the relay pool).
        self._gateway_listener = self._changed(gateway_fingerprint)
        self.gateway_scope: str | None = None
        self.gateways: tuple[Informer, ...] = self._gateway_informers(None)
        self._next_gateways: tuple[str | None, tuple[Informer, ...]] | None = None
        # No Lease watch until the first round says which pools the plan needs: a watch of
        # other pools (say, every pool's) might come from a cache proxy's stale copy while the
        # cloud is away, and a plan made from it would undo the data path.
        self.lease_scope: frozenset[str] | None | _Unset = UNSET
        self.leases: Informer | None = None
        self._next_leases: tuple[frozenset[str] | None, Informer | None] | None = None
        self._make_dataplane = dataplane or (lambda: KernelDataPlane(settings))
        self._plane_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataplane")
        self.dataplane: DataPlane | None = None
        self.kernel_watch: KernelWatch | None = None
        self._watch_kernel = watch_kernel
        self._handle_signals = handle_signals
        self.events = EventRecorder(self.client, settings.node_name)
        self.elector: LeaseElector | None = None
        self.memory = Memory()
        self.decision: Decision | None = None
        self.stats = Stats()
        self.prober = prober or Prober()
        #: Release our Lease on the way out (a crash, simulated, does not).
        self.release_on_stop = True
        self._probing = probing
        self._probe_state: dict[str, tuple[bool, bool]] = {}
        self.receiver = beacon.Receiver(private_key=self.keypair.private_key)
        self.beacons: beacon.BeaconSocket | None = None
        self.sender: beacon.BeaconSender | None = None
        self._beacon_plan = BeaconPlan()
        self._beacon_addresses = dict(beacon_addresses or {})
        self._watch_handle: asyncio.TimerHandle | None = None
        self._resolved: dict[str, str] = {}  # "host:port" -> "ip:port", the last good answer
        self._dirty = asyncio.Event()
        self._stopping = asyncio.Event()
        self._resync_due = True
        self.ready = False  # synced, and the last apply succeeded
        self.metrics = AgentMetrics()
        self.metrics.ready.set_function(lambda: 1.0 if self._readiness()[0] else 0.0)
        self.health: HealthServer | None = None
        self._round_started: float | None = None  # monotonic, while a round runs
        self._changes = 0  # changes of what a round reads, counted by the listeners
        self._planned_on: tuple[Any, ...] | None = None  # _inputs() of the last full round
        self._planned_at = 0.0  # monotonic time of the last full round
        self._timer_only = False  # the coming round was started by the resync timer alone
        self._looping = False
        # For /status: what the last apply and round did, the last error, the last kernel read.
        self.last_apply: ApplyRecord | None = None
        self.last_round: RoundRecord | None = None
        self.last_error: tuple[float, str] | None = None
        self._inventory: tuple[float, Inventory | None] | None = None  # (monotonic, read)

    # Wiring ------------------------------------------------------------------------------------

    def _lease_informer(self, scope: frozenset[str] | None) -> Informer | None:
        if scope is not None and not scope:
            return None  # not in any pool: no Lease matters
        informer = Informer(
            self.client,
            leases(self.settings.lease_namespace),
            label_selector=lease_selector(scope),
        )
        informer.add_listener(self._lease_event)
        return informer

    def mark_dirty(self, *_: object) -> None:
        self._dirty.set()

    def stop(self) -> None:
        self._stopping.set()

    def _lease_event(self, kind: str, lease: dict[str, Any]) -> None:
        """A Lease changed. Only a new holder (or a Lease gone) is worth a round; renewals are
        not. Our own pool's Lease also wakes the elector, so a release is taken at once and a
        holder that was replaced learns it at once."""
        name = (lease.get("metadata") or {}).get("name", "")
        if self.elector is not None and self.elector.lease_name == name:
            self.elector.wake()
        pool = pool_of_lease(name)
        holder = None if kind == "DELETED" else lease_holder(lease)
        seen = self.memory.view.holders.get(pool) if self.memory.view and pool else None
        if holder != seen:
            self._changes += 1
            self._dirty.set()

    def _changed(
        self, fingerprint: Callable[[Mapping[str, Any]], Any]
    ) -> Callable[[str, Any], None]:
        """An informer listener that starts a round only when what a round reads changed."""
        seen: dict[str, Any] = {}

        def listener(kind: str, obj: dict[str, Any]) -> None:
            name = (obj.get("metadata") or {}).get("name", "")
            now = None if kind == "DELETED" else fingerprint(obj)
            if seen.get(name, "?") != now:
                seen[name] = now
                if now is None:
                    del seen[name]
                self._changes += 1
                self._dirty.set()

        return listener

    def _watched_lease(self, name: str) -> tuple[bool, dict[str, Any] | None]:
        """The pool's Lease as the watch has it, for the elector (no requests)."""
        informer = self.leases
        if informer is None:
            return False, None
        return informer.synced, informer.view().get(name)

    async def _plane(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._plane_thread, fn, *args)

    def _gateway_informers(self, scope: str | None) -> tuple[Informer, ...]:
        """The watches of ``scope``'s Gateways: every one (None), else this pool's by name and
        the relay's by its label."""
        found: tuple[Informer, ...]
        if scope is None:
            found = (Informer(self.client, GATEWAYS),)
        else:
            found = (Informer(self.client, GATEWAYS, label_selector=f"{RELAY_LABEL}=true"),)
            if scope:
                found += (Informer(self.client, GATEWAYS, field_selector=f"metadata.name={scope}"),)
        for informer in found:
            informer.add_listener(self._gateway_listener)
        return found

    def _gateway_view(self) -> Mapping[str, Any]:
        if len(self.gateways) == 1:
            return self.gateways[0].view()
        merged: dict[str, Any] = {}
        for informer in self.gateways:
            merged.update(informer.view())
        return merged

    def _informers(self) -> list[Informer]:
        found = [self.nodes, *self.gateways]
        if self._next_gateways is not None:
            found += self._next_gateways[1]
        if self.leases is not None:
            found.append(self.leases)
        if self._next_leases is not None and self._next_leases[1] is not None:
            found.append(self._next_leases[1])
        return found

    # Lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.dataplane = await self._plane(self._make_dataplane)
        if self._watch_kernel:
            # Someone deleting our route or rule, or wireguard-go dying (its link vanishes), is
            # undone by the next round: within a second, not at the next resync.
            def drifted(reason: str) -> None:  # called on the watch's own thread
                loop.call_soon_threadsafe(self._drifted)

            self.kernel_watch = KernelWatch(drifted, tables=(self.settings.table,))
            self.kernel_watch.start()
        if self._handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stopping.set)
        self.nodes.add_listener(self._changed(node_fingerprint))
        for informer in self._informers():
            informer.start()
        if self.settings.health_port:
            self.health = HealthServer(
                alive=self._alive,
                ready=self._readiness,
                registry=self.metrics.registry,
                host=self.settings.health_host,
                port=self.settings.health_port,
                role=self._role,
                status=self.status_document,
            )
            await self.health.start()
        self.beacons = await beacon.BeaconSocket.open(
            self.receiver,
            host=self.settings.beacon_host,
            port=self.settings.beacon_port,
            on_beacon=self._on_beacon,
        )
        log.info(
            "agent starting node=%s wg=%s public_key=%s",
            self.settings.node_name,
            self.settings.wg_interface,
            self.keypair.public_key,
        )
        self.sender = beacon.BeaconSender(
            self.keypair.private_key,
            self.settings.node_name,
            host=self.settings.beacon_host,
            port=self.settings.beacon_port,
            interval=self.settings.beacon_interval,
        )
        self.sender.start()
        tasks: list[asyncio.Task[None]] = []
        if self._probing:
            tasks.append(asyncio.create_task(self._probe_loop(), name="tunnel-probe"))
        try:
            await self._loop()
        finally:
            for task in tasks:
                await cancel_and_wait(task)
            await self._shutdown()

    def _inputs(self) -> tuple[Any, ...]:
        """What changes what a round decides, short of the clock: changes the informers' and
        Lease listeners counted, the elector's state, the probes' verdicts, the watches."""
        elector = self.elector
        informers = (self.nodes, *self.gateways, self.leases)
        return (
            self._changes,
            tuple(informer is not None and informer.synced for informer in informers),
            (id(elector), elector.generation) if elector is not None else None,
            repr(self._probe_state),
            self.gateway_scope,
            self.lease_scope,
        )

    def _only_recheck(self) -> bool:
        """The coming round may only re-check the kernel: the resync timer alone started it,
        nothing a round reads changed since the last full round, that round had a plan to apply
        and every input synced, and Gateway status figures are not due yet."""
        decision = self.decision
        return (
            self._timer_only
            and decision is not None
            and decision.steps is not None
            and self.ready
            and self._inputs() == self._planned_on
            and time.monotonic() - self._planned_at < self.settings.status_refresh
        )

    async def _recheck_kernel(self) -> None:
        """The periodic check when nothing the plan reads changed: the last steps again, with
        the route table dumped (someone may have changed it without an event reaching us). A
        re-plan of the whole cluster every resync was most of an idle agent's CPU."""
        decision = self.decision
        assert decision is not None and decision.steps is not None  # by _only_recheck
        self._resync_due = False
        steps = tuple(
            replace(step, resync=True) if isinstance(step, SetRoutes) else step
            for step in decision.steps
        )
        await self._apply(replace(decision, steps=steps))
        self.stats.rechecks += 1

    def _alive(self) -> tuple[bool, str]:
        """Live while the round loop runs and no round has been stuck for two minutes."""
        if not self._looping:
            return False, "the round loop is not running"
        started = self._round_started
        if started is not None and time.monotonic() - started > 120:
            return False, f"a round has been running for {time.monotonic() - started:.0f}s"
        return True, ""

    def _readiness(self) -> tuple[bool, str]:
        if self.decision is None or self.stats.applied == 0:
            return False, "not synced with the API server yet, or no plan applied"
        if not self.stats.last_apply_ok:
            return False, "the last apply failed; see the agent's log"
        return True, ""

    async def _loop(self) -> None:
        self._looping = True
        try:
            await self._rounds()
        finally:
            self._looping = False

    async def _rounds(self) -> None:
        while not self._stopping.is_set():
            # Clear before the round: a change arriving mid-round sets it again and is
            # picked up at once instead of at the next resync.
            self._dirty.clear()
            self._round_started = time.monotonic()
            kind = "full"
            try:
                if self._only_recheck():
                    kind = "recheck"
                    await self._recheck_kernel()
                else:
                    await self.round()
            except Exception as error:  # one bad round must not kill the node's data path
                log.exception("round failed; the last applied state stays")
                self.metrics.round_errors.inc()
                self._resync_due = True
                self.last_error = (time.time(), f"round failed: {type(error).__name__}: {error}")
            finally:
                took = time.monotonic() - self._round_started
                self.metrics.round_seconds.observe(took)
                self.last_round = RoundRecord(time.time(), took, kind)
                self._round_started = None
            waiters = [
                asyncio.ensure_future(self._dirty.wait()),
                asyncio.ensure_future(self._stopping.wait()),
            ]
            done, pending = await asyncio.wait(
                waiters, timeout=self.settings.resync, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()
            self._timer_only = not done
            if not done:
                self._resync_due = True  # the periodic check: look at the kernel again

    async def _shutdown(self) -> None:
        log.info("agent stopping")
        if self._watch_handle is not None:
            self._watch_handle.cancel()
        if self.elector is not None:
            # Hand the lease over at once so the next candidate needs no wait.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self.elector.stop(release=self.release_on_stop)
        for informer in self._informers():
            with contextlib.suppress(Exception):
                await informer.stop()
        if self.beacons is not None:
            self.beacons.close()
        if self.sender is not None:
            self.sender.close()
        if self.health is not None:
            await self.health.stop()
        await self.client.close()
        if self.kernel_watch is not None:
            self.kernel_watch.stop()
        if self.dataplane is not None:
            await self._plane(self.dataplane.close)
        self._plane_thread.shutdown(wait=False)

    def _drifted(self) -> None:
        self._resync_due = True
        self._dirty.set()

    # One round ---------------------------------------------------------------------------------

    async def observe(self) -> Observed:
        self._swap_lease_watch()
        self._swap_gateway_watch()
        assert self.dataplane is not None
        synced = all(i.synced for i in (self.nodes, *self.gateways))
        leases_synced = not isinstance(self.lease_scope, _Unset) and (
            self.leases is None or self.leases.synced
        )
        addresses = await self._plane(self.dataplane.addresses)
        carrying = self.memory.role in (Role.GATEWAY, Role.RELAY)
        tunnel = await self._plane(self.dataplane.tunnel) if carrying else None
        elector = self.elector
        election = ElectionState()
        if elector is not None:
            election = ElectionState(
                pool=elector.pool,
                is_holder=elector.is_holder,
                seen_holder=elector.seen_holder,
                known=elector.generation > 0,
                out=elector.out,
                api_ok=elector.last_error is None or elector.is_holder,
            )
        lease_objs: dict[str, dict[str, Any]] = {}
        if self.leases is not None:
            for name, obj in self.leases.view().items():
                pool = pool_of_lease(name)
                if pool is not None:
                    lease_objs[pool] = obj
        resync, self._resync_due = self._resync_due, False
        return Observed(
            synced=synced,
            leases_synced=leases_synced,
            now=time.time(),
            clock=time.monotonic(),
            nodes=self.nodes.view(),
            gateways=self._gateway_view(),
            leases=lease_objs,
            election=election,
            addresses=addresses,
            tunnel=tunnel,
            probes=self.prober.windows(),
            beacons=dict(self.receiver.fit_at),
            resync=resync,
        )

    async def round(self) -> Decision:
        self._planned_on, self._planned_at = self._inputs(), time.monotonic()
        observed = await self.observe()
        decision, self.memory = decide(observed, self.memory, self.params)
        self.decision = decision
        self.stats.rounds += 1
        if not (observed.synced and observed.leases_synced):
            self._resync_due = observed.resync or self._resync_due
            if observed.synced:
                self._retarget_leases(decision.lease_scope)  # the first round: which Leases
                self._retarget_gateways(decision.gateway_scope)
            return decision
        await self._apply(decision)
        for note in decision.notes:
            log.info("%s", note)
        await self._report(decision)
        await self._follow_election(decision.election)
        self._retarget(decision)
        self._measure(observed, decision)
        return decision

    def _role(self) -> dict[str, object]:
        """What ``/role`` says, as of the last round: this node's pool, whether it is the pool's
        active gateway (the heartbeat relay repeats it to the pool's members), the gateway's
        name and InternalIP (``holder``, ``holderAddress``; null while there is none) and the
        pool's nodes (``members``, sorted): what the cache-proxy's pool-level reuse follows."""
        view = self.memory.view
        me = name = self.settings.node_name
        pool = holder = address = None
        members: list[str] = []
        if view is not None:
            mine = next((n for n in view.nodes if n.name == name), None)
            pool = mine.pool if mine is not None else None
            holder = view.holders.get(pool) if pool is not None else None
            if pool is not None:
                members = sorted(n.name for n in view.nodes if n.pool == pool)
            held = next((n for n in view.nodes if n.name == holder), None) if holder else None
            address = held.internal_ip if held is not None else None
        return {
            "node": me,
            "pool": pool,
            "gateway": bool(holder) and holder == me,
            "holder": holder or None,
            "holderAddress": address,
            "members": members,
        }

    async def status_document(self) -> dict[str, Any]:
        """What ``/status`` answers (:mod:`agent.nodestatus`): the last round's view of this
        node, and what Raven owns in the kernel, read at most once a second."""
        view = self.memory.view
        name = self.settings.node_name
        pool = holder = None
        if view is not None:
            mine = next((n for n in view.nodes if n.name == name), None)
            pool = mine.pool if mine is not None else None
            holder = view.holders.get(pool) if pool is not None else None
        s = self.stats
        return document(
            Facts(
                node=name,
                pool=pool,
                holder=holder,
                relay_pool=view.relay if view is not None else None,
                role=self.memory.role,
                ready=self._readiness(),
                desired=self.memory.desired,
                inventory=await self._read_inventory(),
                last_apply=self.last_apply,
                last_round=self.last_round,
                last_error=self.last_error,
                counts={
                    "rounds": s.rounds,
                    "applies": s.applied,
                    "applyFailures": s.apply_failures,
                    "statusWrites": s.status_writes,
                    "rechecks": s.rechecks,
                },
            )
        )

    async def _read_inventory(self) -> Inventory | None:
        cached = self._inventory
        if cached is not None and time.monotonic() - cached[0] < 1.0:
            return cached[1]
        read = getattr(self.dataplane, "inventory", None)
        found: Inventory | None = None
        if callable(read):
            try:
                async with asyncio.timeout(5):
                    found = await self._plane(read)
            except Exception as error:  # noqa: BLE001 - the endpoint says what it could
                log.warning("cannot read the kernel for /status: %s", error)
        self._inventory = (time.monotonic(), found)
        return found

    def _measure(self, observed: Observed, decision: Decision) -> None:
        m, view = self.metrics, self.memory.view
        writes = getattr(self.dataplane, "writes_by_kind", None)
        if callable(writes):
            m.kernel_writes(writes())
        if view is None:
            return
        me = next((n for n in view.nodes if n.name == self.settings.node_name), None)
        m.holders(view.holders, me=self.settings.node_name, my_pool=me.pool if me else None)
        for event in decision.events:
            if event.reason in ("GatewayElected", "GatewayFailover"):
                m.elections.labels(event.pool).inc()
        desired = decision.desired
        if desired is None or me is None or me.pool is None:
            return
        if desired.role not in (Role.GATEWAY, Role.RELAY):
            m.peers.update(me.pool, [], observed.now)
            return
        entries = []
        tunnel = observed.tunnel
        for entry in peer_entries(desired, view, tunnel, observed.probes, observed.now):
            live = tunnel.peer(entry["publicKey"]) if tunnel is not None else None
            if live is not None:
                entry |= {
                    "handshakeAt": live.latest_handshake or None,
                    "rxBytes": live.rx_bytes,
                    "txBytes": live.tx_bytes,
                }
            entries.append(entry)
        m.peers.update(me.pool, entries, observed.now)

    # Apply -------------------------------------------------------------------------------------

    async def _apply(self, decision: Decision) -> None:
        if decision.steps is None:
            return
        steps = await self._resolve(decision.steps)
        assert self.dataplane is not None
        started, at = time.monotonic(), time.time()
        results: list[StepResult] = []
        failures = await self._plane(self._run_steps, self.dataplane, steps, results)
        self.last_apply = ApplyRecord(at, time.monotonic() - started, tuple(results))
        self.stats.applied += 1
        self.stats.last_apply_ok = not failures
        self.ready = not failures
        if failures:
            self.stats.apply_failures += 1
            self._resync_due = True  # what failed is unknown: look at the kernel next time
            for step, error in failures:
                log.error("applying %s failed: %s", type(step).__name__, error)
            step, error = failures[0]
            self.last_error = (time.time(), f"applying {type(step).__name__} failed: {error}")

    @staticmethod
    def _run_steps(
        plane: DataPlane, steps: tuple[Step, ...], results: list[StepResult]
    ) -> list[tuple[Step, str]]:
        """Run every step (on the data plane's thread); a required one that fails stops the
        rest. Returns the failures; appends each step's outcome and writes to ``results``."""
        failures: list[tuple[Step, str]] = []
        counter = getattr(plane, "writes_by_kind", None)

        def writes() -> int | None:
            return sum(counter().values()) if callable(counter) else None

        for step in steps:
            before = writes()
            error_text = ""
            try:
                plane.run(step)
            except Exception as error:  # noqa: BLE001 - reported per step, the rest still run
                error_text = f"{type(error).__name__}: {error}"
                failures.append((step, error_text))
            after = writes()
            delta = after - before if after is not None and before is not None else None
            results.append(StepResult(type(step).__name__, not error_text, delta, error_text))
            if error_text and getattr(step, "required", False):
                break
        return failures

    async def _resolve(self, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        """Peers whose endpoint names a host get the host's address, looked up off the loop
        with a deadline; an unanswered lookup keeps the last good address (or none, so the
        endpoint WireGuard learned from handshakes stays)."""
        out: list[Step] = []
        for step in steps:
            if isinstance(step, SetPeers) and any(_needs_lookup(p) for p in step.peers):
                peers = [await self._resolve_peer(p) for p in step.peers]
                step = SetPeers(tuple(peers))
            out.append(step)
        return tuple(out)

    async def _resolve_peer(self, peer: PeerSpec) -> PeerSpec:
        if not _needs_lookup(peer):
            return peer
        assert peer.endpoint is not None
        host, _, port = peer.endpoint.rpartition(":")
        try:
            async with asyncio.timeout(2):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, int(port), type=socket.SOCK_DGRAM
                )
            ip = ipaddress.ip_address(infos[0][4][0])
            resolved = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
            self._resolved[peer.endpoint] = resolved
        except (OSError, TimeoutError, IndexError, ValueError) as error:
            resolved = self._resolved.get(peer.endpoint, "")
            log.warning("cannot resolve endpoint %s: %s", peer.endpoint, error)
        return replace(peer, endpoint=resolved or None)

    # Report ------------------------------------------------------------------------------------

    async def _report(self, decision: Decision) -> None:
        if decision.annotations:
            try:
                await publish_node_annotations(
                    self.client, self.settings.node_name, dict(decision.annotations)
                )
                self.stats.annotation_writes += 1
            except KubeError as error:
                log.warning("cannot publish this node's annotations: %s", error)
        for pool, labels in decision.gateway_labels.items():
            try:
                await self.client.merge_patch(GATEWAYS, pool, {"metadata": {"labels": labels}})
            except KubeError as error:
                log.warning("cannot label Gateway %s: %s", pool, error)
        for event in decision.events:
            log.log(
                logging.WARNING if event.type == "Warning" else logging.INFO,
                "%s: %s",
                event.reason,
                event.message,
            )
            await self.events.gateway_event(
                event.pool, event.type, event.reason, event.message, uid=event.uid
            )
        if decision.status is not None:
            pool, status = decision.status
            try:
                await patch_gateway_status(self.client, pool, status)
                self.stats.status_writes += 1
            except KubeError as error:
                log.warning("cannot write Gateway %s status: %s", pool, error)
                # Not written: make the next round (a full one) try again.
                self.memory = replace(self.memory, status=None)
                self._planned_on = None

    # Election, watches, probes, beacons --------------------------------------------------------

    async def _follow_election(self, wish: ElectionWish | None) -> None:
        if wish is None:
            return
        current = self.elector.pool if self.elector is not None else None
        if wish.pool != current:
            if self.elector is not None:
                await self.elector.stop(release=True)
                self.elector = None
            if wish.pool is None:
                return
            with contextlib.suppress(KubeError):
                await ensure_gateway(self.client, wish.pool)
            self.elector = self._new_elector(wish.pool, wish.campaign)
            self.elector.add_listener(self.mark_dirty)
            self.elector.start()
            return
        elector = self.elector
        assert elector is not None
        if elector.campaign != wish.campaign:
            elector.campaign = wish.campaign
            elector.wake()
        if wish.step_down is not None:
            await elector.step_down(self.settings.step_down_backoff)
            self._dirty.set()
        if wish.preempt is not None:
            elector.preempt(wish.preempt)

    def _new_elector(self, pool: str, campaign: bool) -> LeaseElector:
        s = self.settings
        name = lease_name(pool)
        return LeaseElector(
            self.client,
            pool,
            s.node_name,
            campaign=campaign,
            namespace=s.lease_namespace,
            lease_name=name,
            timings=LeaseTimings(
                duration=max(1, round(s.lease_duration)),
                renew_interval=s.lease_renew,
                retry_interval=s.lease_retry,
                # A loaded API server may take longer than one renew interval to answer; the
                # renew deadline still bounds how long we claim the lease without proof.
                request_timeout=max(1.0, min(s.lease_renew, s.lease_duration / 2)),
            ),
            watched=lambda: self._watched_lease(name),
        )

    def _retarget_leases(self, scope: frozenset[str] | None) -> None:
        """Start watching ``scope``'s Leases; the watch in use is swapped once it has listed."""
        if scope == self.lease_scope or (
            self._next_leases is not None and self._next_leases[0] == scope
        ):
            return
        if self._next_leases is not None and self._next_leases[1] is not None:
            asyncio.ensure_future(self._next_leases[1].stop())
        informer = self._lease_informer(scope)
        if informer is not None:
            informer.start()
            asyncio.ensure_future(self._wake_when_synced(informer))
        else:
            self._dirty.set()  # a watch of nothing is ready at once
        self._next_leases = (scope, informer)

    async def _wake_when_synced(self, informer: Informer) -> None:
        """A new Lease watch's first listing starts a round, even when it lists nothing."""
        with contextlib.suppress(asyncio.CancelledError):
            await informer.wait_synced()
            self._dirty.set()

    def _retarget_gateways(self, scope: str | None) -> None:
        """Start watching ``scope``'s Gateways; swapped in once every one of them has listed."""
        if scope == self.gateway_scope or (
            self._next_gateways is not None and self._next_gateways[0] == scope
        ):
            return
        if self._next_gateways is not None:
            for stale in self._next_gateways[1]:
                asyncio.ensure_future(stale.stop())
        informers = self._gateway_informers(scope)
        for informer in informers:
            informer.start()
            asyncio.ensure_future(self._wake_when_synced(informer))
        self._next_gateways = (scope, informers)

    def _swap_gateway_watch(self) -> None:
        if self._next_gateways is None:
            return
        scope, informers = self._next_gateways
        if not all(i.synced for i in informers):
            return
        old, self.gateways, self.gateway_scope = self.gateways, informers, scope
        self._next_gateways = None
        for informer in old:
            asyncio.ensure_future(informer.stop())

    def _retarget(self, decision: Decision) -> None:
        self._retarget_leases(decision.lease_scope)
        self._retarget_gateways(decision.gateway_scope)
        self.prober.set_targets(decision.probe_source, decision.probe_targets)
        plan = decision.beacons
        where = self._beacon_addresses
        self.receiver.expect(
            plan.pool,
            {
                name: beacon.Peer(key, where.get(addr, addr))
                for name, (key, addr) in plan.peers.items()
            },
        )
        self._beacon_plan = plan
        if self.sender is not None:
            self.sender.set(
                plan.pool,
                tuple(
                    beacon.Target(t.name, where.get(t.address, t.address), t.public_key)
                    for t in plan.targets
                ),
                plan.fit,
            )
        self._arm_watch()

    def _swap_lease_watch(self) -> None:
        """Switch to the narrowed (or widened) Lease watch once it has listed."""
        if self._next_leases is None:
            return
        scope, informer = self._next_leases
        if informer is not None and not informer.synced:
            return
        old, self.leases, self.lease_scope = self.leases, informer, scope
        self._next_leases = None
        if old is not None:
            asyncio.ensure_future(old.stop())

    def _on_beacon(self, sender: str) -> None:
        watch = self._beacon_plan.watch
        if watch is not None and watch[0] == sender:
            self._arm_watch()

    def _arm_watch(self) -> None:
        """Wake a round when the watched holder's silence reaches our patience."""
        if self._watch_handle is not None:
            self._watch_handle.cancel()
            self._watch_handle = None
        watch = self._beacon_plan.watch
        if watch is None:
            return
        holder, patience = watch
        heard = self.receiver.fit_at.get(holder)
        if heard is None:
            return  # never heard in this term: the Lease's expiry decides
        delay = heard + patience - time.monotonic()
        if delay > 0:  # past it, the round has seen the silence already: no wake-up loop
            self._watch_handle = asyncio.get_running_loop().call_later(
                delay + 0.01, self._dirty.set
            )

    async def _probe_loop(self) -> None:
        """Probe the peers every PROBE_INTERVAL; wake a round when a peer's reachability flips
        or its silence reaches the step-down threshold, so status and step-down follow."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                await self.prober.round()
            except OSError as error:
                log.warning("tunnel probe failed: %s", error)
                continue
            rounds = self.settings.dead_tunnel_rounds
            state = {
                key: (window.loss_percent == 100, window.silent_for(rounds))
                for key, window in self.prober.windows().items()
            }
            if state != self._probe_state:
                self._probe_state = state
                self._dirty.set()


def api_addresses(server: str) -> tuple[str, ...]:
    """The API server's addresses as far as they are IP literals: the kubeconfig's server and,
    in a pod, the ``kubernetes`` Service. Raven must never route them into a tunnel."""
    found = []
    host = urlsplit(server).hostname
    for candidate in (host, os.environ.get("KUBERNETES_SERVICE_HOST")):
        try:
            found.append(str(ipaddress.ip_address(candidate or "")))
        except ValueError:
            continue
    return tuple(sorted(set(found)))


def _needs_lookup(peer: PeerSpec) -> bool:
    if peer.endpoint is None:
        return False
    host = peer.endpoint.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def node_fingerprint(node: Mapping[str, Any]) -> Any:
    """What a round reads of a Node: kubelets rewrite the rest (heartbeat times, images,
    capacity) often, and that must not cost every agent a round."""
    meta = node.get("metadata") or {}
    status = node.get("status") or {}
    annotations = meta.get("annotations") or {}
    conditions = status.get("conditions") or []
    return repr(
        (
            meta.get("labels"),
            {k: v for k, v in annotations.items() if str(k).startswith("raven.io/")}
            if isinstance(annotations, dict)
            else annotations,
            meta.get("creationTimestamp"),
            node.get("spec"),
            status.get("addresses"),
            [
                (c.get("type"), c.get("status"))
                for c in conditions
                if isinstance(c, dict) and c.get("type") == "Ready"
            ]
            if isinstance(conditions, list)
            else conditions,
        )
    )


def gateway_fingerprint(gateway: Mapping[str, Any]) -> Any:
    """What a round reads of a Gateway: its spec and identity. Gateways rewrite their own
    status every few seconds; that is for operators, not for other agents' plans."""
    meta = gateway.get("metadata") or {}
    return repr((gateway.get("spec"), meta.get("uid"), meta.get("generation")))
