"""The pure parts of `raven diagnose`: the collector's output parsed, the expected path drawn from
the objects, and every check's verdict for the evidence each fault kind leaves (tables)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gateway.dump import DeviceStatus, PeerStatus
from raven.diagnose import checks
from raven.diagnose.checks import Status
from raven.diagnose.facts import Link, WgProcess, parse_facts
from raven.diagnose.path import Endpoint, PathError, endpoint, expected_path
from raven.diagnose.probes import CaptureResult, Echo, EchoReply, Seen, from_json, to_json
from raven.model import DesiredState, PeerSpec, Problem, Role, RouteSpec, RuleSpec, VxlanSpec
from raven.view import cluster_view

KEY_A = "Q3jojb3bQ3jojb3bQ3jojb3bQ3jojb3bQ3jojb3bQ3g="
KEY_R = "UV0chcKSUV0chcKSUV0chcKSUV0chcKSUV0chcKSUV0="
KEY_X = "p72suYx1NIa5mjDJeJrlGu+t8OvpGwrw1e2EWtZXEWo="


def node(name, pool, ip, cidr, key=None):
    ann = {"raven.io/public-key": key} if key else {}
    return {
        "metadata": {
            "name": name,
            "labels": {"apps.openyurt.io/nodepool": pool},
            "annotations": ann,
            "creationTimestamp": f"2024-01-01T00:00:{name[-1]}0Z",
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


VIEW = cluster_view(
    [
        node("cloud-1", "cloud", "198.18.0.12", "10.244.1.0/24", KEY_R),
        node("edge-a-1", "edge-a", "192.168.10.10", "10.244.11.0/24", KEY_A),
        node("edge-a-2", "edge-a", "192.168.10.11", "10.244.12.0/24"),
        node("edge-b-1", "edge-b", "192.168.20.10", "10.244.21.0/24", KEY_X),
        node("edge-b-2", "edge-b", "192.168.20.11", "10.244.22.0/24"),
    ],
    [{"metadata": {"name": "cloud"}, "spec": {"relay": True}}],
    {
        p: {"spec": {"holderIdentity": h}}
        for p, h in (("cloud", "cloud-1"), ("edge-a", "edge-a-1"), ("edge-b", "edge-b-1"))
    },
)


# ---- the path -----------------------------------------------------------------------------


def test_a_member_to_a_member_of_another_edge_pool_crosses_both_gateways_and_the_relay():
    src, dst = endpoint(VIEW, "10.244.12.2"), endpoint(VIEW, "10.244.22.2")
    path = expected_path(VIEW, src, dst)
    assert [(h.node, h.roles) for h in path.hops] == [
        ("edge-a-2", ("source",)),
        ("edge-a-1", ("gateway",)),
        ("cloud-1", ("relay", "gateway")),
        ("edge-b-1", ("gateway",)),
        ("edge-b-2", ("destination",)),
    ]
    assert [(leg.a, leg.b) for leg in path.legs] == [
        ("edge-a-1", "cloud-1"),
        ("edge-b-1", "cloud-1"),
    ]


def test_from_the_relay_pool_the_relay_is_the_first_gateway():
    path = expected_path(VIEW, endpoint(VIEW, "10.244.1.2"), endpoint(VIEW, "10.244.21.2"))
    assert [h.node for h in path.hops] == ["cloud-1", "edge-b-1"]
    assert path.hops[0].roles == ("source", "relay", "gateway")
    assert [(leg.a, leg.b) for leg in path.legs] == [("edge-b-1", "cloud-1")]


def test_inside_one_pool_raven_is_not_on_the_path():
    path = expected_path(VIEW, endpoint(VIEW, "10.244.21.2"), endpoint(VIEW, "10.244.22.2"))
    assert path.same_pool and path.legs == ()


@pytest.mark.parametrize("ip, message", [("10.99.0.1", "in no node's"), ("nope", "not an IP")])
def test_an_address_outside_every_pool_is_refused(ip, message):
    with pytest.raises(PathError, match=message):
        endpoint(VIEW, ip)


def test_a_pool_without_a_gateway_has_no_path():
    view = dataclasses.replace(VIEW, holders={"cloud": "cloud-1", "edge-a": "edge-a-1"})
    with pytest.raises(PathError, match="pool edge-b has no active gateway"):
        expected_path(
            view,
            Endpoint("10.244.12.2", "edge-a-2", "edge-a"),
            Endpoint("10.244.22.2", "edge-b-2", "edge-b"),
        )


# ---- the collector's output ---------------------------------------------------------------

DUMP = (
    "PRIVATE\tQ3jojb3bQ3jojb3bQ3jojb3bQ3jojb3bQ3jojb3bQ3g=\t51820\toff\n"
    f"{KEY_R}\t(none)\t198.18.0.12:51820\t10.244.1.0/24,10.244.21.0/24\t1700000000\t10\t20\t25\n"
)


def collected(*, wgrc: int = 0, wgproc: str = "311 S wireguard-go rlwg3") -> str:
    links = [
        {"ifname": "eth0", "mtu": 1500, "flags": ["UP"]},
        {"ifname": "rlwg3", "mtu": 1440, "flags": ["UP"], "linkinfo": {"info_kind": "tun"}},
    ]
    addrs = [
        {"ifname": "eth0", "mtu": 1500, "addr_info": [{"local": "192.168.10.10", "prefixlen": 24}]}
    ]
    return "\n".join(
        [
            "@@ now",
            "1700000100",
            "@@ rules",
            json.dumps([{"priority": 9027, "src": "all", "table": "9027"}]),
            "@@ routes",
            json.dumps([{"dst": "10.244.21.0/24", "dev": "rlwg3", "metrics": [{"mtu": 1440}]}]),
            "@@ main",
            json.dumps([{"dst": "10.244.11.2", "dev": "pod0"}]),
            "@@ links",
            json.dumps(links),
            "@@ addrs",
            json.dumps(addrs),
            "@@ sysctl",
            "ip_forward 1",
            "conf/all/rp_filter 0",
            "conf/eth0/forwarding 1",
            "@@ wg",
            DUMP if wgrc == 0 else "",
            f"@@ wgrc {wgrc}",
            "@@ wgproc",
            wgproc,
            "@@ mangle",
            "-A FORWARD -m comment --comment x -j RAVEN-MSS",
            "-A RAVEN-MSS -p tcp -o rlwg3 -j TCPMSS --clamp-mss-to-pmtu",
            "@@ end",
        ]
    )


def test_the_collectors_sections_become_facts():
    f = parse_facts("edge-a-1", "rlwg3", collected())
    assert f.errors == ()
    assert f.now == 1700000100 and f.sysctl_int("ip_forward") == 1
    assert f.links["rlwg3"] == Link("rlwg3", 1440, True, "tun")
    assert f.wg is not None and f.wg.peers[0].endpoint == "198.18.0.12:51820"
    assert f.wg_processes == (WgProcess(311, "S", ("wireguard-go", "rlwg3")),)
    assert f.main_route_dev("10.244.11.2") == "pod0"


def test_a_wg_that_does_not_answer_is_named_not_guessed():
    f = parse_facts("cloud-1", "rlwg3", collected(wgrc=124, wgproc="9 T wireguard-go rlwg3"))
    assert f.wg is None and "no answer within 2 s" in f.wg_error


def test_a_collector_cut_short_is_an_error():
    assert parse_facts("x", "rlwg3", "@@ now\n1\n").errors


# ---- the checks, one table per fault kind's evidence -------------------------------------

GW = DesiredState(
    role=Role.GATEWAY,
    routes=(RouteSpec("10.244.21.0/24", dev="rlwg3", mtu=1440),),
    rules=(RuleSpec(),),
    peers=(PeerSpec(KEY_R, ("10.244.1.0/24", "10.244.21.0/24"), "198.18.0.12:51820", 25),),
    forwarding=True,
    listen_port=51820,
    tunnel_mtu=1440,
)
FACTS = parse_facts("edge-a-1", "rlwg3", collected())


def facts(**changes):
    return dataclasses.replace(FACTS, **changes)


def sysctl(**extra):
    return {**FACTS.sysctl, **{k.replace("__", "/"): v for k, v in extra.items()}}


VXLAN = VxlanSpec("rlvx3", local="192.168.11.10")
OVERLAP = Problem(
    "Node",
    "edge-a-overlap",
    "spec.podCIDRs",
    "PodCIDROverlap",
    "10.244.21.0/25 overlaps 10.244.21.0/24 of node edge-b-1 (pool edge-b); pool"
    " edge-a does not route 10.244.21.0/24",
    ("edge-a",),
)

CASES = [
    # (name, check function, arguments, expected status, expected check name, evidence snippet)
    (
        "healthy forwarding",
        checks.check_forwarding,
        (FACTS, ["eth0"]),
        Status.OK,
        "forwarding",
        "on",
    ),
    (
        "ip_forward off",
        checks.check_forwarding,
        (facts(sysctl=sysctl(ip_forward="0")), ["eth0"]),
        Status.WRONG,
        "forwarding",
        "ip_forward is 0",
    ),
    (
        "forwarding off on an interface (lab break forwarding)",
        checks.check_forwarding,
        (facts(sysctl=sysctl(conf__eth0__forwarding="0")), ["eth0"]),
        Status.WRONG,
        "forwarding",
        "net.ipv4.conf.eth0.forwarding=0",
    ),
    (
        "strict rp_filter over VXLAN (lab break rp-filter)",
        checks.check_rp_filter,
        (
            facts(sysctl=sysctl(conf__eth0__rp_filter="1")),
            dataclasses.replace(GW, vxlan=VXLAN),
            "eth0",
        ),
        Status.WRONG,
        "rp_filter",
        "strict",
    ),
    (
        "strict rp_filter without VXLAN is harmless",
        checks.check_rp_filter,
        (facts(sysctl=sysctl(conf__all__rp_filter="1")), GW, "eth0"),
        Status.OK,
        "rp_filter",
        "all=1",
    ),
    (
        "loose rp_filter over VXLAN",
        checks.check_rp_filter,
        (
            facts(sysctl=sysctl(conf__all__rp_filter="2")),
            dataclasses.replace(GW, vxlan=VXLAN),
            "eth0",
        ),
        Status.OK,
        "rp_filter",
        "all=2",
    ),
    (
        "route as planned",
        checks.check_route,
        (FACTS, GW, "10.244.21.2"),
        Status.OK,
        "route",
        "rlwg3",
    ),
    (
        "route missing from the table",
        checks.check_route,
        (facts(routes=()), GW, "10.244.21.2"),
        Status.WRONG,
        "route",
        "has no route",
    ),
    (
        "route with another MTU",
        checks.check_route,
        (
            facts(routes=({"dst": "10.244.21.0/24", "dev": "rlwg3", "metrics": [{"mtu": 1500}]},)),
            GW,
            "10.244.21.2",
        ),
        Status.WRONG,
        "route",
        "mtu 1500",
    ),
    (
        "a CIDR refused for overlapping (lab break overlap)",
        checks.check_route,
        (FACTS, dataclasses.replace(GW, routes=(), problems=(OVERLAP,)), "10.244.21.2"),
        Status.WRONG,
        "pod-cidr",
        "edge-a-overlap",
    ),
    (
        "rule missing",
        checks.check_rule,
        (facts(rules=()), GW),
        Status.WRONG,
        "rule",
        "no policy rule",
    ),
    (
        "wireguard-go stopped (lab break relay-wg)",
        checks.check_wireguard,
        (
            facts(
                wg=None,
                wg_error="no answer",
                wg_processes=(WgProcess(9, "T", ("wireguard-go", "rlwg3")),),
            ),
            GW,
        ),
        Status.WRONG,
        "wireguard-go",
        "pid 9) is stopped",
    ),
    (
        "no device",
        checks.check_wireguard,
        (facts(wg=None, wg_error="no such device"), GW),
        Status.WRONG,
        "wireguard",
        "no such device",
    ),
    (
        "device MTU off plan",
        checks.check_wireguard,
        (facts(links={**FACTS.links, "rlwg3": Link("rlwg3", 1420, True, "tun")}), GW),
        Status.WRONG,
        "mtu",
        "1420, planned 1440",
    ),
    ("healthy device", checks.check_wireguard, (FACTS, GW), Status.OK, "wireguard", "port 51820"),
    (
        "peer carries the destination",
        checks.check_peer,
        (FACTS, GW, "10.244.21.2"),
        Status.OK,
        "peer",
        "carries",
    ),
    (
        "peer without the destination",
        checks.check_peer,
        (FACTS, GW, "10.244.22.2"),
        Status.WRONG,
        "peer",
        "no WireGuard peer is planned",
    ),
    ("MSS clamp in place", checks.check_mss, (FACTS,), Status.OK, "mss", "clamped"),
    ("MSS clamp missing", checks.check_mss, (facts(mangle=()),), Status.WRONG, "mss", "no TCP MSS"),
    (
        "API server through a neighbour (lab break api)",
        checks.check_api,
        ({"raven.io/heartbeat-via": "edge-a-1"}, "True"),
        Status.WARN,
        "api-server",
        "through edge-a-1",
    ),
    ("API server direct", checks.check_api, ({}, "True"), Status.OK, "api-server", "reaches"),
]


@pytest.mark.parametrize("name, fn, args, status, check, snippet", CASES, ids=[c[0] for c in CASES])
def test_each_check_judges_its_evidence(name, fn, args, status, check, snippet):
    if fn is checks.check_api:
        finding = fn("edge-a-2", *args)
    else:
        finding = fn("edge-a-1", *args)
    assert (finding.status, finding.check) == (status, check), finding
    assert snippet in finding.evidence, finding.evidence


# ---- a tunnel's checks -----------------------------------------------------------------------


def device(key, peers):
    return DeviceStatus(public_key=key, listen_port=51820, fwmark=0, peers=tuple(peers))


def peer(key, handshake, endpoint="198.18.0.10:51820"):
    return PeerStatus(key, endpoint, ("10.244.0.0/16",), handshake, 1, 1, 25)


EDGE = facts(wg=device(KEY_A, [peer(KEY_R, 1700000090)]))
RELAY = dataclasses.replace(facts(wg=device(KEY_R, [peer(KEY_A, 1700000090)])), node="cloud-1")


@pytest.mark.parametrize(
    "name, edge, relay, annotations, status, check, node",
    [
        (
            "healthy",
            EDGE,
            RELAY,
            {"edge-a-1": KEY_A, "cloud-1": KEY_R},
            Status.OK,
            "public-key",
            "",
        ),
        (
            "the edge's annotation is not its key (lab break bad-key)",
            EDGE,
            RELAY,
            {"edge-a-1": KEY_X, "cloud-1": KEY_R},
            Status.WRONG,
            "public-key",
            "edge-a-1",
        ),
    ],
)
def test_a_tunnels_ends_peer_with_the_keys_the_devices_hold(
    name, edge, relay, annotations, status, check, node
):
    f = checks.check_leg_keys(
        "t",
        "edge-a-1",
        "cloud-1",
        {"edge-a-1": edge, "cloud-1": relay},
        {"edge-a-1": GW, "cloud-1": GW},
        annotations,
    )
    assert (f.status, f.check, f.node if f.status is Status.WRONG else "") == (status, check, node)


@pytest.mark.parametrize(
    "handshake, status, snippet",
    [
        (1700000090, Status.OK, "10 s ago"),
        (0, Status.WRONG, "never"),
        (1700000100 - 400, Status.WRONG, "400 s ago"),
    ],
)
def test_handshake_age(handshake, status, snippet):
    edge = facts(wg=device(KEY_A, [peer(KEY_R, handshake)]))
    f = checks.check_handshake("t", "edge-a-1", "cloud-1", {"edge-a-1": edge, "cloud-1": RELAY})
    assert f.status is status and snippet in f.evidence, f


# ---- probes ----------------------------------------------------------------------------------


def udp_seen(*sizes):
    return CaptureResult(
        tuple(Seen("eth0", False, s, "198.18.0.10", "198.18.0.12", 51820, "udp") for s in sizes)
    )


@pytest.mark.parametrize(
    "name, seen, status, check",
    [
        ("everything arrives", udp_seen(100, 1400, 1500), Status.OK, "tunnel-udp"),
        ("nothing arrives (lab break nat-udp)", udp_seen(), Status.WRONG, "tunnel-udp"),
        ("small ones only (lab break mtu)", udp_seen(100, 1280, 1400), Status.WRONG, "path-mtu"),
        ("no capture", CaptureResult(error="cannot capture"), Status.OK, "tunnel-udp"),
    ],
)
def test_tunnel_udp_probes(name, seen, status, check):
    f = checks.judge_leg_udp("t", "edge-a-1", "cloud-1", (100, 1400, 1500), seen, needed=1500)
    assert (f.status, f.check) == (status, check), f


@pytest.mark.parametrize(
    "replies, status, check",
    [
        (
            (EchoReply(84, "reply", rtt_ms=1.0), EchoReply(1440, "reply", rtt_ms=1.0)),
            Status.OK,
            "echo",
        ),
        ((EchoReply(84, "lost"), EchoReply(1440, "lost")), Status.WRONG, "echo"),
        ((EchoReply(84, "reply", rtt_ms=1.0), EchoReply(1440, "lost")), Status.WRONG, "path-mtu"),
    ],
)
def test_end_to_end_echoes(replies, status, check):
    f = checks.judge_echo("x", replies)
    assert (f.status, f.check) == (status, check)


def test_a_trace_names_the_first_node_the_echo_never_reached():
    def saw(*sightings):
        return CaptureResult(
            tuple(Seen(i, o, 84, "a", "b", kind="echo-request") for i, o in sightings)
        )

    seen = {
        "edge-a-2": saw(("eth0", True)),
        "edge-a-1": saw(("eth0", False), ("rlwg3", True)),
        "cloud-1": CaptureResult(),
        "edge-b-1": CaptureResult(),
    }
    stations = [
        ("edge-a-2", "source"),
        ("edge-a-1", "gateway"),
        ("cloud-1", "relay"),
        ("edge-b-1", "gateway"),
    ]
    f = checks.judge_trace(stations, seen)
    assert f is not None and (f.node, f.check) == ("cloud-1", "arrival")
    assert "left edge-a-1 (out of rlwg3)" in f.evidence
    stuck = {**seen, "edge-a-1": saw(("eth0", False))}
    f = checks.judge_trace(stations, stuck)
    assert f is not None and f.node == "edge-a-1" and "not sent on" in f.evidence


def test_probe_requests_travel_as_json():
    echo = Echo("10.244.12.1", "10.244.22.2", (84, 1440), 7)
    assert from_json(to_json(echo)) == echo


def test_the_collector_runs_with_a_posix_shell_here_and_parses_whole():
    # Raven's table does not exist here and no wireguard-go serves the device: both read as
    # nothing, never as a broken section.
    import subprocess

    from raven.diagnose.facts import COLLECT_SCRIPT

    out = subprocess.run(
        ["sh", "-c", COLLECT_SCRIPT],
        env={"WG": "rvnotadev0", "TABLE": "9027", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    f = parse_facts("here", "rvnotadev0", out)
    assert f.errors == ()
    assert f.routes == () and f.wg is None and f.wg_processes == ()
    assert f.sysctl_int("ip_forward") in (0, 1) and "lo" in f.links
