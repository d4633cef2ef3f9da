"""Cross-pool connectivity in the default lab with real agents: the whole of Raven end to end.

One lab per module. The main tables are recorded before any agent starts, so the tests can show
that Raven leaves them byte-identical; the last test uninstalls Raven from one node.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from raven.lab import engine, matrix
from raven.lab.topology import Lab

from .labkit import LabEnv, main_table, make_env, ns_exec, wait_for
from .steady import SteadyPing

pytestmark = pytest.mark.root



@dataclass
class Running:
    env: LabEnv
    lab: Lab
    main_before: dict[str, str]
    rules_before: dict[str, str]
    seconds_to_matrix: float

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.env.kubectl(*args)

    def gateways(self) -> dict[str, dict]:
        res = self.kubectl("get", "gateways", "-o", "json")
        assert res.returncode == 0, res.stderr
        return {g["metadata"]["name"]: g for g in json.loads(res.stdout)["items"]}

    def node(self, name: str):
        return next(n for n in self.lab.nodes if n.name == name)

    def pod_of(self, node: str):
        return next(p for p in self.lab.pods if p.node == node)


def rules(ns: str) -> str:
    return ns_exec(ns, "ip", "rule", "show").stdout


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    env = make_env(tmp_path_factory, "xp")
    res = env.raven("up", "--no-agents")
    try:
        assert res.returncode == 0, res.stderr + res.stdout
        _, lab = engine.load(engine.Settings(state_dir=env.state_dir, prefix=env.prefix))
        main_before = {n.name: main_table(n.netns) for n in lab.nodes}
        rules_before = {n.name: rules(n.netns) for n in lab.nodes}
        start = time.monotonic()
        started = env.raven("agents", "start")
        assert started.returncode == 0, started.stderr + started.stdout
        seconds = matrix.wait_full_matrix(lab, timeout=60)
        assert seconds is not None, "not every pod reached every other pod within 60 s"
        yield Running(env, lab, main_before, rules_before, time.monotonic() - start)
    finally:
        down = env.raven("down")
        assert down.returncode == 0, down.stderr
        assert env.leftovers() == []


def test_every_pod_reaches_every_other_pod_with_1400_byte_unfragmented_pings(running):
    results = matrix.matrix(running.lab, size=matrix.PAYLOAD_1400, timeout=2)
    assert len(results) == 72
    assert [r for r in results if not r.ok] == []


def test_edge_pools_reach_each_other_only_through_the_relay(running):
    gws = running.gateways()
    relay = gws["cloud"]["status"]
    assert gws["cloud"]["spec"]["relay"] is True
    # The relay holds one peer per edge pool, with exactly that pool's subnets.
    peers = {p["pool"]: p for p in relay["peers"]}
    assert set(peers) == {"edge-a", "edge-b"}
    for pool in ("edge-a", "edge-b"):
        assert sorted(peers[pool]["allowedIPs"]) == sorted(gws[pool]["status"]["subnets"])
    # An edge gateway's only peer is the relay.
    for pool in ("edge-a", "edge-b"):
        (peer,) = gws[pool]["status"]["peers"]
        assert peer["node"] == relay["activeNode"] and peer["state"] == "Up"


def test_kubectl_get_gw_lists_three_gateways_with_an_active_node_and_all_peers_up(running):
    def all_up() -> bool:
        gws = running.gateways()
        return len(gws) == 3 and all(
            g["status"].get("activeNode")
            and g["status"].get("peersReady", "").split("/")[0]
            == g["status"].get("peersReady", "").split("/")[-1]
            != "0"
            for g in gws.values()
        )

    wait_for(all_up, 20, "every Gateway to show an active node with all peers up")
    table = running.kubectl("get", "gw").stdout.splitlines()
    assert table[0].split()[:5] == ["NAME", "POOL", "ACTIVE", "ENDPOINT", "PEERS"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    gws = running.gateways()
    for pool, row in rows.items():
        status = gws[pool]["status"]
        assert row[2] == status["activeNode"] and row[3] == status["endpoint"]
        assert row[4] == status["peersReady"]
    assert rows["cloud"][4] == "2/2" and rows["edge-a"][4] == "1/1" and rows["edge-b"][4] == "1/1"


def test_gateway_status_carries_rtt_and_last_handshake_per_peer(running):
    def measured() -> bool:
        return all(
            p.get("rttMs") is not None and p.get("lastHandshake") and g["status"].get("rtt")
            for g in running.gateways().values()
            for p in g["status"].get("peers", [])
        )

    wait_for(measured, 30, "an RTT and a handshake time for every peer")
    for gw in running.gateways().values():
        status = gw["status"]
        worst = max(p["rttMs"] for p in status["peers"])
        assert status["rtt"] == f"{worst:.1f}ms"
        assert all(0 < p["rttMs"] < 1000 for p in status["peers"])
    table = running.kubectl("get", "gw").stdout.splitlines()
    assert all(line.split()[5].endswith("ms") for line in table[1:])


def test_main_tables_stay_byte_identical_while_agents_run(running):
    for node in running.lab.nodes:
        assert main_table(node.netns) == running.main_before[node.name], node.name


def test_tcp_across_pools_through_the_relay(running):
    server, client = running.pod_of("edge-b-3"), running.pod_of("edge-a-3")
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server.netns, "iperf3", "-s", "-1", "-p", "5201"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        res = ns_exec(
            client.netns, "iperf3", "-c", str(server.ip), "-p", "5201", "-t", "2", "-J", timeout=30
        )
        assert res.returncode == 0, res.stdout[-500:] + res.stderr
        received = json.loads(res.stdout)["end"]["sum_received"]["bytes"]
        assert received > 1_000_000
    finally:
        srv.kill()
        srv.wait()


def test_traffic_between_two_members_of_a_pool_never_meets_the_gateway(running):
    gw = running.gateways()["edge-a"]["status"]["activeNode"]
    a, b = [n.name for n in running.lab.nodes if n.pool == "edge-a" and n.name != gw][:2]
    pod_a, pod_b = running.pod_of(a), running.pod_of(b)
    capture = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            running.node(gw).netns,
            "timeout",
            "4",
            "tcpdump",
            "-i",
            "any",
            "-n",
            "-l",
            f"host {pod_a.ip} and host {pod_b.ip}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # tcpdump is listening
    assert matrix.ping(pod_a, pod_b, count=5)
    out, err = capture.communicate(timeout=10)
    assert "listening on" in err, err  # the capture really ran
    assert out.strip() == "", f"packets between {a} and {b} crossed the gateway {gw}:\n{out}"


def test_a_malformed_gateway_spec_is_refused_by_name_and_changes_nothing(running):
    # The CRD schema accepts any string here; the agent must refuse it by name.
    patched = running.kubectl(
        "patch",
        "gw",
        "edge-b",
        "--type",
        "merge",
        "-p",
        '{"spec": {"endpoint": "198.18.0.99:notaport"}}',
    )
    assert patched.returncode == 0, patched.stderr
    try:

        def refused() -> bool:
            conds = running.gateways()["edge-b"]["status"].get("conditions", [])
            return any(c["type"] == "SpecValid" and c["status"] == "False" for c in conds)

        wait_for(refused, 15, "the SpecValid=False condition on edge-b")
        cond = next(
            c
            for c in running.gateways()["edge-b"]["status"]["conditions"]
            if c["type"] == "SpecValid"
        )
        assert "spec.endpoint" in cond["message"] and "notaport" in cond["message"]
        events = running.kubectl("get", "events", "-o", "json")
        assert any(
            e["reason"] == "InvalidSpec"
            and "spec.endpoint" in e["message"]
            and e["involvedObject"]["name"] == "edge-b"
            for e in json.loads(events.stdout)["items"]
        )
        results = matrix.matrix(running.lab, timeout=2)
        assert [r for r in results if not r.ok] == []
    finally:
        running.kubectl(
            "patch",
            "gw",
            "edge-b",
            "--type",
            "json",
            "-p",
            '[{"op": "remove", "path": "/spec/endpoint"}]',
        )


def test_a_restarted_agent_keeps_its_public_key(running):
    node = "cloud-3"
    key_file = running.env.state_dir / "agents" / node

    def annotation() -> str:
        res = running.kubectl(
            "get", "node", node, "-o", "jsonpath={.metadata.annotations.raven\\.io/public-key}"
        )
        return res.stdout

    before = annotation()
    assert before, "the agent publishes its key at start"
    files_before = {p.name: p.read_bytes() for p in key_file.iterdir() if "key" in p.name}
    res = running.env.raven("agents", "restart", node)
    assert res.returncode == 0, res.stderr
    time.sleep(2)
    assert annotation() == before
    assert {p.name: p.read_bytes() for p in key_file.iterdir() if "key" in p.name} == files_before


def test_a_raven_route_deleted_by_someone_else_is_back_within_a_second(running):
    gw = running.gateways()["edge-a"]["status"]["activeNode"]
    member = next(n for n in running.lab.nodes if n.pool == "edge-a" and n.name != gw)
    remote = next(n for n in running.lab.nodes if n.pool == "edge-b")
    dst = str(remote.pod_cidr)
    table = ns_exec(member.netns, "ip", "route", "show", "table", "9027").stdout
    assert dst in table
    neighbour = next(n for n in running.lab.nodes if n.pool == "edge-a" and n != member)
    with SteadyPing(running.pod_of(member.name), running.pod_of(neighbour.name)) as steady:
        assert ns_exec(member.netns, "ip", "route", "del", dst, "table", "9027").returncode == 0
        start = time.monotonic()
        wait_for(
            lambda: dst in ns_exec(member.netns, "ip", "route", "show", "table", "9027").stdout,
            3,
            f"route {dst} back in table 9027 on {member.name}",
        )
        assert time.monotonic() - start < 1.5
    steady.assert_lossless()  # the pool's own traffic never noticed
    assert main_table(member.netns) == running.main_before[member.name]


def test_a_killed_wireguard_go_is_restarted_and_traffic_returns(running):
    gw = running.gateways()["edge-b"]["status"]["activeNode"]
    wg_if = running.lab.wg_ifname(gw)
    found = subprocess.run(
        ["pgrep", "-f", f"^wireguard-go {wg_if}$"], capture_output=True, text=True
    ).stdout.split()
    assert len(found) == 1, found
    b_pods = [p for p in running.lab.pods if p.pool == "edge-b"]
    steady = SteadyPing(b_pods[0], b_pods[1]).start()
    subprocess.run(["kill", "-9", found[0]], check=True)

    def restarted() -> bool:
        pids = subprocess.run(
            ["pgrep", "-f", f"^wireguard-go {wg_if}$"], capture_output=True, text=True
        ).stdout.split()
        return bool(pids) and pids != found

    wait_for(restarted, 10, f"a new wireguard-go for {wg_if}")
    cross = matrix.pairs(running.lab, cross_pool=True)
    into_b = [(a, b) for a, b in cross if b.pool == "edge-b" or a.pool == "edge-b"]

    def connected() -> bool:
        return all(r.ok for r in matrix.matrix(running.lab, which=into_b, timeout=1))

    wait_for(connected, 20, "traffic to and from edge-b after wireguard-go was killed")
    steady.stop()
    steady.assert_lossless()


def raven_tables(running: Running) -> dict[str, str]:
    return {
        n.name: ns_exec(n.netns, "ip", "route", "show", "table", "9027").stdout
        + ns_exec(n.netns, "ip", "rule", "show").stdout
        for n in running.lab.nodes
    }


def test_an_api_outage_and_agent_restarts_during_it_leave_the_data_path_alone(running):
    env = running.env
    gw = running.gateways()["edge-a"]["status"]["activeNode"]
    member = next(n.name for n in running.lab.nodes if n.pool == "edge-a" and n.name != gw)
    before = raven_tables(running)
    a_pods = [p for p in running.lab.pods if p.pool == "edge-a"]
    steady = SteadyPing(a_pods[0], a_pods[1]).start()
    assert env.raven("apiserver", "stop").returncode == 0
    try:
        assert running.kubectl("get", "gw").returncode != 0  # the outage is real
        time.sleep(6)  # longer than the lease: nobody can renew
        assert [r for r in matrix.matrix(running.lab, timeout=2) if not r.ok] == []
        restarted = env.raven("agents", "restart", gw, member)
        assert restarted.returncode == 0, restarted.stderr
        time.sleep(4)  # the new agents are up and cannot reach the API
        assert [r for r in matrix.matrix(running.lab, timeout=2) if not r.ok] == []
        assert raven_tables(running) == before
        for node in running.lab.nodes:
            assert main_table(node.netns) == running.main_before[node.name]
        steady.stop()
        steady.assert_lossless()
    finally:
        if steady.proc.poll() is None:
            steady.stop()
        started = env.raven("apiserver", "start")
        assert started.returncode == 0, started.stderr
    # Back online, the agents follow the cluster again: the pool has a gateway, all peers up.
    wait_for(
        lambda: all(g["status"].get("activeNode") for g in running.gateways().values()),
        20,
        "an active gateway in every pool after the outage",
    )
    assert matrix.wait_full_matrix(running.lab, timeout=30) is not None


def test_zz_cleanup_removes_everything_raven_added_and_nothing_else(running):
    """Runs last: uninstalls Raven from the edge-b gateway."""
    gw = running.gateways()["edge-b"]["status"]["activeNode"]
    node = running.node(gw)
    state = running.env.state_dir / "agents" / gw
    wg_if = running.lab.wg_ifname(gw)
    assert ns_exec(node.netns, "ip", "link", "show", wg_if).returncode == 0
    assert rules(node.netns) != running.rules_before[gw]

    assert running.env.raven("agents", "stop", gw).returncode == 0
    agent = Path(engine.agent_executable())
    res = ns_exec(
        node.netns, str(agent), "--cleanup", "--state-dir", str(state), "--wg-interface", wg_if
    )
    assert res.returncode == 0, res.stderr

    assert main_table(node.netns) == running.main_before[gw]
    assert rules(node.netns) == running.rules_before[gw]
    assert ns_exec(node.netns, "ip", "route", "show", "table", "9027").stdout == ""
    assert ns_exec(node.netns, "ip", "link", "show", wg_if).returncode != 0
    assert not any("key" in p.name for p in state.iterdir())
    assert "RAVEN" not in ns_exec(node.netns, "iptables-save").stdout
