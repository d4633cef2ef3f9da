"""Strict address parsers: what is accepted, in which canonical form, and what is refused with
which message. Everything that reaches a route, ``wg`` or ``ping`` passes through them."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from raven.addresses import (
    AddressError,
    endpoint_hostname,
    parse_endpoint,
    parse_ip,
    parse_pod_cidr,
    parse_port,
    parse_public_key,
)
from raven.model import PeerSpec

ENDPOINTS: dict[str, tuple[str, bool, str]] = {
    # given: (hostname_ok, canonical form)
    "198.18.0.1:51820": (False, "198.18.0.1:51820"),
    "[2001:DB8:0::1]:9": (False, "[2001:db8::1]:9"),
    "relay.example.net:4500": (True, "relay.example.net:4500"),
    "relay.example.net.:4500": (True, "relay.example.net.:4500"),
    "relay:1": (True, "relay:1"),
}


@pytest.mark.parametrize("given", ENDPOINTS)
def test_endpoints_come_back_as_wg_prints_them(given: str) -> None:
    hostname_ok, canonical = ENDPOINTS[given]
    assert parse_endpoint(given, hostname_ok=hostname_ok) == canonical


BAD_ENDPOINTS: dict[str, str] = {
    "198.18.0.1": "must be host:port, got '198.18.0.1'",
    ":51820": "must be host:port, got ':51820'",
    "198.18.0.1:051820": "port must be a number from 1 to 65535 (ASCII digits, no leading zero),"
    " got '198.18.0.1:051820'",
    "198.18.0.1:\u0665\u0661\u0668\u0662\u0660": "port must be a number from 1 to 65535 (ASCII"
    " digits, no leading zero), got '198.18.0.1:\u0665\u0661\u0668\u0662\u0660'",
    "198.18.0.1:+5": "port must be a number from 1 to 65535 (ASCII digits, no leading zero),"
    " got '198.18.0.1:+5'",
    "2001:db8::1:9": "an IPv6 address must be in brackets ([addr]:port), got '2001:db8::1:9'",
    "[198.18.0.1]:9": "only an IPv6 address goes in brackets, got '[198.18.0.1]:9'",
    "0.0.0.0:9": "0.0.0.0 is the unspecified address, which no peer can have, got '0.0.0.0:9'",
    "224.0.0.1:9": "224.0.0.1 is a multicast address, which no peer can have, got '224.0.0.1:9'",
    "[fe80::1]:9": "fe80::1 is a link-local address, which no peer can have, got '[fe80::1]:9'",
    "1.2.3:9": "1.2.3 is not a valid IPv4 address, got '1.2.3:9'",
    "relay.example:9": "must be an IP address and a port (no host name), got 'relay.example:9'",
}


@pytest.mark.parametrize("given", BAD_ENDPOINTS)
def test_bad_endpoints_are_refused_saying_why(given: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_endpoint(given, hostname_ok=False)
    assert str(caught.value) == BAD_ENDPOINTS[given]


@pytest.mark.parametrize(
    "host", ["bad_host", "-a.example", "a..example", "0x7f000001", "relay.123", "r\u00e9lay", ""]
)
def test_host_names_a_resolver_could_misread_are_refused(host: str) -> None:
    with pytest.raises(AddressError):
        parse_endpoint(f"{host}:9", hostname_ok=True)


@pytest.mark.parametrize(
    "value,port", [(1, 1), (65535, 65535), ("51820", 51820)]
)  # fmt: skip
def test_ports(value: Any, port: int) -> None:
    assert parse_port(value) == port


@pytest.mark.parametrize("value", [0, 65536, True, "0", "051820", "5 ", "\uff15", 5.0, None])
def test_bad_ports(value: Any) -> None:
    with pytest.raises(AddressError):
        parse_port(value)


@pytest.mark.parametrize("value", ["10.0.0.1 ", "fe80::1%eth0", "010.0.0.1", 167772161, None])
def test_ip_literals_only(value: Any) -> None:
    with pytest.raises(AddressError, match="not an IP address"):
        parse_ip(value)


POD_CIDRS: dict[str, str] = {
    "0.0.0.0/0": "0.0.0.0/0 is too wide for one node's pods (the prefix must be /8 or longer)",
    "10.0.0.0/7": "10.0.0.0/7 is too wide for one node's pods (the prefix must be /8 or longer)",
    "fd00::/31": "fd00::/31 is too wide for one node's pods (the prefix must be /32 or longer)",
    "0.1.0.0/16": "0.1.0.0/16 overlaps 0.0.0.0/8, the unspecified 'this network' range",
    "127.1.0.0/16": "127.1.0.0/16 overlaps 127.0.0.0/8, loopback",
    "169.254.1.0/24": "169.254.1.0/24 overlaps 169.254.0.0/16, link-local",
    "239.0.0.0/8": "239.0.0.0/8 overlaps 224.0.0.0/4, multicast",
    "255.255.255.0/24": "255.255.255.0/24 overlaps 240.0.0.0/4, the reserved and broadcast range",
    "::ffff:10.0.0.0/104": "::ffff:a00:0/104 overlaps ::/8, the reserved range holding"
    " unspecified, loopback and IPv4-mapped addresses",
    "fe80::/64": "fe80::/64 overlaps fe80::/10, link-local",
    "ff02::/64": "ff02::/64 overlaps ff00::/8, multicast",
    "10.244.1.0": "not a CIDR, got '10.244.1.0'",
    "10.244.1.0/33": "not a CIDR, got '10.244.1.0/33'",
    "10.244.1.0/24\n": "not a CIDR, got '10.244.1.0/24\\n'",
}


@pytest.mark.parametrize("given", POD_CIDRS)
def test_absurd_pod_cidrs_are_refused(given: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_pod_cidr(given)
    assert str(caught.value) == POD_CIDRS[given]


def test_pod_cidrs_are_normalised() -> None:
    assert str(parse_pod_cidr("10.244.1.7/24")) == "10.244.1.0/24"
    assert str(parse_pod_cidr("FD00:1::/64")) == "fd00:1::/64"


def test_public_keys_must_be_canonical() -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    assert parse_public_key(key) == key
    # The same 32 bytes with the unused low bits of the last digit set: WireGuard prints the
    # canonical form, so this spelling would never compare equal.
    same_bytes = key[:-2] + chr(ord(key[-2]) + 1) + "="
    assert base64.b64decode(same_bytes) == bytes(range(32))
    with pytest.raises(AddressError):
        parse_public_key(same_bytes)


def test_a_peer_says_which_endpoint_needs_resolving() -> None:
    assert endpoint_hostname("relay.example:4500") == "relay.example"
    assert endpoint_hostname("198.18.0.1:4500") is None
    assert endpoint_hostname("[2001:db8::1]:4500") is None
    assert PeerSpec("k", endpoint="relay.example:4500").endpoint_hostname == "relay.example"
    assert PeerSpec("k", endpoint="198.18.0.1:1").endpoint_hostname is None
    assert PeerSpec("k").endpoint_hostname is None


def test_remembered_parses_answer_as_the_first_and_refusals_are_never_remembered() -> None:
    for parse, good, bad in (
        (parse_ip, "10.1.2.3", "10.1.2.300"),
        (parse_pod_cidr, "10.244.1.7/24", "0.0.0.0/0"),
    ):
        assert parse(good) == parse(good)
        for _ in range(2):
            with pytest.raises(AddressError):
                parse(bad)
    assert str(parse_pod_cidr("10.244.1.7/24")) == "10.244.1.0/24"
