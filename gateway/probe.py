"""Tunnel probes: RTT and loss from this gateway to each peer gateway, through the tunnel.

A WireGuard device carries no address, so a probe needs a source and a target inside the
pools' subnets. Every agent publishes, as the Node annotation ``raven.io/probe-address``, a
local address that lies inside its own pod CIDRs when it has one (most CNIs give the node one,
e.g. the bridge's first address). The active gateway pings each peer gateway's probe address
from its own every :data:`PROBE_INTERVAL` seconds, so the packet crosses exactly the path pod
traffic takes; where either side has no such address the peer's RTT stays unknown.

What the figures cover (also in Gateway status as ``probeWindowSeconds``): RTT is the last
answered probe's; loss is the share of lost probes among the last :data:`WINDOW` probes (20 s).
Probes sent before a peer first answered are not counted once it has answered: they measured
the tunnel being set up (handshake, a route still being written), not loss. A peer that never
answered keeps all its probes counted, so a dead tunnel reads 100 %.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Seconds between probe rounds, and how many rounds the loss figure covers.
PROBE_INTERVAL = 2.0
WINDOW = 10
WINDOW_SECONDS = round(PROBE_INTERVAL * WINDOW)

_TIME = re.compile(r"time[=<]([0-9.]+) ms")


def local_probe_address(
    addresses: tuple[str, ...] | list[str], pod_cidrs: tuple[str, ...]
) -> str | None:
    """The lowest local IPv4 address inside one of this node's pod CIDRs, or None."""
    nets = [ipaddress.ip_network(c) for c in pod_cidrs]
    inside = sorted(
        (ipaddress.ip_address(a) for a in addresses),
        key=lambda ip: (ip.version, int(ip)),
    )
    for ip in inside:
        if ip.version == 4 and any(ip in net for net in nets):
            return str(ip)
    return None


@dataclass(frozen=True)
class ProbeWindow:
    """The counted probes of one peer, oldest first: RTT in ms, or None for a lost probe."""

    results: tuple[float | None, ...] = ()

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

    def silent_for(self, rounds: int) -> bool:
        """True when the last ``rounds`` probes (at least that many were sent) all got lost."""
        return len(self.results) >= rounds and all(r is None for r in self.results[-rounds:])


@dataclass
class PeerProbe:
    """The last ``WINDOW`` counted results for one peer (see the module docstring)."""

    results: deque[float | None] = field(default_factory=lambda: deque(maxlen=WINDOW))
    answered: bool = False

    def record(self, result: float | None) -> None:
        if result is not None and not self.answered:
            self.answered = True
            self.results.clear()  # what came before the first answer measured the set-up
        self.results.append(result)

    def window(self) -> ProbeWindow:
        return ProbeWindow(tuple(self.results))


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

    def set_targets(self, source: str | None, targets: Mapping[str, str]) -> None:
        if source != self.source:
            self.peers.clear()  # results from another source address say nothing now
        self.source = source
        for key in list(self.peers):
            if self.targets.get(key) != targets.get(key):
                del self.peers[key]  # gone, or another address: start counting afresh
        self.targets = dict(targets)

    async def round(self) -> None:
        if self.source is None or not self.targets:
            return
        keys = list(self.targets)
        results = await asyncio.gather(*(ping_once(self.source, self.targets[k]) for k in keys))
        for key, result in zip(keys, results, strict=True):
            if self.targets.get(key) is not None:  # targets may have changed meanwhile
                self.peers.setdefault(key, PeerProbe()).record(result)

    def windows(self) -> dict[str, ProbeWindow]:
        """Public key -> the counted probes so far."""
        return {key: probe.window() for key, probe in self.peers.items()}
