"""``raven status`` as tables: the cluster's (from an :class:`Overview`) and one node's (from its
agent's ``/status`` document). Pure: data in, :class:`Table` values out; :func:`plain` renders
them as aligned text, :func:`to_rich` as rich tables for a terminal.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raven.overview.cluster import EventNote, Overview, Pool

NONE = "-"


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def _ms(value: float | None) -> str:
    return NONE if value is None else f"{value:.1f} ms"


def _percent(value: float | None) -> str:
    return NONE if value is None else f"{value:.0f}%"


def _yes(value: bool | None) -> str:
    return {True: "yes", False: "no", None: NONE}[value]


def _event(note: EventNote | None) -> tuple[str, str, str]:
    if note is None:
        return NONE, NONE, NONE
    message = f"{note.message} (from {note.node})" if note.node else note.message
    return note.time or NONE, note.reason or NONE, message or NONE


def _ready_count(pool: Pool) -> str:
    return f"{sum(m.ready is True for m in pool.members)}/{len(pool.members)}"


def cluster_tables(ov: Overview) -> list[Table]:
    """Pools, members, peers, last failovers, and conditions that are not well."""
    pools = tuple(
        (
            pool.name,
            "relay" if pool.relay else ("edge" if ov.relay_pool else NONE),
            pool.gateway or "none",
            pool.lease_holder or NONE,
            pool.endpoint or NONE,
            _ready_count(pool),
            pool.peers_ready or NONE,
        )
        for pool in ov.pools
    )
    members = tuple(
        (
            pool.name,
            m.name,
            m.address or NONE,
            ("relay" if pool.relay else "gateway") if m.gateway else "member",
            {True: "Ready", False: "NotReady", None: "Unknown"}[m.ready],
            f"via {m.heartbeat_via}" if m.heartbeat_via else "direct",
        )
        for pool in ov.pools
        for m in pool.members
    )
    peers = tuple(
        (
            pool.name,
            pool.gateway or NONE,
            p.node or NONE,
            p.pool or NONE,
            p.state,
            _ms(p.rtt_ms),
            _percent(p.loss_percent),
            p.last_handshake or NONE,
            p.endpoint or NONE,
        )
        for pool in ov.pools
        for p in pool.peers
    )
    failovers = tuple(
        (
            pool.name,
            *_event(pool.last_failover.change),
            " ".join(
                part
                for part in _event(pool.last_failover.cause)
                if pool.last_failover.cause is not None
            )
            or NONE,
        )
        for pool in ov.pools
        if pool.last_failover is not None
    )
    problems = tuple((pool.name, problem) for pool in ov.pools for problem in pool.problems)
    tables = [
        Table(
            "Pools",
            ("POOL", "KIND", "GATEWAY", "LEASE HOLDER", "ENDPOINT", "READY", "PEERS UP"),
            pools,
        ),
        Table("Members", ("POOL", "NODE", "ADDRESS", "ROLE", "STATUS", "HEARTBEAT"), members),
        Table(
            "Tunnel peers",
            (
                "POOL",
                "GATEWAY",
                "PEER",
                "PEER POOL",
                "STATE",
                "RTT",
                "LOSS",
                "LAST HANDSHAKE",
                "ENDPOINT",
            ),
            peers,
        ),
        Table("Last gateway change", ("POOL", "TIME", "REASON", "MESSAGE", "CAUSE"), failovers),
    ]
    if problems:
        tables.append(Table("Conditions not met", ("POOL", "CONDITION"), problems))
    if ov.unpooled:
        tables.append(Table("Nodes in no pool", ("NODE",), tuple((n,) for n in ov.unpooled)))
    return tables


# One node ------------------------------------------------------------------------------------


def _get(doc: Mapping[str, Any], *path: str) -> Any:
    value: Any = doc
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _text(value: Any) -> str:
    if value is None or value == "":
        return NONE
    if isinstance(value, bool):
        return _yes(value)
    return str(value)


def _natural(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """Sort CIDRs by address (10.244.3.0/24 before 10.244.21.0/24), anything else as text."""
    out: list[Any] = []
    for part in key:
        try:
            net = ipaddress.ip_network(str(part), strict=False)
            out.append((0, net.version, int(net.network_address), net.prefixlen, ""))
        except ValueError:
            out.append((1, 0, 0, 0, repr(part)))
    return tuple(out)


def _compare(
    planned: Iterable[Mapping[str, Any]],
    found: Iterable[Mapping[str, Any]] | None,
    key: Sequence[str],
) -> list[tuple[Mapping[str, Any], bool, bool | None]]:
    """Union of planned and found entries by ``key``: (entry, planned?, in the kernel?)."""
    have = {tuple(e.get(k) for k in key): e for e in (found or [])}
    want = {tuple(e.get(k) for k in key): e for e in planned}
    out: list[tuple[Mapping[str, Any], bool, bool | None]] = []
    for k in sorted(set(have) | set(want), key=_natural):
        entry = want.get(k) or have[k]
        out.append((entry, k in want, (k in have) if found is not None else None))
    return out


def node_tables(doc: Mapping[str, Any]) -> list[Table]:
    """One agent's ``/status`` document (:mod:`agent.nodestatus`) as tables."""
    last_round, last_apply, error = doc.get("lastRound"), doc.get("lastApply"), doc.get("lastError")
    summary = [
        ("node", _text(doc.get("node"))),
        ("pool", _text(doc.get("pool"))),
        ("role", _text(doc.get("role"))),
        ("pool gateway", _text(doc.get("holder"))),
        ("relay pool", _text(doc.get("relayPool"))),
        ("ready", "yes" if doc.get("ready") else f"no: {doc.get('notReady') or '?'}"),
        (
            "last reconcile",
            f"{last_round['at']} ({last_round['kind']}, {last_round['seconds'] * 1000:.1f} ms)"
            if isinstance(last_round, Mapping)
            else NONE,
        ),
        (
            "last apply",
            f"{last_apply['at']} ({'ok' if last_apply['ok'] else 'FAILED'}, "
            f"{last_apply['seconds'] * 1000:.1f} ms, {last_apply['writes']} kernel writes)"
            if isinstance(last_apply, Mapping)
            else NONE,
        ),
        (
            "last error",
            f"{error['at']} {error['message']}" if isinstance(error, Mapping) else NONE,
        ),
    ]
    matches = _get(doc, "kernel", "matchesPlan")
    if isinstance(matches, Mapping):
        wrong = [k for k, ok in matches.items() if not ok]
        summary.append(("kernel matches plan", "yes" if not wrong else "no: " + ", ".join(wrong)))
    problems = _get(doc, "plan", "problems") or []
    summary += [("plan problem", str(p)) for p in problems]
    tables = [Table("Node", ("", ""), tuple(summary))]

    kernel = doc.get("kernel") if isinstance(doc.get("kernel"), Mapping) else None
    routes = _compare(
        _get(doc, "plan", "routes") or [],
        kernel.get("routes") if kernel else None,
        ("table", "dst"),
    )
    tables.append(
        Table(
            "Routes (Raven's table)",
            ("DESTINATION", "VIA", "DEV", "MTU", "TABLE", "PLANNED", "IN KERNEL"),
            tuple(
                (
                    _text(r.get("dst")),
                    _text(r.get("via")),
                    _text(r.get("dev")),
                    _text(r.get("mtu")),
                    _text(r.get("table")),
                    _yes(planned),
                    _yes(there),
                )
                for r, planned, there in routes
            ),
        )
    )
    rules = _compare(
        _get(doc, "plan", "rules") or [],
        kernel.get("rules") if kernel else None,
        ("family", "priority", "table"),
    )
    tables.append(
        Table(
            "Policy rules",
            ("PRIORITY", "TABLE", "PLANNED", "IN KERNEL"),
            tuple(
                (_text(r.get("priority")), _text(r.get("table")), _yes(planned), _yes(there))
                for r, planned, there in rules
            ),
        )
    )
    tunnel = kernel.get("tunnel") if kernel else None
    planned_peers = _get(doc, "plan", "peers") or []
    if planned_peers or tunnel:
        live = {p.get("publicKey"): p for p in (tunnel or {}).get("peers", [])}
        peers = _compare(planned_peers, list(live.values()) if kernel else None, ("publicKey",))
        tables.append(
            Table(
                "WireGuard peers",
                ("PUBLIC KEY", "ALLOWED IPS", "ENDPOINT", "LAST HANDSHAKE", "PLANNED", "IN KERNEL"),
                tuple(
                    (
                        str(p.get("publicKey"))[:10] + "…",
                        ",".join(p.get("allowedIPs") or []) or "(standby)",
                        _text(live.get(p.get("publicKey"), p).get("endpoint")),
                        _text(live.get(p.get("publicKey"), {}).get("lastHandshake")),
                        _yes(planned),
                        _yes(there),
                    )
                    for p, planned, there in peers
                ),
            )
        )
    if isinstance(last_apply, Mapping):
        tables.append(
            Table(
                "Last apply",
                ("STEP", "OK", "KERNEL WRITES", "ERROR"),
                tuple(
                    (s["step"], _yes(s["ok"]), _text(s.get("writes")), s.get("error") or "")
                    for s in last_apply.get("steps", [])
                ),
            )
        )
    return tables


