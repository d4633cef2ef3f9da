"""What ``wg show IF dump`` says about a WireGuard device, as values. Pure.

The agent's round reads a device's peers (handshakes, endpoints, bytes) without running
anything; :mod:`gateway.wireguard` produces these values from the real device.
"""

from __future__ import annotations

from dataclasses import dataclass


class WireGuardError(Exception):
    """A WireGuard operation failed or was asked something impossible; the message says which."""


@dataclass(frozen=True)
class PeerStatus:
    """One peer as WireGuard sees it now."""

    public_key: str
    endpoint: str | None  # "ip:port" (IPv6 in brackets) or None before any handshake
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # unix seconds, 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int  # seconds, 0 = off


@dataclass(frozen=True)
class DeviceStatus:
    """The device's public side (the private key is dropped on parsing)."""

    public_key: str | None
    listen_port: int
    fwmark: int
    peers: tuple[PeerStatus, ...] = ()

    def peer(self, public_key: str) -> PeerStatus | None:
        return next((p for p in self.peers if p.public_key == public_key), None)


def _none(value: str) -> str | None:
    return None if value in ("(none)", "") else value


def parse_dump(text: str) -> DeviceStatus:
    """Parse ``wg show IF dump``. The first line (interface) carries the private key; it is
    discarded here so nothing downstream can log it."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise WireGuardError("empty `wg show dump` output")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise WireGuardError(f"unexpected interface line in `wg show dump` ({len(head)} fields)")
    _private, public, port, fwmark = head
    peers = []
    for line in lines[1:]:
        f = line.split("\t")
        if len(f) != 8:
            raise WireGuardError(f"unexpected peer line in `wg show dump` ({len(f)} fields)")
        allowed = _none(f[3])
        peers.append(
            PeerStatus(
                public_key=f[0],
                endpoint=_none(f[2]),
                allowed_ips=tuple(sorted(allowed.split(","))) if allowed else (),
                latest_handshake=int(f[4]),
                rx_bytes=int(f[5]),
                tx_bytes=int(f[6]),
                persistent_keepalive=0 if f[7] == "off" else int(f[7]),
            )
        )
    return DeviceStatus(
        public_key=_none(public),
        listen_port=int(port),
        fwmark=0 if fwmark == "off" else int(fwmark, 0),
        peers=tuple(sorted(peers, key=lambda p: p.public_key)),
    )
