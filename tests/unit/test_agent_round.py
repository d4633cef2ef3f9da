"""The agent's round, pure: named scenarios with their complete expected steps and wishes.

Cluster (tests/unit/agentkit.py): ``cloud`` is the relay pool (c1 c2), ``edge-a`` (a1 a2 a3)
and ``edge-b`` (b1). Unless a scenario says otherwise the holders are c1, a1 and b1.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.round import (
    BeaconTarget,
    Decision,
    ElectionState,
    ElectionWish,
    EventSpec,
    Memory,
    Observed,
    Params,
    decide,
)
from agent.steps import (
    ClampMss,
    EnableForwarding,
    EnsureTunnel,
    SetPeers,
    SetRoutes,
    SetRules,
    SetVxlan,
)
from gateway.dump import DeviceStatus, PeerStatus
from gateway.probe import ProbeWindow
from raven.model import PeerSpec, Role, RouteSpec, RuleSpec, VxlanPeer, VxlanSpec
from raven.names import PROBE_ANNOTATION, PUBLIC_KEY_ANNOTATION, TUNNEL_ENDPOINT_ANNOTATION
from tests.unit.agentkit import CIDR, IP, KEY, addresses, cluster, gateway, lease, node
from tests.unit.test_plan_garbage import json

RULES = (RuleSpec(9027, 9027, 4),)
MTU = 1440  # 1500 - 60, WireGuard over IPv4
EDGE_A_REMOTE = (CIDR["c1"], CIDR["c2"], CIDR["b1"])
CLOCK = 1000.0


def params(name: str, **kw: Any) -> Params:
    return Params(
        node_name=name,
        public_key=KEY[name],
        pool_label="apps.openyurt.io/nodepool",
        wg_dev="rvwg0",
        vxlan_dev="rvvx0",
        vxlan_vni=9027,
        vxlan_port=4790,
        table=9027,
        rule_priority=9027,
        **kw,
    )


def gateways() -> dict[str, Any]:
    return {
        "cloud": gateway("cloud", relay=True),
        "edge-a": gateway("edge-a"),
        "edge-b": gateway("edge-b"),
    }


def holders(**pools: str | None) -> dict[str, Any]:
    chosen = {"cloud": "c1", "edge-a": "a1", "edge-b": "b1"}
    chosen.update({k.replace("_", "-"): v for k, v in pools.items()})
    return {pool: lease(pool, holder) for pool, holder in chosen.items()}


def observed(name: str, **kw: Any) -> Observed:
    fields: dict[str, Any] = {
        "synced": True,
        "now": 1_800_000_000.0,
        "clock": CLOCK,
        "nodes": cluster("c1", "c2", "a1", "a2", "a3", "b1"),
        "gateways": gateways(),
        "leases": holders(),
        "addresses": addresses(name),
    }
    fields.update(kw)
    return Observed(**fields)


def member_routes(via: str, dev: str = "eth0", mtu: int = MTU) -> tuple[RouteSpec, ...]:
    return tuple(RouteSpec(c, 9027, via, dev, onlink=True, mtu=mtu) for c in EDGE_A_REMOTE)


def tunnel_routes(remote: tuple[str, ...]) -> tuple[RouteSpec, ...]:
    return tuple(RouteSpec(c, 9027, None, "rvwg0", mtu=MTU) for c in remote)


def first(name: str, **kw: Any) -> Decision:
    decision, _ = decide(observed(name, **kw), Memory(), params(name))
    return decision


# Roles: exact steps --------------------------------------------------------------------------


def test_member_routes_remote_pools_to_its_gateway_and_nothing_else() -> None:
    d = first("a2")
    assert d.steps == (
        SetPeers(()),
        SetRoutes(member_routes(IP["a1"]), resync=True),
        SetRules(RULES),
        SetVxlan(None),
    )
    assert d.desired is not None and d.desired.role == Role.MEMBER
    assert d.status is None and d.events == ()
    assert d.probe_source is None and dict(d.probe_targets) == {}


def test_edge_gateway_builds_its_tunnel_before_routes_and_the_rule() -> None:
    d = first("a1")
    relay_peer = PeerSpec(
        KEY["c1"], EDGE_A_REMOTE, endpoint=f"{IP['c1']}:51820", persistent_keepalive=5
    )
    assert d.steps == (
        EnsureTunnel(51820, MTU),
        SetPeers((relay_peer,)),
        EnableForwarding(),
        ClampMss("rvwg0"),
        SetRoutes(tunnel_routes(EDGE_A_REMOTE), resync=True),
        SetRules(RULES),
        SetVxlan(None),
    )
    # It probes the relay through the tunnel from its own pod-CIDR address.
    assert d.probe_source == "10.244.10.1"
    assert dict(d.probe_targets) == {KEY["c1"]: "10.244.0.1"}
    # And tells the other candidates it is alive.
    assert d.beacons.targets == (
        BeaconTarget("a2", IP["a2"], KEY["a2"]),
        BeaconTarget("a3", IP["a3"], KEY["a3"]),
    )
    assert d.beacons.fit is True and d.beacons.watch is None


def test_relay_peers_every_pool_gateway_and_keeps_standby_peers() -> None:
    d = first("c1")
    assert d.desired is not None and d.desired.role == Role.RELAY
    peers = d.desired.peers
    carrying = {p.public_key: p.allowed_ips for p in peers if p.allowed_ips}
    assert carrying == {
        KEY["a1"]: (CIDR["a1"], CIDR["a2"], CIDR["a3"]),
        KEY["b1"]: (CIDR["b1"],),
    }
    assert {p.public_key for p in peers if not p.allowed_ips} == {KEY["a2"], KEY["a3"]}
    # Only carrying peers are probed.
    assert dict(d.probe_targets) == {KEY["a1"]: "10.244.10.1", KEY["b1"]: "10.244.20.1"}


def test_a_routed_lan_member_reaches_an_off_link_gateway_over_vxlan_first() -> None:
    nodes = cluster("c1", "c2", "a1", "a2", "a3", "b1", "r1")  # r1 is edge-a on 192.168.9.0/24
    d = first("r1", nodes=nodes, addresses=addresses("r1"))
    vxlan = VxlanSpec(
        "rvvx0",
        9027,
        4790,
        local=IP["r1"],
        mac="0e:52:c0:a8:09:1f",
        mtu=1450,
        peers=(VxlanPeer(IP["a1"], "0e:52:c0:a8:01:0b"),),
    )
    assert d.steps == (
        SetPeers(()),
        SetVxlan(vxlan, required=True),
        SetRoutes(member_routes(IP["a1"], dev="rvvx0", mtu=MTU), resync=True),
        SetRules(RULES),
    )


# Inputs that are not there yet ---------------------------------------------------------------


def test_before_the_first_list_nothing_is_touched() -> None:
    d = first("a2", synced=False)
    assert d.steps is None and d.election is None and d.annotations == {}


def test_no_interface_holds_the_internal_ip_yet() -> None:
    d = first("a2", addresses=())
    assert d.steps is None
    assert d.notes == ("no interface holds this node's InternalIP yet; nothing applied",)


# Report: annotations, Events, status ---------------------------------------------------------


def test_publishes_its_key_and_probe_address_once() -> None:
    nodes = cluster("c1", "c2", "a1", "a2", "a3", "b1")
    nodes["a2"] = node("a2", key=False, probe=False)
    d = first("a2", nodes=nodes)
    assert d.annotations == {PUBLIC_KEY_ANNOTATION: KEY["a2"], PROBE_ANNOTATION: "10.244.11.1"}
    # Published (the watch shows them): nothing more to write.
    assert first("a2").annotations == {}
    nodes["a2"]["metadata"]["annotations"][TUNNEL_ENDPOINT_ANNOTATION] = "1.2.3.4:5"
    assert first("a2", nodes=nodes).annotations == {
        PUBLIC_KEY_ANNOTATION: KEY["a2"],
        PROBE_ANNOTATION: "10.244.11.1",
        TUNNEL_ENDPOINT_ANNOTATION: None,
    }


def test_new_gateway_records_an_election_event_with_the_gateway_uid() -> None:
    d = first("a1")
    assert d.events == (
        EventSpec(
            "edge-a",
            "uid-edge-a",
            "Normal",
            "GatewayElected",
            "a1 is now the active gateway of pool edge-a",
        ),
    )
    assert d.status is not None and d.status[0] == "edge-a"
    status = d.status[1]
    assert status["activeNode"] == "a1" and status["probeWindowSeconds"] == 20
    assert [p["node"] for p in status["peers"]] == ["c1"]


def test_status_figures_alone_wait_for_the_refresh_but_a_state_change_does_not() -> None:
    p = params("a1", status_refresh=60)
    now = 1_800_000_000.0
    handshake = PeerStatus(KEY["c1"], f"{IP['c1']}:51820", EDGE_A_REMOTE, int(now) - 5, 0, 0, 5)
    tunnel = DeviceStatus(KEY["a1"], 51820, 0, (handshake,))

    def at(clock: float, window: ProbeWindow) -> Observed:
        return observed("a1", probes={KEY["c1"]: window}, clock=clock, tunnel=tunnel, now=now)

    d1, mem = decide(at(CLOCK, ProbeWindow((1.0, 1.2))), Memory(), p)
    assert d1.status is not None and d1.status[1]["peers"][0]["state"] == "Up"
    # Only the RTT moved: no write until the refresh is due.
    slower = ProbeWindow((1.0, 1.2, 3.4))
    d2, mem = decide(at(CLOCK + 5, slower), mem, p)
    assert d2.status is None
    d3, mem = decide(at(CLOCK + 61, slower), mem, p)
    assert d3.status is not None and d3.status[1]["peers"][0]["rttMs"] == 3.4
    # A peer going down is written at once.
    d4, _ = decide(at(CLOCK + 62, ProbeWindow((None,) * 10)), mem, p)
    assert d4.status is not None and d4.status[1]["peers"][0]["state"] == "Down"


# Election --------------------------------------------------------------------------------------


def test_members_watch_only_their_own_and_the_relay_pools_leases() -> None:
    assert first("a2").lease_scope == frozenset({"edge-a", "cloud"})
    assert first("a1").lease_scope == frozenset({"edge-a", "cloud"})
    assert first("c2").lease_scope is None  # a relay candidate needs every pool's
    nodes = cluster("c1", "c2", "a1", "a2", "a3", "b1")
    nodes["a2"] = node("a2", pool=None)
    assert first("a2", nodes=nodes).lease_scope == frozenset()


def test_candidates_campaign_only_when_a_relay_gateway_is_known() -> None:
    assert first("a2").election == ElectionWish("edge-a", campaign=True)
    no_relay = first("a2", leases=holders(cloud=None))
    assert no_relay.election == ElectionWish("edge-a", campaign=False)
    selector = {"candidateSelector": {"matchLabels": {"gw": "yes"}}}
    picky = {**gateways(), "edge-a": gateway("edge-a", **selector)}
    assert first("a2", gateways=picky).election == ElectionWish()


def holder_silent(name: str, heard: float | None, **kw: Any) -> Decision:
    """``name``'s round after it saw a1 become holder at CLOCK - 10 and heard its last beacon
    at ``heard`` (None: never), now at CLOCK."""
    p = params(name)
    _, mem = decide(observed(name, clock=CLOCK - 10), Memory(), p)
    beacons = {} if heard is None else {"a1": heard}
    decision, _ = decide(observed(name, beacons=beacons, **kw), mem, p)
    return decision


def test_crash_candidates_take_over_when_the_gateway_falls_silent_by_rank() -> None:
    # a2 ranks first among the other candidates (a2, a3): patience 1.25 s.
    assert holder_silent("a2", CLOCK - 1.3).election == ElectionWish("edge-a", True, preempt="a1")
    assert holder_silent("a2", CLOCK - 1.0).election == ElectionWish("edge-a", True)
    assert holder_silent("a2", CLOCK - 1.0).beacons.watch == ("a1", 1.25)
    # a3 ranks second: 0.25 s more patience, so a2 usually writes alone.
    assert holder_silent("a3", CLOCK - 1.3).election == ElectionWish("edge-a", True)
    assert holder_silent("a3", CLOCK - 1.6).election == ElectionWish("edge-a", True, preempt="a1")


def test_a_holder_never_heard_in_its_term_is_left_to_the_lease() -> None:
    assert holder_silent("a2", None).election == ElectionWish("edge-a", True)
    # Heard before it became holder (CLOCK - 10) does not count for this term.
    assert holder_silent("a2", CLOCK - 20).election == ElectionWish("edge-a", True)


def test_nobody_preempts_while_stepped_down_or_without_a_relay() -> None:
    out = ElectionState(pool="edge-a", seen_holder="a1", known=True, out=True)
    assert holder_silent("a2", CLOCK - 5, election=out).election == ElectionWish("edge-a", True)
    no_relay = holder_silent("a2", CLOCK - 5, gateways={**gateways(), "cloud": gateway("cloud")})
    assert no_relay.election == ElectionWish("edge-a", False)


def test_step_down_when_the_relay_answered_no_probe_for_three_rounds() -> None:
    held = ElectionState(pool="edge-a", is_holder=True, seen_holder="a1", known=True)
    dead = {KEY["c1"]: ProbeWindow((0.9, None, None, None))}
    d = first("a1", election=held, probes=dead)
    message = (
        "a1 steps down as gateway of pool edge-a: its tunnel to the relay answered no probe"
        " for 3 rounds; a2 is ready to take over"
    )
    assert d.election == ElectionWish("edge-a", True, step_down=message)
    assert EventSpec("edge-a", "uid-edge-a", "Warning", "GatewayStepDown", message) in d.events
    assert d.beacons.fit is False  # candidates need not wait for the Lease either
    # Two silent rounds are not enough; nor is a dead tunnel when nobody could do better.
    two = {KEY["c1"]: ProbeWindow((0.9, 1.0, None, None))}
    assert first("a1", election=held, probes=two).election == ElectionWish("edge-a", True)
    alone = cluster("c1", "c2", "a1", "b1")
    assert first("a1", election=held, probes=dead, nodes=alone).election == ElectionWish(
        "edge-a", True
    )


def test_graceful_failover_members_keep_the_old_gateway_until_a_new_one_holds() -> None:
    p = params("a3")
    d1, mem = decide(observed("a3"), Memory(), p)
    released = observed("a3", leases=holders(edge_a=None))
    d2, mem = decide(released, mem, p)
    assert d1.steps is not None
    assert d2.steps == replace_resync(d1.steps, False)  # still via a1 while nobody holds it
    d3, mem = decide(observed("a3", leases=holders(edge_a="a2")), mem, p)
    assert d3.steps is not None and SetRoutes(member_routes(IP["a2"]), resync=False) in d3.steps


def test_new_holder_reports_a_failover_from_the_previous_one() -> None:
    p = params("a2")
    _, mem = decide(observed("a2"), Memory(), p)
    took = ElectionState(pool="edge-a", is_holder=True, seen_holder="a2", known=True)
    d, _ = decide(observed("a2", election=took), mem, p)
    assert d.desired is not None and d.desired.role == Role.GATEWAY
    assert [(e.reason, e.message) for e in d.events] == [
        ("GatewayFailover", "a2 took over pool edge-a from a1")
    ]


def test_own_pool_holder_comes_from_the_elector_not_the_lagging_watch() -> None:
    took = ElectionState(pool="edge-a", is_holder=True, seen_holder="a2", known=True)
    d = first("a2", election=took)  # the watch still says a1
    assert d.desired is not None and d.desired.role == Role.GATEWAY


# Outages ---------------------------------------------------------------------------------------


def test_api_outage_and_restart_offline_keep_the_data_path() -> None:
    """While the API server is away the watches keep their last objects and the elector cannot
    read; a restarted agent lists from its node's cache proxy. Either way the round plans the
    same data path as before the outage."""
    p = params("a2")
    before, mem = decide(observed("a2"), Memory(), p)
    lost = ElectionState(pool="edge-a", seen_holder="a1", known=True, api_ok=False)
    during, _ = decide(observed("a2", election=lost), mem, p)
    restarted, _ = decide(observed("a2", election=ElectionState(pool="edge-a")), Memory(), p)
    assert before.steps is not None
    assert during.steps == replace_resync(before.steps, False)
    assert restarted.steps == before.steps


def replace_resync(steps: Any, resync: bool) -> Any:
    return tuple(replace(s, resync=resync) if isinstance(s, SetRoutes) else s for s in steps)


# Any input -------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=st.lists(st.tuples(st.sampled_from(["Node", "Gateway", "Lease"]), json), max_size=3),
    mine=st.one_of(st.none(), json),
)
def test_the_round_never_raises_whatever_the_objects(extra: list[Any], mine: Any) -> None:
    """Objects of any JSON shape, added to the cluster or replacing this node's own Node, never
    make a round raise (one malformed object must not freeze every agent)."""
    nodes: dict[str, Any] = dict(cluster("c1", "c2", "a1", "a2", "a3", "b1"))
    gws: dict[str, Any] = dict(gateways())
    leases: dict[str, Any] = dict(holders())
    for i, (kind, obj) in enumerate(extra):
        {"Node": nodes, "Gateway": gws, "Lease": leases}[kind][f"x{i}"] = obj
    if mine is not None:
        nodes["a2"] = mine
    mem = Memory()
    for clock in (CLOCK, CLOCK + 5):
        decision, mem = decide(
            observed("a2", nodes=nodes, gateways=gws, leases=leases, clock=clock), mem, params("a2")
        )
        assert isinstance(decision.notes, tuple)


def test_before_the_needed_leases_are_listed_only_the_lease_watch_is_chosen() -> None:
    d = first("a2", leases_synced=False)
    assert d.steps is None and d.election is None
    assert d.lease_scope == frozenset({"edge-a", "cloud"})


def test_the_relay_reports_a_refusal_no_pool_gateway_can() -> None:
    """A Node claiming 0.0.0.0/0, alone in a pool of its own, has no gateway to report it: the
    relay does, on its Gateway and in an Event; the other pools are untouched."""
    nodes = cluster("c1", "c2", "a1", "a2", "a3", "b1")
    rogue = node("b1", pool="edge-rogue")
    rogue["metadata"]["name"] = "rogue-1"
    rogue["spec"] = {"podCIDR": "0.0.0.0/0", "podCIDRs": ["0.0.0.0/0"]}
    rogue["metadata"]["annotations"] = {}
    rogue["status"]["addresses"] = [{"type": "InternalIP", "address": "192.168.5.5"}]
    nodes["rogue-1"] = rogue
    relay = first("c1", nodes=nodes)
    warnings = [e for e in relay.events if e.type == "Warning"]
    assert [(e.pool, e.uid) for e in warnings] == [("cloud", "uid-cloud")]
    assert "rogue-1" in warnings[0].message and "spec.podCIDRs[0]" in warnings[0].message
    assert relay.status is not None
    accepted = next(c for c in relay.status[1]["conditions"] if c["type"] == "InputAccepted")
    assert accepted["status"] == "False" and "rogue-1" in accepted["message"]
    # Nobody else reports it, and every other plan is what it was.
    edge = first("a1", nodes=nodes)
    assert all(e.type != "Warning" for e in edge.events)
    for name in ("a1", "a2", "b1", "c1", "c2"):
        assert first(name, nodes=nodes).steps == first(name).steps


def test_an_older_copy_of_a_lease_never_moves_a_pool_back() -> None:
    """A cache proxy may list an older copy of a Lease while the cloud is away: a holder seen
    with a newer resourceVersion stays."""

    def versioned(pool: str, holder: str, rv: str) -> dict[str, Any]:
        obj = lease(pool, holder)
        obj["metadata"]["resourceVersion"] = rv
        return obj

    p = params("a1")
    new = {**holders(), "cloud": versioned("cloud", "c2", "20")}
    d1, mem = decide(observed("a1", leases=new), Memory(), p)
    old = {**holders(), "cloud": versioned("cloud", "c1", "12")}
    d2, mem = decide(observed("a1", leases=old), mem, p)
    assert d1.desired is not None and d2.desired is not None
    assert d2.desired.peers == d1.desired.peers  # still the relay gateway c2
    newest = {**holders(), "cloud": versioned("cloud", "c1", "21")}
    d3, _ = decide(observed("a1", leases=newest), mem, p)
    assert d3.desired is not None and d3.desired.peers[0].public_key == KEY["c1"]


def test_members_watch_only_their_own_and_the_relays_gateway() -> None:
    # Not before the relay's Gateway carries its label: a narrowed watch would lose the relay.
    assert first("a2").gateway_scope is None
    labelled = gateways()
    labelled["cloud"]["metadata"]["labels"] = {"raven.io/relay": "true"}
    assert first("a2", gateways=labelled).gateway_scope == "edge-a"
    # An edge gateway needs no other pool's either; a relay candidate watches every Gateway.
    assert first("a1", gateways=labelled).gateway_scope == "edge-a"
    assert first("c2", gateways=labelled).gateway_scope is None


def test_the_relay_keeps_the_relay_label_true_to_the_specs() -> None:
    gws = gateways()
    gws["edge-b"]["metadata"]["labels"] = {"raven.io/relay": "true"}  # stale: not a relay
    relay = first("c1", gateways=gws)
    assert relay.gateway_labels == {
        "cloud": {"raven.io/relay": "true"},
        "edge-b": {"raven.io/relay": None},
    }
    assert first("a1", gateways=gws).gateway_labels == {}  # only the relay writes them
    gws["cloud"]["metadata"]["labels"] = {"raven.io/relay": "true"}
    gws["edge-b"]["metadata"]["labels"] = {}
    assert first("c1", gateways=gws).gateway_labels == {}  # nothing to change: no write
