"""The agent's round: what was observed plus the agent's memory -> what to do. Pure.

One call of :func:`decide` is one round. It reads an :class:`Observed` (the watched Nodes,
Gateways and Leases, what the elector proved and saw, the kernel's addresses, the tunnel's
peers, the probe windows and the beacons heard) and the agent's :class:`Memory` (one value,
returned anew), and answers a :class:`Decision`: the data path to apply, the Node annotations
to publish, the Gateway status to write, the Events to record, what the election should do,
which Leases to watch, whom to probe and whom to send beacons to. It does no I/O and never
raises; :mod:`agent.runtime` observes, calls it once, applies, reports and hands the election
its wish, in that order.

Who carries a pool (DESIGN invariant 3): the holder of the pool's Lease as this node sees it.
For its own pool that is what the elector last read or wrote (it reads the same watch and sees
its own writes first); for other pools the watched Lease. While a Lease names nobody (a
release, a new pool) the last holder seen is kept, so a stepping-down gateway keeps carrying
traffic until another node takes over.

When the own pool's holder stops sending beacons (gateway.beacon) for ``beacon_timeout`` seconds
after this node heard it at least once in its term, a healthy candidate asks the elector to
preempt it; candidates are staggered by their rank (``beacon_stagger`` each) so one of them
usually writes alone. That is how a crash is noticed in about a second while the holder
renews its Lease only every few seconds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agent.steps import Step, steps_for
from gateway import status as gateway_status
from gateway.dump import DeviceStatus
from gateway.probe import ProbeWindow, local_probe_address
from raven.gatewayspec import selector_matches
from raven.model import DesiredState, LocalAddress, Problem, Role
from raven.names import (
    PROBE_ANNOTATION,
    PUBLIC_KEY_ANNOTATION,
    RELAY_LABEL,
    TUNNEL_ENDPOINT_ANNOTATION,
)
from raven.nodeview import as_mapping
from raven.plan import analyse, leases_needed, plan
from raven.resourceversion import newer
from raven.view import ClusterView, Identity, NodeView, cluster_view, lease_holder

JSON = dict[str, Any]


@dataclass(frozen=True)
class Params:
    """The agent's settings the round reads (from :class:`agent.config.AgentSettings`)."""

    node_name: str
    public_key: str
    pool_label: str
    wg_dev: str
    vxlan_dev: str
    vxlan_vni: int
    vxlan_port: int
    table: int
    rule_priority: int
    dead_tunnel_rounds: int = 3
    beacon_timeout: float = 1.25
    beacon_stagger: float = 0.25
    status_refresh: float = 60.0
    #: Addresses Raven must never route (the API server's): a pod CIDR covering one is refused.
    protected: tuple[str, ...] = ()
    #: Whether probes run: a gateway's relay peer that answers none of the last
    #: ``dead_tunnel_rounds`` probes is dead only when there are probes.
    probing: bool = True


@dataclass(frozen=True)
class ElectionState:
    """What the elector of this node's pool proved and saw (all empty when there is none)."""

    pool: str | None = None
    is_holder: bool = False  # proved by our last write
    seen_holder: str | None = None  # what the Lease said when the elector last read or wrote it
    known: bool = False  # the elector has read or written the Lease at least once
    out: bool = False  # staying out after a step-down
    api_ok: bool = True  # its last request got an answer


@dataclass(frozen=True)
class Observed:
    """Everything one round reads. ``nodes``/``gateways`` map names to the watched objects;
    ``leases`` maps pools to their watched Lease (only the pools the watch covers)."""

    synced: bool  # Nodes and Gateways listed
    now: float  # wall clock, seconds (conditions, handshake ages)
    clock: float  # monotonic seconds (beacon silence)
    nodes: Mapping[str, JSON] = field(default_factory=dict)
    gateways: Mapping[str, JSON] = field(default_factory=dict)
    leases: Mapping[str, JSON] = field(default_factory=dict)
    election: ElectionState = ElectionState()
    addresses: tuple[LocalAddress, ...] = ()
    tunnel: DeviceStatus | None = None
    probes: Mapping[str, ProbeWindow] = field(default_factory=dict)
    beacons: Mapping[str, float] = field(default_factory=dict)  # node -> clock of last fit one
    resync: bool = False  # the kernel should be compared afresh (timer, drift, failed apply)
    leases_synced: bool = True  # the Leases of the pools the plan needs are listed


