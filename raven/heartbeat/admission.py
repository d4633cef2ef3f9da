"""Who may use this node's relay, and for what: the relay's pure core.

The relay (:mod:`raven.heartbeat.relay`) reads one request head per connection and executes what
:func:`admit` returns; no I/O here, so every refusal is tested with exact inputs. In this order:

1. A head that is not ``METHOD TARGET HTTP/1.x`` → 400.
2. A source address that is not an InternalIP of another member of this node's pool → 403,
   whatever it asked (a stranger learns nothing, not even whether this node reaches the cloud).
3. ``GET /relay`` → this relay's state (:class:`RelayStatus`), 200 while this node reaches the
   cloud, 503 otherwise. Any other method or path → 405 / 404.
4. ``CONNECT host:port`` to anything but the API server's address (the upstream URL's host:port,
   and the addresses that host resolves to) → 403.
5. This node's own path to the API server down → 503: a relay never chains through another.
6. Too many tunnels open, from this source or in all → 429 (:class:`Limits`).

Otherwise :class:`Tunnel`: connect and splice bytes, content-blind (TLS stays end to end).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

MALFORMED, NOT_MEMBER, DESTINATION, NO_CLOUD, TOO_MANY = (
    "malformed",
    "not-member",
    "destination",
    "no-cloud",
    "too-many-tunnels",
)
HEAD_TOO_LARGE, HEAD_TIMEOUT, UPSTREAM = "head-too-large", "head-timeout", "upstream-unreachable"
NOT_FOUND, METHOD = "not-found", "method"
#: Every refusal reason, for metrics (a label value each).
REASONS = (
    MALFORMED,
    NOT_MEMBER,
    DESTINATION,
    NO_CLOUD,
    TOO_MANY,
    HEAD_TOO_LARGE,
    HEAD_TIMEOUT,
    UPSTREAM,
    NOT_FOUND,
    METHOD,
)
STATUS_PATH = "/relay"


@dataclass(frozen=True)
class Limits:
    """The relay's bounds. A tunnel costs two sockets and two small buffers; watches make them
    long-lived, so there is no idle timeout (TCP keepalive finds dead peers instead)."""

    max_head: int = 8192  # bytes of request head; a longer one gets 431
    head_timeout: float = 5.0  # seconds to send the whole head; a slower client is dropped
    connect_timeout: float = 5.0  # seconds to connect to the API server
    max_tunnels: int = 256  # open tunnels in all
    # open tunnels per member: every watch of a node's cache-proxy is a connection of its own
    # (the agent's informers, the heartbeat's, the kubelet's, node components'), so dozens
    max_per_source: int = 64


@dataclass(frozen=True)
class RelayView:
    """What the relay knows of its node and pool; the heartbeat replaces it as things change."""

    node: str = ""
    pool: str = ""
    members: frozenset[str] = frozenset()  # the other members' InternalIPs, normalised
    targets: frozenset[tuple[str, int]] = frozenset()  # the API server's (host, port)s
    reaches_cloud: bool = False  # this node's own direct path is up
    gateway: bool = False  # the local agent says this node is the pool's gateway


@dataclass(frozen=True)
class Head:
    method: str
    target: str
    version: str


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str  # one of REASONS
    message: str  # one line for the client


@dataclass(frozen=True)
class Tunnel:
    host: str
    port: int


@dataclass(frozen=True)
class RelayStatus:
    status: int  # 200 while the node reaches the cloud, else 503
    body: dict[str, object]


def normal_ip(text: str) -> str | None:
    """``text`` as a canonical IP string (IPv4-mapped IPv6 as IPv4), or None if it is none."""
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def parse_head(head: bytes) -> Head | Refusal:
    """The request line of ``head`` (which ends with an empty line)."""
    line = head.split(b"\r\n", 1)[0]
    try:
        parts = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        parts = []
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[0].isalpha():
        return Refusal(400, MALFORMED, "expected METHOD TARGET HTTP/1.1")
    return Head(parts[0], parts[1], parts[2])


def parse_authority(target: str) -> tuple[str, int] | None:
    """``host:port`` / ``[v6]:port`` → (host lowercased or canonical IP, port); None if bad."""
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        return None
    port = int(port_text)
    if not 0 < port < 65536:
        return None
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        ip = normal_ip(host)
        return (ip, port) if ip is not None and ":" in host else None
    if ":" in host:
        return None
    return (normal_ip(host) or host.lower(), port)


def admit(
    source: str,
    head: Head,
    view: RelayView,
    *,
    open_total: int,
    open_from_source: int,
    limits: Limits,
) -> Tunnel | RelayStatus | Refusal:
    """What to do with ``head`` from ``source``, given the tunnels already open."""
    src = normal_ip(source)
    if src is None or src not in view.members:
        return Refusal(403, NOT_MEMBER, f"{source} is not a member of pool {view.pool or '?'}")
    if head.method == "GET":
        if head.target.split("?", 1)[0] != STATUS_PATH:
            return Refusal(404, NOT_FOUND, f"only CONNECT and GET {STATUS_PATH} here")
        body: dict[str, object] = {
            "node": view.node,
            "pool": view.pool,
            "reachesCloud": view.reaches_cloud,
            "gateway": view.gateway,
        }
        return RelayStatus(200 if view.reaches_cloud else 503, body)
    if head.method != "CONNECT":
        return Refusal(405, METHOD, f"only CONNECT and GET {STATUS_PATH} here")
    target = parse_authority(head.target)
    if target is None:
        return Refusal(400, MALFORMED, "CONNECT needs host:port")
    if target not in view.targets:
        return Refusal(403, DESTINATION, f"{head.target} is not the API server")
    if not view.reaches_cloud:
        return Refusal(503, NO_CLOUD, f"{view.node} does not reach the cloud")
    if open_from_source >= limits.max_per_source or open_total >= limits.max_tunnels:
        return Refusal(429, TOO_MANY, "too many tunnels open")
    return Tunnel(*target)
