"""What `raven lab break` plans for each kind (pure: actions as values, nothing carried out), its
default targets, and how undo records survive lab.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from raven.lab.breaks import (
    Annotate,
    BreakError,
    CreateNode,
    Facts,
    Iptables,
    Mtu,
    Signal,
    Sysctl,
    from_record,
    plan_break,
    to_record,
)
from raven.lab.topology import load_topology_file, resolve

LABS = Path(__file__).resolve().parents[2] / "netns-lab"
FACTS = Facts(
    holders={"cloud": "cloud-2", "edge-a": "edge-a-1", "edge-b": "edge-b-1"},
    relay="cloud",
    wireguard_go={"cloud-2": (4242, 77)},
    agents={f"edge-b-{i}": (100 + i, 7) for i in (1, 2, 3)},
    new_key="p72suYx1NIa5mjDJeJrlGu+t8OvpGwrw1e2EWtZXEWo=",
)


@pytest.fixture
def lab():
    return resolve(load_topology_file(LABS / "three-pools.yaml"), "rl")


@pytest.fixture
def routed():
    return resolve(load_topology_file(LABS / "routed-lan.yaml"), "rl")


CASES = {
    "nat-udp": (
        "edge-a",
        (
            Iptables(
                "rl-edge-a-nat",
                "RL-BRKUDP",
                ("FORWARD",),
                (
                    ("-p", "udp", "--dport", "51820", "-j", "DROP"),
                    ("-p", "udp", "--sport", "51820", "-j", "DROP"),
                ),
            ),
        ),
    ),
    "mtu": (
        "edge-a",
        (
            Iptables(
                "rl-edge-a-nat",
                "RL-BRKMTU",
                ("OUTPUT", "FORWARD"),
                (("-p", "icmp", "--icmp-type", "fragmentation-needed", "-j", "DROP"),),
            ),
            Mtu("rl-edge-a-nat", "eth0", 1400),
        ),
    ),
    "forwarding": (
        "edge-a-1",
        tuple(
            Sysctl("rl-edge-a-1", f"net.ipv4.conf.{d}.forwarding", "0")
            for d in ("eth0", "pod0", "rlwg3")
        ),
    ),
    "relay-wg": ("cloud-2", (Signal(4242, 77, "STOP", "wireguard-go rlwg1"),)),
    "bad-key": (
        "edge-b-1",
        (
            Signal(101, 7, "STOP", "agent of edge-b-1"),
            Signal(102, 7, "STOP", "agent of edge-b-2"),
            Signal(103, 7, "STOP", "agent of edge-b-3"),
            Annotate("edge-b-1", "raven.io/public-key", FACTS.new_key),
        ),
    ),
    "api": (
        "edge-a-3",
        (
            Iptables(
                "rl-edge-a-3",
                "RL-BRKAPI",
                ("OUTPUT",),
                (("-d", "198.18.0.2", "-p", "tcp", "--dport", "6443", "-j", "DROP"),),
            ),
        ),
    ),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_kind_plans_its_actions_at_its_default_target(lab, kind):
    target, actions = CASES[kind]
    plan = plan_break(lab, kind, None, FACTS)
    assert (plan.target, plan.actions) == (target, actions)


def test_an_overlap_is_a_new_node_of_the_pool_claiming_half_of_another_pools_cidr(lab):
    plan = plan_break(lab, "overlap", None, FACTS)
    assert plan.target == "edge-b"
    (create,) = plan.actions
    assert isinstance(create, CreateNode)
    assert create.body["metadata"] == {
        "name": "edge-b-overlap",
        "labels": {"apps.openyurt.io/nodepool": "edge-b"},
    }
    assert create.body["spec"]["podCIDRs"] == ["10.244.11.0/25"]


def test_strict_rp_filter_goes_on_a_member_off_its_gateways_segment(routed):
    plan = plan_break(routed, "rp-filter", None, FACTS)
    assert plan.target == "edge-a-3"
    assert plan.actions == (
        Sysctl("rl-edge-a-3", "net.ipv4.conf.all.rp_filter", "1"),
        Sysctl("rl-edge-a-3", "net.ipv4.conf.eth0.rp_filter", "1"),
    )


@pytest.mark.parametrize(
    "kind, target, message",
    [
        ("rp-filter", None, "no routed pool"),
        ("nat-udp", "cloud", "not a pool behind a NAT router"),
        ("forwarding", "edge-z-1", "no such lab node"),
        ("melt", None, "no such fault kind"),
    ],
)
def test_refusals_name_what_there_is(lab, kind, target, message):
    with pytest.raises(BreakError, match=message):
        plan_break(lab, kind, target, FACTS)


def test_a_gateway_default_needs_a_lease_holder(lab):
    with pytest.raises(BreakError, match="no gateway right now"):
        plan_break(lab, "forwarding", None, Facts())


@pytest.mark.parametrize("action", [a for _, actions in CASES.values() for a in actions])
def test_actions_survive_the_state_file(action):
    assert from_record(to_record(action)) == action