@dataclass(frozen=True)
class EventSpec:
    """One Event to record about a Gateway (its ``uid`` lets kubectl describe find it)."""

    pool: str
    uid: str
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class ElectionWish:
    """The election this node should be in (``pool`` None: none), whether to campaign, and
    whether to step down (``step_down``: why) or take over from a silent holder."""

    pool: str | None = None
    campaign: bool = False
    step_down: str | None = None
    preempt: str | None = None


@dataclass(frozen=True)
class BeaconTarget:
    name: str
    address: str
    public_key: str


@dataclass(frozen=True)
class BeaconPlan:
    """Send beacons to ``targets`` (we carry the pool) saying ``fit``; accept beacons from
    ``peers`` (name -> (public key, address)) for ``pool``; ``watch`` = (holder, seconds of
    silence after which this node acts), to be woken when that passes."""

    pool: str | None = None
    targets: tuple[BeaconTarget, ...] = ()
    fit: bool = True
    peers: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    watch: tuple[str, float] | None = None


@dataclass(frozen=True)
class Decision:
    """What the runtime does after a round. ``steps`` None: leave the kernel as it is."""

    steps: tuple[Step, ...] | None = None
    desired: DesiredState | None = None
    annotations: Mapping[str, str | None] = field(default_factory=dict)  # merge into our Node
    status: tuple[str, JSON] | None = None  # (pool, status) to write
    events: tuple[EventSpec, ...] = ()
    election: ElectionWish | None = None  # None: leave the election as it is
    lease_scope: frozenset[str] | None = frozenset()  # pools whose Leases to watch; None: all
    # Gateways to watch: None every one (a candidate of the relay pool), else this pool's own
    # (by name; "" for none) besides the relay's (by its label).
    gateway_scope: str | None = None
    # Labels the relay keeps on Gateways (pool -> label -> value, None removes it).
    gateway_labels: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    probe_source: str | None = None
    probe_targets: Mapping[str, str] = field(default_factory=dict)  # public key -> address
    beacons: BeaconPlan = BeaconPlan()
    notes: tuple[str, ...] = ()  # worth a log line


@dataclass(frozen=True)
class Memory:
    """What the agent remembers between rounds; :func:`decide` returns the next one."""

    view: ClusterView | None = None
    last_holders: Mapping[str, str] = field(default_factory=dict)
    lease_versions: Mapping[str, str] = field(default_factory=dict)  # pool -> newest seen
    holder_since: Mapping[str, tuple[str, float]] = field(default_factory=dict)  # pool ->
    desired: DesiredState | None = None
    role: Role | None = None
    holder_before: str | None = None  # our pool's holder before we took it over
    status: JSON | None = None  # as last written
    status_at: float = 0.0  # monotonic time of that write
    reported: frozenset[Problem] = frozenset()  # refusals already sent as Events


# Inputs --------------------------------------------------------------------------------------


def own_pool_lease(obs: Observed, pool: str | None) -> JSON | None:
    """Our pool's Lease as the elector last saw it, when it has (it is at least as fresh as
    the watch: it reads the watch and sees its own writes first)."""
    election = obs.election
    if pool is None or election.pool != pool or not election.known:
        return None
    return {"spec": {"holderIdentity": election.seen_holder or ""}}


