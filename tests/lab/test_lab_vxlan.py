"""VXLAN pool connectivity: a pool whose nodes are not on one L2 segment, end to end.

The lab ``netns-lab/routed-lan.yaml``: pool edge-a's three nodes sit on three subnets joined by
a LAN router behind the site's NAT router, so whichever node is edge-a's gateway, the two others
reach it over Raven's VXLAN link. One lab per module; the main tables are recorded before any
agent starts, so the tests can show that Raven leaves them byte-identical.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from raven.lab import engine, matrix
from raven.lab.topology import Lab, Node
from raven.model import default_vxlan_dev
from raven.plan import vxlan_mac

from .labkit import (
    REPO,
    Capture,
    LabEnv,
    log_size,
    main_table,
    make_env,
    must,
    ns_exec,
    wait_applied,
    wait_for,
    wait_reachable,
)
from .steady import SteadyPing

pytestmark = pytest.mark.root

TOPOLOGY = REPO / "netns-lab" / "routed-lan.yaml"


def link_names(ns: str) -> list[str]:
    lines = must(ns, "ip", "-o", "link").splitlines()
    return sorted(line.split(":")[1].strip().split("@")[0] for line in lines)


@dataclass
class Before:
    """What the lab looked like before any agent ran."""

    main: dict[str, str]
    rules: dict[str, str]
    links: dict[str, list[str]]
    same_pool_pairs: int
    same_pool_unanswered: str  # why the pool's own pods did not all reach each other, or ""
    cross_pool: list[matrix.PingResult]
    route_to_peer: str  # `ip route get` from edge-a-2 to edge-a-1's address


@dataclass
class Running:
    env: LabEnv
    lab: Lab
    before: Before

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.env.kubectl(*args)

    def holder(self, pool: str) -> str:
        return self.env.holder(pool)

    def node(self, name: str) -> Node:
        return next(n for n in self.lab.nodes if n.name == name)

    def pool(self, pool: str) -> list[Node]:
        return [n for n in self.lab.nodes if n.pool == pool]

    def vx(self, node: Node) -> str:
        """The VXLAN link the agent derives from the WireGuard name it is given."""
        return default_vxlan_dev(self.lab.wg_ifname(node.name))


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    env = make_env(tmp_path_factory, "vx")
    try:
        res = env.raven("up", "--no-agents", "--topology", str(TOPOLOGY), timeout=180)
        assert res.returncode == 0, res.stderr + res.stdout
        _, lab = engine.load(engine.Settings(state_dir=env.state_dir, prefix=env.prefix))
        a2 = next(n for n in lab.nodes if n.name == "edge-a-2")
        a1 = next(n for n in lab.nodes if n.name == "edge-a-1")
        same_pool = matrix.pairs(lab, cross_pool=False)
        try:
            wait_reachable(lab, same_pool, ping_timeout=2, deadline=30)
            unanswered = ""
        except AssertionError as error:  # the test that checks it says so, not every test
            unanswered = str(error)
        before = Before(
            main={n.name: main_table(n.netns) for n in lab.nodes},
            rules={n.name: must(n.netns, "ip", "rule") for n in lab.nodes},
            links={n.name: link_names(n.netns) for n in lab.nodes},
            same_pool_pairs=len(same_pool),
            same_pool_unanswered=unanswered,
            cross_pool=matrix.matrix(lab, which=matrix.pairs(lab, cross_pool=True), timeout=1),
            route_to_peer=must(a2.netns, "ip", "route", "get", str(a1.ip)),
        )
        started = env.raven("agents", "start", timeout=120)
        assert started.returncode == 0, started.stderr + started.stdout
        wait_reachable(lab, deadline=90)
        yield Running(env, lab, before)
    finally:
        env.down(timeout=120)


def test_without_raven_the_routed_lan_carries_its_own_pool_but_nothing_across_pools(running):
    before = running.before
    # edge-a's nodes are not on-link with each other: edge-a-2 reaches edge-a-1 via a router.
    assert " via 192.168.11.1 dev eth0 " in before.route_to_peer
    assert before.same_pool_unanswered == ""  # the lab plays CNI across subnets
    assert before.same_pool_pairs == 6 + 2 + 2
    assert not any(r.ok for r in before.cross_pool)


def test_every_pod_reaches_every_other_pod_with_1400_byte_unfragmented_pings(running):
    # Too large a route MTU fails such a ping every time: retrying a pair proves nothing away.
    assert len(matrix.pairs(running.lab)) == 42
    wait_reachable(running.lab, size=matrix.PAYLOAD_1400, ping_timeout=2, deadline=30)


def check_members_use_vxlan(running: Running, gw: Node) -> None:
    """Every other node of edge-a routes the remote pools over VXLAN to ``gw``."""
    remote = sorted(str(n.pod_cidr) for n in running.lab.nodes if n.pool != "edge-a")
    for member in running.pool("edge-a"):
        if member is gw:
            continue
        vx = running.vx(member)
        table = must(member.netns, "ip", "route", "show", "table", "9027").splitlines()
        assert sorted(line.split()[0] for line in table) == remote, member.name
        for line in table:
            assert f" via {gw.ip} dev {vx} proto 149 onlink mtu 1440" in f" {line} ", line
        link = must(member.netns, "ip", "-d", "link", "show", vx)
        assert f"vxlan id 9027 local {member.ip} " in link and "dstport 4790 nolearning" in link
        neigh = must(member.netns, "ip", "neigh", "show", "dev", vx).strip()
        assert neigh == f"{gw.ip} lladdr {vxlan_mac(str(gw.ip))} PERMANENT", member.name
        fdb = must(member.netns, "bridge", "fdb", "show", "dev", vx).strip()
        assert fdb == f"{vxlan_mac(str(gw.ip))} dst {gw.ip} self permanent", member.name
    # The gateway has the link too, to decapsulate, and needs no entries on it.
    gw_vx = running.vx(gw)
    assert "vxlan id 9027" in must(gw.netns, "ip", "-d", "link", "show", gw_vx)
    assert must(gw.netns, "ip", "neigh", "show", "dev", gw_vx).strip() == ""


def members_use_vxlan_to_the_holder(running: Running) -> Node:
    """The current edge-a gateway, once every other node of the pool routes to it over VXLAN."""
    holder = running.holder("edge-a")
    assert holder, "nobody holds edge-a"
    gw = running.node(holder)
    check_members_use_vxlan(running, gw)
    return gw


def test_members_off_link_with_their_gateway_reach_it_over_vxlan(running):
    """VXLAN pool connectivity."""
    wait_for(
        lambda: members_use_vxlan_to_the_holder(running),
        30,
        "every edge-a member routing over VXLAN to the gateway",
    )
    gw = running.node(running.holder("edge-a"))
    # A plain LAN pool stays as before: on-link routes out of eth0, no VXLAN link.
    b_gw = running.node(running.holder("edge-b"))
    for member in running.pool("edge-b"):
        if member is b_gw:
            continue
        table = must(member.netns, "ip", "route", "show", "table", "9027")
        assert f"via {b_gw.ip} dev eth0 proto 149 onlink mtu 1440" in table
        assert running.vx(member) not in link_names(member.netns)
        assert running.vx(b_gw) not in link_names(b_gw.netns)

    # The packets really travel in VXLAN: seen on the gateway's underlay as UDP 4790.
    member = next(n for n in running.pool("edge-a") if n is not gw)
    target = running.pool("edge-b")[0].pod
    capture = Capture(gw.netns, "-i", "eth0", "-T", "vxlan", "-c", "3",
                      f"udp dst port 4790 and src host {member.ip}")  # fmt: skip
    with capture:
        assert matrix.ping(member.pod, target, count=5, size=matrix.PAYLOAD_1400)
        capture.wait_seen(": VXLAN, flags [I] (0x08), vni 9027", count=3)
    out = capture.stop()
    assert out.count(": VXLAN, flags [I] (0x08), vni 9027") == 3, out
    assert f"{member.pod.ip} > {target.ip}: ICMP echo request" in out, out


def test_main_tables_stay_byte_identical_while_agents_run(running):
    for node in running.lab.nodes:
        assert main_table(node.netns) == running.before.main[node.name], node.name


def test_intra_pool_pings_lose_nothing_while_the_gateway_agent_is_killed_and_replaced(running):
    old = running.node(running.holder("edge-a"))
    a, b = [n for n in running.pool("edge-a") if n is not old]
    with SteadyPing(a.pod, b.pod) as members, SteadyPing(a.pod, old.pod) as to_gateway:
        assert running.env.raven("agents", "kill", old.name).returncode == 0
        wait_for(lambda: running.holder("edge-a") not in ("", old.name), 30, "a new holder")
        to_b = [(a.pod, n.pod) for n in running.pool("edge-b")]
        wait_reachable(running.lab, to_b, deadline=30)
        started = running.env.raven("agents", "start", old.name)
        assert started.returncode == 0, started.stderr
        wait_reachable(running.lab, deadline=60)
        # A member's agent crashing and coming back changes nothing either: the pings run on
        # until the new agent has applied its plan.
        since = log_size(running.env, a.name)
        assert running.env.raven("agents", "kill", a.name).returncode == 0
        assert running.env.raven("agents", "start", a.name).returncode == 0
        wait_applied(running.env, a.name, since=since)
    members.assert_lossless()
    to_gateway.assert_lossless()

    # Whoever holds edge-a now (the new gateway, or the old one again if the election moved
    # back), every other node of the pool, the old gateway included, reaches it over VXLAN.
    wait_for(
        lambda: members_use_vxlan_to_the_holder(running),
        30,
        "every edge-a member routing over VXLAN to the current gateway",
    )
    for node in running.lab.nodes:
        assert main_table(node.netns) == running.before.main[node.name], node.name


def test_zz_cleanup_removes_the_vxlan_link_and_everything_else_raven_added(running):
    """Runs last: uninstalls Raven from a member that reaches its gateway over VXLAN."""
    gw = running.holder("edge-a")
    node = next(n for n in running.pool("edge-a") if n.name != gw)
    vx = running.vx(node)
    assert vx in link_names(node.netns)
    assert running.env.raven("agents", "stop", node.name).returncode == 0
    state = running.env.state_dir / "agents" / node.name
    agent = Path(engine.agent_executable())
    res = ns_exec(
        node.netns, str(agent), "--cleanup", "--state-dir", str(state),
        "--wg-interface", running.lab.wg_ifname(node.name),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr

    assert vx not in link_names(node.netns)
    assert must(node.netns, "ip", "route", "show", "table", "9027") == ""
    assert main_table(node.netns) == running.before.main[node.name]
    assert must(node.netns, "ip", "rule") == running.before.rules[node.name]
    assert link_names(node.netns) == running.before.links[node.name]
