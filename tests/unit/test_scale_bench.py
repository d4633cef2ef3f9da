"""``raven bench scale`` at a tiny size, end to end (the figures' shape and sanity, not their
timing), and its pure parts: the steady-state check and the arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from raven.lab.bench import scalereport
from raven.lab.bench.scale import BenchError, layout, run, unsteady

pytestmark = pytest.mark.timeout(120)


def test_a_tiny_fleet_reports_every_figure() -> None:
    figures = run(
        pools="2", nodes=2, workers=1, window=2.0, settle=0.0, trials=1, baseline_pools=0,
        start_rate=100.0,
    )  # fmt: skip
    (phase,) = figures["phases"]
    assert (phase["mode"], phase["pools"], phase["nodes"], phase["agents"]) == ("beacons", 2, 2, 4)
    assert phase["steady"] and phase["steady_after_window"] == "yes"
    assert phase["window_preemptions"] == 0
    # Each of the four roles is there once: the relay, its other candidate, the edge gateway
    # and its member; each gets watch events only from what it watches (no kubelets here).
    roles = phase["per_node"]["by_role"]
    assert {role: r["nodes"] for role, r in roles.items()} == {
        "gateway": 1, "member": 1, "relay": 1, "relay-candidate": 1,
    }  # fmt: skip
    assert all(r["events_per_s"] >= 0 and r["reads_per_s"] == 0 for r in roles.values())
    assert phase["per_pool"]["reads_per_s"] == 0  # a steady agent reads from its watches
    assert set(phase["per_pool"]["writes_by"]) <= {"leases", "gateways/status"}
    assert phase["per_node"]["cpu_percent"] > 0 and phase["per_node"]["rss_mb"] > 0
    assert phase["api"]["cpu_percent"] >= 0 and phase["api"]["rss_mb"] > 10
    # The crash: the edge pool's other node took over and planned its tunnel, the relay moved
    # the pool's AllowedIPs to it.
    (crash,) = phase["crash"]["trials"]
    assert crash["pool"] == "edge-001" and crash["new"] not in (None, crash["old"])
    assert 0 < crash["gateway_s"] < 30 and 0 < crash["relay_s"] < 30
    assert crash["preempted"] == 1  # its beacons stopped: taken over, not expired
    text = scalereport.render(figures)
    assert "arithmetic to 1,000 pools × 20 nodes" in text
    assert "crash: members follow" in text


def test_bad_options_are_refused_before_anything_starts() -> None:
    with pytest.raises(BenchError, match="--pools 'x'"):
        run(pools="x")
    with pytest.raises(BenchError, match="--nodes 1"):
        run(nodes=1)
    with pytest.raises(BenchError, match="--start-rate 0"):
        run(start_rate=0)


def _state(name: str, pool: str, **kw: Any) -> dict[str, Any]:
    base = {"name": name, "pool": pool, "ip": f"ip-{name}", "key": f"key-{name}",
            "holder": False, "via": [], "carrying": [], "failed": False}  # fmt: skip
    return base | kw


def test_steady_state_needs_one_gateway_per_pool_members_following_and_the_relay() -> None:
    steady = [
        _state("c0", "cloud", holder=True, carrying=["key-e0"]),
        _state("c1", "cloud", via=["ip-c0"]),
        _state("e0", "edge", holder=True),
        _state("e1", "edge", via=["ip-e0"]),
    ]
    assert unsteady(steady, "cloud", 4) is None
    assert unsteady(steady[:3], "cloud", 4) == "3 of 4 agents started"
    no_gateway = [s | {"holder": False} if s["name"] == "e0" else s for s in steady]
    assert unsteady(no_gateway, "cloud", 4) == "pool edge has 0 gateways"
    lagging = [s | {"via": ["ip-e9"]} if s["name"] == "e1" else s for s in steady]
    assert unsteady(lagging, "cloud", 4) == "e1 routes via ['ip-e9'], not e0"
    relay_behind = [s | {"carrying": []} if s["name"] == "c0" else s for s in steady]
    assert unsteady(relay_behind, "cloud", 4) == "the relay c0 does not carry 1 edge gateways yet"


def test_layout_gives_each_pool_a_loopback_lan_and_each_node_its_own_pod_cidr() -> None:
    cluster = layout(300, 3)
    nodes = [n for pool in cluster for n in pool]
    assert cluster[0][0].pool == "cloud" and cluster[299][2].name == "edge-299-02"
    assert cluster[299][2].ip == "172.17.49.3" and cluster[299][2].loopback == "127.2.49.3"
    assert len({n.ip for n in nodes}) == len({n.pod_cidr for n in nodes}) == 900


def _phase(pools: int, lease: float, gateways: float, events: dict[str, float]) -> dict[str, Any]:
    return {
        "mode": "beacons", "pools": pools, "nodes": 10, "agents": pools * 10, "steady": True,
        "per_pool": {"writes_per_s": lease + gateways,
                     "writes_by": {"leases": lease, "gateways/status": gateways}},
        "per_node": {"cpu_percent": 0.1 + 0.001 * pools, "rss_mb": 2 + 0.001 * pools * 10,
                     "by_role": {role: {"events_per_s": v} for role, v in events.items()}},
        "crash": {"members_s_max": 1.5, "members_s_median": 1.3},
    }  # fmt: skip


def test_the_arithmetic_follows_the_watch_scopes() -> None:
    # A Lease renewal every 8 s and a Gateway status every 60 s per pool.
    # A member sees its own pool's and the relay pool's Lease and Gateway, whatever P is.
    member = 2 * (0.125 + 1 / 60)
    small = _phase(10, 0.125, 1 / 60, {"member": member})
    large = _phase(50, 0.125, 1 / 60, {"member": member})
    figures = scalereport.summary([small, large], cores=2, took_s=1.0)
    proj = figures["projection"]
    assert proj["api_writes_per_s"] == pytest.approx(1000 * (0.125 + 1 / 60))
    assert proj["member_events_per_s"] == pytest.approx(member)
    assert proj["relay_candidate_events_per_s"] == pytest.approx(1000 * (0.125 + 1 / 60))
    assert small["model_events_per_s"]["member"] == pytest.approx(member)
    growth = figures["comparisons"]["events_per_node_growth"]["member"]
    assert growth["per_added_pool"] == pytest.approx(0)
    assert figures["goals"]["pool_writes_met"] is True
    assert figures["fits"]["cpu_at_target"] == pytest.approx(0.1 + 0.0001 * 20000)
    assert figures["fits"]["rss_at_target"] == pytest.approx(2 + 0.001 * 20000)


def test_a_churning_phase_is_printed_but_never_compared_or_extrapolated() -> None:
    small = _phase(10, 0.125, 1 / 60, {"member": 0.3})
    churning = _phase(50, 0.2, 1 / 60, {"member": 0.1}) | {
        "steady_after_window": "pool cloud has 0 gateways", "window_preemptions": 10,
    }  # fmt: skip
    figures = scalereport.summary([small, churning], cores=2, took_s=1.0)
    assert [p["held"] for p in figures["phases"]] == [True, False]
    assert figures["projection"]["from"] == "beacons 10x10"
    assert "events_per_node_growth" not in figures["comparisons"]
    assert figures["goals"]["member_events_per_added_pool"] is None
