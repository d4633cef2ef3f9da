"""Whole agents against the embedded API server, with recording data planes instead of kernels.

Every agent runs the real informers, elector, round, status writer and beacons (real UDP on
loopback addresses, one per node); only the kernel is replaced. Each test waits for the
behaviour it checks, with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import AgentSettings
from agent.runtime import Agent
from agent.steps import SetRoutes
from gateway.probe import Prober, ProbeWindow
from raven.kube import GATEWAYS, NODES, Informer, KubeClient, leases
from raven.kube.events import EVENTS
from raven.lab.testing.dataplane import RecordingDataPlane
from raven.lab.testing.kube import client_for_kubeconfig, install_crds
from tests.unit.agentkit import CIDR, IP, KEY, LOOPBACK, PRIVATE, addresses, gateway, node

pytestmark = pytest.mark.timeout(90)

POOLS = {"cloud": ("c1", "c2"), "edge-a": ("a1", "a2", "a3"), "edge-b": ("b1",)}
LEASES = leases("kube-system")


class QuietProber(Prober):
    """Probes nothing; a test sets the windows it wants the agent to see."""

    def __init__(self) -> None:
        super().__init__()
        self.fixed: dict[str, ProbeWindow] = {}

    async def round(self) -> None:
        return None

    def windows(self) -> dict[str, ProbeWindow]:
        return dict(self.fixed)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Member:
    name: str
    agent: Agent
    plane: RecordingDataPlane
    prober: QuietProber
    task: asyncio.Task[None]


@dataclass
class Fleet:
    api: Any
    kube: KubeClient
    tmp: Path
    port: int
    members: dict[str, Member] = field(default_factory=dict)

    def settings(self, name: str) -> AgentSettings:
        state = self.tmp / name
        state.mkdir(exist_ok=True)
        (state / "wireguard.key").write_text(PRIVATE[name] + "\n")
        (state / "wireguard.key").chmod(0o600)
        return AgentSettings(
            node_name=name,
            state_dir=state,
            wg_interface=f"tw{name}",
            lease_duration=6,
            lease_renew=1.5,
            lease_retry=0.25,
            beacon_host=LOOPBACK[name],
            beacon_port=self.port,
            beacon_interval=0.1,
            beacon_timeout=1.2,
            beacon_stagger=0.3,
            health_host=LOOPBACK[name],
            health_port=0,
            resync=2,
        )

    async def start(self, name: str, **settings: Any) -> Member:
        plane = RecordingDataPlane(addresses(name), public_key=KEY[name])
        prober = QuietProber()
        agent = Agent(
            self.settings(name).model_copy(update=settings),
            client=client_for_kubeconfig(self.api.kubeconfig),
            dataplane=lambda: plane,
            prober=prober,
            watch_kernel=False,
            handle_signals=False,
            # Every node's beacon socket listens on a loopback address of its own.
            beacon_addresses={IP[n]: LOOPBACK[n] for n in LOOPBACK},
        )
        task = asyncio.create_task(agent.run(), name=f"agent {name}")
        member = Member(name, agent, plane, prober, task)
        self.members[name] = member
        return member

    async def stop(self, name: str, *, crash: bool = False) -> None:
        member = self.members.pop(name)
        member.agent.release_on_stop = not crash
        member.agent.stop()
        await asyncio.wait_for(member.task, 10)

    async def holder(self, pool: str) -> str:
        try:
            lease = await self.kube.get(LEASES, f"raven-gw-{pool}")
        except Exception:  # noqa: BLE001 - no Lease yet
            return ""
        return str(lease.get("spec", {}).get("holderIdentity") or "")

    async def until(self, check: Callable[[], Any], what: str, timeout: float = 15) -> None:
        """Wait until the async or plain ``check()`` is truthy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Any = None
        while loop.time() < deadline:
            last = check()
            if asyncio.iscoroutine(last):
                last = await last
            if last:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def routes_via(member: Member) -> set[str | None]:
    return {r.gateway for r in member.plane.routes}


