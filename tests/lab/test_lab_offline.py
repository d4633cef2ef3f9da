"""An edge pool cut from the cloud, in the default lab with real agents and per-node cache proxies.

While `edge-a` is cut at its NAT router: an agent restarted there comes back from its node's
proxy cache with its data path unchanged, pods of the pool keep reaching each other without a
lost packet, kubectl through the node's proxy still lists nodes and gateways, a write through it
gets a 503 naming the outage, and a proxy killed outright restarts on its cache. After `heal`,
the pool's agents follow changes within seconds. Node and cloud cuts, and the CLI's refusals,
are checked too.

One lab for the module; every test heals what it cut.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from raven.lab import engine, matrix
from raven.lab.topology import Lab, Node, Pod

from .labkit import (
    KUBECTL,
    LabEnv,
    log_size,
    make_env,
    ns_exec,
    wait_applied,
    wait_for,
    wait_reachable,
)
from .steady import SteadyPing

pytestmark = pytest.mark.root

TABLE = "9027"  # Raven's routing table in the lab (the agent's default)
GHOST_CIDR = "10.244.29.0/24"  # the pod CIDR of a Node added to edge-b while edge-a is cut


@dataclass
class Running:
    env: LabEnv
    lab: Lab
    home: Path  # HOME for kubectl: its discovery cache stays inside the test

    def kubectl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """kubectl on the host, straight to the API server."""
        return self.env.kubectl(*args, timeout=timeout, env={**os.environ, "HOME": str(self.home)})

    def node_kubectl(
        self, node: Node, *args: str, cache: str = "warm", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """kubectl inside ``node``'s namespace, through that node's cache proxy."""
        return subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                node.netns,
                KUBECTL,
                "--kubeconfig",
                str(self.env.state_dir / "proxy.kubeconfig"),
                "--cache-dir",
                str(self.home / cache),
                "--request-timeout",
                "20s",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HOME": str(self.home)},
        )

    def node(self, name: str) -> Node:
        return next(n for n in self.lab.nodes if n.name == name)

    def pod_of(self, node: str) -> Pod:
        return next(p for p in self.lab.pods if p.node == node)

    def pods(self, src: str, dst: str) -> tuple[Pod, Pod]:
        """The pods of nodes ``src`` and ``dst``, as a pair to ping."""
        return self.pod_of(src), self.pod_of(dst)

    def status(self) -> dict:
        res = self.env.raven("status", "-o", "json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def edge_a_gateway(self) -> str:
        res = self.kubectl("get", "gw", "edge-a", "-o", "jsonpath={.status.activeNode}")
        assert res.returncode == 0 and res.stdout, res.stderr
        return res.stdout


def raven_table(ns: str) -> str:
    return ns_exec(ns, "ip", "route", "show", "table", TABLE).stdout


def proxy_online(running: Running, node: Node) -> bool:
    """The node's proxy's own /readyz: 200 while it reaches the API server."""
    return running.node_kubectl(node, "get", "--raw", "/readyz").returncode == 0


def proxy_offline(running: Running, node: Node) -> bool:
    """The node's proxy runs (its /healthz answers) and knows the API server is unreachable."""
    up = running.node_kubectl(node, "get", "--raw", "/healthz").returncode == 0
    return up and not proxy_online(running, node)


def api_reachable_from(running: Running, node: Node) -> bool:
    """Straight to the API server from the node's namespace (no proxy in between)."""
    res = ns_exec(
        node.netns,
        KUBECTL,
        "--kubeconfig",
        str(running.env.state_dir / "nodes.kubeconfig"),
        "--request-timeout",
        "2s",
        "get",
        "--raw",
        "/readyz",
    )
    return res.returncode == 0


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    env = make_env(tmp_path_factory, "of")
    try:
        res = env.raven("up", timeout=240)
        assert res.returncode == 0, res.stderr + res.stdout
        _, lab = engine.load(engine.Settings(state_dir=env.state_dir, prefix=env.prefix))
        yield Running(env, lab, tmp_path_factory.mktemp("kubectl-home"))
    finally:
        env.down()


