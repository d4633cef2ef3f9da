"""The agent's main loop: observe the cluster, plan this node's data path, apply it, report.

One direction only: informers (Nodes, Gateways, Leases) and the pool's elector mark the state
dirty; one reconcile builds a :class:`~raven.view.ClusterView`, asks the pure planner for the
desired state and hands it to the reconcilers, which change only the difference. Nothing is
ever flushed: until the first successful list the kernel is left exactly as found, and when the
API server goes away the last plan stays applied (DESIGN invariant 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import signal
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent.config import AgentSettings
from agent.dataplane import DataPlane
from agent.events import EventRecorder
from agent.probe import PROBE_INTERVAL, Prober, local_probe_address
from gateway import keys
from raven.aio import cancel_and_wait
from raven.gatewayspec import selector_matches
from raven.kube import GATEWAYS, NODES, KubeClient, KubeError, leases, load_config
from raven.kube.election import LeaseElector, LeaseTimings
from raven.kube.gateways import ensure_gateway, patch_gateway_status
from raven.kube.informer import Informer
from raven.kube.nodes import publish_node_annotations, publish_tunnel_identity
from raven.model import DesiredState, Role
from raven.names import PROBE_ANNOTATION, PUBLIC_KEY_ANNOTATION, lease_name, pool_of_lease
from raven.netlink.monitor import KernelWatch
from raven.plan import analyse, plan, pool_status
from raven.view import (
    ClusterView,
    NodeView,
    cluster_view,
    lease_holder,
    node_from_k8s,
)

log = logging.getLogger("raven.agent")

#: Conditions that say the pool's own input was refused; each gets one Warning Event.
REFUSAL_CONDITIONS = ("SpecValid", "SubnetsAccepted")


def leases_by_pool(objs: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Lease name -> object, narrowed to Raven's per-pool Leases and keyed by pool."""
    return {pool: obj for name, obj in objs.items() if (pool := pool_of_lease(name)) is not None}


def sticky_holders(
    leases: Mapping[str, Mapping[str, Any]], last: dict[str, str]
) -> dict[str, Mapping[str, Any]]:
    """Pool -> Lease, where a Lease that names nobody (released, or a new pool's first moments)
    is replaced by one naming ``last[pool]``, the holder seen before. Records every named holder
    in ``last``. A holder that left the pool is still refused by the planner."""
    out: dict[str, Mapping[str, Any]] = dict(leases)
    for pool, lease in leases.items():
        holder = lease_holder(lease)
        if holder:
            last[pool] = holder
    for pool, holder in last.items():
        if not lease_holder(out.get(pool)):
            out[pool] = {"spec": {"holderIdentity": holder}}
    return out


def carrying(desired: DesiredState) -> DesiredState:
    """``desired`` with only the peers that carry traffic (the relay's standby peers, which
    have no AllowedIPs, are neither probed nor reported)."""
    return dataclasses.replace(desired, peers=tuple(p for p in desired.peers if p.allowed_ips))