@pytest.fixture
async def fleet(apiserver: Any, tmp_path: Path) -> AsyncIterator[Fleet]:
    kube = client_for_kubeconfig(apiserver.kubeconfig)
    await install_crds(kube)
    for names in POOLS.values():
        for name in names:
            body = node(name)
            status = body.pop("status")
            await kube.create(NODES, body)
            await kube.merge_patch(NODES, name, {"status": status}, subresource="status")
    relay = gateway("cloud", relay=True)
    await kube.create(
        GATEWAYS,
        {k: v for k, v in relay.items() if k != "metadata"} | {"metadata": {"name": "cloud"}},
    )
    fleet = Fleet(apiserver, kube, tmp_path, free_udp_port())
    for names in POOLS.values():
        for name in names:
            await fleet.start(name)
    try:
        yield fleet
    finally:
        for name in list(fleet.members):
            with contextlib.suppress(Exception):
                await fleet.stop(name)
        await kube.close()


async def connected(fleet: Fleet) -> dict[str, str]:
    """Wait until every pool has a gateway and every member routes through its own; return
    pool -> gateway."""
    holders: dict[str, str] = {}

    async def all_held() -> bool:
        for pool in POOLS:
            holders[pool] = await fleet.holder(pool)
        return all(holders.values())

    await fleet.until(all_held, "a gateway in every pool")

    def members_follow() -> bool:
        for pool, names in POOLS.items():
            via = IP[holders[pool]]
            for name in names:
                member = fleet.members.get(name)
                if member is None or name == holders[pool]:
                    continue
                if not member.plane.routes or routes_via(member) != {via}:
                    return False
        return True

    await fleet.until(members_follow, "every member routing through its gateway")

    def relay_routes_every_pool() -> bool:
        relay = fleet.members.get(holders["cloud"])
        remote = {CIDR[n] for pool, names in POOLS.items() if pool != "cloud" for n in names}
        return relay is not None and {r.dst for r in relay.plane.routes} == remote

    await fleet.until(relay_routes_every_pool, "the relay routing every edge pool")

    def gateways_route_every_remote_pool() -> bool:
        for pool in POOLS:
            gw = fleet.members.get(holders[pool])
            remote = {CIDR[n] for other, ns in POOLS.items() if other != pool for n in ns}
            if gw is None or {r.dst for r in gw.plane.routes} != remote:
                return False
        return True

    await fleet.until(gateways_route_every_remote_pool, "every gateway routing the other pools")
    return holders


async def test_every_pool_elects_a_gateway_and_members_route_through_it(fleet: Fleet) -> None:
    holders = await connected(fleet)
    relay = fleet.members[holders["cloud"]]

    def relay_carries_every_pool() -> dict[str, tuple[str, ...]]:
        carrying = {p.public_key: p.allowed_ips for p in relay.plane.peers if p.allowed_ips}
        want = {
            KEY[holders["edge-a"]]: (CIDR["a1"], CIDR["a2"], CIDR["a3"]),
            KEY[holders["edge-b"]]: (CIDR["b1"],),
        }
        return want if carrying == want else {}

    await fleet.until(relay_carries_every_pool, "the relay carrying both edge pools")
    # Members of edge-a touch nothing but their route table and rule: no tunnel.
    member = next(n for n in POOLS["edge-a"] if n != holders["edge-a"])
    assert fleet.members[member].plane.tunnel_port is None

    # The Gateway status names its active node, and kubectl describe finds the election Event
    # by the Gateway's uid.
    gw = await fleet.kube.get(GATEWAYS, "edge-a")

    async def described() -> bool:
        found = await fleet.kube.request(
            "GET",
            EVENTS.collection_path(),
            params={"fieldSelector": f"involvedObject.uid={gw['metadata']['uid']}"},
        )
        reasons = {e["reason"] for e in found.get("items", [])}
        return "GatewayElected" in reasons

    await fleet.until(described, "an election Event carrying the Gateway's uid")

    async def status_active() -> bool:
        got = await fleet.kube.get(GATEWAYS, "edge-a")
        return (got.get("status") or {}).get("activeNode") == holders["edge-a"]

    await fleet.until(status_active, "status.activeNode of edge-a")


