"""Gateway beacons: the pool's active gateway tells its fellow candidates over the LAN, several
times a second, that it is alive and fit to carry the pool, so a crash is noticed in about a
second without the holder renewing its Lease that often (DESIGN, "Kubernetes objects").

A beacon is one UDP datagram from the holder to each other candidate of its pool, at that
node's InternalIP, port :data:`DEFAULT_PORT`::

    "RVB1" | flags (u8, bit 0: fit) | counter (u64) | len+pool | len+sender | MAC (16 bytes)

It carries no secret and needs none: the MAC is HMAC-SHA256 under a key both ends derive from
their WireGuard key pairs (X25519 of the sender's private and the receiver's public key, and
vice versa), keys that are already on every node and published on every Node. So a beacon
cannot be forged by anyone without the holder's private key, is accepted only from the node's
own InternalIP and only for the receiver's pool, and its counter (the sender's clock in
nanoseconds) must grow, so a recorded beacon replayed later is dropped.

A beacon only ever delays a takeover: what decides who carries a pool is still the Lease,
taken by compare-and-swap at the API server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

log = logging.getLogger("raven.gateway.beacon")

MAGIC = b"RVB1"
DEFAULT_PORT = 10263
MAC_LEN = 16
MAX_NAME = 253
_HEAD = struct.Struct("!4sBQ")


class BadBeacon(ValueError):
    """A datagram that is not a well-formed beacon."""


@dataclass(frozen=True)
class Beacon:
    pool: str
    sender: str
    counter: int
    fit: bool


def pair_key(private_key: str, peer_public_key: str) -> bytes:
    """The MAC key shared by this node and the peer: both sides derive the same one."""
    me = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    peer = X25519PublicKey.from_public_bytes(base64.b64decode(peer_public_key))
    return hashlib.sha256(b"raven-beacon-v1" + me.exchange(peer)).digest()


def _name(text: str) -> bytes:
    raw = text.encode()
    if not 0 < len(raw) <= MAX_NAME:
        raise ValueError(f"beacon name {text!r} must be 1..{MAX_NAME} bytes")
    return struct.pack("!B", len(raw)) + raw


def encode(beacon: Beacon, key: bytes) -> bytes:
    body = _HEAD.pack(MAGIC, 1 if beacon.fit else 0, beacon.counter)
    body += _name(beacon.pool) + _name(beacon.sender)
    return body + hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN]


def decode(data: bytes) -> tuple[Beacon, bytes, bytes]:
    """(beacon, signed body, MAC), unverified; BadBeacon when malformed."""
    if len(data) < _HEAD.size + 2 + MAC_LEN:
        raise BadBeacon(f"{len(data)} bytes is too short for a beacon")
    magic, flags, counter = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise BadBeacon("not a Raven beacon")
    offset = _HEAD.size
    names = []
    for _ in range(2):
        if offset >= len(data):
            raise BadBeacon("truncated beacon")
        size = data[offset]
        raw = data[offset + 1 : offset + 1 + size]
        if size == 0 or len(raw) != size:
            raise BadBeacon("truncated beacon")
        try:
            names.append(raw.decode())
        except UnicodeDecodeError:
            raise BadBeacon("beacon name is not UTF-8") from None
        offset += 1 + size
    if len(data) != offset + MAC_LEN:
        raise BadBeacon("beacon has trailing bytes")
    beacon = Beacon(names[0], names[1], counter, bool(flags & 1))
    return beacon, data[:offset], data[offset:]


@dataclass(frozen=True)
class Peer:
    """A pool member whose beacons we accept: its published key and its InternalIP."""

    public_key: str
    address: str


@dataclass
class Receiver:
    """Which pool members we heard, and when (monotonic) they last said they are fit."""

    private_key: str = field(repr=False)
    pool: str | None = None
    peers: Mapping[str, Peer] = field(default_factory=dict)
    fit_at: dict[str, float] = field(default_factory=dict)
    _counters: dict[str, int] = field(default_factory=dict)
    _keys: dict[str, bytes] = field(default_factory=dict, repr=False)

    def expect(self, pool: str | None, peers: Mapping[str, Peer]) -> None:
        """Accept beacons for ``pool`` from ``peers`` from now on."""
        if pool != self.pool:
            self.fit_at.clear()
            self._counters.clear()
        self.pool = pool
        self.peers = dict(peers)
        for name in list(self.fit_at):
            if name not in self.peers:
                del self.fit_at[name]

    def accept(self, data: bytes, source: str, now: float) -> Beacon | None:
        """The beacon in ``data`` from ``source``, if it is genuine and new; else None."""
        try:
            beacon, body, mac = decode(data)
        except BadBeacon:
            return None
        peer = self.peers.get(beacon.sender)
        if peer is None or beacon.pool != self.pool or source != peer.address:
            return None
        key = self._keys.get(peer.public_key)
        if key is None:
            try:
                key = pair_key(self.private_key, peer.public_key)
            except ValueError:
                return None
            self._keys[peer.public_key] = key
        if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN], mac):
            return None
        if beacon.counter <= self._counters.get(beacon.sender, 0):
            return None  # a replay, or reordered behind a newer one
        self._counters[beacon.sender] = beacon.counter
        if beacon.fit:
            self.fit_at[beacon.sender] = now
        else:
            self.fit_at.pop(beacon.sender, None)
        return beacon


class BeaconSocket(asyncio.DatagramProtocol):
    """The UDP socket that receives this pool's beacons (BeaconSender sends ours).

    ``on_beacon(sender)`` is called (on the loop) for every accepted beacon.
    """

    def __init__(self, receiver: Receiver, on_beacon: Callable[[str], None] | None = None) -> None:
        self.receiver = receiver
        self.on_beacon = on_beacon
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0  # datagrams refused (malformed, forged, replayed, unknown sender)

    @classmethod
    async def open(
        cls,
        receiver: Receiver,
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        on_beacon: Callable[[str], None] | None = None,
    ) -> BeaconSocket:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            lambda: cls(receiver, on_beacon), local_addr=(host, port), reuse_port=False
        )
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int] | tuple) -> None:
        beacon = self.receiver.accept(data, str(addr[0]), time.monotonic())
        if beacon is None:
            self.dropped += 1
        elif self.on_beacon is not None:
            self.on_beacon(beacon.sender)

    def error_received(self, exc: Exception) -> None:
        log.debug("beacon socket: %s", exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True)
class Target:
    """A candidate to tell: its name, where its beacon socket listens, its public key."""

    name: str
    address: str
    public_key: str


class BeaconSender:
    """Sends this node's beacons from a thread of its own, every ``interval`` seconds, to the
    targets last set. A busy event loop (a large list to parse, a slow round) must not delay
    them: a late beacon looks like a crash to the other candidates."""

    def __init__(
        self,
        private_key: str,
        sender: str,
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        interval: float = 0.25,
    ) -> None:
        self.private_key, self.sender, self.port, self.interval = (
            private_key,
            sender,
            port,
            interval,
        )
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sent = 0
        self._plan: tuple[str, tuple[Target, ...], bool] | None = None
        self._keys: dict[str, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beacons", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def set(self, pool: str | None, targets: tuple[Target, ...], fit: bool) -> None:
        """Beacon for ``pool`` to ``targets`` from now on (none: stop beaconing)."""
        self._plan = (pool, targets, fit) if pool is not None and targets else None

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            plan = self._plan
            if plan is None:
                continue
            pool, targets, fit = plan
            counter = time.time_ns()
            for target in targets:
                key = self._keys.get(target.public_key)
                if key is None:
                    try:
                        key = pair_key(self.private_key, target.public_key)
                    except ValueError:
                        continue
                    self._keys[target.public_key] = key
                datagram = encode(Beacon(pool, self.sender, counter, fit), key)
                try:
                    self.sock.sendto(datagram, (target.address, self.port))
                    self.sent += 1
                except OSError as error:  # no route yet, a full buffer: the next one may pass
                    log.debug("beacon to %s: %s", target.name, error)
