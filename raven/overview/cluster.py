"""A cluster as an operator sees it: pools, their gateways and members, the relay and every
tunnel, built from the objects alone. Pure.

:func:`overview` reads plain JSON objects as the API returns them (Nodes, Gateways, Events,
node Leases, pool Leases) and never raises on a malformed one: what it cannot read it leaves
out. Gateway status is written by each pool's active gateway (``gateway.status``); a tunnel
between an edge gateway and the relay is reported from both ends, and the worse of the two
states wins, so a tunnel that one side sees down is never drawn up.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from raven.names import (
    DELEGATE_HEARTBEAT_ANNOTATION,
    HEARTBEAT_VIA_ANNOTATION,
    POOL_LABEL,
    pool_of_lease,
)
from raven.nodeview import as_mapping
from raven.view import lease_holder

JSON = Mapping[str, Any]

#: Tunnel states, worst first (a tunnel seen from two ends shows the worse).
UP, DOWN, UNKNOWN = "up", "down", "unknown"
_RANK = {DOWN: 0, UNKNOWN: 1, UP: 2}

#: Event reasons that change a pool's gateway, and the one that says why a gateway left.
CHANGE_REASONS = ("GatewayFailover", "GatewayElected")
STEP_DOWN_REASON = "GatewayStepDown"
#: A step-down this long before a gateway change caused it (the step-down backoff is 30 s, a
#: released Lease is taken within seconds).
CAUSE_WINDOW_S = 120.0


@dataclass(frozen=True)
class Peer:
    """One carrying WireGuard peer of a pool's gateway, as its Gateway status reports it."""

    node: str
    pool: str
    state: str  # up | down | unknown
    rtt_ms: float | None = None
    loss_percent: float | None = None
    last_handshake: str = ""
    endpoint: str = ""


@dataclass(frozen=True)
class EventNote:
    """An Event about a Gateway: when, why, what, and which node reported it."""

    time: str
    reason: str
    message: str
    node: str = ""


@dataclass(frozen=True)
class Failover:
    """The last change of a pool's gateway, and the step-down that caused it when one did."""

    change: EventNote
    cause: EventNote | None = None


@dataclass(frozen=True)
class Member:
    """A node of a pool."""

    name: str
    address: str = ""  # InternalIP
    ready: bool | None = None  # the Ready condition; None when unknown
    gateway: bool = False  # the pool's active gateway (Gateway status)
    heartbeat_via: str | None = None  # the member relaying its heartbeat, while delegated


@dataclass(frozen=True)
class Pool:
    name: str
    relay: bool = False
    has_gateway_object: bool = False
    gateway: str | None = None  # status.activeNode
    lease_holder: str | None = None  # the pool's Lease, when read
    endpoint: str = ""
    subnets: tuple[str, ...] = ()
    members: tuple[Member, ...] = ()
    peers: tuple[Peer, ...] = ()
    peers_ready: str = ""
    problems: tuple[str, ...] = ()  # conditions that are not as they should be
    last_failover: Failover | None = None


@dataclass(frozen=True)
class Tunnel:
    """An edge pool's gateway to the relay: its state and RTT as both ends report them."""

    pool: str
    node: str  # the edge pool's gateway
    relay_node: str
    state: str
    rtt_ms: float | None = None
    loss_percent: float | None = None


@dataclass(frozen=True)
class Overview:
    pools: tuple[Pool, ...] = ()
    relay_pool: str | None = None
    tunnels: tuple[Tunnel, ...] = ()
    unpooled: tuple[str, ...] = ()  # nodes without the pool label: no part in Raven

    def pool(self, name: str) -> Pool | None:
        return next((p for p in self.pools if p.name == name), None)

    def as_json(self) -> dict[str, Any]:
        """The overview as JSON-ready data, camelCase like the objects it came from."""
        return _camel(asdict(self))


def _camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel_key(k): _camel(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_camel(v) for v in value]
    return value


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.capitalize() for part in rest)


# Reading the objects --------------------------------------------------------------------------


def _meta(obj: object) -> Mapping[str, Any]:
    return as_mapping(as_mapping(obj).get("metadata"))