def test_every_node_runs_a_cache_proxy_that_its_agent_talks_through(running):
    st = running.status()
    for node in st["nodes"]:
        proxy, agent = node["cacheProxy"], node["agent"]
        assert proxy and proxy["running"] and agent and agent["running"], node
        ns = ns_exec(node["netns"], "ip", "netns", "identify", str(proxy["pid"])).stdout.strip()
        assert ns == node["netns"]
    n = running.node("edge-b-2")
    wait_for(lambda: proxy_online(running, n), 30, "edge-b-2's proxy to reach the API server")
    res = running.node_kubectl(n, "get", "--raw", "/metrics")
    assert res.returncode == 0, res.stderr
    forwarded = re.search(r'raven_cacheproxy_requests_total\{action="forward"\} (\S+)', res.stdout)
    assert forwarded and float(forwarded.group(1)) > 0  # the agent's own reads went through it


def test_cut_heal_and_restart_refuse_bad_input_by_name(running):
    env = running.env
    for args, needle in [
        (("cut", "edge-c"), "no such lab pool or node: 'edge-c' (pools: cloud, edge-a, edge-b;"),
        (("heal", "node/edge-a"), "no such lab node: 'edge-a' (nodes: cloud-1,"),
        (("cut", "rack/edge-a"), "expected pool/NAME or node/NAME"),
        (("restart", "edge-z-1"), "no such lab node: 'edge-z-1'"),
        (
            ("restart", "edge-a-1", "--component", "kube-proxy"),
            "expected agent or cache-proxy or kubelet or heartbeat",
        ),
        (("kill", "edge-z-1", "--component", "kubelet"), "no such lab node: 'edge-z-1'"),
        (("kill", "edge-a-1", "--component", "kube-proxy"), "expected agent or cache-proxy"),
    ]:
        res = env.raven(*args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert needle in res.stderr, (args, res.stderr)
    res = env.raven("heal", "edge-b")
    assert res.returncode == 0 and "pool edge-b was not cut" in res.stdout
    assert running.status()["cuts"] == []


def test_a_cut_node_keeps_its_pool_and_loses_everything_else_until_healed(running):
    node, mate = running.node("edge-b-1"), running.node("edge-b-2")
    assert api_reachable_from(running, node)
    res = running.env.raven("cut", "edge-b-1")
    assert res.returncode == 0, res.stderr
    assert f"cut node edge-b-1 from the cloud (in its namespace {node.netns})" in res.stdout
    try:
        again = running.env.raven("cut", "edge-b-1")
        assert again.returncode == 0 and "already cut" in again.stdout
        st = running.status()
        assert st["cuts"] == [{"scope": "node", "target": "edge-b-1"}]
        assert [n["name"] for n in st["nodes"] if n["cut"]] == ["edge-b-1"]
        assert not api_reachable_from(running, node)
        wait_for(lambda: api_reachable_from(running, mate), 30, "edge-b-2 reaching the API")
        wait_reachable(running.lab, [running.pods("edge-b-1", "edge-b-2")], deadline=30)
        assert not matrix.ping(running.pod_of("edge-b-1"), running.pod_of("cloud-1"))
    finally:
        healed = running.env.raven("heal", "edge-b-1")
    assert healed.returncode == 0 and "healed node edge-b-1" in healed.stdout
    wait_for(lambda: api_reachable_from(running, node), 30, "edge-b-1 reaching the API again")
    assert running.status()["cuts"] == []
    assert ns_exec(node.netns, "iptables-save", "-t", "filter").stdout.count("CUT") == 0


def test_the_cloud_pool_cut_keeps_cloud_nodes_together_and_away_from_the_rest(running):
    cloud1, cloud2 = running.node("cloud-1"), running.node("cloud-2")
    res = running.env.raven("cut", "cloud")
    assert res.returncode == 0, res.stderr
    try:
        assert "cut pool cloud from the cloud (in the namespace of each of its nodes)" in res.stdout
        assert not api_reachable_from(running, cloud1)
        wait_reachable(running.lab, [running.pods("cloud-1", "cloud-2")], deadline=30)
        ping = ["ping", "-c", "1", "-W", "1", str(cloud2.ip)]
        wait_for(lambda: ns_exec(cloud1.netns, *ping).returncode == 0, 30, "cloud-1 to cloud-2")
        assert not matrix.ping(running.pod_of("cloud-1"), running.pod_of("edge-a-1"))
    finally:
        healed = running.env.raven("heal", "cloud")
    assert healed.returncode == 0 and "healed pool cloud" in healed.stdout
    wait_for(lambda: api_reachable_from(running, cloud1), 30, "cloud-1 reaching the API again")


def test_edge_pool_cut_from_the_cloud_keeps_working_from_the_proxy_cache(running):
    env, lab = running.env, running.lab
    wait_reachable(lab, deadline=90)
    gateway = running.edge_a_gateway()
    members = [n for n in lab.nodes if n.pool == "edge-a" and n.name != gateway]
    node, other = members[0], members[1]  # `node` gets its agent (and proxy) restarted

    # Before the cut: what kubectl will ask for offline goes through the node's proxy once,
    # as node components read before an outage.
    for args in (("get", "nodes"), ("get", "gateways"), ("label", "node", node.name, "t=on")):
        argv = (*args, "--overwrite" if args[0] == "label" else "-o=name")

        def through_proxy(argv: tuple[str, ...] = argv) -> bool:
            res = running.node_kubectl(node, *argv)
            assert res.returncode == 0, res.stderr
            return True

        # The proxy refuses while its last probe of the API server failed (a slow machine can
        # make one time out); this is set-up, so try again until it is through.
        wait_for(through_proxy, 30, f"kubectl {' '.join(argv)} through {node.name}'s proxy")
    table_before, rules_before = raven_table(node.netns), ns_exec(node.netns, "ip", "rule").stdout
    main_before = ns_exec(node.netns, "ip", "route", "show", "table", "main").stdout
    assert GHOST_CIDR not in table_before and "10.244.21.0/24" in table_before

    pinger = SteadyPing(running.pod_of(node.name), running.pod_of(other.name), interval=0.1)
    pinger.start()
    healed = False
    try:
        res = env.raven("cut", "edge-a")
        assert res.returncode == 0, res.stderr
        assert f"cut pool edge-a from the cloud (at its NAT router {env.prefix}-edge-a-nat)" in (
            res.stdout
        )
        st = running.status()
        assert st["cuts"] == [{"scope": "pool", "target": "edge-a"}]
        assert {n["name"] for n in st["nodes"] if n["cut"]} == {"edge-a-1", "edge-a-2", "edge-a-3"}
        wait_for(lambda: proxy_offline(running, node), 30, "the proxy to see the outage")
        assert not api_reachable_from(running, node)
        assert not matrix.ping(running.pod_of(node.name), running.pod_of("edge-b-1"))

        # A change the cut pool cannot see yet: a Node joins edge-b with a new pod CIDR.
        ghost = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "edge-b-9", "labels": {"apps.openyurt.io/nodepool": "edge-b"}},
            "spec": {"podCIDR": GHOST_CIDR, "podCIDRs": [GHOST_CIDR]},
        }
        path = running.home / "ghost.json"
        path.write_text(json.dumps(ghost))
        assert running.kubectl("create", "-f", str(path)).returncode == 0

        # The agent restarts while cut: it comes back from its proxy's cache.
        since = log_size(env, node.name)
        res = env.raven("restart", node.name, "--component", "agent")
        assert res.returncode == 0, res.stderr
        assert f"restarted agent of {node.name}" in res.stdout
        wait_applied(env, node.name, since=since)
        assert raven_table(node.netns) == table_before
        assert ns_exec(node.netns, "ip", "rule").stdout == rules_before
        assert ns_exec(node.netns, "ip", "route", "show", "table", "main").stdout == main_before
        assert GHOST_CIDR not in raven_table(node.netns)  # offline: the new Node is unseen

        # kubectl through the node's proxy: reads from the cache, writes refused by name.
        nodes = running.node_kubectl(node, "get", "nodes", "-o=name", cache="cold")
        assert nodes.returncode == 0, nodes.stderr
        assert sorted(nodes.stdout.split()) == sorted(f"node/{n.name}" for n in lab.nodes)
        gws = running.node_kubectl(node, "get", "gateways", "-o=name", cache="cold")
        assert gws.returncode == 0, gws.stderr
        assert sorted(gws.stdout.split()) == [
            "gateway.raven.io/cloud",
            "gateway.raven.io/edge-a",
            "gateway.raven.io/edge-b",
        ]
        write = running.node_kubectl(node, "label", "node", node.name, "t=off", "--overwrite")
        assert write.returncode != 0
        assert "ServiceUnavailable" in write.stderr and "cloud outage" in write.stderr
        assert "was NOT applied" in write.stderr
        label = running.kubectl("get", "node", node.name, "-o", "jsonpath={.metadata.labels.t}")
        assert label.stdout == "on"

        # The node's proxy killed outright, then restarted: its cache on disk still serves.
        proxy_pid = next(n for n in running.status()["nodes"] if n["name"] == node.name)[
            "cacheProxy"
        ]["pid"]
        os.kill(proxy_pid, signal.SIGKILL)
        res = env.raven("restart", node.name, "--component", "cache-proxy")
        assert res.returncode == 0, res.stderr
        assert f"cache-proxy of {node.name}" in res.stdout  # "restarted" or "started"
        wait_for(lambda: proxy_offline(running, node), 30, "the new proxy to see the outage")
        nodes = running.node_kubectl(node, "get", "nodes", "-o=name", cache="cold2")
        assert nodes.returncode == 0, nodes.stderr
        assert len(nodes.stdout.split()) == len(lab.nodes)
        assert raven_table(node.netns) == table_before

        res = env.raven("heal", "edge-a")
        assert res.returncode == 0 and "healed pool edge-a" in res.stdout, res.stderr
        healed = True
        assert running.status()["cuts"] == []

        # After heal, every edge-a agent follows what changed while it was cut, within seconds:
        # the restarted one and those whose watches were open across the cut alike.
        edge_a = [n for n in lab.nodes if n.pool == "edge-a"]
        seconds = wait_for(
            lambda: all(GHOST_CIDR in raven_table(n.netns) for n in edge_a),
            30,
            f"{GHOST_CIDR} in table {TABLE} on every edge-a node",
            interval=0.1,
        )
        print(f"edge-a followed the offline change {seconds:.1f}s after heal")
        assert running.kubectl("delete", "node", "edge-b-9").returncode == 0
        seconds = wait_for(
            lambda: all(GHOST_CIDR not in raven_table(n.netns) for n in edge_a),
            15,
            f"{GHOST_CIDR} gone from table {TABLE} on every edge-a node",
            interval=0.1,
        )
        print(f"edge-a followed a change after heal in {seconds:.1f}s")
        recovered = wait_reachable(lab, deadline=60)
        print(f"full ping matrix {recovered:.1f}s after the change")
        pinger.stop()
    finally:
        pinger.stop(check=False)  # stopped above unless the test failed before
        if not healed:
            env.raven("heal", "edge-a")
        running.kubectl("delete", "node", "edge-b-9", "--ignore-not-found")
    answered, lost = pinger.received, pinger.lost
    assert answered > 50 and lost == [], f"{len(lost)} of {answered + len(lost)} pings lost"
    assert ns_exec(node.netns, "ip", "route", "show", "table", "main").stdout == main_before
