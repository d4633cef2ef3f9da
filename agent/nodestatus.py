"""What the agent's ``/status`` says about its node: role, plan, kernel, last reconcile. Pure.

The runtime keeps what it already knows (the last decision, what its last apply did, when its
last round ran and the last error) and, when asked, reads what Raven owns in the kernel
(:class:`Inventory`, only on request: an idle agent pays nothing for this endpoint). This module
turns those into one JSON document. It names public keys, addresses and routes, never a
private key or a credential: the endpoint is plain HTTP on the node's address.

Shape (``raven status --node`` renders it)::

    {"node", "pool", "role", "holder", "relayPool", "ready", "notReady",
     "plan": {"role", "routes": [...], "rules": [...], "peers": [...], "vxlan", "tunnel",
              "forwarding", "problems": [...]} | null,
     "kernel": {"readAt", "routes", "rules", "tunnel", "vxlan",
                "matchesPlan": {"routes", "rules", "peers"}} | null,
     "lastApply": {"at", "seconds", "ok", "writes", "steps": [{"step", "ok", "writes",
                   "error"}]} | null,
     "lastRound": {"at", "seconds", "kind"} | null,
     "lastError": {"at", "message"} | null,
     "counts": {"rounds", "applies", "applyFailures", "statusWrites", "rechecks"}}

Times are RFC 3339 UTC; durations seconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.dump import DeviceStatus
from raven.model import DesiredState, PeerSpec, Role, RouteSpec, RuleSpec, VxlanSpec

JSON = dict[str, Any]


@dataclass(frozen=True)
class StepResult:
    """One step of an apply: its kind, whether it worked, the kernel writes it cost."""

    step: str
    ok: bool
    writes: int | None = None  # None: the data plane does not count writes
    error: str = ""


@dataclass(frozen=True)
class ApplyRecord:
    """What the last apply did."""

    at: float  # wall clock, seconds
    seconds: float
    steps: tuple[StepResult, ...] = ()

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)


@dataclass(frozen=True)
class RoundRecord:
    at: float  # wall clock when it ended
    seconds: float
    kind: str  # "full" (observe, decide, apply, report) or "recheck" (the kernel only)


@dataclass(frozen=True)
class Inventory:
    """What Raven owns in the node's kernel now: its routes and rules, its WireGuard device
    (public data only) and its VXLAN link (None when absent)."""

    routes: tuple[RouteSpec, ...] = ()
    rules: tuple[RuleSpec, ...] = ()
    tunnel: DeviceStatus | None = None
    vxlan: Mapping[str, Any] | None = None
    read_at: float = 0.0


@dataclass(frozen=True)
class Facts:
    """Everything :func:`document` reads, gathered by the runtime."""

    node: str
    pool: str | None = None
    holder: str | None = None
    relay_pool: str | None = None
    role: Role | None = None
    ready: tuple[bool, str] = (False, "")
    desired: DesiredState | None = None
    inventory: Inventory | None = None
    last_apply: ApplyRecord | None = None
    last_round: RoundRecord | None = None
    last_error: tuple[float, str] | None = None
    counts: Mapping[str, int] = field(default_factory=dict)


def stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def route_json(route: RouteSpec) -> JSON:
    return {
        "dst": route.dst,
        "table": route.table,
        "via": route.gateway,
        "dev": route.dev,
        "onlink": route.onlink,
        "mtu": route.mtu,
    }


def rule_json(rule: RuleSpec) -> JSON:
    return {"priority": rule.priority, "table": rule.table, "family": rule.family}


def peer_json(peer: PeerSpec) -> JSON:
    return {
        "publicKey": peer.public_key,
        "allowedIPs": list(peer.allowed_ips),
        "endpoint": peer.endpoint,
        "keepalive": peer.persistent_keepalive,
    }


def vxlan_json(spec: VxlanSpec | None) -> JSON | None:
    if spec is None:
        return None
    return {
        "dev": spec.dev,
        "vni": spec.vni,
        "port": spec.port,
        "local": spec.local,
        "mtu": spec.mtu,
        "peers": [{"ip": p.ip, "mac": p.mac} for p in spec.peers],
    }


def plan_json(desired: DesiredState) -> JSON:
    carrying = desired.role in (Role.GATEWAY, Role.RELAY)
    return {
        "role": str(desired.role),
        "routes": [route_json(r) for r in desired.routes],
        "rules": [rule_json(r) for r in desired.rules],
        "peers": [peer_json(p) for p in desired.peers],
        "vxlan": vxlan_json(desired.vxlan),
        "tunnel": {"listenPort": desired.listen_port, "mtu": desired.tunnel_mtu}
        if carrying
        else None,
        "forwarding": desired.forwarding,
        "problems": [str(p) for p in desired.problems],
    }


def tunnel_json(tunnel: DeviceStatus | None) -> JSON | None:
    if tunnel is None:
        return None
    return {
        "publicKey": tunnel.public_key,
        "listenPort": tunnel.listen_port,
        "peers": [
            {
                "publicKey": p.public_key,
                "endpoint": p.endpoint,
                "allowedIPs": list(p.allowed_ips),
                "lastHandshake": stamp(p.latest_handshake) if p.latest_handshake else None,
                "rxBytes": p.rx_bytes,
                "txBytes": p.tx_bytes,
            }
            for p in tunnel.peers
        ],
    }


def _route_key(route: RouteSpec) -> tuple[Any, ...]:
    # What the reconciler compares; the kernel fills in what a spec leaves to it.
    return (route.table, route.dst, route.gateway)


def matches(desired: DesiredState, inventory: Inventory) -> JSON:
    """Whether the kernel holds what the plan says: routes (by table, destination and next
    hop), rules, and the WireGuard peers (by key and AllowedIPs)."""
    peers_now = (
        {p.public_key: tuple(sorted(p.allowed_ips)) for p in inventory.tunnel.peers}
        if inventory.tunnel is not None
        else {}
    )
    return {
        "routes": sorted(map(_route_key, desired.routes))
        == sorted(map(_route_key, inventory.routes)),
        "rules": sorted(r.key for r in desired.rules) == sorted(r.key for r in inventory.rules),
        "peers": {p.public_key: tuple(sorted(p.allowed_ips)) for p in desired.peers} == peers_now,
    }


def document(facts: Facts) -> JSON:
    """The ``/status`` document (module docstring)."""
    inv = facts.inventory
    kernel: JSON | None = None
    if inv is not None:
        kernel = {
            "readAt": stamp(inv.read_at),
            "routes": [route_json(r) for r in inv.routes],
            "rules": [rule_json(r) for r in inv.rules],
            "tunnel": tunnel_json(inv.tunnel),
            "vxlan": dict(inv.vxlan) if inv.vxlan is not None else None,
            "matchesPlan": matches(facts.desired, inv) if facts.desired is not None else None,
        }
    apply = facts.last_apply
    last_round = facts.last_round
    ready, why = facts.ready
    return {
        "node": facts.node,
        "pool": facts.pool,
        "role": str(facts.role) if facts.role is not None else None,
        "holder": facts.holder,
        "relayPool": facts.relay_pool,
        "ready": ready,
        "notReady": "" if ready else why,
        "plan": plan_json(facts.desired) if facts.desired is not None else None,
        "kernel": kernel,
        "lastApply": {
            "at": stamp(apply.at),
            "seconds": round(apply.seconds, 6),
            "ok": apply.ok,
            "writes": sum(s.writes for s in apply.steps if s.writes is not None),
            "steps": [
                {"step": s.step, "ok": s.ok, "writes": s.writes, "error": s.error}
                for s in apply.steps
            ],
        }
        if apply is not None
        else None,
        "lastRound": {
            "at": stamp(last_round.at),
            "seconds": round(last_round.seconds, 6),
            "kind": last_round.kind,
        }
        if last_round is not None
        else None,
        "lastError": {"at": stamp(facts.last_error[0]), "message": facts.last_error[1]}
        if facts.last_error is not None
        else None,
        "counts": dict(facts.counts),
    }
