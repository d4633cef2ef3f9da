"""``raven graph`` as Graphviz DOT: pools as clusters, nodes, gateways, the relay and every
tunnel, from an :class:`~raven.overview.cluster.Overview`. Pure.

The picture reads bottom to top: members point (dotted) at their pool's gateway, each edge
gateway's tunnel points at the relay, whose pool sits on top. Gateways are bold and filled,
the relay the strongest of them; a tunnel is green when up, red and bold when down, grey and
dashed when nobody reports it, labelled with its RTT (and loss, when there is any). A pool
without a gateway says so in its frame. One statement per line, so the text diffs well.
"""

from __future__ import annotations

from raven.overview.cluster import DOWN, UP, Member, Overview, Pool, Tunnel

#: Tunnel colours by state.
COLOURS = {UP: "#2e7d32", DOWN: "#c62828"}
UNKNOWN_COLOUR = "#757575"
FONT = "Helvetica"


def quote(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**attrs: str | None) -> str:
    return ", ".join(f"{k}={quote(v)}" for k, v in attrs.items() if v is not None)


def tunnel_label(tunnel: Tunnel) -> str:
    """``up 1.2 ms``, ``down``, ``up 3.0 ms 20% loss``."""
    parts = [tunnel.state]
    if tunnel.rtt_ms is not None:
        parts.append(f"{tunnel.rtt_ms:.1f} ms")
    if tunnel.loss_percent:
        parts.append(f"{tunnel.loss_percent:.0f}% loss")
    return " ".join(parts)


def _node(member: Member, pool: Pool) -> str:
    role = ("relay" if pool.relay else "gateway") if member.gateway else ""
    lines = [member.name, member.address] if member.address else [member.name]
    if role:
        lines.append(role)
    if member.ready is False:
        lines.append("NotReady")
    if member.heartbeat_via:
        lines.append(f"heartbeat via {member.heartbeat_via}")
    attrs = {"label": "\n".join(lines)}
    if member.gateway:
        attrs |= {
            "fillcolor": "#ffcc80" if pool.relay else "#fff59d",
            "penwidth": "3" if pool.relay else "2",
        }
    if member.ready is False:
        attrs |= {"fontcolor": UNKNOWN_COLOUR, "color": UNKNOWN_COLOUR, "style": "rounded,dashed"}
    return _stmt(4, quote(member.name), **attrs)


def _cluster_label(pool: Pool) -> str:
    title = f"{pool.name} (relay)" if pool.relay else pool.name
    lines = [title]
    if pool.gateway is None:
        lines.append("no gateway")
    elif pool.endpoint:
        lines.append(pool.endpoint)
    if pool.subnets:
        lines.append(", ".join(pool.subnets))
    return "\n".join(lines)


def _stmt(indent: int, head: str, **attrs: str | None) -> str:
    return f"{' ' * indent}{head} [{_attrs(**attrs)}];"


def _edge(tail: str, head: str, **attrs: str | None) -> str:
    return _stmt(2, f"{quote(tail)} -> {quote(head)}", **attrs)


#: The default title: what the colours and lines mean.
LEGEND = (
    "Raven: tunnels to the relay green when up, red when down, grey when unknown;"
    " dotted: a member steering cross-pool traffic to its pool's gateway"
)


def to_dot(ov: Overview, *, title: str = LEGEND) -> str:
    """The whole cluster as one DOT digraph (module docstring)."""
    out = [
        "digraph raven {",
        _stmt(
            2,
            "graph",
            rankdir="BT",
            fontname=FONT,
            labelloc="t",
            label=title,
            fontsize="12",
            newrank="true",
            nodesep="0.4",
            ranksep="0.9",
        ),
        _stmt(2, "node", shape="box", style="rounded,filled", fillcolor="white", fontname=FONT),
        _stmt(2, "edge", fontname=FONT, fontsize="10"),
    ]
    for pool in ov.pools:
        frame = "#c62828" if pool.gateway is None else ("#ef6c00" if pool.relay else "#546e7a")
        out.append(f"  subgraph {quote('cluster_' + pool.name)} {{")
        out.append(
            _stmt(
                4,
                "graph",
                label=_cluster_label(pool),
                labelloc="b",  # on top: the graph runs bottom to top
                style="rounded",
                color=frame,
                fontcolor=frame,
            )
        )
        out += [_node(member, pool) for member in pool.members]
        if pool.gateway is not None and pool.gateway not in {m.name for m in pool.members}:
            # A gateway the status names whose Node is gone (or left the pool).
            out.append(
                _stmt(
                    4,
                    quote(pool.gateway),
                    label=f"{pool.gateway}\ngone",
                    color=UNKNOWN_COLOUR,
                    style="rounded,dashed",
                )
            )
        out.append("  }")
    for pool in ov.pools:
        if pool.gateway is None:
            continue
        for member in pool.members:
            if member.name != pool.gateway:
                out.append(
                    _edge(
                        member.name, pool.gateway, style="dotted", color="#90a4ae", arrowsize="0.6"
                    )
                )
    for tunnel in ov.tunnels:
        if not tunnel.relay_node:
            continue
        colour = COLOURS.get(tunnel.state, UNKNOWN_COLOUR)
        out.append(
            _edge(
                tunnel.node,
                tunnel.relay_node,
                label=tunnel_label(tunnel),
                color=colour,
                fontcolor=colour,
                style={UP: "solid", DOWN: "bold"}.get(tunnel.state, "dashed"),
                penwidth="2",
                tooltip=f"{tunnel.pool} to the relay: {tunnel.state}",
            )
        )
    for name in ov.unpooled:
        out.append(
            _stmt(
                2,
                quote(name),
                label=f"{name}\nno pool",
                color=UNKNOWN_COLOUR,
                fontcolor=UNKNOWN_COLOUR,
            )
        )
    out.append("}")
    return "\n".join(out) + "\n"
