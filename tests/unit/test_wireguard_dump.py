"""Parsing `wg show IF dump` and planning `wg set` arguments (pure; no namespace needed)."""

from __future__ import annotations

import pytest

from gateway.dump import DeviceStatus, PeerStatus, WireGuardError, parse_dump
from gateway.keys import BadKey, public_key_of
from gateway.wireguard import peer_args
from raven.model import PeerSpec

PRIV = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
PUB = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
P1 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
P2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="

DUMP = (
    f"{PRIV}\t{PUB}\t51820\toff\n"
    f"{P1}\t(none)\t192.168.77.2:51820\t10.77.2.0/24,10.1.0.0/16\t1700000000\t1234\t5678\t25\n"
    f"{P2}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
)


def test_parse_dump_drops_the_private_key():
    status = parse_dump(DUMP)
    assert status == DeviceStatus(
        public_key=PUB,
        listen_port=51820,
        fwmark=0,
        peers=(
            PeerStatus(P2, None, (), 0, 0, 0, 0),
            PeerStatus(
                P1,
                "192.168.77.2:51820",
                ("10.1.0.0/16", "10.77.2.0/24"),
                1700000000,
                1234,
                5678,
                25,
            ),
        ),
    )
    assert PRIV not in repr(status)


def test_known_key_pair():
    assert public_key_of(PRIV) == PUB
    with pytest.raises(BadKey, match="32"):
        public_key_of("AAAA")


def test_peer_args_only_for_differences_and_learned_endpoint_kept():
    status = parse_dump(DUMP)
    same = [
        PeerSpec(P1, ("10.1.0.0/16", "10.77.2.0/24"), None, 25),  # learned endpoint kept
        PeerSpec(P2, ()),
    ]
    args, changes = peer_args(same, status)
    assert args == [] and changes.empty
    args, changes = peer_args([PeerSpec(P1, ("10.77.2.0/24",), "192.168.77.9:51820", 25)], status)
    assert args == [
        "peer", P2, "remove",
        "peer", P1, "allowed-ips", "10.77.2.0/24", "persistent-keepalive", "25",
        "endpoint", "192.168.77.9:51820",
    ]  # fmt: skip
    assert changes.removed == [P2] and changes.updated == [P1] and changes.added == []


def test_peer_args_rejects_bad_input_naming_it():
    status = parse_dump(DUMP)
    with pytest.raises(WireGuardError, match="appears twice"):
        peer_args([PeerSpec(P1), PeerSpec(P1)], status)
    with pytest.raises(WireGuardError, match="host:port"):
        peer_args([PeerSpec(P1, (), "192.168.77.2")], status)