def _name(obj: object) -> str:
    name = _meta(obj).get("name")
    return name if isinstance(name, str) else ""


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _state(value: object) -> str:
    text = str(value or "").lower()
    return text if text in (UP, DOWN) else UNKNOWN


def internal_ip(node: object) -> str:
    for address in _list(as_mapping(as_mapping(node).get("status")).get("addresses")):
        address = as_mapping(address)
        if address.get("type") == "InternalIP" and isinstance(address.get("address"), str):
            return str(address["address"])
    return ""


def _ready(node: object) -> bool | None:
    for condition in _list(as_mapping(as_mapping(node).get("status")).get("conditions")):
        condition = as_mapping(condition)
        if condition.get("type") == "Ready":
            return {"True": True, "False": False}.get(str(condition.get("status")))
    return None


def peers_of(status: Mapping[str, Any]) -> tuple[Peer, ...]:
    """The carrying peers a Gateway status lists, sorted by pool and node."""
    peers = []
    for entry in _list(status.get("peers")):
        entry = as_mapping(entry)
        peers.append(
            Peer(
                node=str(entry.get("node") or ""),
                pool=str(entry.get("pool") or ""),
                state=_state(entry.get("state")),
                rtt_ms=_number(entry.get("rttMs")),
                loss_percent=_number(entry.get("lossPercent")),
                last_handshake=str(entry.get("lastHandshake") or ""),
                endpoint=str(entry.get("endpoint") or ""),
            )
        )
    return tuple(sorted(peers, key=lambda p: (p.pool, p.node)))


def _problems(status: Mapping[str, Any]) -> tuple[str, ...]:
    """Conditions not True, as "Type: message" (every condition the agent writes is a good
    thing when True)."""
    found = []
    for condition in _list(status.get("conditions")):
        condition = as_mapping(condition)
        if condition.get("status") != "True" and condition.get("type"):
            message = condition.get("message") or condition.get("reason") or ""
            found.append(f"{condition['type']}: {message}".rstrip(": "))
    return tuple(found)


def event_time(event: object) -> str:
    """When an Event last happened (RFC 3339 text, which sorts by time)."""
    event = as_mapping(event)
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        value = event.get(key)
        if isinstance(value, str) and value:
            return value
    created = _meta(event).get("creationTimestamp")
    return created if isinstance(created, str) else ""


def _note(event: object) -> EventNote:
    event = as_mapping(event)
    source = as_mapping(event.get("source"))
    return EventNote(
        time=event_time(event),
        reason=str(event.get("reason") or ""),
        message=str(event.get("message") or ""),
        node=str(source.get("host") or event.get("reportingInstance") or ""),
    )


def gateway_events(events: Iterable[object], pool: str, uid: str) -> list[EventNote]:
    """The Events about Gateway ``pool`` (of this incarnation when ``uid`` is known), oldest
    first."""
    found = []
    for event in events:
        involved = as_mapping(as_mapping(event).get("involvedObject"))
        if involved.get("kind") != "Gateway" or involved.get("name") != pool:
            continue
        if uid and involved.get("uid") and involved.get("uid") != uid:
            continue
        found.append(_note(event))
    return sorted(found, key=lambda e: (e.time, e.reason, e.message))