def newest_leases(
    leases: Mapping[str, Mapping[str, Any]], mem: Memory
) -> tuple[dict[str, Mapping[str, Any]], dict[str, str]]:
    """(pool -> Lease, pool -> its resourceVersion) where a Lease older than one already seen
    (a lagging watch, or a cache proxy's older copy while the cloud is away) is replaced by
    the holder seen with the newer one: a pool's gateway never moves back in time."""
    out: dict[str, Mapping[str, Any]] = {}
    versions = {}
    for pool, lease in leases.items():
        rv = as_mapping(as_mapping(lease).get("metadata")).get("resourceVersion")
        seen = mem.lease_versions.get(pool)
        if seen is not None and newer(seen, rv):
            out[pool] = {"spec": {"holderIdentity": mem.last_holders.get(pool, "")}}
            versions[pool] = seen
            continue
        out[pool] = lease
        if isinstance(rv, str) and rv:
            versions[pool] = rv
    return out, versions


def sticky_holders(
    leases: Mapping[str, Mapping[str, Any]], last: Mapping[str, str]
) -> tuple[dict[str, Mapping[str, Any]], dict[str, str]]:
    """(pool -> Lease, new last holders): a Lease that names nobody (released, or a new pool's
    first moments) is replaced by one naming the holder seen before. A holder that left the
    pool is still refused by the planner."""
    out: dict[str, Mapping[str, Any]] = dict(leases)
    remembered = dict(last)
    for pool, lease in leases.items():
        holder = lease_holder(lease)
        if holder:
            remembered[pool] = holder
    for pool, holder in remembered.items():
        if not lease_holder(out.get(pool)):
            out[pool] = {"spec": {"holderIdentity": holder}}
    return out, remembered


def identity(p: Params, me: NodeView | None, addresses: Iterable[LocalAddress]) -> Identity | None:
    """The planner's identity of this node: the link holding its InternalIP is its underlay.
    None while no local address is the InternalIP (the node's network is not up yet)."""
    if me is None or me.internal_ip is None:
        return None
    addresses = tuple(addresses)
    underlay = next((a for a in addresses if a.address == me.internal_ip), None)
    if underlay is None:
        return None
    subnets = sorted(
        {
            ipaddress.ip_interface(f"{a.address}/{a.prefixlen}").network
            for a in addresses
            if a.dev == underlay.dev
        },
        key=lambda n: (n.version, n.network_address, n.prefixlen),
    )
    return Identity(
        node_name=p.node_name,
        underlay_dev=underlay.dev,
        underlay_mtu=min(max(underlay.mtu, 1280), 65535),
        underlay_family=underlay.family,
        underlay_subnets=tuple(n.with_prefixlen for n in subnets),
        wg_dev=p.wg_dev,
        vxlan_dev=p.vxlan_dev,
        vxlan_vni=p.vxlan_vni,
        vxlan_port=p.vxlan_port,
        table=p.table,
        rule_priority=p.rule_priority,
        protected=p.protected,
    )


def _selector(view: ClusterView, pool: str) -> Any:
    gw = view.gateways.get(pool)
    return gw.spec.candidate_selector if gw is not None and gw.spec is not None else None


def candidates(view: ClusterView, pool: str) -> list[NodeView]:
    """The nodes of ``pool`` that may carry it, by name."""
    selector = _selector(view, pool)
    return sorted(
        (n for n in view.nodes if n.pool == pool and selector_matches(selector, n.labels)),
        key=lambda n: n.name,
    )


# The round -----------------------------------------------------------------------------------


