"""WireGuard device and peers with real wireguard-go in two namespaces joined by a veth."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from gateway.wireguard import WireGuardDevice, WireGuardError, find_wireguard_go
from raven.model import PeerSpec, RouteSpec, RuleSpec
from raven.netlink.routes import RouteReconciler
from raven.netlink.rules import RuleReconciler
from tests.netns.conftest import sh, unique

PORT = 51820


@dataclass
class Side:
    ns: str
    dev: WireGuardDevice
    underlay: str  # veth address
    tunnel: str  # address on the wg device
    subnet: str  # what the other side routes into its tunnel for us


@pytest.fixture
def pair(make_netns, tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    a_ns, b_ns = make_netns("rvwa"), make_netns("rvwb")
    va, vb = unique("rva"), unique("rvb")
    sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb, ns=a_ns)
    sh("ip", "link", "set", vb, "netns", b_ns, ns=a_ns)
    for ns, dev, addr in ((a_ns, va, "192.168.77.1/24"), (b_ns, vb, "192.168.77.2/24")):
        sh("ip", "addr", "add", addr, "dev", dev, ns=ns)
        sh("ip", "link", "set", dev, "up", ns=ns)
    a = Side(
        a_ns,
        WireGuardDevice(unique("rwga"), state_dir=tmp_path / "a", netns=a_ns),
        "192.168.77.1",
        "10.77.1.1",
        "10.77.1.0/24",
    )
    b = Side(
        b_ns,
        WireGuardDevice(unique("rwgb"), state_dir=tmp_path / "b", netns=b_ns),
        "192.168.77.2",
        "10.77.2.1",
        "10.77.2.0/24",
    )
    try:
        yield a, b
    finally:
        # Stop every wireguard-go this test started, by its PID, before the namespaces go.
        for side in (a, b):
            side.dev.stop()
            assert find_wireguard_go(side.dev.name) is None


def bring_up(side: Side, other: Side, *, endpoint: bool) -> None:
    """Device, address and Raven's table + rule steering the other side's subnet into wg."""
    side.dev.ensure(listen_port=PORT, mtu=1420)
    sh("ip", "addr", "replace", f"{side.tunnel}/32", "dev", side.dev.name, ns=side.ns)
    with IPRoute(netns=side.ns) as ipr:
        RouteReconciler(ipr).reconcile([RouteSpec(other.subnet, dev=side.dev.name, mtu=1420)])
        RuleReconciler(ipr).reconcile([RuleSpec()])


def peer_of(other: Side, *, endpoint: bool, keepalive: int = 0) -> PeerSpec:
    return PeerSpec(
        other.dev.public_key,
        (other.subnet,),
        endpoint=f"{other.underlay}:{PORT}" if endpoint else None,
        persistent_keepalive=keepalive,
    )


def ping(src: Side, dst: Side, *, wait: int = 3) -> bool:
    cmd = [
        "ip",
        "netns",
        "exec",
        src.ns,
        "ping",
        "-q",
        "-c",
        "1",
        "-W",
        str(wait),
        "-I",
        src.tunnel,
        dst.tunnel,
    ]
    return os.spawnvp(os.P_WAIT, cmd[0], cmd) == 0


def test_keys_made_once_with_mode_0600_and_kept_across_restart(pair):
    a, _ = pair
    assert a.dev.ensure(listen_port=PORT, mtu=1420) is True
    key_file = a.dev.keys.path
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public = a.dev.public_key
    assert a.dev.dump().public_key == public and a.dev.dump().listen_port == PORT
    assert a.dev.pid is not None
    # A second ensure changes nothing; a new object (restarted agent) keeps the same key.
    calls = a.dev.wg_set_calls
    assert a.dev.ensure(listen_port=PORT, mtu=1420) is False and a.dev.wg_set_calls == calls
    again = WireGuardDevice(a.dev.name, state_dir=a.dev.state_dir, netns=a.ns)
    assert again.public_key == public
    assert again.ensure(listen_port=PORT, mtu=1420) is False
    # Restart of wireguard-go: new process, same key, the device comes back configured.
    old_pid = again.pid
    again.restart(listen_port=PORT, mtu=1420)
    assert again.pid not in (None, old_pid)
    assert again.dump().public_key == public
    link = again.link()
    assert link is not None and link["mtu"] == 1420 and "UP" in link["flags"]
    assert key_file.read_text().strip() not in repr(again.keys)


def test_tunnel_carries_ping_and_peers_reconcile_minimally(pair):
    a, b = pair
    bring_up(a, b, endpoint=True)
    bring_up(b, a, endpoint=False)
    # A dials B; B has no endpoint for A and must learn it from the handshake.
    a_peers = [peer_of(b, endpoint=True, keepalive=5)]
    b_peers = [peer_of(a, endpoint=False)]
    # B first: A's keepalive starts a handshake at once, which B must already accept.
    assert b.dev.reconcile_peers(b_peers).added == [a.dev.public_key]
    assert a.dev.reconcile_peers(a_peers).added == [b.dev.public_key]
    assert ping(a, b) and ping(b, a)

    learned = b.dev.dump().peer(a.dev.public_key)
    assert learned is not None and learned.endpoint == f"{a.underlay}:{PORT}"
    assert learned.latest_handshake > 0 and learned.rx_bytes > 0 and learned.tx_bytes > 0
    assert learned.allowed_ips == (a.subnet,)

    # Nothing to change: no `wg set` on either side, and B keeps the learned endpoint.
    calls = (a.dev.wg_set_calls, b.dev.wg_set_calls)
    assert a.dev.reconcile_peers(a_peers).empty and b.dev.reconcile_peers(b_peers).empty
    assert (a.dev.wg_set_calls, b.dev.wg_set_calls) == calls
    assert b.dev.dump().peer(a.dev.public_key).endpoint == f"{a.underlay}:{PORT}"

    # One attribute changes: one `wg set`, the learned endpoint still kept.
    wider = [PeerSpec(a.dev.public_key, (a.subnet, "10.78.0.0/16"))]
    assert b.dev.reconcile_peers(wider).updated == [a.dev.public_key]
    assert b.dev.wg_set_calls == calls[1] + 1
    now = b.dev.dump().peer(a.dev.public_key)
    assert now.allowed_ips == ("10.77.1.0/24", "10.78.0.0/16")
    assert now.endpoint == f"{a.underlay}:{PORT}"
    assert ping(b, a)

    # Removing the peer from the desired set removes it, and the tunnel stops carrying.
    assert b.dev.reconcile_peers([]).removed == [a.dev.public_key]
    assert b.dev.dump().peers == ()
    assert not ping(a, b, wait=1)


def test_bad_peer_refused_without_wg_set(pair):
    a, _ = pair
    a.dev.ensure()
    with pytest.raises(WireGuardError, match="not-a-key"):
        a.dev.reconcile_peers([PeerSpec("not-a-key", ("10.1.0.0/16",))])
    good = a.dev.public_key  # any valid key will do for a shape check
    with pytest.raises(WireGuardError, match="10.1.0.0/99"):
        a.dev.reconcile_peers([PeerSpec(good, ("10.1.0.0/99",))])
    with pytest.raises(WireGuardError, match="endpoint"):
        a.dev.reconcile_peers([PeerSpec(good, (), endpoint="10.0.0.1")])
    assert a.dev.wg_set_calls == 1  # only the private key/port at ensure()


def test_existing_non_wireguard_interface_is_refused(pair, tmp_path):
    a, _ = pair
    name = unique("rvd")
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", unique("rve"), ns=a.ns)
    dev = WireGuardDevice(name, state_dir=tmp_path / "x", netns=a.ns)
    with pytest.raises(WireGuardError, match="not a WireGuard device"):
        dev.ensure()
    assert dev.pid is None and dev.link() is not None  # the foreign link is left alone
    assert dev.teardown(remove_keys=True) is False and dev.link() is not None
