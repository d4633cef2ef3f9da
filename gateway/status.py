"""A pool's Gateway ``status``, built in one place: the planner's view of the pool plus what only
the active gateway sees (its tunnel's peers, their handshakes and probe figures). Pure.

Writing status costs the API server a write and every watcher of Gateways an event, so the
agent separates what an operator must see at once (who is active, which peers are up, the
conditions) from the figures that drift with every probe (RTT, loss, handshake times): a
change of the first kind is written at once, figures alone at most every ``refresh`` seconds
(:func:`due`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.dump import DeviceStatus
from gateway.probe import WINDOW_SECONDS, ProbeWindow
from raven.model import DesiredState, Problem
from raven.plan import pool_status
from raven.view import ClusterView

#: A peer whose last handshake is older than this is down: WireGuard re-handshakes every
#: 2 minutes while traffic or keepalives flow, so 3 minutes without one means nothing flows.
HANDSHAKE_FRESH_S = 180
#: Per-peer fields that change with every probe or handshake, and the summary built from them.
FIGURES = ("rttMs", "lossPercent", "lastHandshake")


def _stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def peer_entries(
    desired: DesiredState,
    view: ClusterView,
    tunnel: DeviceStatus | None,
    probes: Mapping[str, ProbeWindow],
    now: float,
) -> list[dict[str, Any]]:
    """One status entry per carrying peer (standby peers without AllowedIPs are left out)."""
    by_key = {n.public_key: n for n in view.nodes if n.public_key}
    entries = []
    for peer in desired.peers:
        if not peer.allowed_ips:
            continue
        live = tunnel.peer(peer.public_key) if tunnel is not None else None
        node = by_key.get(peer.public_key)
        handshake = live.latest_handshake if live is not None else 0
        window = probes.get(peer.public_key, ProbeWindow())
        # A fresh handshake proves keys and endpoints; a probe window with no answer at all
        # proves the tunnel carries no traffic nonetheless.
        up = handshake > 0 and now - handshake < HANDSHAKE_FRESH_S and window.loss_percent != 100
        entries.append(
            {
                "node": node.name if node else "",
                "pool": (node.pool or "") if node else "",
                "publicKey": peer.public_key,
                "endpoint": (live.endpoint or "") if live is not None else (peer.endpoint or ""),
                "allowedIPs": list(peer.allowed_ips),
                "state": "Up" if up else "Down",
                "lastHandshake": _stamp(handshake) if handshake else "",
                "rttMs": window.rtt_ms,
                "lossPercent": window.loss_percent,
            }
        )
    return entries


def build(
    view: ClusterView,
    pool: str,
    desired: DesiredState,
    tunnel: DeviceStatus | None,
    probes: Mapping[str, ProbeWindow],
    *,
    now: float,
    previous: Mapping[str, Any] | None,
    problems: Iterable[Problem] = (),
) -> dict[str, Any]:
    """The whole status of ``pool``'s Gateway as its active gateway sees it at ``now``.
    ``previous`` (the status last written) keeps each condition's lastTransitionTime;
    ``problems`` are refusals it reports besides its own pool's."""
    status = pool_status(view, pool, also=problems)
    peers = peer_entries(desired, view, tunnel, probes, now)
    status["peers"] = peers
    status["peersReady"] = f"{sum(p['state'] == 'Up' for p in peers)}/{len(peers)}"
    rtts = [p["rttMs"] for p in peers if p.get("rttMs") is not None]
    status["rtt"] = f"{max(rtts):.1f}ms" if rtts else ""
    status["probeWindowSeconds"] = WINDOW_SECONDS
    old = {c["type"]: c for c in (previous or {}).get("conditions", [])}
    stamp = _stamp(now)
    for condition in status["conditions"]:
        before = old.get(condition["type"])
        if before is not None and before.get("status") == condition["status"]:
            condition["lastTransitionTime"] = before.get("lastTransitionTime", stamp)
        else:
            condition["lastTransitionTime"] = stamp
    return status


def structure(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` with the figures that drift with every probe reduced to whether they are
    known: a figure appearing or vanishing is news, its value moving is not."""
    out = {k: v for k, v in status.items() if k != "rtt"}
    out["rtt"] = bool(status.get("rtt"))
    out["peers"] = [
        {k: (v not in (None, "")) if k in FIGURES else v for k, v in peer.items()}
        for peer in status.get("peers", [])
    ]
    return out


def due(
    status: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    *,
    written_at: float,
    now: float,
    refresh: float,
) -> bool:
    """Write ``status`` now? At once when anything but the figures changed; when only the
    figures did, once ``refresh`` seconds have passed since the last write."""
    if previous is None or structure(status) != structure(previous):
        return True
    return status != previous and now - written_at >= refresh