async def test_crashed_gateway_is_replaced_by_beacon_silence_not_lease_expiry(
    fleet: Fleet,
) -> None:
    holders = await connected(fleet)
    old = holders["edge-a"]
    others = [n for n in POOLS["edge-a"] if n != old]
    # The candidates have heard the gateway's beacons in its term: only then can they tell
    # silence from a gateway they never knew (which is left to the Lease's expiry).
    await fleet.until(
        lambda: all(
            fleet.members[n].agent.receiver.fit_at.get(old, 0)
            > fleet.members[n].agent.memory.holder_since["edge-a"][1]
            for n in others
        ),
        "the other candidates hearing the gateway",
    )
    await fleet.stop(old, crash=True)  # no release: the Lease still names it for 6 s

    async def replaced() -> str:
        now = await fleet.holder("edge-a")
        return now if now not in ("", old) else ""

    await fleet.until(replaced, "another edge-a gateway", timeout=20)
    new = await fleet.holder("edge-a")
    # Taken by preemption (the beacons stopped), not because the Lease ran out.
    assert fleet.members[new].agent.elector is not None
    assert fleet.members[new].agent.elector.preemptions == 1
    members = [n for n in others if n != new]
    await fleet.until(
        lambda: all(routes_via(fleet.members[n]) == {IP[new]} for n in members),
        "members following the new gateway",
    )
    relay = fleet.members[holders["cloud"]]
    await fleet.until(
        lambda: any(p.public_key == KEY[new] and p.allowed_ips for p in relay.plane.peers),
        "the relay moving edge-a's AllowedIPs to the new gateway",
    )


async def test_stopped_gateway_hands_over_at_once(fleet: Fleet) -> None:
    holders = await connected(fleet)
    old = holders["edge-a"]
    await fleet.stop(old)  # releases its Lease

    async def replaced() -> str:
        now = await fleet.holder("edge-a")
        return now if now not in ("", old) else ""

    await fleet.until(replaced, "another edge-a gateway")
    new = await fleet.holder("edge-a")
    elector = fleet.members[new].agent.elector
    assert elector is not None and elector.preemptions == 0  # free Lease, no takeover needed


async def test_gateway_with_a_dead_tunnel_steps_down(fleet: Fleet) -> None:
    holders = await connected(fleet)
    old = fleet.members[holders["edge-a"]]
    old.prober.fixed = {KEY[holders["cloud"]]: ProbeWindow((1.0, None, None, None))}
    old.agent.mark_dirty()

    async def replaced() -> str:
        now = await fleet.holder("edge-a")
        return now if now not in ("", old.name) else ""

    await fleet.until(replaced, "another edge-a gateway after the step-down")
    elector = old.agent.elector
    assert elector is not None and elector.out


async def test_api_outage_keeps_every_data_path(fleet: Fleet) -> None:
    await connected(fleet)
    before = {name: m.plane.routes for name, m in fleet.members.items()}

    def resyncs(m: Any) -> int:  # a full round, or the idle re-check of the kernel
        return int(m.agent.stats.rounds + m.agent.stats.rechecks)

    rounds = {name: resyncs(m) for name, m in fleet.members.items()}
    fleet.api.stop()
    try:
        # Every agent runs its resync at least twice without the API server.
        await fleet.until(
            lambda: all(resyncs(m) > rounds[n] + 1 for n, m in fleet.members.items()),
            "every agent running rounds during the outage",
        )
        assert {name: m.plane.routes for name, m in fleet.members.items()} == before
    finally:
        fleet.api.start()


async def test_agent_started_while_the_api_is_away_touches_nothing(fleet: Fleet) -> None:
    await connected(fleet)
    await fleet.stop("a3")
    fleet.api.stop()
    try:
        member = await fleet.start("a3")
        await fleet.until(lambda: member.agent.stats.rounds >= 2, "rounds without the API")
        assert member.plane.steps == []
        assert not member.agent.ready
    finally:
        fleet.api.start()
    await fleet.until(
        lambda: any(isinstance(s, SetRoutes) for s in member.plane.steps),
        "routes once the API is back",
    )


