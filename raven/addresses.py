"""Strict parsers for the addresses Raven reads from Kubernetes objects. Pure, no I/O.

Everything that ends up in a route, a ``wg`` argument or a ``ping`` passes through here first:
IP literals, ports, ``host:port`` endpoints, WireGuard public keys and pod CIDRs. Each parser
takes any JSON value and either returns a canonical value (so two spellings of one address
compare equal, and what is sent to ``wg`` is what ``wg show`` prints back) or raises
:class:`AddressError`, whose text says what is wrong and shows what was given.

An agent reads every Node of the cluster again each time it plans, so the parses of strings
are remembered (bounded, per process: every simulated agent of a benchmark worker shares
them). Only accepted values are remembered; a refused one is parsed again, and raises again.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: How many distinct strings each parser remembers (a few per Node of the cluster).
PARSE_CACHE = 1 << 17

#: The shortest prefix a node's pod CIDR may have, per IP version: wider than this is absurd
#: for one node (Kubernetes gives each node a /24 or a /64 out of a /16 or a /48).
MIN_POD_PREFIX = {4: 8, 6: 32}

#: Ranges no pod CIDR may touch: routing any of them through Raven's table would take the
#: node's own loopback, link-local, multicast or broadcast traffic away.
SPECIAL_RANGES: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.ip_network("0.0.0.0/8"), "the unspecified 'this network' range"),
    (ipaddress.ip_network("127.0.0.0/8"), "loopback"),
    (ipaddress.ip_network("169.254.0.0/16"), "link-local"),
    (ipaddress.ip_network("224.0.0.0/4"), "multicast"),
    (ipaddress.ip_network("240.0.0.0/4"), "the reserved and broadcast range"),
    (ipaddress.ip_network("::/8"), "the reserved range holding unspecified, loopback and"
     " IPv4-mapped addresses"),
    (ipaddress.ip_network("fe80::/10"), "link-local"),
    (ipaddress.ip_network("ff00::/8"), "multicast"),
)  # fmt: skip

_SPECIAL_INTS = tuple(
    (net.version, int(net.network_address), int(net.broadcast_address), net, what)
    for net, what in SPECIAL_RANGES
)
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class AddressError(ValueError):
    """A value is not the address it should be; the text says why and shows the value."""


def parse_ip(value: object) -> IPAddress:
    """An IP address literal: ASCII, no zone (``%eth0``), no spaces; canonical on return."""
    if not isinstance(value, str) or not value.isascii() or "%" in value:
        raise AddressError(f"not an IP address, got {value!r}")
    return _ip(value)


@functools.lru_cache(maxsize=PARSE_CACHE)
def _ip(value: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise AddressError(f"not an IP address, got {value!r}") from None


def unicast_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` cannot be a node's or a tunnel's address, or None when it can."""
    for flag, what in (
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_reserved, "a reserved address"),
    ):
        if flag:
            return f"{ip} is {what}"
    return None


def parse_port(value: object) -> int:
    """A UDP/TCP port: an int, or ASCII digits without leading zeros, from 1 to 65535."""
    if isinstance(value, int) and not isinstance(value, bool):
        port = value
    elif isinstance(value, str) and value.isascii() and _PORT.fullmatch(value):
        port = int(value)
    else:
        raise AddressError(
            f"port must be a number from 1 to 65535 (ASCII digits, no leading zero), got {value!r}"
        )
    if not 1 <= port <= 65535:
        raise AddressError(f"port must be a number from 1 to 65535, got {value!r}")
    return port


def valid_hostname(host: str) -> bool:
    """A DNS name (RFC 1123) that no resolver could take for a numeric address: ASCII labels
    of letters, digits and inner hyphens, at most 253 characters, the last label starting with
    a letter (so ``1.2.3`` or ``0x7f000001`` are refused, not read as IPv4)."""
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    return (
        host.isascii()
        and 0 < len(name) <= 253
        and all(_DNS_LABEL.fullmatch(label) for label in labels)
        and labels[-1][0].isalpha()
    )