def decide(obs: Observed, mem: Memory, p: Params) -> tuple[Decision, Memory]:
    """One round (module docstring). Never raises for any observation."""
    if not obs.synced:
        # Nothing is known yet: the kernel stays exactly as found (DESIGN invariant 4).
        return Decision(election=None, lease_scope=None, gateway_scope=None), mem
    if not obs.leases_synced:
        # Nodes and Gateways say which pools' Leases the plan needs (it does not depend on the
        # holders); until those are listed, nothing is planned.
        view = cluster_view(obs.nodes.values(), obs.gateways.values(), {}, pool_label=p.pool_label)
        scope = leases_needed(view, p.node_name)
        me = next((n for n in view.nodes if n.name == p.node_name), None)
        gateways = _gateway_scope(scope, me.pool if me is not None else None, view, obs.gateways)
        return Decision(election=None, lease_scope=scope, gateway_scope=gateways), mem

    raw_nodes = obs.nodes
    me_raw = as_mapping(raw_nodes.get(p.node_name))
    pool0 = as_mapping(as_mapping(me_raw.get("metadata")).get("labels")).get(p.pool_label)
    pool0 = pool0 if isinstance(pool0, str) and pool0 else None

    watched, lease_versions = newest_leases(obs.leases, mem)
    own = own_pool_lease(obs, pool0)
    if own is not None and pool0 is not None:
        watched[pool0] = own
    # Pools whose Lease is no longer watched are forgotten: their last holder says nothing now.
    remembered = {k: v for k, v in mem.last_holders.items() if k in watched or k == pool0}
    leases, last_holders = sticky_holders(watched, remembered)
    view = cluster_view(
        raw_nodes.values(),
        obs.gateways.values(),
        leases,
        pool_label=p.pool_label,
        previous=mem.view,
    )
    me = next((n for n in view.nodes if n.name == p.node_name), None)
    pool = me.pool if me is not None else None
    holder = view.holders.get(pool) if pool is not None else None

    holder_since = dict(mem.holder_since)
    if pool is not None and (holder_since.get(pool) or ("", 0.0))[0] != (holder or ""):
        holder_since[pool] = (holder or "", obs.clock)

    notes: list[str] = []
    me_identity = identity(p, me, obs.addresses)
    desired: DesiredState | None = None
    steps: tuple[Step, ...] | None = None
    if me is not None and me_identity is None:
        notes.append("no interface holds this node's InternalIP yet; nothing applied")
    elif me_identity is not None:
        desired = plan(view, me_identity)
        steps = steps_for(desired, wg_dev=p.wg_dev, resync=obs.resync or mem.desired is None)
    if desired is not None and desired != mem.desired:
        notes.append(
            f"applied role={desired.role} routes={len(desired.routes)} peers={len(desired.peers)}"
        )
    role = desired.role if desired is not None else (mem.role or Role.NONE)
    carrying_pool = role in (Role.GATEWAY, Role.RELAY) and pool is not None

    # Report: annotations, events, status.
    probe_address = local_probe_address(
        [a.address for a in obs.addresses], me.pod_cidrs if me is not None else ()
    )
    annotations = _annotation_delta(
        me_raw,
        {
            PUBLIC_KEY_ANNOTATION: p.public_key,
            TUNNEL_ENDPOINT_ANNOTATION: None,
            PROBE_ANNOTATION: probe_address,
        },
    )
    uid = _uid(obs.gateways.get(pool)) if pool is not None else ""
    events: list[EventSpec] = []
    holder_before = mem.holder_before
    if desired is not None and role != mem.role and carrying_pool and pool is not None:
        if holder_before and holder_before != p.node_name:
            message = f"{p.node_name} took over pool {pool} from {holder_before}"
            events.append(EventSpec(pool, uid, "Normal", "GatewayFailover", message))
        else:
            message = f"{p.node_name} is now the active gateway of pool {pool}"
            events.append(EventSpec(pool, uid, "Normal", "GatewayElected", message))
    if holder != p.node_name:
        holder_before = holder

    status_write: tuple[str, JSON] | None = None
    status, status_at, reported = mem.status, mem.status_at, mem.reported
    if carrying_pool and desired is not None and pool is not None:
        orphans = _unreported(view) if role == Role.RELAY else frozenset()
        built = gateway_status.build(
            view,
            pool,
            desired,
            obs.tunnel,
            obs.probes,
            now=obs.now,
            previous=mem.status,
            problems=orphans,
        )
        # Each refusal the pool depends on gets one Warning on its Gateway, naming the object
        # and the field; one that is gone and comes back is reported again.
        refusals = frozenset(p for p in view.problems if pool in p.pools) | orphans
        for problem in sorted(refusals - reported):
            events.append(EventSpec(pool, uid, "Warning", problem.reason, str(problem)))
        reported = refusals
        if gateway_status.due(
            built, mem.status, written_at=mem.status_at, now=obs.clock, refresh=p.status_refresh
        ):
            status_write = (pool, built)
            status, status_at = built, obs.clock

    # Probes: the active gateway probes the peers that carry traffic.
    probe_targets: dict[str, str] = {}
    if carrying_pool and desired is not None:
        by_key = {n.public_key: n for n in view.nodes if n.public_key}
        for peer in desired.peers:
            node = by_key.get(peer.public_key)
            if peer.allowed_ips and node is not None and node.probe_address is not None:
                probe_targets[peer.public_key] = node.probe_address

    election, beacons, wake_note = _election(obs, view, me, pool, holder, desired, holder_since, p)
    if wake_note:
        notes.append(wake_note)
    if election.step_down is not None and pool is not None:
        events.append(EventSpec(pool, uid, "Warning", "GatewayStepDown", election.step_down))

    lease_scope = leases_needed(view, p.node_name)
    decision = Decision(
        steps=steps,
        desired=desired,
        annotations=annotations,
        status=status_write,
        events=tuple(events),
        election=election,
        lease_scope=lease_scope,
        gateway_scope=_gateway_scope(lease_scope, pool, view, obs.gateways),
        gateway_labels=_relay_labels(obs.gateways) if role == Role.RELAY else {},
        probe_source=probe_address if carrying_pool else None,
        probe_targets=probe_targets,
        beacons=beacons,
        notes=tuple(notes),
    )
    memory = replace(
        mem,
        view=view,
        last_holders=last_holders,
        lease_versions=lease_versions,
        holder_since=holder_since,
        desired=desired if desired is not None else mem.desired,
        role=role,
        holder_before=holder_before,
        status=status,
        status_at=status_at,
        reported=reported,
    )
    return decision, memory