async def test_health_readiness_and_metrics_endpoints(fleet: Fleet) -> None:
    holders = await connected(fleet)
    gw = holders["edge-a"]
    await fleet.stop(gw)
    port = free_tcp_port(LOOPBACK[gw])
    fleet.api.stop()  # start it offline first: alive, but not ready
    member = await fleet.start(gw, health_port=port)
    base = f"http://{LOOPBACK[gw]}:{port}"
    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> tuple[int, str]:
            async with http.get(base + path) as resp:
                return resp.status, await resp.text()

        await fleet.until(lambda: member.agent.health is not None, "the health endpoint")
        await fleet.until(lambda: member.agent.stats.rounds >= 1, "a round")
        assert (await get("/healthz"))[0] == 200
        status, why = await get("/readyz")
        assert status == 503 and "not synced" in why
        fleet.api.start()
        await fleet.until(lambda: member.agent.ready, "synced and applied")
        assert (await get("/readyz"))[0] == 200
        _, text = await get("/metrics")
        assert "raven_reconcile_duration_seconds_count" in text
        assert "raven_ready 1.0" in text
        # The Lease was released while the API was away; a candidate takes it once it is back.
        texts = [text]

        async def holder_shown() -> bool:
            texts.append((await get("/metrics"))[1])
            return 'raven_pool_holder{pool="edge-a"} 1.0' in texts[-1]

        await fleet.until(holder_shown, "the metrics naming edge-a's new holder")
        # /role says whether this node is its pool's gateway, as the Lease names the holder.
        roles: list[dict[str, object]] = []

        async def role_follows_the_lease() -> bool:
            async with http.get(base + "/role") as resp:
                roles.append(await resp.json())
            view = member.agent.memory.view
            holder = view.holders.get("edge-a") if view is not None else None
            held = next((n for n in view.nodes if n.name == holder), None) if view else None
            return bool(holder) and roles[-1] == {
                "node": gw,
                "pool": "edge-a",
                "gateway": holder == gw,
                "holder": holder,
                "holderAddress": held.internal_ip if held else None,
                "members": sorted(n.name for n in view.nodes if n.pool == "edge-a"),
            }

        await fleet.until(role_follows_the_lease, "/role naming edge-a and its gateway")


async def test_a_steady_pool_writes_its_lease_once_per_renewal(fleet: Fleet) -> None:
    await connected(fleet)
    writes: list[str] = []
    informer = Informer(fleet.kube, LEASES)
    informer.add_listener(lambda kind, lease: writes.append(lease["metadata"]["name"]))
    informer.start()
    try:
        await informer.wait_synced(5)
        writes.clear()
        await asyncio.sleep(4.5)
        # Renewals every 1.5 s: three per pool in 4.5 s (one more when a timer straddles an
        # edge), nothing else while nothing changes.
        per_pool = {pool: writes.count(f"raven-gw-{pool}") for pool in POOLS}
        assert all(n <= 4 for n in per_pool.values()), per_pool
    finally:
        await informer.stop()


async def test_members_narrow_their_gateway_watch_to_their_pool_and_the_relay(
    fleet: Fleet,
) -> None:
    holders = await connected(fleet)
    member = fleet.members[next(n for n in POOLS["edge-a"] if n != holders["edge-a"])]
    relay = fleet.members[holders["cloud"]]
    await fleet.until(lambda: member.agent.gateway_scope == "edge-a", "the narrowed watch")
    watched = {
        informer.field_selector or informer.label_selector for informer in member.agent.gateways
    }
    assert watched == {"metadata.name=edge-a", "raven.io/relay=true"}
    assert set(member.agent._gateway_view()) == {"edge-a", "cloud"}
    assert relay.agent.gateway_scope is None  # the relay sees every pool's Gateway
    cloud = await fleet.kube.get(GATEWAYS, "cloud")
    assert cloud["metadata"]["labels"]["raven.io/relay"] == "true"


async def test_an_idle_resync_only_rechecks_the_kernel(fleet: Fleet) -> None:
    """When nothing the plan reads changed, the periodic resync re-applies the last steps with
    the route table dumped, instead of planning the whole cluster again."""
    await connected(fleet)
    member = fleet.members["a3"]
    await fleet.until(lambda: member.agent.stats.rechecks >= 1, "an idle resync", timeout=20)
    assert member.plane.routes  # the data path is what it was
    rounds = member.agent.stats.rounds
    # A change the plan reads is a full round again.
    await fleet.kube.merge_patch(NODES, "b1", {"metadata": {"labels": {"zone": "z1"}}})
    await fleet.until(lambda: member.agent.stats.rounds > rounds, "a full round after a change")