def parse_endpoint(value: object, *, hostname_ok: bool) -> str:
    """``host:port`` -> its canonical form (``1.2.3.4:9``, ``[2001:db8::1]:9``, ``name:9``).

    The host is an IPv4 literal, an IPv6 literal in brackets, or (only when ``hostname_ok``) a
    DNS name; an IP must be one a peer can have (not loopback, multicast, link-local, ...).
    """
    if not isinstance(value, str):
        raise AddressError(f"must be host:port, got {value!r}")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise AddressError(f"must be host:port, got {value!r}")
    try:
        port = parse_port(port_text)
    except AddressError:
        raise AddressError(
            f"port must be a number from 1 to 65535 (ASCII digits, no leading zero), got {value!r}"
        ) from None
    bracketed = host.startswith("[") and host.endswith("]")
    literal = host[1:-1] if bracketed else host
    if ":" in literal and not bracketed:
        raise AddressError(f"an IPv6 address must be in brackets ([addr]:port), got {value!r}")
    try:
        ip = parse_ip(literal)
    except AddressError:
        ip = None
    if ip is not None:
        if bracketed != (ip.version == 6):
            raise AddressError(f"only an IPv6 address goes in brackets, got {value!r}")
        why = unicast_problem(ip)
        if why is not None:
            raise AddressError(f"{why}, which no peer can have, got {value!r}")
        return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    if bracketed:
        raise AddressError(f"{literal} is not a valid IPv6 address, got {value!r}")
    if all(part.isascii() and part.isdigit() for part in host.split(".")):
        raise AddressError(f"{host} is not a valid IPv4 address, got {value!r}")
    if not hostname_ok:
        raise AddressError(f"must be an IP address and a port (no host name), got {value!r}")
    if not valid_hostname(host):
        raise AddressError(f"{host} is not a valid DNS name, got {value!r}")
    return f"{host}:{port}"


def endpoint_hostname(endpoint: str) -> str | None:
    """The DNS name in a canonical endpoint, or None when its host is an IP literal."""
    host = endpoint.rpartition(":")[0]
    if host.startswith("["):
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


def parse_public_key(value: object) -> str:
    """A WireGuard public key: canonical base64 of 32 bytes, not all zero. Canonical matters:
    two spellings of one key would be two peers to us and one to WireGuard."""
    if not isinstance(value, str) or not value.isascii():
        raise AddressError(f"not a WireGuard public key (base64 of 32 bytes), got {value!r}")
    return _public_key(value)


@functools.lru_cache(maxsize=PARSE_CACHE)
def _public_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32 or base64.b64encode(raw).decode() != value:
        raise AddressError(f"not a WireGuard public key (base64 of 32 bytes), got {value!r}")
    if raw == bytes(32):
        raise AddressError(f"the all-zero key, which no WireGuard device has, got {value!r}")
    return value


def parse_pod_cidr(value: object) -> IPNetwork:
    """A node's pod CIDR, normalised (host bits cleared). Refused when it is not a CIDR, wider
    than :data:`MIN_POD_PREFIX`, or touches a range in :data:`SPECIAL_RANGES`."""
    if not isinstance(value, str) or not value.isascii() or "/" not in value:
        raise AddressError(f"not a CIDR, got {value!r}")
    return _pod_cidr(value)


@functools.lru_cache(maxsize=PARSE_CACHE)
def _pod_cidr(value: str) -> IPNetwork:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise AddressError(f"not a CIDR, got {value!r}") from None
    minimum = MIN_POD_PREFIX[net.version]
    if net.prefixlen < minimum:
        raise AddressError(
            f"{net} is too wide for one node's pods (the prefix must be /{minimum} or longer)"
        )
    start, end = int(net.network_address), int(net.broadcast_address)
    for version, low, high, special, what in _SPECIAL_INTS:
        if version == net.version and start <= high and low <= end:
            raise AddressError(f"{net} overlaps {special}, {what}")
    return net
