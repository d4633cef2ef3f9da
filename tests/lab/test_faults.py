"""Faults in the default lab with real agents: a dead tunnel, the relay moving, a NAT mapping
that changes. Each test shows that cross-pool traffic comes back on its own, and that a
continuous ping between two pods of one pool loses nothing while it happens (invariant 2).

One lab for the module; every test restores what it broke, so they run in any order.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from raven.lab import agents as lab_agents
from raven.lab import deployment, engine
from raven.lab.apiserver.audit import read_audit_log, rule_usage
from raven.lab.topology import Lab, Node, Pod

from .labkit import LabEnv, main_table, make_env, must, ns_exec, wait_for, wait_reachable
from .steady import SteadyPing

pytestmark = pytest.mark.root

RELAY_PORT = 51820  # the cloud pool's tunnelPort (the Gateway default)
NAT_PORTS = (40000, 40099)


@dataclass
class Running:
    env: LabEnv
    lab: Lab
    main_at_start: dict[str, str]

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.env.kubectl(*args)

    def holder(self, pool: str) -> str:
        return self.env.holder(pool)

    def node(self, name: str) -> Node:
        return next(n for n in self.lab.nodes if n.name == name)

    def members(self, pool: str, *, besides: str) -> list[Node]:
        return [n for n in self.lab.nodes if n.pool == pool and n.name != besides]

    def agent_pids(self) -> dict[str, str]:
        return {
            n.name: (lab_agents.agent_dir(self.env.state_dir, n.name) / "agent.pid").read_text()
            for n in self.lab.nodes
        }


def wait_cross_pool(lab: Lab, src: Pod, pool: str, *, deadline: float = 30) -> float:
    """Wait until ``src`` reaches every pod of ``pool``; the seconds that took."""
    targets = [(src, n.pod) for n in lab.nodes if n.pool == pool]
    return wait_reachable(lab, targets, deadline=deadline)


def gateway_events(running: Running, reason: str) -> list[dict]:
    res = running.kubectl("get", "events", "-A", "-o", "json")
    assert res.returncode == 0, res.stderr
    return [e for e in json.loads(res.stdout)["items"] if e.get("reason") == reason]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    env = make_env(tmp_path_factory, "ft")
    try:
        res = env.raven("up", timeout=180)
        assert res.returncode == 0, res.stderr + res.stdout
        _, lab = engine.load(engine.Settings(state_dir=env.state_dir, prefix=env.prefix))
        yield Running(env, lab, {n.name: main_table(n.netns) for n in lab.nodes})
    finally:
        env.down()


def test_a_gateway_whose_tunnel_died_steps_down_and_another_takes_over(running):
    gw = running.holder("edge-a")
    member, other = running.members("edge-a", besides=gw)
    remote = next(n for n in running.lab.nodes if n.pool == "edge-b")
    wait_cross_pool(running.lab, member.pod, "edge-b")
    # The gateway's WireGuard packets to the relay vanish; everything else of the node works
    # (its API connection, its LAN), so only the tunnel probe can tell.
    drop = ["OUTPUT", "-p", "udp", "--dport", str(RELAY_PORT), "-j", "DROP"]
    node = running.node(gw)
    must(node.netns, "iptables", "-w", "-I", *drop)
    try:
        with SteadyPing(member.pod, other.pod) as steady:
            took = wait_for(lambda: running.holder("edge-a") not in ("", gw), 40, "a new holder")
            print(f"step-down: {running.holder('edge-a')} holds edge-a {took:.1f}s after the cut")
            wait_cross_pool(running.lab, member.pod, "edge-b", deadline=30)
        steady.assert_lossless()
    finally:
        ns_exec(node.netns, "iptables", "-w", "-D", *drop)

    def stepped_down() -> list[dict]:
        return [
            e
            for e in gateway_events(running, "GatewayStepDown")
            if gw in e["message"] and "edge-a" in e["message"]
        ]

    wait_for(stepped_down, 30, f"a GatewayStepDown event naming {gw} and edge-a")
    # The old gateway stays out (back-off) and the pool keeps its new gateway.
    assert running.holder("edge-a") != gw
    wait_cross_pool(running.lab, remote.pod, "edge-a")


def test_the_relay_moving_to_another_cloud_node_is_followed_without_restarts(running):
    relay = running.holder("cloud")
    node = running.node(relay)
    pids = running.agent_pids()
    b1, b2 = [n for n in running.lab.nodes if n.pool == "edge-b"][:2]
    a_member = running.members("edge-a", besides=running.holder("edge-a"))[0]
    wait_cross_pool(running.lab, a_member.pod, "edge-b")
    # The relay node dies: unplugged from the Internet segment, its agent SIGKILLed.
    must(node.switch_netns, "ip", "link", "set", node.name, "down")
    try:
        with SteadyPing(b1.pod, b2.pod) as steady:
            assert running.env.raven("agents", "kill", relay).returncode == 0
            cut = time.monotonic()
            wait_for(lambda: running.holder("cloud") not in ("", relay), 20, "a new relay")
            wait_cross_pool(running.lab, a_member.pod, "edge-b", deadline=30)
            print(f"relay move: edge-a -> edge-b back {time.monotonic() - cut:.1f}s after")
        steady.assert_lossless()
        # No edge agent was restarted to get there.
        after = running.agent_pids()
        assert {n: p for n, p in after.items() if n != relay} == {
            n: p for n, p in pids.items() if n != relay
        }
    finally:
        must(node.switch_netns, "ip", "link", "set", node.name, "up")
        running.env.raven("agents", "start", relay)
    wait_reachable(running.lab, deadline=40)


def take_over(running: Running, fault: str) -> None:
    """Take the edge-a gateway away (``crash``: unplugged and SIGKILLed; ``graceful``: SIGTERM)
    and show that another node carries the pool while its members' own traffic flows on."""
    gw = running.holder("edge-a")
    node = running.node(gw)
    member, other = running.members("edge-a", besides=gw)
    wait_cross_pool(running.lab, member.pod, "edge-b")
    try:
        with SteadyPing(member.pod, other.pod) as steady:
            start = time.monotonic()
            if fault == "crash":
                must(node.switch_netns, "ip", "link", "set", node.name, "down")
                assert running.env.raven("agents", "kill", gw).returncode == 0
            else:
                assert running.env.raven("agents", "stop", gw).returncode == 0
            wait_for(lambda: running.holder("edge-a") not in ("", gw), 20, "a new holder")
            wait_cross_pool(running.lab, member.pod, "edge-b", deadline=20)
            print(f"{fault}: edge-a back through {running.holder('edge-a')}"
                  f" {time.monotonic() - start:.1f}s after")  # fmt: skip
        steady.assert_lossless()
    finally:
        must(node.switch_netns, "ip", "link", "set", node.name, "up")
        running.env.raven("agents", "start", gw)
    wait_reachable(running.lab, deadline=40)


