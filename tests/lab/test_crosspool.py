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

from .labkit import (
    Capture,
    LabEnv,
    log_size,
    main_table,
    make_env,
    ns_exec,
    wait_applied,
    wait_for,
    wait_listening,
    wait_reachable,
)
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
    try:
        res = env.raven("up", "--no-agents", timeout=180)
        assert res.returncode == 0, res.stderr + res.stdout
        _, lab = engine.load(engine.Settings(state_dir=env.state_dir, prefix=env.prefix))
        main_before = {n.name: main_table(n.netns) for n in lab.nodes}
        rules_before = {n.name: rules(n.netns) for n in lab.nodes}
        start = time.monotonic()
        started = env.raven("agents", "start", timeout=120)
        assert started.returncode == 0, started.stderr + started.stdout
        wait_reachable(lab, deadline=90)
        yield Running(env, lab, main_before, rules_before, time.monotonic() - start)
    finally:
        env.down()


def test_every_pod_reaches_every_other_pod_with_1400_byte_unfragmented_pings(running):
    # A route MTU too large for the tunnel fails such a ping every time, so a pair that
    # answers once (retried only while the machine is slow to answer) proves the path fits.
    assert len(matrix.pairs(running.lab)) == 72
    wait_reachable(running.lab, size=matrix.PAYLOAD_1400, ping_timeout=2, deadline=30)


# Gateway status is written a round after the kernel changes: a full ping matrix does not mean
# the status shows it yet. The tests below wait until it does (a round is at most the agent's
# resync, 10 s, after a probe flips), then check it whole, from one reading.
STATUS_DEADLINE = 40


def test_edge_pools_reach_each_other_only_through_the_relay(running):
    def through_the_relay() -> bool:
        gws = running.gateways()
        assert set(gws) == {"cloud", "edge-a", "edge-b"}, sorted(gws)
        assert gws["cloud"]["spec"]["relay"] is True
        relay = gws["cloud"].get("status", {})
        # The relay holds one peer per edge pool, with exactly that pool's subnets.
        peers = {p["pool"]: p for p in relay.get("peers", [])}
        assert set(peers) == {"edge-a", "edge-b"}, relay
        for pool in ("edge-a", "edge-b"):
            subnets = gws[pool].get("status", {}).get("subnets", [])
            assert sorted(peers[pool]["allowedIPs"]) == sorted(subnets), (pool, peers[pool])
        # An edge gateway's only peer is the relay, and its tunnel is up.
        for pool in ("edge-a", "edge-b"):
            edge = gws[pool].get("status", {})
            assert [(p["node"], p["state"]) for p in edge.get("peers", [])] == [
                (relay["activeNode"], "Up")
            ], (pool, edge)
        return True

    wait_for(
        through_the_relay,
        STATUS_DEADLINE,
        "Gateway status to show the edge pools' tunnels up to the relay",
    )


def test_kubectl_get_gw_lists_three_gateways_with_an_active_node_and_all_peers_up(running):
    def listed() -> bool:
        table = running.kubectl("get", "gw").stdout.splitlines()
        gws = running.gateways()
        assert table and table[0].split()[:5] == ["NAME", "POOL", "ACTIVE", "ENDPOINT", "PEERS"]
        rows = {line.split()[0]: line.split() for line in table[1:]}
        assert {pool: row[4] for pool, row in rows.items()} == {
            "cloud": "2/2",
            "edge-a": "1/1",
            "edge-b": "1/1",
        }, table
        # The columns show the status fields (read just after the table: a status written
        # in between shows as a difference, and the next look reads both again).
        for pool, row in rows.items():
            status = gws[pool]["status"]
            assert row[2:5] == [status["activeNode"], status["endpoint"], status["peersReady"]], (
                row,
                status,
            )
        return True

    wait_for(listed, STATUS_DEADLINE, "kubectl get gw to list every pool with all peers up")