def _seconds(stamp: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def last_failover(notes: list[EventNote]) -> Failover | None:
    """The newest gateway change, with the step-down that caused it: the newest one at most
    :data:`CAUSE_WINDOW_S` before it and after the change before (a crashed gateway leaves
    none; its successor noticed its silence)."""
    changes = [n for n in notes if n.reason in CHANGE_REASONS]
    if not changes:
        return None
    change = changes[-1]
    at = _seconds(change.time)
    after = changes[-2].time if len(changes) > 1 else ""
    cause = None
    for note in notes:
        if note.reason != STEP_DOWN_REASON or not after <= note.time <= change.time:
            continue
        when = _seconds(note.time)
        if at is not None and when is not None and at - when <= CAUSE_WINDOW_S:
            cause = note
    return Failover(change, cause)


def delegations(node_leases: Iterable[object]) -> dict[str, str]:
    """Node -> the member relaying its heartbeat, for every node Lease marked delegated."""
    found = {}
    for lease in node_leases:
        annotations = as_mapping(_meta(lease).get("annotations"))
        if str(annotations.get(DELEGATE_HEARTBEAT_ANNOTATION, "")).lower() == "true":
            found[_name(lease)] = str(annotations.get(HEARTBEAT_VIA_ANNOTATION) or "?")
    return found


# The overview ---------------------------------------------------------------------------------


def overview(
    nodes: Iterable[object],
    gateways: Iterable[object],
    *,
    events: Iterable[object] = (),
    node_leases: Iterable[object] = (),
    pool_leases: Iterable[object] = (),
    pool_label: str = POOL_LABEL,
) -> Overview:
    """Everything ``raven status`` and ``raven graph`` show, from the objects. Never raises."""
    events = list(events)
    by_pool: dict[str, list[Mapping[str, Any]]] = {}
    unpooled = []
    for node in nodes:
        name = _name(node)
        if not name:
            continue
        pool = as_mapping(_meta(node).get("labels")).get(pool_label)
        if isinstance(pool, str) and pool:
            by_pool.setdefault(pool, []).append(as_mapping(node))
        else:
            unpooled.append(name)
    gws = {_name(g): as_mapping(g) for g in gateways if _name(g)}
    holders = {}
    for lease in pool_leases:
        pool = pool_of_lease(_name(lease))
        if pool is not None:
            holders[pool] = lease_holder(lease)
    delegated = delegations(node_leases)

    pools = []
    relay_pool = None
    for name in sorted(set(by_pool) | set(gws)):
        gw = gws.get(name, {})
        spec, status = as_mapping(gw.get("spec")), as_mapping(gw.get("status"))
        active = status.get("activeNode") or None
        relay = spec.get("relay") is True
        if relay and relay_pool is None:
            relay_pool = name
        members = tuple(
            Member(
                name=_name(node),
                address=internal_ip(node),
                ready=_ready(node),
                gateway=_name(node) == active,
                heartbeat_via=delegated.get(_name(node)),
            )
            for node in sorted(by_pool.get(name, []), key=_name)
        )
        pools.append(
            Pool(
                name=name,
                relay=relay,
                has_gateway_object=bool(gw),
                gateway=str(active) if active else None,
                lease_holder=holders.get(name),
                endpoint=str(status.get("endpoint") or ""),
                subnets=tuple(str(s) for s in _list(status.get("subnets"))),
                members=members,
                peers=peers_of(status),
                peers_ready=str(status.get("peersReady") or ""),
                problems=_problems(status),
                last_failover=last_failover(
                    gateway_events(events, name, str(_meta(gw).get("uid") or ""))
                ),
            )
        )
    return Overview(
        pools=tuple(pools),
        relay_pool=relay_pool,
        tunnels=tunnels(pools, relay_pool),
        unpooled=tuple(sorted(unpooled)),
    )


def _worse(a: str, b: str) -> str:
    return a if _RANK[a] <= _RANK[b] else b


def tunnels(pools: Iterable[Pool], relay_pool: str | None) -> tuple[Tunnel, ...]:
    """One tunnel per edge pool that has a gateway (or that the relay lists a peer for): its
    state is the worse of what the edge gateway and the relay report, its RTT and loss the
    edge gateway's figures (it probes the relay), each else the relay's."""
    pools = list(pools)
    relay = next((p for p in pools if p.name == relay_pool), None)
    if relay is None:
        return ()
    from_relay = {p.pool: p for p in relay.peers}
    found = []
    for pool in pools:
        if pool.name == relay.name:
            continue
        edge_side = next((p for p in pool.peers if p.pool == relay.name), None)
        relay_side = from_relay.get(pool.name)
        node = pool.gateway or (relay_side.node if relay_side is not None else None)
        if node is None:
            continue
        seen = [p for p in (edge_side, relay_side) if p is not None]
        state = UNKNOWN
        if seen:
            state = seen[0].state
            for peer in seen[1:]:
                state = _worse(state, peer.state)
        found.append(
            Tunnel(
                pool=pool.name,
                node=node,
                relay_node=relay.gateway or "",
                state=state,
                rtt_ms=next((p.rtt_ms for p in seen if p.rtt_ms is not None), None),
                loss_percent=next(
                    (p.loss_percent for p in seen if p.loss_percent is not None), None
                ),
            )
        )
    return tuple(found)
