"""``raven status``, ``raven graph`` and ``raven lab node-status`` on the default lab with real
agents, once every pod reaches every other pod: what they show is what the cluster and the
nodes' kernels hold."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from raven.lab import engine
from raven.lab.topology import Lab

from ..dotparse import parse_dot
from .labkit import RAVEN, LabEnv, make_env, wait_for, wait_reachable

pytestmark = pytest.mark.root


@dataclass
class Running:
    env: LabEnv
    lab: Lab

    def raven(self, *args: str) -> subprocess.CompletedProcess[str]:
        kubeconfig = str(self.env.state_dir / "kubeconfig")
        res = subprocess.run(
            [str(RAVEN), *args, "--kubeconfig", kubeconfig],
            capture_output=True,
            text=True,
            env=self.env.env,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr + res.stdout
        return res

    def pools(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for node in self.lab.nodes:
            found.setdefault(node.pool, []).append(node.name)
        return found


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    env = make_env(tmp_path_factory, "sg")
    try:
        res = env.raven("up", timeout=240)
        assert res.returncode == 0, res.stderr + res.stdout
        _, lab = engine.load(engine.Settings(state_dir=env.state_dir, prefix=env.prefix))
        wait_reachable(lab, deadline=90)
        yield Running(env, lab)
    finally:
        env.down()


def tunnels_up(running: Running) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(running.raven("status", "-o", "json").stdout)
    tunnels = {t["pool"]: t for t in doc["tunnels"]}
    assert set(tunnels) == {"edge-a", "edge-b"}, doc["tunnels"]
    assert all(t["state"] == "up" and t["rttMs"] is not None for t in tunnels.values()), tunnels
    return doc


def test_status_names_each_pools_gateway_and_every_tunnel_up(running: Running) -> None:
    wait_for(lambda: tunnels_up(running), 40, "both edge tunnels up with an RTT")
    doc = tunnels_up(running)
    pools = {p["name"]: p for p in doc["pools"]}
    assert set(pools) == set(running.pools()) == {"cloud", "edge-a", "edge-b"}
    assert doc["relayPool"] == "cloud"
    for name, pool in pools.items():
        assert pool["gateway"] == running.env.holder(name) == pool["leaseHolder"]
        assert sorted(m["name"] for m in pool["members"]) == sorted(running.pools()[name])
        assert pool["lastFailover"]["change"]["reason"] in ("GatewayElected", "GatewayFailover")
    assert {p["pool"]: p["state"] for p in pools["cloud"]["peers"]} == {
        "edge-a": "up",
        "edge-b": "up",
    }


def test_graph_draws_every_node_in_its_pool_and_each_tunnel_up(
    running: Running, tmp_path: Path
) -> None:
    wait_for(lambda: tunnels_up(running), 40, "both edge tunnels up with an RTT")
    dot = parse_dot(running.raven("graph").stdout)
    assert set(dot["clusters"]) == set(running.pools())
    assert {name: attrs["cluster"] for name, attrs in dot["nodes"].items()} == {
        n.name: n.pool for n in running.lab.nodes
    }
    relay = running.env.holder("cloud")
    for pool in ("edge-a", "edge-b"):
        tunnel = dot["edges"][(running.env.holder(pool), relay)]
        assert tunnel["label"].startswith("up ") and " ms" in tunnel["label"], tunnel
    out = tmp_path / "graph.png"
    running.raven("graph", "-o", "png", "--out", str(out))
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_node_status_from_inside_the_nodes_namespace(running: Running) -> None:
    gateway = running.env.holder("edge-a")
    member = next(n for n in running.pools()["edge-a"] if n != gateway)

    def node_status(name: str) -> dict[str, Any]:
        res = running.env.raven("node-status", name, "-o", "json")
        assert res.returncode == 0, res.stderr
        doc: dict[str, Any] = json.loads(res.stdout)
        return doc

    doc = node_status(member)
    assert (doc["node"], doc["pool"], doc["role"], doc["holder"]) == (
        member,
        "edge-a",
        "member",
        gateway,
    )
    assert doc["kernel"]["matchesPlan"] == {"routes": True, "rules": True, "peers": True}
    assert doc["kernel"]["routes"] and doc["lastApply"]["ok"] and doc["lastError"] is None
    doc = node_status(gateway)
    assert doc["role"] == "gateway" and doc["kernel"]["tunnel"]["peers"]
    assert doc["kernel"]["matchesPlan"]["peers"] is True
    text = running.env.raven("node-status", gateway)
    assert text.returncode == 0 and "WireGuard peers" in text.stdout