def test_gateway_status_carries_rtt_and_last_handshake_per_peer(running):
    def measured() -> bool:
        gws = running.gateways()
        for name, gw in gws.items():
            status = gw.get("status", {})
            peers = status.get("peers", [])
            assert peers, (name, status)
            for p in peers:
                assert p.get("lastHandshake") and p.get("rttMs") is not None, (name, p)
                assert 0 < p["rttMs"] < 1000, (name, p)
            worst = max(p["rttMs"] for p in peers)
            assert status.get("rtt") == f"{worst:.1f}ms", (name, status)
        table = running.kubectl("get", "gw").stdout.splitlines()
        assert len(table) == 4 and all(line.split()[5].endswith("ms") for line in table[1:]), table
        return True

    wait_for(measured, STATUS_DEADLINE, "an RTT and a handshake time for every peer")


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
        wait_listening(server.netns, 5201)
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
    pod_a, pod_b, pod_gw = running.pod_of(a), running.pod_of(b), running.pod_of(gw)
    # The gateway's own pod is the control: pings to it must show up in the same capture.
    capture = Capture(
        running.node(gw).netns,
        "-i",
        "any",
        f"host {pod_a.ip} and (host {pod_b.ip} or host {pod_gw.ip})",
    )
    with capture:
        assert matrix.ping(pod_a, pod_b, count=5)
        assert matrix.ping(pod_a, pod_gw, count=2)
        # Once the later pings are seen, any packet of the earlier ones would be there too.
        out = capture.wait_seen(f"{pod_a.ip} > {pod_gw.ip}: ICMP echo request", count=2)
    crossed = [line for line in out.splitlines() if str(pod_b.ip) in line]
    assert crossed == [], f"packets between {a} and {b} crossed the gateway {gw}"


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

        wait_for(refused, 30, "the SpecValid=False condition on edge-b")
        cond = next(
            c
            for c in running.gateways()["edge-b"]["status"]["conditions"]
            if c["type"] == "SpecValid"
        )
        assert "spec.endpoint" in cond["message"] and "notaport" in cond["message"]

        def event() -> bool:
            events = running.kubectl("get", "events", "-o", "json")
            assert events.returncode == 0, events.stderr
            return any(
                e["reason"] == "InvalidSpec"
                and "spec.endpoint" in e["message"]
                and e["involvedObject"]["name"] == "edge-b"
                for e in json.loads(events.stdout)["items"]
            )

        wait_for(event, 30, "an InvalidSpec Event naming edge-b's spec.endpoint")
        # The refused spec stays in place: the pool keeps its last good state meanwhile.
        wait_reachable(running.lab, ping_timeout=2, deadline=30)
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
    since = log_size(running.env, node)
    res = running.env.raven("agents", "restart", node)
    assert res.returncode == 0, res.stderr
    # It publishes its key before it plans, so once it applied a plan the annotation is its.
    wait_applied(running.env, node, since=since)
    assert annotation() == before
    assert {p.name: p.read_bytes() for p in key_file.iterdir() if "key" in p.name} == files_before


ROUTE_BACK_DEADLINE = 1.5


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
        # The netlink watch wakes the agent at once; the periodic resync (10 s) is no help
        # within this deadline.
        took = wait_for(
            lambda: dst in ns_exec(member.netns, "ip", "route", "show", "table", "9027").stdout,
            ROUTE_BACK_DEADLINE,
            f"route {dst} back in table 9027 on {member.name}",
            interval=0.05,
        )
        print(f"route {dst} back on {member.name} {took:.2f}s after it was deleted")
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
    with SteadyPing(b_pods[0], b_pods[1]) as steady:
        subprocess.run(["kill", "-9", found[0]], check=True)

        def restarted() -> object:
            pids = subprocess.run(
                ["pgrep", "-f", f"^wireguard-go {wg_if}$"], capture_output=True, text=True
            ).stdout.split()
            return pids and pids != found and pids

        wait_for(restarted, 20, f"a new wireguard-go for {wg_if}")
        cross = matrix.pairs(running.lab, cross_pool=True)
        into_b = [(a, b) for a, b in cross if b.pool == "edge-b" or a.pool == "edge-b"]
        wait_reachable(running.lab, into_b, deadline=30)
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
        time.sleep(6)  # the outage lasts longer than the lease (2 s): nobody can renew
        wait_reachable(running.lab, ping_timeout=2, deadline=30)
        since = {node: log_size(env, node) for node in (gw, member)}
        restarted = env.raven("agents", "restart", gw, member)
        assert restarted.returncode == 0, restarted.stderr
        for node in (gw, member):  # each came back, from its proxy's cache, and applied
            wait_applied(env, node, since=since[node])
        wait_reachable(running.lab, ping_timeout=2, deadline=30)
        assert raven_tables(running) == before
        for node in running.lab.nodes:
            assert main_table(node.netns) == running.main_before[node.name]
        steady.stop()
        steady.assert_lossless()
    finally:
        steady.stop(check=False)
        started = env.raven("apiserver", "start")
        assert started.returncode == 0, started.stderr
    # Back online, the agents follow the cluster again: the pool has a gateway, all peers up.
    wait_for(
        lambda: all(g["status"].get("activeNode") for g in running.gateways().values()),
        30,
        "an active gateway in every pool after the outage",
    )
    wait_reachable(running.lab, deadline=30)


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
