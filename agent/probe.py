"""Tunnel probes: RTT and loss from this gateway to each peer gateway, through the tunnel.

A WireGuard device carries no address, so a probe needs a source and a target inside the
pools' subnets. Every agent publishes, as the Node annotation ``raven.io/probe-address``, a
local address that lies inside its own pod CIDRs when it has one (most CNIs give the node one,
e.g. the bridge's first address). The active gateway pings each peer gateway's probe address
from its own, so the packet crosses exactly the path pod traffic takes; where either side has
no such address the peer's RTT stays unknown.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

#: Seconds between probe rounds, and how many rounds the loss figure covers.
PROBE_INTERVAL = 2.0
WINDOW = 10

_TIME = re.compile(r"time[=<]([0-9.]+) ms")


def local_probe_address(addresses: list[str], pod_cidrs: tuple[str, ...]) -> str | None:
    """The lowest local IPv4 address inside one of this node's pod CIDRs, or None."""
    nets = [ipaddress.ip_network(c) for c in pod_cidrs]
    inside = sorted(
        (ipaddress.ip_address(a) for a in addresses),
        key=lambda ip: (ip.version, int(ip)),
    )
    for ip in inside:
        if any(ip in net for net in nets):
            return str(ip)
    return None


@dataclass
class PeerProbe:
    """The last ``WINDOW`` results for one peer: RTT in ms, or None for a lost probe."""

    results: deque[float | None] = field(default_factory=lambda: deque(maxlen=WINDOW))

    @property
    def rtt_ms(self) -> float | None:
        answered = [r for r in self.results if r is not None]
        return round(answered[-1], 1) if answered else None

    @property
    def loss_percent(self) -> int | None:
        if not self.results:
            return None
        lost = sum(r is None for r in self.results)
        return round(100 * lost / len(self.results))


async def ping_once(source: str, target: str, *, timeout: float = 1.0) -> float | None:
    """One ICMP echo from ``source`` to ``target``; the RTT in ms, or None when lost."""
    proc = await asyncio.create_subprocess_exec(
        "ping",
        "-n",
        "-c",
        "1",
        "-W",
        str(max(1, round(timeout))),
        "-I",
        source,
        target,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return None
    match = _TIME.search(out.decode(errors="replace"))
    return float(match.group(1)) if match else None


class Prober:
    """Probes a changing set of targets (public key -> probe address) from one source."""

    def __init__(self) -> None:
        self.source: str | None = None
        self.targets: dict[str, str] = {}
        self.peers: dict[str, PeerProbe] = {}

    def set_targets(self, source: str | None, targets: dict[str, str]) -> None:
        if source != self.source:
            self.peers.clear()  # results from another source address say nothing now
        self.source = source
        self.targets = dict(targets)
        for key in list(self.peers):
            if key not in targets:
                del self.peers[key]

    async def round(self) -> None:
        if self.source is None or not self.targets:
            return
        keys = list(self.targets)
        results = await asyncio.gather(*(ping_once(self.source, self.targets[k]) for k in keys))
        for key, result in zip(keys, results, strict=True):
            self.peers.setdefault(key, PeerProbe()).results.append(result)

    def figures(self, public_key: str) -> dict[str, Any]:
        probe = self.peers.get(public_key)
        if probe is None:
            return {"rttMs": None, "lossPercent": None}
        return {"rttMs": probe.rtt_ms, "lossPercent": probe.loss_percent}