def test_a_crashed_gateway_is_replaced_and_its_pool_keeps_talking_inside(running):
    take_over(running, "crash")


def test_a_stopped_gateway_hands_over_and_its_pool_keeps_talking_inside(running):
    take_over(running, "graceful")


def relay_endpoint_of(running: Running, relay: str, gw: str) -> str:
    key = must(running.node(gw).netns, "wg", "show", running.lab.wg_ifname(gw), "public-key")
    dump = must(running.node(relay).netns, "wg", "show", running.lab.wg_ifname(relay), "endpoints")
    for line in dump.splitlines():
        peer, _, endpoint = line.partition("\t")
        if peer == key.strip():
            return endpoint.strip()
    return ""


#: A NAT port change heals within one keepalive (5 s by default) plus the probe's round trip.
NAT_RECOVERY_DEADLINE = 10.0


def test_a_nat_mapping_that_changes_port_recovers_within_a_keepalive(running):
    relay, gw = running.holder("cloud"), running.holder("edge-a")
    member, other = running.members("edge-a", besides=gw)
    wait_cross_pool(running.lab, member.pod, "edge-b")
    router = next(r for r in running.lab.routers if r.pool == "edge-a")
    before = relay_endpoint_of(running, relay, gw)
    assert before.startswith(f"{router.public_ip}:"), before
    # The router starts mapping the site's UDP to other ports and forgets every mapping: the
    # gateway's next packet leaves from a new public port.
    chain = f"{running.lab.prefix.upper()}-MASQ"
    rule = ["-s", str(router.lan), "-p", "udp", "-j", "MASQUERADE",
            "--to-ports", f"{NAT_PORTS[0]}-{NAT_PORTS[1]}"]  # fmt: skip
    must(router.netns, "iptables", "-w", "-t", "nat", "-I", chain, "1", *rule)
    try:
        with SteadyPing(member.pod, other.pod) as steady:
            must(router.netns, "conntrack", "-F")
            changed = time.monotonic()

            def moved() -> bool:
                port = relay_endpoint_of(running, relay, gw).rpartition(":")[2]
                return port.isdigit() and NAT_PORTS[0] <= int(port) <= NAT_PORTS[1]

            wait_for(moved, NAT_RECOVERY_DEADLINE, "the relay to learn the gateway's new port")
            left = NAT_RECOVERY_DEADLINE - (time.monotonic() - changed)
            wait_cross_pool(running.lab, member.pod, "edge-b", deadline=max(left, 0))
            took = time.monotonic() - changed
            after = relay_endpoint_of(running, relay, gw)
            print(f"NAT port change: {before} -> {after} in {took:.1f}s")
        steady.assert_lossless()
    finally:
        ns_exec(router.netns, "iptables", "-w", "-t", "nat", "-D", chain, *rule)
        ns_exec(router.netns, "conntrack", "-F")
    wait_reachable(running.lab, deadline=30)


