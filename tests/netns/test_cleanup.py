"""Uninstall removes exactly what Raven added: every trace of it, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyroute2 import IPRoute

from gateway.wireguard import WG_RUN_DIR, WireGuardDevice, find_wireguard_go, process_alive
from raven.model import RAVEN_RTPROTO, PeerSpec, RouteSpec, RuleSpec
from raven.netlink.cleanup import cleanup
from raven.netlink.mss import MssClamp
from raven.netlink.routes import RouteReconciler
from raven.netlink.rules import RuleReconciler
from tests.netns.conftest import settle_links, sh, unique


def snapshot(ns: str) -> dict[str, object]:
    return {
        "routes4": sh("ip", "route", "show", "table", "all", ns=ns),
        "routes6": sh("ip", "-6", "route", "show", "table", "all", ns=ns),
        "rules4": sh("ip", "rule", ns=ns),
        "rules6": sh("ip", "-6", "rule", ns=ns),
        "links": sorted(
            line.split(":")[1].strip() for line in sh("ip", "-o", "link", ns=ns).splitlines()
        ),
        "iptables": [x for x in sh("iptables-save", ns=ns).splitlines() if not x.startswith("#")],
        "forward": sh("cat", "/proc/sys/net/ipv4/ip_forward", ns=ns),
    }


@pytest.fixture
def node(netns: str) -> str:
    sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1", ns=netns)
    for dev in ("v0", "v1"):
        sh("ip", "link", "set", dev, "up", ns=netns)
    sh("ip", "addr", "add", "10.9.0.1/24", "dev", "v0", ns=netns)
    # What a CNI and an operator might have: routes (one in our table, one with our proto in
    # main), a rule at our priority, a mangle rule.
    sh("ip", "route", "add", "10.60.0.0/16", "via", "10.9.0.2", "table", "100", ns=netns)
    sh("ip", "route", "add", "10.61.0.0/16", "dev", "v0", "table", "9027", ns=netns)
    sh(
        "ip",
        "route",
        "add",
        "10.62.0.0/16",
        "via",
        "10.9.0.3",
        "proto",
        str(RAVEN_RTPROTO),
        ns=netns,
    )
    sh("ip", "rule", "add", "priority", "9027", "from", "10.1.0.0/16", "lookup", "100", ns=netns)
    sh("iptables", "-t", "mangle", "-A", "FORWARD", "-p", "udp", "-j", "ACCEPT", ns=netns)
    settle_links(netns)  # the kernel's own IPv6 set-up is done before the test looks
    return netns


def test_cleanup_removes_exactly_what_was_added(node, tmp_path: Path):
    before = snapshot(node)
    wg_name = unique("rwgc")
    dev = WireGuardDevice(wg_name, state_dir=tmp_path, netns=node)
    try:
        dev.ensure(listen_port=51821, mtu=1420)
        dev.reconcile_peers([PeerSpec(dev.public_key, ("10.70.0.0/16",), "10.9.0.2:51820", 25)])
        with IPRoute(netns=node) as ipr:
            RouteReconciler(ipr).reconcile(
                [
                    RouteSpec("10.50.0.0/16", gateway="10.9.0.2", dev="v0", mtu=1400),
                    RouteSpec("10.70.0.0/16", dev=wg_name, mtu=1420),
                    RouteSpec("fd00:70::/64", dev=wg_name),
                ]
            )
            RuleReconciler(ipr).reconcile([RuleSpec(), RuleSpec(family=6)])
        MssClamp(netns=node).ensure(wg_name)
        pid = dev.pid
        assert pid is not None and snapshot(node) != before

        # As `raven-agent --cleanup` would: a fresh process knows only names and the state dir.
        with IPRoute(netns=node) as ipr:
            report = cleanup(
                ipr,
                mss=MssClamp(netns=node),
                wireguard=WireGuardDevice(wg_name, state_dir=tmp_path, netns=node),
            )
        assert report.failures == {}
        assert report.routes_deleted == 3 and report.rules_deleted == 2
        assert report.mss_removed and report.wireguard_removed
        assert snapshot(node) == before
        assert find_wireguard_go(wg_name) is None and not process_alive(pid)
        assert not (WG_RUN_DIR / f"{wg_name}.sock").exists()
        assert not (tmp_path / "wireguard.key").exists()

        # A second cleanup finds nothing and changes nothing.
        with IPRoute(netns=node) as ipr:
            again = cleanup(
                ipr,
                mss=MssClamp(netns=node),
                wireguard=WireGuardDevice(wg_name, state_dir=tmp_path, netns=node),
            )
        assert (again.routes_deleted, again.rules_deleted) == (0, 0)
        assert not again.mss_removed and not again.wireguard_removed
        assert snapshot(node) == before
    finally:
        dev.stop()
