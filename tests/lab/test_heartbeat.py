"""Edge autonomy, part 2, in the default lab: a node that lost its own uplink keeps its heartbeat.

Every node runs a kubelet stand-in (renewing ``kube-node-lease/<node>`` as the node, through
its cache-proxy) and ``raven-heartbeat``; the lab API server runs the node-lifecycle controller
with kube-controller-manager's 40 s grace. One lab for the module, the cases in order:

1. every node renews its own Lease with its own identity, and its cloud path is direct;
2. for three minutes an edge-a member is cut (its LAN works): it never goes ``Unknown`` nor
   gets the unreachable taint, its Lease says it is delegated and through whom, and when the
   edge-a gateway is killed during the cut it follows the new one; its agent keeps following the
   cluster (it re-routes to the new gateway). At the same time in edge-b: its gateway node is
   cut (another takes over and relays the old one's heartbeat), and a cut node whose kubelet
   was killed goes ``Unknown`` after 40 s, as it must. Both are healed (the old gateway's
   annotations go within a probe interval) and the kubelet restarted; then, the member still
   cut, all of edge-b is cut: nobody can vouch, every node of it goes ``Unknown`` after 40 s,
   and is ``Ready`` again once healed. The member is healed once its three minutes are over
   (however long edge-b took, never sooner): its annotations go within a probe interval. Two
   pods in each pool ping each other throughout without losing a packet;
3. the relay's refusals, in the real topology: a source that is not a member, a destination that
   is not the API server, a member whose own path is down; a node cannot touch another's Lease
   through the relay;
4. no private key or token in any log of the lab or any object of the API server.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from raven.lab import deployment, engine
from raven.lab.bench.heartbeat import DELEGATE, VIA, Sampler, parse_time
from raven.lab.topology import Lab, Node, Pod

from .labkit import KUBECTL, LabEnv, make_env, ns_exec, wait_for, wait_reachable
from .steady import SteadyPing

pytestmark = pytest.mark.root

GRACE = 40.0  # the node-lifecycle controller's grace
PERIOD = 5.0  # ... and how often it looks
PROBE_INTERVAL = 2.0  # raven-heartbeat's default
RELAY_PORT = 10264
CUT_SECONDS = 180.0
TABLE = "9027"


@dataclass
class Running:
    env: LabEnv
    lab: Lab

    def node(self, name: str) -> Node:
        return next(n for n in self.lab.nodes if n.name == name)

    def pod_of(self, node: str) -> Pod:
        return next(p for p in self.lab.pods if p.node == node)

    def members(self, pool: str) -> list[str]:
        return sorted(n.name for n in self.lab.nodes if n.pool == pool)

    def ok(self, *args: str, timeout: float = 60) -> str:
        res = self.env.raven(*args, timeout=timeout)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
        return res.stdout

    def status(self) -> dict:
        return dict(json.loads(self.ok("status", "-o", "json")))

    def lease(self, node: str) -> dict:
        res = self.env.kubectl("get", "lease", node, "-n", "kube-node-lease", "-o", "json")
        assert res.returncode == 0, res.stderr
        return dict(json.loads(res.stdout))

    def annotations(self, node: str) -> dict[str, str]:
        return dict(self.lease(node)["metadata"].get("annotations") or {})

    def node_obj(self, node: str) -> dict:
        res = self.env.kubectl("get", "node", node, "-o", "json")
        assert res.returncode == 0, res.stderr
        return dict(json.loads(res.stdout))

    def ready(self, node: str) -> str:
        conds = self.node_obj(node)["status"].get("conditions") or []
        return next((c["status"] for c in conds if c["type"] == "Ready"), "")

    def unreachable(self, node: str) -> bool:
        taints = self.node_obj(node)["spec"].get("taints") or []
        return any(t["key"] == "node.kubernetes.io/unreachable" for t in taints)

    def holder(self, pool: str) -> str:
        return self.env.holder(pool)

    def cloud_path(self, node: str) -> str:
        return next(n["cloudPath"] for n in self.status()["nodes"] if n["name"] == node)

    def identity_kubectl(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        """kubectl inside ``node``'s namespace as the node itself, through its cache-proxy."""
        kubeconfig = self.env.state_dir / "nodes" / node / "identity.kubeconfig"
        return subprocess.run(
            ["ip", "netns", "exec", self.node(node).netns, KUBECTL, "--kubeconfig",
             str(kubeconfig), "--request-timeout", "20s", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    env = make_env(tmp_path_factory, "hb")
    res = env.raven("up", timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    try:
        _, lab = engine.load(engine.Settings(state_dir=env.state_dir, prefix=env.prefix))
        wait_reachable(lab, deadline=120)
        yield Running(env, lab)
    finally:
        env.down()


def renewed_within(running: Running, node: str, seconds: float) -> bool:
    spec = running.lease(node).get("spec") or {}
    renew = spec.get("renewTime")
    if not renew:
        return False
    return time.time() - parse_time(renew) < seconds


def lease_writers(running: Running) -> dict[str, set[str]]:
    """Per node Lease, who renewed it (an update the API server accepted), per the audit log."""
    writers: dict[str, set[str]] = {}
    for line in (running.env.state_dir / "audit.log").read_text().splitlines():
        if '"kube-node-lease"' not in line or '"update"' not in line:
            continue
        e = json.loads(line)
        if e.get("stage") == "ResponseComplete" and e["responseStatus"]["code"] == 200:
            writers.setdefault(e["objectRef"]["name"], set()).add(e["user"]["username"])
    return writers


def test_1_every_node_renews_its_own_lease_as_itself_and_goes_direct(running: Running) -> None:
    nodes = [n.name for n in running.lab.nodes]
    for name in nodes:
        wait_for(lambda name=name: renewed_within(running, name, 15), 60, f"{name}'s Lease renewed")
    want = {n: {f"system:node:{n}"} for n in nodes}
    wait_for(lambda: lease_writers(running) == want, 30, "every node renewing its own Lease")
    st = running.status()
    for n in st["nodes"]:
        assert n["kubelet"]["running"] and n["heartbeat"]["running"], n
    wait_for(lambda: all(running.cloud_path(n) == "direct" for n in nodes), 30, "every path direct")
    res = running.env.kubectl("get", "nodes")
    assert res.returncode == 0 and res.stdout.count(" Ready ") == len(nodes), res.stdout


def test_2_cut_members_keep_their_heartbeat_through_the_pool_for_three_minutes(
    running: Running,
) -> None:
    env = running.env
    wait_for(lambda: bool(running.holder("edge-a") and running.holder("edge-b")), 60, "gateways")
    gw_a, gw_b = running.holder("edge-a"), running.holder("edge-b")
    victim, third_a = [m for m in running.members("edge-a") if m != gw_a]
    dead_kubelet, new_gw_b = [m for m in running.members("edge-b") if m != gw_b]
    edge_b = running.members("edge-b")
    watched = (victim, gw_b, dead_kubelet)
    sampler = Sampler(env.state_dir / "kubeconfig", watched, 1.0).start()
    # Two pods in each pool, edge-b's for every cut of it (its gateway's, then the whole pool's).
    pings = [
        SteadyPing(running.pod_of(victim), running.pod_of(third_a)).start(),
        SteadyPing(running.pod_of(gw_b), running.pod_of(new_gw_b)).start(),
    ]
    # What is cut or killed now: the finally block gives it back if the test fails half-way.
    cut_now: list[str] = []
    killed: list[tuple[str, str]] = []

    def cut(target: str) -> float:
        cut_now.append(target)
        running.ok("cut", target)
        return time.time()

    def heal(target: str) -> float:
        running.ok("heal", target)
        cut_now.remove(target)
        return time.time()

    def kill(node: str, component: str) -> None:
        killed.append((node, component))
        running.ok("kill", node, "--component", component)

    def restart(node: str, component: str) -> None:
        running.ok("restart", node, "--component", component)
        killed.remove((node, component))

    cut_at = time.time()
    try:
        kill(dead_kubelet, "kubelet")
        victim_cut_at = cut(victim)
        for node in (gw_b, dead_kubelet):
            cut(node)

        # The member: delegated through its gateway, within one detection and a renewal.
        wait_for(
            lambda: running.annotations(victim).get(VIA) == gw_a,
            45,
            f"{victim}'s Lease delegated via {gw_a}",
        )
        assert running.annotations(victim)[DELEGATE] == "true"
        assert running.cloud_path(victim) == f"via {gw_a}"
        wait_for(lambda: renewed_within(running, victim, 12), 30, f"{victim} renewed via {gw_a}")

        # edge-b: another node takes over, and relays the old gateway's heartbeat.
        wait_for(lambda: running.holder("edge-b") == new_gw_b, 60, f"{new_gw_b} holding edge-b")
        wait_for(
            lambda: running.annotations(gw_b).get(VIA) == new_gw_b,
            60,
            f"{gw_b}'s heartbeat via {new_gw_b}",
        )
        # ... and the cut node whose kubelet is dead is not kept alive.
        wait_for(
            lambda: running.ready(dead_kubelet) == "Unknown" and running.unreachable(dead_kubelet),
            GRACE + 2 * PERIOD + 15,
            f"{dead_kubelet} Unknown and tainted",
        )
        assert DELEGATE not in running.annotations(dead_kubelet)

        # The edge-a gateway dies during the cut (its agent and its relay): the member follows
        # the new gateway without the API server telling it (it asks its pool's relays).
        kill(gw_a, "agent")
        kill(gw_a, "heartbeat")
        wait_for(
            lambda: running.annotations(victim).get(VIA) == third_a,
            60,
            f"{victim}'s heartbeat via {third_a}, the new gateway",
        )
        # Its agent still follows the cluster: it routes to the new gateway.
        wait_for(lambda: running.holder("edge-a") == third_a, 60, f"{third_a} holding edge-a")
        third_ip = str(running.node(third_a).ip)
        wait_for(
            lambda: (
                third_ip
                in ns_exec(running.node(victim).netns, "ip", "route", "show", "table", TABLE).stdout
            ),
            60,
            f"{victim}'s routes through {third_a}",
        )

        # edge-b's nodes get their paths back (the member stays cut): the old gateway is direct
        # again, without the annotations, within about one probe interval.
        assert running.ready(gw_b) == "True" and not running.unreachable(gw_b), gw_b
        gw_b_healed_at = heal(gw_b)
        heal(dead_kubelet)
        wait_for(
            lambda: DELEGATE not in running.annotations(gw_b),
            PROBE_INTERVAL + 8,
            f"{gw_b}'s Lease without the delegation annotations",
        )
        wait_for(lambda: running.cloud_path(gw_b) == "direct", 10, f"{gw_b} direct")
        print(f"heal -> {gw_b} direct without annotations in {time.time() - gw_b_healed_at:.1f} s")
        restart(dead_kubelet, "kubelet")
        wait_for(
            lambda: running.ready(dead_kubelet) == "True" and not running.unreachable(dead_kubelet),
            60,
            f"{dead_kubelet} Ready again once its kubelet is back",
        )

        # Then the whole of edge-b is cut: nobody can vouch, every node of it goes Unknown.
        cut("edge-b")
        t0 = time.monotonic()
        wait_for(
            lambda: all(running.ready(n) == "Unknown" and running.unreachable(n) for n in edge_b),
            GRACE + 2 * PERIOD + 20,
            "every edge-b node Unknown and tainted",
        )
        print(f"edge-b cut: every node Unknown {time.monotonic() - t0:.1f} s after the cut")
        # Not before the grace: each Lease was at least that old when its node was marked.
        for n in edge_b:
            renew = running.lease(n)["spec"]["renewTime"]
            assert time.time() - parse_time(renew) >= GRACE, (n, renew)
        assert all(DELEGATE not in running.annotations(n) for n in edge_b)
        assert all(running.cloud_path(n) == "none" for n in edge_b)
        heal("edge-b")
        wait_for(
            lambda: all(running.ready(n) == "True" and not running.unreachable(n) for n in edge_b),
            60,
            "edge-b Ready again",
        )

        # The member's three minutes, however long edge-b took: never less.
        remaining = victim_cut_at + CUT_SECONDS - time.time()
        print(f"edge-b done {CUT_SECONDS - remaining:.0f} s into {victim}'s cut")
        if remaining > 0:
            time.sleep(remaining)
        assert running.ready(victim) == "True" and not running.unreachable(victim), victim
        healed_at = heal(victim)
        # Back to direct: the annotations go within about one probe interval.
        wait_for(
            lambda: DELEGATE not in running.annotations(victim),
            PROBE_INTERVAL + 8,
            f"{victim}'s Lease without the delegation annotations",
        )
        wait_for(lambda: running.cloud_path(victim) == "direct", 10, f"{victim} direct")
        back = time.time() - healed_at
        print(f"heal -> {victim} direct without annotations in {back:.1f} s")
        restart(gw_a, "agent")
        restart(gw_a, "heartbeat")
        # The restarted relay refuses everyone until it knows the pool's members again.
        gw_a_ip = str(running.node(gw_a).ip)
        wait_for(
            lambda: relay_get(running.node(third_a).netns, gw_a_ip) == "200",
            30,
            f"{gw_a}'s relay serving its pool again",
        )
        sampler.stop()
        for ping in pings:
            ping.stop()
            ping.assert_lossless()
    finally:
        for target in cut_now:
            env.raven("heal", target)
        for node, component in killed:
            env.raven("restart", node, "--component", component)
        sampler.stop()
        for ping in pings:
            ping.stop(check=False)  # a test failing above says why, not this
    # The member over its whole cut, the old edge-b gateway over its own (until its heal).
    for node, until in ((victim, healed_at), (gw_b, gw_b_healed_at)):
        mine = sampler.of(node, cut_at, until)
        # Sampled throughout the cut, however slowly a loaded machine answers.
        assert len(mine) >= 10, (node, len(mine))
        assert mine[0].at - cut_at < 30 and until - mine[-1].at < 30, node
        assert all(s.ready == "True" and not s.unreachable for s in mine), node
        worst, when = max((s.at - s.renew, s.at) for s in mine if s.renew is not None)
        print(
            f"{node}: largest Lease age seen during the cut {worst:.1f} s (grace {GRACE:.0f} s),"
            f" {when - cut_at:.0f} s into it"
        )
        assert worst < GRACE


def relay_get(ns: str, relay_ip: str, path: str = "/relay") -> str:
    """The HTTP status line of a plain GET to a relay, from namespace ``ns``."""
    res = ns_exec(
        ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
        f"http://{relay_ip}:{RELAY_PORT}{path}",
    )  # fmt: skip
    return res.stdout.strip()


def relay_connect(ns: str, relay_ip: str, target: str) -> str:
    """The relay's answer to CONNECT ``target`` from namespace ``ns``: curl's proxy code."""
    res = ns_exec(
        ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_connect}", "--max-time", "5",
        "--proxytunnel", "-x", f"http://{relay_ip}:{RELAY_PORT}", "-k", f"https://{target}/healthz",
    )  # fmt: skip
    return res.stdout.strip()


def test_3_the_relay_serves_members_to_the_api_server_only(running: Running) -> None:
    members = running.members("edge-a")
    a, b = running.node(members[0]), running.node(members[1])
    api = f"{running.lab.api_ip}:{running.lab.api_port}"
    assert relay_get(a.netns, str(b.ip)) == "200"
    assert relay_connect(a.netns, str(b.ip), api) == "200"
    # A pod of the pool is not a member (its address is no Node's).
    pod = running.pod_of(a.name)
    assert relay_connect(pod.netns, str(b.ip), api) == "403"
    assert relay_get(pod.netns, str(b.ip)) == "403"
    # Any destination but the API server.
    other = running.node(members[2])
    assert relay_connect(a.netns, str(b.ip), f"{other.ip}:10262") == "403"
    # A member whose own path is down relays nothing.
    running.ok("cut", b.name)
    try:
        wait_for(lambda: relay_get(a.netns, str(b.ip)) == "503", 30, f"{b.name}'s relay saying 503")
        assert relay_connect(a.netns, str(b.ip), api) == "503"
        # Through the relay, the node is still only itself: its own Lease it may write (once
        # its proxy is online through the relay), another node's is refused.
        wait_for(lambda: running.cloud_path(b.name).startswith("via "), 45, f"{b.name} delegated")
        own = ("annotate", "--overwrite", "lease", b.name, "-n", "kube-node-lease", "x=y")
        wait_for(
            lambda: running.identity_kubectl(b.name, *own).returncode == 0,
            30,
            f"{b.name} writing its own Lease through the relay",
        )
        res = running.identity_kubectl(
            b.name, "annotate", "--overwrite", "lease", a.name, "-n", "kube-node-lease", "x=y"
        )
        assert res.returncode != 0 and "forbidden" in res.stderr.lower(), res.stderr
    finally:
        running.ok("heal", b.name)
    running.identity_kubectl(b.name, "annotate", "lease", b.name, "-n", "kube-node-lease", "x-")
    wait_for(lambda: relay_get(a.netns, str(b.ip)) == "200", 30, f"{b.name}'s relay ready again")


def secrets_of(state: Path) -> set[str]:
    """Pieces of every private key the lab made (node identities, serving keys, the signing
    key) and the tokens (the admin's, the agents' ServiceAccount's)."""
    needles: set[str] = set()
    for path in (state / "pki").glob("*.key"):
        body = "".join(line for line in path.read_text().splitlines() if "-----" not in line)
        needles.update(body[i : i + 32] for i in range(0, len(body) - 32, 32))
    needles.add((state / "pki" / "token").read_text().strip())
    agent = yaml.safe_load((state / deployment.AGENT_KUBECONFIG).read_text())
    needles.add(agent["users"][0]["user"]["token"])
    return needles


def test_4_no_private_key_or_token_in_a_log_or_an_object(running: Running) -> None:
    state = running.env.state_dir
    needles = secrets_of(state)
    assert len(needles) > 20
    logs = sorted(state.rglob("*.log"))
    assert any("heartbeat" in p.name for p in logs) and any("kubelet" in p.name for p in logs)
    dumps = []
    for kind in ("nodes", "leases -A", "events -A", "gateways", "configmaps -A", "secrets -A"):
        out = running.env.kubectl("get", *kind.split(), "-o", "json")
        assert out.returncode == 0, out.stderr
        dumps.append(out.stdout)
    for path in logs:
        text = path.read_text(errors="replace")
        assert "PRIVATE KEY" not in text, path
        leaked = [n for n in needles if n in text]
        assert not leaked, (path, leaked[:1])
    for dump in dumps:
        assert "PRIVATE KEY" not in dump
        assert not [n for n in needles if n in dump]