def test_zz_main_tables_byte_identical_after_every_fault(running):
    # Gateways and the relay moved above; only Raven's own table may have followed.
    for node in running.lab.nodes:
        assert main_table(node.netns) == running.main_at_start[node.name], node.name


def test_zz_the_agents_used_every_rbac_rule_and_were_refused_nothing(running):
    """The lab runs its agents as deploy/'s ServiceAccount, authorized by deploy/'s RBAC: over
    this module's faults (and one more hand-over, so the test also holds alone) every rule of
    every Role and ClusterRole was used by some request (the agents', or a node's for the role
    bound to the nodes), and no request was refused."""
    gw = running.holder("edge-a")
    restarted = running.env.raven("restart", gw, "--component", "agent")
    assert restarted.returncode == 0, restarted.stderr
    wait_for(lambda: running.holder("edge-a") != "", 30, "edge-a to have a gateway again")
    wait_reachable(running.lab, deadline=40)
    events = read_audit_log(running.env.state_dir / "audit.log")
    user = deployment.service_account_user()
    objects = deployment.rbac_objects()
    roles = [o for o in objects if o["kind"] in ("Role", "ClusterRole")]
    # The roles bound to the nodes (the cache-proxies' shared reads, as each node) rather than
    # to the agents' ServiceAccount: some node used every rule of each.
    for_nodes = {
        b["roleRef"]["name"]
        for b in objects
        if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(s.get("kind") == "Group" and s.get("name") == "system:nodes" for s in b["subjects"])
    }
    assert roles and for_nodes
    for role in roles:
        name = f"{role['kind']} {role['metadata']['name']}"
        if role["metadata"]["name"] in for_nodes:
            usages = [
                rule_usage(events, role, user=f"system:node:{n.name}") for n in running.lab.nodes
            ]
            assert any(u.used and u.unused == () for u in usages), f"{name}: no node used it all"
            continue
        usage = rule_usage(events, role, user=user)
        assert usage.used, f"{name}: no request used it"
        assert usage.unused == (), f"{name}: never used: {[str(p) for p in usage.unused]}"
    assert running.env.refused() == []