def _gateway_scope(
    lease_scope: frozenset[str] | None,
    pool: str | None,
    view: ClusterView,
    gateways: Mapping[str, Any],
) -> str | None:
    """Every Gateway for a candidate of the relay pool (it needs every pool's, as it needs every
    pool's Lease); else just this node's pool's, the relay's coming by its label, once the
    relay's Gateway carries it (until then, a narrowed watch would lose sight of the relay)."""
    if lease_scope is None or view.relay is None:
        return None
    relay = as_mapping(gateways.get(view.relay))
    if as_mapping(as_mapping(relay.get("metadata")).get("labels")).get(RELAY_LABEL) != "true":
        return None
    return pool or ""


def _relay_labels(gateways: Mapping[str, Any]) -> dict[str, dict[str, str | None]]:
    """The relay label each Gateway lacks or should lose: "true" exactly while its spec says
    relay. Which of several such Gateways is the relay stays the view's choice (the oldest)."""
    out: dict[str, dict[str, str | None]] = {}
    for obj in gateways.values():
        meta = as_mapping(as_mapping(obj).get("metadata"))
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            continue
        want = "true" if as_mapping(as_mapping(obj).get("spec")).get("relay") is True else None
        if as_mapping(meta.get("labels")).get(RELAY_LABEL) != want:
            out[name] = {RELAY_LABEL: want}
    return out


def _unreported(view: ClusterView) -> frozenset[Problem]:
    """Refusals no pool gateway reports, so the relay does: those of no pool, and those whose
    pools all lack an active gateway (a bad Node alone in a new pool has nobody else)."""
    return frozenset(
        p
        for p in view.problems
        if not p.pools or all(not view.holders.get(pool) for pool in p.pools)
    )


def _annotation_delta(
    node: Mapping[str, Any], wanted: Mapping[str, str | None]
) -> dict[str, str | None]:
    """What to merge into our Node's annotations; nothing while our Node is not there (or is
    not an object)."""
    if not node:
        return {}
    current = as_mapping(as_mapping(node.get("metadata")).get("annotations"))
    return {k: v for k, v in wanted.items() if current.get(k) != v}


