"""Gateway beacons: only the holder's own, fresh, for our pool, from its InternalIP count."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.beacon import (
    BadBeacon,
    Beacon,
    Peer,
    Receiver,
    decode,
    encode,
    pair_key,
)
from tests.unit.agentkit import IP, KEY, PRIVATE

A1 = Peer(KEY["a1"], IP["a1"])


def receiver(name: str = "a2") -> Receiver:
    r = Receiver(private_key=PRIVATE[name])
    r.expect("edge-a", {"a1": A1, "a3": Peer(KEY["a3"], IP["a3"])})
    return r


def sent(counter: int, *, fit: bool = True, pool: str = "edge-a", to: str = "a2") -> bytes:
    return encode(Beacon(pool, "a1", counter, fit), pair_key(PRIVATE["a1"], KEY[to]))


def test_both_ends_derive_the_same_key_and_nobody_else_does() -> None:
    assert pair_key(PRIVATE["a1"], KEY["a2"]) == pair_key(PRIVATE["a2"], KEY["a1"])
    assert pair_key(PRIVATE["a1"], KEY["a2"]) != pair_key(PRIVATE["a3"], KEY["a2"])


def test_a_genuine_beacon_is_heard_with_its_time() -> None:
    r = receiver()
    assert r.accept(sent(1), IP["a1"], now=10.0) == Beacon("edge-a", "a1", 1, True)
    assert r.fit_at == {"a1": 10.0}


NOT_GENUINE = [
    (
        "forged: made with another node's key",
        encode(Beacon("edge-a", "a1", 5, True), pair_key(PRIVATE["a3"], KEY["a2"])),
        IP["a1"],
    ),
    ("from another address than the sender's InternalIP", sent(5), "192.168.1.99"),
    ("for another pool", sent(5, pool="edge-b"), IP["a1"]),
    ("addressed to another candidate", sent(5, to="a3"), IP["a1"]),
    ("truncated", sent(5)[:-3], IP["a1"]),
    ("garbage", b"RVB1" + bytes(40), IP["a1"]),
]


@pytest.mark.parametrize(
    ("what", "data", "source"), NOT_GENUINE, ids=[case[0] for case in NOT_GENUINE]
)
def test_a_beacon_that_is_not_genuine_is_dropped(what: str, data: bytes, source: str) -> None:
    r = receiver()
    assert r.accept(data, source, now=1.0) is None, what
    assert r.fit_at == {}


def test_a_replayed_or_reordered_beacon_is_dropped() -> None:
    r = receiver()
    assert r.accept(sent(7), IP["a1"], now=1.0) is not None
    assert r.accept(sent(7), IP["a1"], now=2.0) is None  # the same one again
    assert r.accept(sent(6), IP["a1"], now=3.0) is None  # an older one
    assert r.fit_at == {"a1": 1.0}


def test_an_unfit_beacon_counts_as_silence() -> None:
    r = receiver()
    r.accept(sent(1), IP["a1"], now=1.0)
    r.accept(sent(2, fit=False), IP["a1"], now=2.0)
    assert "a1" not in r.fit_at


def test_a_new_pool_forgets_what_was_heard() -> None:
    r = receiver()
    r.accept(sent(1), IP["a1"], now=1.0)
    r.expect("edge-b", {})
    assert r.fit_at == {}


def test_decode_names_what_is_wrong() -> None:
    beacon, body, mac = decode(sent(3))
    assert beacon.counter == 3 and len(mac) == 16 and body.startswith(b"RVB1")
    with pytest.raises(BadBeacon, match="not a Raven beacon"):
        decode(b"XXXX" + sent(3)[4:])
    with pytest.raises(BadBeacon, match="trailing"):
        decode(sent(3) + b"x")
    assert dataclasses.replace(beacon, fit=False) != beacon
