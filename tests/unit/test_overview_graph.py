"""``raven graph``: the DOT it prints for a cluster in the embedded API server, parsed and
compared with the objects node by node and edge by edge; PNG and SVG through Graphviz's dot."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from raven.cli import app
from raven.kube import KubeClient
from raven.overview.cluster import Overview, Pool, Tunnel, overview
from raven.overview.dot import COLOURS, UNKNOWN_COLOUR, quote, to_dot, tunnel_label
from raven.overview.render import GraphvizError, render
from tests.dotparse import parse_dot
from tests.unit.overviewkit import IP, NAMES, POOLS, populate

pytestmark = pytest.mark.timeout(60)


async def test_dot_of_a_cluster_shows_every_pool_node_gateway_and_tunnel(
    kube: KubeClient, apiserver: Any
) -> None:
    await populate(kube)
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["graph", "--kubeconfig", str(apiserver.kubeconfig)]
    )
    assert result.exit_code == 0, result.output
    dot = parse_dot(result.stdout)

    # Every pool is a cluster; edge-c's says it has no gateway, the relay's that it is one.
    assert set(dot["clusters"]) == set(POOLS)
    assert dot["clusters"]["cloud"]["label"].splitlines() == [
        "cloud (relay)",
        f"{IP['cloud-1']}:51820",
        "10.244.0.0/24, 10.244.1.0/24",
    ]
    assert dot["clusters"]["edge-c"]["label"].splitlines() == [
        "edge-c",
        "no gateway",
        "10.244.6.0/24",
    ]

    # Every node, in its pool's cluster; the node in no pool outside any.
    assert set(dot["nodes"]) == {*NAMES, "lonely"}
    for pool, names in POOLS.items():
        for name in names:
            assert dot["nodes"][name]["cluster"] == pool
    assert dot["nodes"]["lonely"]["cluster"] == ""
    assert dot["nodes"]["lonely"]["label"] == "lonely\nno pool"

    # Gateways are drawn apart from members, the relay apart from both.
    labels = {name: attrs["label"].splitlines() for name, attrs in dot["nodes"].items()}
    assert labels["cloud-1"] == ["cloud-1", IP["cloud-1"], "relay"]
    assert labels["edge-a-1"] == ["edge-a-1", IP["edge-a-1"], "gateway"]
    assert labels["edge-b-1"] == ["edge-b-1", IP["edge-b-1"], "gateway"]
    assert labels["edge-a-2"] == ["edge-a-2", IP["edge-a-2"], "heartbeat via edge-a-1"]
    assert labels["edge-c-1"] == ["edge-c-1", IP["edge-c-1"]]
    widths = {name: attrs.get("penwidth") for name, attrs in dot["nodes"].items()}
    assert widths == {n: {"cloud-1": "3", "edge-a-1": "2", "edge-b-1": "2"}.get(n) for n in widths}

    # Edges: members to their gateway (dotted), and one tunnel per edge pool with a gateway.
    steering = {
        (m, gw)
        for pool, gw in {"cloud": "cloud-1", "edge-a": "edge-a-1"}.items()
        for m in POOLS[pool]
        if m != gw
    }
    tunnels = {("edge-a-1", "cloud-1"), ("edge-b-1", "cloud-1")}
    assert set(dot["edges"]) == steering | tunnels
    assert all(dot["edges"][e]["style"] == "dotted" for e in steering)
    # edge-a: both ends up; the edge gateway's own figures (RTT, loss) are shown.
    up = dot["edges"][("edge-a-1", "cloud-1")]
    assert (up["label"], up["color"], up["style"]) == (
        "up 12.2 ms 10% loss",
        COLOURS["up"],
        "solid",
    )
    # edge-b: its gateway sees the tunnel up, the relay down: down wins, in red.
    down = dot["edges"][("edge-b-1", "cloud-1")]
    assert (down["label"], down["color"], down["style"]) == (
        "down 100% loss",
        COLOURS["down"],
        "bold",
    )


async def test_png_and_svg_through_graphviz(
    kube: KubeClient, apiserver: Any, tmp_path: Path
) -> None:
    if shutil.which("dot") is None:
        pytest.fail("Graphviz's dot is missing: make setup installs it")
    await populate(kube)
    for fmt, magic in (("png", b"\x89PNG\r\n\x1a\n"), ("svg", b"<?xml")):
        out = tmp_path / f"graph.{fmt}"
        argv = ["graph", "-o", fmt, "--out", str(out), "--kubeconfig", str(apiserver.kubeconfig)]
        result = await asyncio.to_thread(CliRunner().invoke, app, argv)
        assert result.exit_code == 0, result.output
        assert out.read_bytes().startswith(magic)
    assert b"edge&#45;a&#45;1" in (tmp_path / "graph.svg").read_bytes()


def test_a_missing_graphviz_is_named() -> None:
    with pytest.raises(GraphvizError, match="apt-get install graphviz"):
        render("digraph {}", "png", dot="no-such-dot-binary")


# Pure: the overview and the DOT from fixed inputs ---------------------------------------------


def _pool(name: str, gateway: str | None, **kw: Any) -> Pool:
    return Pool(name=name, gateway=gateway, has_gateway_object=True, **kw)


@pytest.mark.parametrize(
    ("edge", "relay", "state"),
    [
        ("Up", "Up", "up"),
        ("Up", "Down", "down"),
        ("Down", "Up", "down"),
        ("Up", None, "up"),
        (None, "Down", "down"),
        (None, None, "unknown"),
        ("Sideways", "Up", "unknown"),
    ],
)
def test_a_tunnel_shows_the_worse_of_its_two_ends(
    edge: str | None, relay: str | None, state: str
) -> None:
    def gw(pool: str, active: str, peers: list[dict[str, Any]], relay: bool = False) -> Any:
        spec = {"relay": True} if relay else {}
        return {
            "metadata": {"name": pool},
            "spec": spec,
            "status": {"activeNode": active, "peers": peers},
        }

    edge_peers = [{"node": "c1", "pool": "cloud", "state": edge, "rttMs": 4.0}] if edge else []
    relay_peers = [{"node": "a1", "pool": "edge-a", "state": relay, "rttMs": 5.0}] if relay else []
    ov = overview([], [gw("cloud", "c1", relay_peers, relay=True), gw("edge-a", "a1", edge_peers)])
    rtt = 4.0 if edge else (5.0 if relay else None)
    assert ov.tunnels == (Tunnel("edge-a", "a1", "c1", state, rtt, None),)


@pytest.mark.parametrize(
    ("tunnel", "label", "colour"),
    [
        (Tunnel("a", "a1", "c1", "up", 1.234, 0.0), "up 1.2 ms", COLOURS["up"]),
        (Tunnel("a", "a1", "c1", "up", 3.0, 20.0), "up 3.0 ms 20% loss", COLOURS["up"]),
        (Tunnel("a", "a1", "c1", "down", None, 100.0), "down 100% loss", COLOURS["down"]),
        (Tunnel("a", "a1", "c1", "unknown"), "unknown", UNKNOWN_COLOUR),
    ],
)
def test_tunnel_labels_and_colours(tunnel: Tunnel, label: str, colour: str) -> None:
    assert tunnel_label(tunnel) == label
    edges = parse_dot(to_dot(Overview(tunnels=(tunnel,))))["edges"]
    assert edges == {
        ("a1", "c1"): {
            "label": label,
            "color": colour,
            "fontcolor": colour,
            "style": {"up": "solid", "down": "bold"}.get(tunnel.state, "dashed"),
            "penwidth": "2",
            "tooltip": f"a to the relay: {tunnel.state}",
        }
    }


def test_names_are_quoted_so_any_name_is_one_node() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    ov = Overview(pools=(_pool("p", None),), unpooled=('we"ird',))
    assert set(parse_dot(to_dot(ov))["nodes"]) == {'we"ird'}


def test_equal_input_gives_equal_dot() -> None:
    nodes = [
        {"metadata": {"name": n, "labels": {"apps.openyurt.io/nodepool": p}}}
        for n, p in (("b1", "b"), ("a2", "a"), ("a1", "a"))
    ]
    one = to_dot(overview(nodes, []))
    assert one == to_dot(overview(list(reversed(nodes)), []))
    assert [line.split('"')[1] for line in one.splitlines() if line.startswith('    "')] == [
        "a1",
        "a2",
        "b1",
    ]