def _uid(gateway: object) -> str:
    uid = as_mapping(as_mapping(gateway).get("metadata")).get("uid")
    return uid if isinstance(uid, str) else ""


def _healthy(view: ClusterView, pool: str) -> bool:
    """Could this node carry ``pool``? The relay pool always can; an edge pool needs a relay
    gateway whose key it knows, or it could carry nothing."""
    facts = analyse(view)
    if facts.relay is None:
        return False
    if facts.relay == pool:
        return True
    relay = facts.pools.get(facts.relay)
    return relay is not None and relay.gateway is not None and bool(relay.gateway.public_key)


def _dead_tunnel(desired: DesiredState, obs: Observed, p: Params) -> bool:
    """An edge gateway's relay peer answered none of the last ``dead_tunnel_rounds`` probes."""
    if not p.probing or desired.role != Role.GATEWAY:
        return False
    carrying = [peer for peer in desired.peers if peer.allowed_ips]
    windows = [obs.probes.get(peer.public_key) for peer in carrying]
    if not windows or any(w is None for w in windows):
        return False
    return all(w.silent_for(p.dead_tunnel_rounds) for w in windows if w is not None)


def _election(
    obs: Observed,
    view: ClusterView,
    me: NodeView | None,
    pool: str | None,
    holder: str | None,
    desired: DesiredState | None,
    holder_since: Mapping[str, tuple[str, float]],
    p: Params,
) -> tuple[ElectionWish, BeaconPlan, str | None]:
    if me is None or pool is None:
        return ElectionWish(), BeaconPlan(), None
    pool_candidates = candidates(view, pool)
    is_candidate = any(n.name == me.name for n in pool_candidates)
    if not is_candidate:
        return ElectionWish(), BeaconPlan(), None
    campaign = _healthy(view, pool)
    others = [n for n in pool_candidates if n.name != me.name]
    peers = {
        n.name: (n.public_key, n.internal_ip)
        for n in others
        if n.public_key is not None and n.internal_ip is not None
    }

    # We carry the pool: tell the other candidates, and step down when our tunnel is dead.
    if holder == me.name:
        dead = desired is not None and _dead_tunnel(desired, obs, p)
        step_down = None
        if dead and obs.election.is_holder:
            ready = next((n.name for n in others if n.ready and n.public_key), None)
            if ready is not None:
                step_down = (
                    f"{me.name} steps down as gateway of pool {pool}: its tunnel to the relay"
                    f" answered no probe for {p.dead_tunnel_rounds} rounds; {ready} is ready"
                    f" to take over"
                )
        targets = tuple(
            BeaconTarget(name, address, key) for name, (key, address) in sorted(peers.items())
        )
        fit = not dead and obs.election.api_ok
        wish = ElectionWish(pool, campaign, step_down=step_down)
        return wish, BeaconPlan(pool, targets, fit, peers), None

    # Someone else carries it: take over when it falls silent (module docstring).
    wish = ElectionWish(pool, campaign)
    if holder is None or not campaign or obs.election.out:
        return wish, BeaconPlan(pool, (), True, peers), None
    ranked = [n.name for n in others if n.name != holder]
    rank = sorted([*ranked, me.name]).index(me.name)
    patience = p.beacon_timeout + rank * p.beacon_stagger
    beacon_plan = BeaconPlan(pool, (), True, peers, watch=(holder, patience))
    heard = obs.beacons.get(holder)
    since = holder_since.get(pool, (holder, obs.clock))[1]
    if heard is None or heard < since:
        return wish, beacon_plan, None  # not heard in this term: the Lease's expiry decides
    if obs.clock - heard >= patience:
        note = f"gateway {holder} of pool {pool} sent no beacon for {obs.clock - heard:.1f}s"
        return replace(wish, preempt=holder), beacon_plan, note
    return wish, beacon_plan, None