class Agent:
    """One node's agent. ``await Agent(settings).run()`` until SIGTERM."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.client = KubeClient(load_config(settings.kubeconfig))
        self.keypair = keys.load_or_create(settings.state_dir)
        self.nodes = Informer(self.client, NODES)
        self.gateways = Informer(self.client, GATEWAYS)
        self.leases = Informer(self.client, leases(settings.lease_namespace))
        # pyroute2's synchronous IPRoute runs an event loop of its own, so the data plane lives
        # on one dedicated thread: every kernel call goes through ``_plane``.
        self._plane_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataplane")
        self.dataplane: DataPlane | None = None
        self.kernel_watch: KernelWatch | None = None
        self.events = EventRecorder(self.client, settings.node_name)
        self.elector: LeaseElector | None = None
        self.view: ClusterView | None = None
        self.desired: DesiredState | None = None
        self._dirty = asyncio.Event()
        # Dump the route table on the next apply: at start, after kernel drift, on the resync
        # timer and after a failed apply. Cluster changes alone trust the reconciler's view.
        self._resync_due = True
        # Pool -> the last Lease holder seen. While a pool's Lease names nobody (released, or
        # between holders) everyone keeps following it: dropping routes and peers in that gap
        # would only lose packets the old gateway may still carry (DESIGN invariant 3).
        self._last_holders: dict[str, str] = {}
        self._dead_rounds = 0  # consecutive probe rounds in which our relay peer answered nothing
        self._lease_holders: dict[str, str | None] = {}  # Lease name -> holder, as last seen
        self._node_views: dict[str, Any] = {}  # Node name -> what the agent reads of it
        self._gateway_specs: dict[str, Any] = {}  # Gateway name -> its spec, as last seen
        self._stopping = asyncio.Event()
        self._last_status: dict[str, Any] | None = None
        self._last_role: Role | None = None
        self._last_holder: str | None = None  # our pool's holder before we took over
        self._reported_problems: set[str] = set()
        self._published = False
        self._probe_address: str | None = None  # as published in our Node's annotation
        self.prober = Prober()
        self._probe_state: dict[str, bool] = {}

    # Wiring ---------------------------------------------------------------------------------

    def _mark_dirty(self, *_: object) -> None:
        self._dirty.set()

    def _watched_lease(self, name: str) -> tuple[bool, dict[str, Any] | None]:
        """The pool's Lease as the informer's watch has it, for the elector (no GETs)."""
        return self.leases.synced, self.leases.get(name)

    def _lease_event(self, kind: str, lease: dict[str, Any]) -> None:
        """A Lease changed. Renewals (several a second per pool, seen by every agent) change
        nothing the plan reads; only a new holder, or a Lease gone, is worth a reconcile."""
        name = (lease.get("metadata") or {}).get("name", "")
        holder = None if kind == "DELETED" else lease_holder(lease)
        if self._lease_holders.get(name, "?") != holder:
            self._lease_holders[name] = holder
            self._dirty.set()
            if self.elector is not None and self.elector.lease_name == name:
                self.elector.wake()  # a release is taken at once, not at the next retry

    def _node_event(self, kind: str, node: dict[str, Any]) -> None:
        """A Node changed. Kubelets rewrite their status often; only what the plan, the
        election or the probes read (pool, addresses, CIDRs, keys, readiness) is worth a
        reconcile."""
        meta = node.get("metadata") or {}
        name = meta.get("name", "")
        seen = None
        if kind != "DELETED":
            probe = (meta.get("annotations") or {}).get(PROBE_ANNOTATION)
            seen = (node_from_k8s(node, pool_label=self.settings.pool_label), probe)
        if self._node_views.get(name, "?") != seen:
            self._node_views[name] = seen
            self._dirty.set()

    def _gateway_event(self, kind: str, gateway: dict[str, Any]) -> None:
        """A Gateway changed. Gateways write their own status every few seconds; the plan
        reads only the spec."""
        name = (gateway.get("metadata") or {}).get("name", "")
        seen = None if kind == "DELETED" else gateway.get("spec")
        if self._gateway_specs.get(name, "?") != seen:
            self._gateway_specs[name] = seen
            self._dirty.set()

    def _drifted(self) -> None:
        self._resync_due = True
        self._dirty.set()

    async def _plane(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._plane_thread, fn, *args)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.dataplane = await self._plane(DataPlane, self.settings)
        # Someone deleting our route or rule, or wireguard-go dying (its link vanishes), is
        # undone by the next reconcile: within a second, not at the next resync.
        def drifted(reason: str) -> None:  # called on the watch's own thread
            loop.call_soon_threadsafe(self._drifted)

        self.kernel_watch = KernelWatch(drifted, tables=(self.settings.table,))
        self.kernel_watch.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        self.nodes.add_listener(self._node_event)
        self.gateways.add_listener(self._gateway_event)
        self.leases.add_listener(self._lease_event)
        for informer in (self.nodes, self.gateways, self.leases):
            informer.start()
        log.info(
            "agent starting node=%s wg=%s public_key=%s",
            self.settings.node_name,
            self.settings.wg_interface,
            self.keypair.public_key,
        )
        probing = asyncio.create_task(self._probe_loop(), name="tunnel-probe")
        try:
            await self._loop()
        finally:
            await cancel_and_wait(probing)
            await self._shutdown()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            if not self._published:
                await self._publish_key()
            # Clear before reconciling: a change arriving mid-round sets it again and is
            # picked up at once instead of at the next resync.
            self._dirty.clear()
            if self.nodes.synced and self.gateways.synced and self.leases.synced:
                try:
                    await self.reconcile()
                except Exception:  # one bad round must not kill the node's data path
                    log.exception("reconcile failed; the last applied state stays")
            waiters = [
                asyncio.ensure_future(self._dirty.wait()),
                asyncio.ensure_future(self._stopping.wait()),
            ]
            done, pending = await asyncio.wait(
                waiters, timeout=self.settings.resync, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()
            if not done:
                self._resync_due = True  # the periodic check: look at the kernel again

    async def _publish_key(self) -> None:
        """Publish the WireGuard public key before any election, so failover never waits."""
        try:
            await publish_tunnel_identity(
                self.client,
                self.settings.node_name,
                public_key=self.keypair.public_key,
                endpoint=None,
            )
            self._published = True
        except KubeError as error:
            log.warning("cannot publish public key yet: %s", error)

    async def _probe_loop(self) -> None:
        """Probe the peers every PROBE_INTERVAL; wake the reconcile when a peer's reachability
        flips, so Gateway status shows it at once (RTT itself is refreshed at every reconcile)."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                await self.prober.round()
            except OSError as error:
                log.warning("tunnel probe failed: %s", error)
                continue
            state = {k: (p.loss_percent or 0) < 100 for k, p in self.prober.peers.items()}
            if state != self._probe_state:
                self._probe_state = state
                self._dirty.set()
            await self._check_tunnel()

    async def _publish_probe_address(self, me: NodeView) -> None:
        assert self.dataplane is not None
        addresses = await self._plane(self.dataplane.local_addresses)
        address = local_probe_address(addresses, me.pod_cidrs)
        if address == self._probe_address:
            return
        try:
            await publish_node_annotations(
                self.client, self.settings.node_name, {PROBE_ANNOTATION: address}
            )
            self._probe_address = address
        except KubeError as error:
            log.warning("cannot publish probe address: %s", error)

    def _probe_targets(self, desired: DesiredState) -> dict[str, str]:
        """Public key -> probe address of each planned peer that published one."""
        by_key = {}
        for node in self.nodes.snapshot().values():
            annotations = node.get("metadata", {}).get("annotations") or {}
            key, address = annotations.get(PUBLIC_KEY_ANNOTATION), annotations.get(PROBE_ANNOTATION)
            if key and address:
                by_key[key] = address
        return {p.public_key: by_key[p.public_key] for p in desired.peers if p.public_key in by_key}

    async def _shutdown(self) -> None:
        log.info("agent stopping")
        if self.elector is not None:
            # Hand the lease over at once so the next candidate needs no expiry wait.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self.elector.stop(release=True)
        for informer in (self.nodes, self.gateways, self.leases):
            with contextlib.suppress(Exception):
                await informer.stop()
        await self.client.close()
        if self.kernel_watch is not None:
            self.kernel_watch.stop()
        if self.dataplane is not None:
            await self._plane(self.dataplane.close)
        self._plane_thread.shutdown(wait=False)

    # One round ------------------------------------------------------------------------------

    def _my_node(self) -> dict[str, Any] | None:
        return self.nodes.get(self.settings.node_name)

    def _holders(self, view_leases: dict[str, dict[str, Any]]) -> dict[str, Mapping[str, Any]]:
        """Pool -> Lease as the planner should see it. Our own elector reads the pool's lease
        more often than the informer, so its word wins; a Lease naming nobody keeps the last
        holder seen (see ``_last_holders``)."""
        if self.elector is not None and self.elector.seen_holder is not None:
            lease = {"spec": {"holderIdentity": self.elector.seen_holder}}
            view_leases = {**view_leases, self.elector.pool: lease}
        elif self.elector is not None and self.elector.generation and not self.elector.seen_holder:
            view_leases = {k: v for k, v in view_leases.items() if k != self.elector.pool}
        return sticky_holders(view_leases, self._last_holders)

    async def reconcile(self) -> None:
        settings = self.settings
        view = cluster_view(
            self.nodes.snapshot().values(),
            self.gateways.snapshot().values(),
            self._holders(leases_by_pool(self.leases.snapshot())),
            pool_label=settings.pool_label,
            previous=self.view,
        )
        self.view = view
        me = next((n for n in view.nodes if n.name == settings.node_name), None)
        pool = me.pool if me is not None else None
        await self._ensure_election(view, pool)

        assert self.dataplane is not None
        identity = await self._plane(self.dataplane.identity, me.internal_ip if me else None)
        if identity is None:
            log.warning("no interface holds this node's InternalIP yet; nothing applied")
            return
        desired = plan(view, identity)
        resync, self._resync_due = self._resync_due, False
        try:
            await self._plane(functools.partial(self.dataplane.apply, desired, resync=resync))
        except Exception:
            self._resync_due = True  # what failed is unknown: look at the kernel next time
            raise
        if desired != self.desired:
            log.info(
                "applied role=%s routes=%d peers=%d",
                desired.role,
                len(desired.routes),
                len(desired.peers),
            )
        self.desired = desired
        if me is not None:
            await self._publish_probe_address(me)
        if desired.role in (Role.GATEWAY, Role.RELAY):
            self.prober.set_targets(self._probe_address, self._probe_targets(carrying(desired)))
        else:
            self.prober.set_targets(None, {})
        await self._report(view, pool, desired)

    # Election -------------------------------------------------------------------------------

    def _healthy(self) -> bool:
        """Campaign only when we could serve: the relay pool can always serve; an edge
        candidate needs a relay gateway whose key it knows, or it could carry nothing."""
        view = self.view
        if view is None or self.elector is None:
            return False
        facts = analyse(view)
        if facts.relay is None:
            return False
        if facts.relay == self.elector.pool:
            return True
        relay = facts.pools.get(facts.relay)
        return relay is not None and relay.gateway is not None and bool(relay.gateway.public_key)

    def _candidate(self, view: ClusterView, pool: str) -> bool:
        gw = view.gateways.get(pool)
        me = next((n for n in view.nodes if n.name == self.settings.node_name), None)
        if me is None:
            return False
        selector = gw.spec.candidate_selector if gw is not None and gw.spec is not None else None
        return selector_matches(selector, me.labels)

    async def _ensure_election(self, view: ClusterView, pool: str | None) -> None:
        wanted = pool if pool is not None and self._candidate(view, pool) else None
        current = self.elector.pool if self.elector is not None else None
        if wanted == current:
            if self.elector is not None and not self.elector.is_holder and self._healthy():
                self.elector.wake()  # health may have just come: campaign now, not next retry
            return
        if self.elector is not None:
            await self.elector.stop(release=True)
            self.elector = None
        if wanted is None:
            return
        with contextlib.suppress(KubeError):
            await ensure_gateway(self.client, wanted)
        s = self.settings
        self.elector = LeaseElector(
            self.client,
            wanted,
            s.node_name,
            healthy=self._healthy,
            namespace=s.lease_namespace,
            lease_name=lease_name(wanted),
            timings=LeaseTimings(
                duration=max(1, round(s.lease_duration)),
                renew_interval=s.lease_renew,
                retry_interval=s.lease_retry,
                # A loaded API server may take longer than one renew interval to answer; the
                # renew deadline still bounds how long we claim the lease without proof.
                request_timeout=max(s.lease_renew, s.lease_duration / 2),
            ),
            watched=functools.partial(self._watched_lease, lease_name(wanted)),
        )
        self.elector.add_listener(self._mark_dirty)
        self.elector.start()

    # Health-driven step-down ----------------------------------------------------------------

    async def _check_tunnel(self) -> None:
        """An edge gateway whose relay peer has answered no probe for ``dead_tunnel_rounds``
        rounds in a row hands the pool to another ready candidate and stays out for
        ``step_down_backoff`` seconds. The relay never steps down this way: a dead edge says
        nothing about the relay's own health."""
        elector, desired = self.elector, self.desired
        if elector is None or desired is None or desired.role != Role.GATEWAY:
            self._dead_rounds = 0
            return
        probes = [self.prober.peers.get(p.public_key) for p in carrying(desired).peers]
        if not elector.is_holder or not probes or any(p is None or not p.results for p in probes):
            self._dead_rounds = 0
            return
        if any(p.results[-1] is not None for p in probes if p is not None):
            self._dead_rounds = 0
            return
        self._dead_rounds += 1
        if self._dead_rounds < self.settings.dead_tunnel_rounds:
            return
        other = self._ready_candidate(elector.pool)
        if other is None:
            return  # nobody could do better: keep trying ourselves
        self._dead_rounds = 0
        message = (
            f"{self.settings.node_name} steps down as gateway of pool {elector.pool}: its tunnel"
            f" to the relay answered no probe for {self.settings.dead_tunnel_rounds} rounds;"
            f" {other} is ready to take over"
        )
        log.warning("%s", message)
        await elector.step_down(self.settings.step_down_backoff)
        self._dirty.set()
        await self.events.gateway_event(elector.pool, "Warning", "GatewayStepDown", message)

    def _ready_candidate(self, pool: str) -> str | None:
        """Another node of ``pool`` that could serve: Ready, a candidate, key published."""
        view = self.view
        if view is None:
            return None
        gw = view.gateways.get(pool)
        selector = gw.spec.candidate_selector if gw is not None and gw.spec is not None else None
        for node in view.nodes:
            if (
                node.pool == pool
                and node.name != self.settings.node_name
                and node.ready
                and node.public_key
                and selector_matches(selector, node.labels)
            ):
                return node.name
        return None

    # Report ---------------------------------------------------------------------------------

    async def _report(self, view: ClusterView, pool: str | None, desired: DesiredState) -> None:
        holder = view.holders.get(pool) if pool is not None else None
        if desired.role != self._last_role:
            if desired.role in (Role.GATEWAY, Role.RELAY) and pool is not None:
                before = self._last_holder
                if before and before != self.settings.node_name:
                    reason, message = (
                        "GatewayFailover",
                        (f"{self.settings.node_name} took over pool {pool} from {before}"),
                    )
                else:
                    reason, message = (
                        "GatewayElected",
                        (f"{self.settings.node_name} is now the active gateway of pool {pool}"),
                    )
                await self.events.gateway_event(pool, "Normal", reason, message)
            self._last_role = desired.role
        if holder != self.settings.node_name:
            self._last_holder = holder
        if pool is None or desired.role not in (Role.GATEWAY, Role.RELAY):
            return
        status = pool_status(view, pool)
        # Refused input of this pool (bad spec, overlapping CIDRs) gets a Warning naming it.
        for condition in status["conditions"]:
            if condition["type"] in REFUSAL_CONDITIONS and condition["status"] == "False":
                await self._problem_event(pool, condition["reason"], condition["message"])
        assert self.dataplane is not None
        peers = await self._plane(self.dataplane.peer_status, carrying(desired), view, self.prober)
        status["peers"] = peers
        status["peersReady"] = f"{sum(p['state'] == 'Up' for p in peers)}/{len(peers)}"
        rtts = [p["rttMs"] for p in peers if p.get("rttMs") is not None]
        status["rtt"] = f"{max(rtts):.1f}ms" if rtts else ""
        self._stamp_conditions(status)
        if status == self._last_status:
            return
        try:
            await patch_gateway_status(self.client, pool, status)
            self._last_status = status
        except KubeError as error:
            log.warning("cannot write Gateway %s status: %s", pool, error)

    def _stamp_conditions(self, status: dict[str, Any]) -> None:
        """Keep lastTransitionTime from the previous status unless the condition flipped."""
        old = {c["type"]: c for c in (self._last_status or {}).get("conditions", [])}
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for condition in status["conditions"]:
            before = old.get(condition["type"])
            if before is not None and before.get("status") == condition["status"]:
                condition["lastTransitionTime"] = before.get("lastTransitionTime", now)
            else:
                condition["lastTransitionTime"] = now

    async def _problem_event(self, pool: str, reason: str, message: str) -> None:
        if message in self._reported_problems:
            return
        self._reported_problems.add(message)
        await self.events.gateway_event(pool, "Warning", reason, message)
