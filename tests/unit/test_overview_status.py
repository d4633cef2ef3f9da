"""``raven status``: the cluster's pools, gateways, members, peers and last failover read from
the embedded API server; one node's agent document over HTTP; the tables, from fixed inputs."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from agent.nodestatus import ApplyRecord, Facts, Inventory, RoundRecord, StepResult, document
from raven.cli import app
from raven.healthserver import HealthServer
from raven.kube import NODES, KubeClient
from raven.model import DesiredState, PeerSpec, Role, RouteSpec, RuleSpec
from raven.overview.cluster import EventNote, Failover, Member, Overview, Peer, Pool, last_failover
from raven.overview.nodeclient import kubectl_argv, status_url
from raven.overview.tables import Table, cluster_tables, node_tables, plain
from tests.unit.overviewkit import IP, populate

pytestmark = pytest.mark.timeout(60)


async def invoke(*argv: str) -> Any:
    result = await asyncio.to_thread(CliRunner().invoke, app, list(argv))
    assert result.exit_code == 0, result.output
    return result


async def test_status_json_per_pool(kube: KubeClient, apiserver: Any) -> None:
    await populate(kube)
    result = await invoke("status", "-o", "json", "--kubeconfig", str(apiserver.kubeconfig))
    doc = json.loads(result.stdout)
    pools = {p["name"]: p for p in doc["pools"]}
    assert list(pools) == ["cloud", "edge-a", "edge-b", "edge-c"]
    assert (doc["relayPool"], doc["unpooled"], doc["notes"]) == ("cloud", ["lonely"], [])
    gateways = {name: (p["gateway"], p["leaseHolder"], p["relay"]) for name, p in pools.items()}
    assert gateways == {
        "cloud": ("cloud-1", "cloud-1", True),
        "edge-a": ("edge-a-1", "edge-a-1", False),
        "edge-b": ("edge-b-1", "edge-b-1", False),
        "edge-c": (None, None, False),
    }
    members = {m["name"]: m for p in doc["pools"] for m in p["members"]}
    assert members["edge-a-2"] == {
        "name": "edge-a-2",
        "address": IP["edge-a-2"],
        "ready": True,
        "gateway": False,
        "heartbeatVia": "edge-a-1",
    }
    assert [m["name"] for m in members.values() if m["heartbeatVia"]] == ["edge-a-2"]
    assert pools["cloud"]["peers"] == [
        {
            "node": "edge-a-1",
            "pool": "edge-a",
            "state": "up",
            "rttMs": 12.5,
            "lossPercent": 0.0,
            "lastHandshake": "2026-03-01T10:04:55Z",
            "endpoint": f"{IP['edge-a-1']}:51820",
        },
        {
            "node": "edge-b-1",
            "pool": "edge-b",
            "state": "down",
            "rttMs": None,
            "lossPercent": 100.0,
            "lastHandshake": "2026-03-01T09:00:00Z",
            "endpoint": f"{IP['edge-b-1']}:51820",
        },
    ]
    # edge-a's last change was a failover, caused by its old gateway stepping down.
    assert pools["edge-a"]["lastFailover"] == {
        "change": {
            "time": "2026-03-01T10:00:01Z",
            "reason": "GatewayFailover",
            "message": "edge-a-1 took over pool edge-a from edge-a-2",
            "node": "edge-a-1",
        },
        "cause": {
            "time": "2026-03-01T10:00:00Z",
            "reason": "GatewayStepDown",
            "message": "the tunnel to the relay answered none of the last 3 probes",
            "node": "edge-a-2",
        },
    }
    # edge-b's step-down an hour before its election caused nothing; edge-c never had one.
    assert pools["edge-b"]["lastFailover"]["cause"] is None
    assert pools["edge-c"]["lastFailover"] is None
    assert pools["edge-c"]["problems"] == ["GatewayElected: no node of the pool can be gateway"]
    assert [(t["pool"], t["state"]) for t in doc["tunnels"]] == [
        ("edge-a", "up"),
        ("edge-b", "down"),
    ]

    # Without a terminal: plain aligned tables, the same facts.
    text = (await invoke("status", "--kubeconfig", str(apiserver.kubeconfig))).stdout
    assert "  edge-a  edge   edge-a-1  edge-a-1      192.168.2.11:51820  3/3    1/1" in text
    assert "  edge-a  edge-a-2  192.168.3.11  member   Ready   via edge-a-1\n" in text


async def test_status_of_one_node_from_its_agent(
    kube: KubeClient, apiserver: Any, tmp_path: Path
) -> None:
    """``--node``: the Node's InternalIP, the agent's port, its document, rendered."""
    await kube.create(
        NODES,
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n1"},
        },
    )
    await kube.merge_patch(
        NODES,
        "n1",
        {"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}},
        subresource="status",
    )
    doc = document(FACTS)

    async def answer() -> dict[str, Any]:
        return doc

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = HealthServer(
        alive=lambda: (True, ""),
        ready=lambda: (True, ""),
        registry=CollectorRegistry(),
        host="127.0.0.1",
        port=port,
        status=answer,
    )
    await server.start()
    try:
        base = ["status", "--node", "n1", "--port", str(port), "--kubeconfig"]
        got = await invoke(*base, str(apiserver.kubeconfig), "-o", "json")
        assert json.loads(got.stdout) == doc
        text = (await invoke(*base, str(apiserver.kubeconfig))).stdout
        assert text == plain(node_tables(doc))
        assert "  role                 member\n" in text
    finally:
        await server.stop()


def test_status_url_and_kubectl_exec_argv() -> None:
    node = {"metadata": {"name": "n1"}, "status": {"addresses": [
        {"type": "Hostname", "address": "n1"},
        {"type": "InternalIP", "address": "fd00::7"},
    ]}}  # fmt: skip
    assert status_url(node) == "http://[fd00::7]:10262/status"
    find, run = kubectl_argv("n1", kubeconfig=Path("/k"), port=9)
    assert find[:3] == ["kubectl", "--kubeconfig", "/k"]
    assert "spec.nodeName=n1" in find and "app.kubernetes.io/name=raven" in find
    assert run[3:10] == ["exec", "-n", "raven-system", "{pod}", "-c", "agent", "--"]
    assert "http://127.0.0.1:9/status" in run[-1]


# Pure: tables from fixed inputs ---------------------------------------------------------------


def note(time: str, reason: str, message: str = "") -> EventNote:
    return EventNote(time, reason, message)


@pytest.mark.parametrize(
    ("notes", "change", "cause"),
    [
        ([], None, None),
        ([note("2026-01-01T10:00:00Z", "GatewayElected")], "10:00:00", None),
        (
            [
                note("2026-01-01T10:00:00Z", "GatewayStepDown"),
                note("2026-01-01T10:00:03Z", "GatewayFailover"),
            ],
            "10:00:03",
            "10:00:00",
        ),
        (  # too long before the change: something else happened in between
            [
                note("2026-01-01T09:00:00Z", "GatewayStepDown"),
                note("2026-01-01T10:00:03Z", "GatewayFailover"),
            ],
            "10:00:03",
            None,
        ),
        (  # a step-down before the previous change is that change's cause, not this one's
            [
                note("2026-01-01T10:00:00Z", "GatewayStepDown"),
                note("2026-01-01T10:00:01Z", "GatewayFailover"),
                note("2026-01-01T10:00:30Z", "GatewayFailover"),
            ],
            "10:00:30",
            None,
        ),
        (  # a step-down after the newest change has not caused one yet
            [
                note("2026-01-01T10:00:01Z", "GatewayElected"),
                note("2026-01-01T10:00:30Z", "GatewayStepDown"),
            ],
            "10:00:01",
            None,
        ),
    ],
)
def test_last_failover_and_its_cause(
    notes: list[EventNote], change: str | None, cause: str | None
) -> None:
    found = last_failover(notes)
    if change is None:
        assert found is None
        return
    assert found is not None and found.change.time[11:19] == change
    assert (found.cause.time[11:19] if found.cause else None) == cause


OVERVIEW = Overview(
    pools=(
        Pool(
            "cloud",
            relay=True,
            has_gateway_object=True,
            gateway="c1",
            lease_holder="c1",
            endpoint="198.18.0.11:51820",
            members=(Member("c1", "198.18.0.11", True, True),),
            peers=(Peer("a1", "edge-a", "down", None, 100.0, "2026-01-01T09:00:00Z"),),
            peers_ready="0/1",
        ),
        Pool(
            "edge-a",
            has_gateway_object=True,
            gateway="a1",
            members=(
                Member("a1", "192.168.1.11", True, True),
                Member("a2", "192.168.1.12", False, False, "a1"),
            ),
            peers=(Peer("c1", "cloud", "up", 1.25, 0.0),),
            peers_ready="1/1",
            problems=("RelayReachable: no handshake",),
            last_failover=Failover(
                EventNote("2026-01-01T10:00:03Z", "GatewayFailover", "a1 took over", "a1"),
                EventNote("2026-01-01T10:00:00Z", "GatewayStepDown", "tunnel dead", "a2"),
            ),
        ),
    ),
    relay_pool="cloud",
)


def test_cluster_tables_from_a_fixed_overview() -> None:
    assert cluster_tables(OVERVIEW) == [
        Table(
            "Pools",
            ("POOL", "KIND", "GATEWAY", "LEASE HOLDER", "ENDPOINT", "READY", "PEERS UP"),
            (
                ("cloud", "relay", "c1", "c1", "198.18.0.11:51820", "1/1", "0/1"),
                ("edge-a", "edge", "a1", "-", "-", "1/2", "1/1"),
            ),
        ),
        Table(
            "Members",
            ("POOL", "NODE", "ADDRESS", "ROLE", "STATUS", "HEARTBEAT"),
            (
                ("cloud", "c1", "198.18.0.11", "relay", "Ready", "direct"),
                ("edge-a", "a1", "192.168.1.11", "gateway", "Ready", "direct"),
                ("edge-a", "a2", "192.168.1.12", "member", "NotReady", "via a1"),
            ),
        ),
        Table(
            "Tunnel peers",
            cluster_tables(OVERVIEW)[2].headers,
            (
                ("cloud", "c1", "a1", "edge-a", "down", "-", "100%", "2026-01-01T09:00:00Z", "-"),
                ("edge-a", "a1", "c1", "cloud", "up", "1.2 ms", "0%", "-", "-"),
            ),
        ),
        Table(
            "Last gateway change",
            ("POOL", "TIME", "REASON", "MESSAGE", "CAUSE"),
            (
                (
                    "edge-a",
                    "2026-01-01T10:00:03Z",
                    "GatewayFailover",
                    "a1 took over (from a1)",
                    "2026-01-01T10:00:00Z GatewayStepDown tunnel dead (from a2)",
                ),
            ),
        ),
        Table(
            "Conditions not met",
            ("POOL", "CONDITION"),
            (("edge-a", "RelayReachable: no handshake"),),
        ),
    ]


def test_plain_text_aligns_columns() -> None:
    tables = [
        Table("Pools", ("POOL", "GATEWAY"), (("cloud", "c1"), ("edge-a", "-"))),
        Table("Peers", ("PEER",), ()),
    ]
    assert plain(tables) == (
        "Pools:\n  POOL    GATEWAY\n  cloud   c1\n  edge-a  -\n\nPeers:\n  (none)\n"
    )


DESIRED = DesiredState(
    role=Role.MEMBER,
    routes=(
        RouteSpec("10.244.20.0/24", gateway="192.168.1.11", mtu=1370),
        RouteSpec("10.244.30.0/24", gateway="192.168.1.11", mtu=1370),
    ),
    rules=(RuleSpec(),),
)
FACTS = Facts(
    node="a2",
    pool="edge-a",
    holder="a1",
    relay_pool="cloud",
    role=Role.MEMBER,
    ready=(True, ""),
    desired=DESIRED,
    # Someone deleted one route and added another behind the agent's back.
    inventory=Inventory(
        routes=(
            RouteSpec("10.244.20.0/24", gateway="192.168.1.11", mtu=1370),
            RouteSpec("10.244.99.0/24", gateway="192.168.1.11"),
        ),
        rules=(RuleSpec(),),
        read_at=1767261600.0,
    ),
    last_apply=ApplyRecord(
        1767261599.5, 0.0042, (StepResult("SetRoutes", True, 1), StepResult("SetRules", True, 0))
    ),
    last_round=RoundRecord(1767261599.5, 0.0051, "full"),
    counts={"rounds": 3},
)


def test_node_tables_compare_the_plan_with_the_kernel() -> None:
    doc = document(FACTS)
    assert doc["kernel"]["matchesPlan"] == {"routes": False, "rules": True, "peers": True}
    tables = {t.title: t for t in node_tables(doc)}
    summary = dict(tables["Node"].rows)
    assert summary["role"] == "member" and summary["pool gateway"] == "a1"
    assert summary["kernel matches plan"] == "no: routes"
    assert summary["last reconcile"] == "2026-01-01T09:59:59.500Z (full, 5.1 ms)"
    assert summary["last apply"] == "2026-01-01T09:59:59.500Z (ok, 4.2 ms, 1 kernel writes)"
    assert summary["last error"] == "-"
    assert tables["Routes (Raven's table)"].rows == (
        ("10.244.20.0/24", "192.168.1.11", "-", "1370", "9027", "yes", "yes"),
        ("10.244.30.0/24", "192.168.1.11", "-", "1370", "9027", "yes", "no"),
        ("10.244.99.0/24", "192.168.1.11", "-", "-", "9027", "no", "yes"),
    )
    assert tables["Policy rules"].rows == (("9027", "9027", "yes", "yes"),)
    assert "WireGuard peers" not in tables  # a member has none
    assert tables["Last apply"].rows == (
        ("SetRoutes", "yes", "1", ""),
        ("SetRules", "yes", "0", ""),
    )


def test_a_gateway_shows_its_peers_public_keys_only() -> None:
    key = "K" * 43 + "="
    desired = DesiredState(role=Role.GATEWAY, peers=(PeerSpec(key, ("10.244.0.0/24",)),))
    doc = document(Facts(node="a1", role=Role.GATEWAY, desired=desired, inventory=Inventory()))
    rows = {t.title: t for t in node_tables(doc)}["WireGuard peers"].rows
    assert rows == (("KKKKKKKKKK…", "10.244.0.0/24", "-", "-", "yes", "no"),)


def test_rich_tables_carry_the_same_cells() -> None:
    import io

    from rich.console import Console

    from raven.overview.tables import to_rich

    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    for table in to_rich(cluster_tables(OVERVIEW)):
        console.print(table)
    text = out.getvalue()
    for cell in ("Pools", "Tunnel peers", "198.18.0.11:51820", "NotReady", "via a1", "down"):
        assert cell in text