async def test_status_endpoint_says_role_plan_kernel_and_last_apply(fleet: Fleet) -> None:
    """``/status`` (``raven status --node``): the node's role and holder, its plan, what the
    kernel holds and whether that matches, the last apply's steps and the last error; public
    keys only, never the private one."""
    holders = await connected(fleet)
    gw = holders["edge-a"]
    name = next(n for n in POOLS["edge-a"] if n != gw)
    await fleet.stop(name)
    port = free_tcp_port(LOOPBACK[name])
    member = await fleet.start(name, health_port=port)
    await fleet.until(lambda: member.agent.ready, "synced and applied")
    base = f"http://{LOOPBACK[name]}:{port}"
    async with aiohttp.ClientSession() as http:

        async def get(base: str = base) -> tuple[str, dict[str, Any]]:
            async with http.get(base + "/status") as resp:
                assert resp.status == 200
                text = await resp.text()
                return text, await resp.json()

        text, doc = await get()
        assert PRIVATE[name] not in text
        assert (doc["node"], doc["pool"], doc["role"], doc["holder"]) == (
            name,
            "edge-a",
            "member",
            gw,
        )
        assert (doc["relayPool"], doc["ready"], doc["notReady"]) == ("cloud", True, "")
        remote = sorted(CIDR[n] for pool, ns in POOLS.items() if pool != "edge-a" for n in ns)
        plan = doc["plan"]
        assert plan["role"] == "member" and plan["peers"] == [] and plan["tunnel"] is None
        assert sorted(r["dst"] for r in plan["routes"]) == remote
        assert {r["via"] for r in plan["routes"]} == {IP[gw]}
        assert len(plan["rules"]) == 1
        kernel = doc["kernel"]
        assert kernel["routes"] == plan["routes"] and kernel["rules"] == plan["rules"]
        assert kernel["tunnel"] is None
        assert kernel["matchesPlan"] == {"routes": True, "rules": True, "peers": True}
        apply = doc["lastApply"]
        assert apply["ok"] is True and apply["seconds"] >= 0
        assert [s["step"] for s in apply["steps"]] == [
            "SetPeers",
            "SetRoutes",
            "SetRules",
            "SetVxlan",
        ]
        assert doc["lastRound"]["kind"] in ("full", "recheck") and doc["lastError"] is None
        assert doc["counts"]["applies"] >= 1

        # A failing step is the last error, and the apply says which step failed.
        member.plane.fail[SetRoutes] = OSError("table full")
        member.agent._drifted()

        async def failed() -> bool:
            got = (await get())[1]
            return got["lastError"] is not None and got["lastApply"]["ok"] is False

        await fleet.until(failed, "the failed apply in /status")
        doc = (await get())[1]
        assert "SetRoutes" in doc["lastError"]["message"]
        assert "table full" in doc["lastError"]["message"]
        assert doc["ready"] is False
        step = next(s for s in doc["lastApply"]["steps"] if s["step"] == "SetRoutes")
        assert step == {"step": "SetRoutes", "ok": False, "writes": None, "error": step["error"]}
        assert "table full" in step["error"]

    # The gateway's plan holds its relay peer; its kernel's tunnel holds the same key.
    doc = json.loads(json.dumps(await fleet.members[gw].agent.status_document()))
    assert PRIVATE[gw] not in json.dumps(doc)
    assert (doc["role"], doc["holder"]) == ("gateway", gw)
    assert doc["plan"]["tunnel"]["listenPort"] == 51820
    keys = [p["publicKey"] for p in doc["plan"]["peers"]]
    assert KEY[holders["cloud"]] in keys
    assert {p["publicKey"] for p in doc["kernel"]["tunnel"]["peers"]} == set(keys)
    assert doc["kernel"]["matchesPlan"] == {"routes": True, "rules": True, "peers": True}