# Rendering -----------------------------------------------------------------------------------


def plain(tables: Iterable[Table]) -> str:
    """Aligned plain text: each table's title, then its columns padded to their widths."""
    blocks = []
    for table in tables:
        lines = [f"{table.title}:"]
        rows = [table.headers, *table.rows] if any(table.headers) else list(table.rows)
        if not table.rows:
            lines.append("  (none)")
        else:
            widths = [max(len(r[i]) for r in rows) for i in range(len(table.headers))]
            for row in rows:
                cells = (c.ljust(w) for c, w in zip(row, widths, strict=True))
                lines.append(("  " + "  ".join(cells)).rstrip())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


#: Cell values rich colours.
STYLES = {
    "up": "green",
    "down": "bold red",
    "unknown": "yellow",
    "Ready": "green",
    "NotReady": "bold red",
    "Unknown": "yellow",
    "no": "red",
    "none": "bold red",
    "gateway": "bold",
    "relay": "bold",
}


def to_rich(tables: Iterable[Table]) -> list[Any]:
    """Rich tables (``rich.table.Table``) to print on a terminal."""
    from rich.table import Table as RichTable  # only a terminal needs rich
    from rich.text import Text

    out = []
    for table in tables:
        show_header = any(table.headers)
        rich = RichTable(title=table.title, title_justify="left", show_header=show_header)
        for header in table.headers:
            rich.add_column(header)
        for row in table.rows:
            rich.add_row(*(Text(cell, style=STYLES.get(cell, "")) for cell in row))
        out.append(rich)
    return out
