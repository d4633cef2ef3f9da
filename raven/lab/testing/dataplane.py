"""A recording data plane: the agent's :class:`agent.dataplane.DataPlane` without a kernel.

It records every step it is asked to run, in order, and keeps just enough state to answer like
a node would: the addresses it was given, and a WireGuard device that exists once a tunnel was
ensured and holds the peers last set (with a handshake as soon as a peer has an endpoint or
AllowedIPs, as a working tunnel would). Tests assert exact step sequences against
:attr:`RecordingDataPlane.steps`; the simulated fleet runs hundreds of agents on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from agent.nodestatus import Inventory
from agent.steps import EnsureTunnel, SetPeers, SetRoutes, SetRules, Step
from gateway.dump import DeviceStatus, PeerStatus
from raven.model import LocalAddress, PeerSpec, RouteSpec, RuleSpec


class RecordingDataPlane:
    """Answers ``addresses()`` from ``addresses``; ``fail`` maps a step type to the error its
    next runs raise (for fault scenarios)."""

    def __init__(self, addresses: Iterable[LocalAddress] = (), *, public_key: str = "") -> None:
        self.address_list = tuple(addresses)
        self.public_key = public_key
        self.steps: list[Step] = []
        self.fail: dict[type, Exception] = {}
        self.tunnel_port: int | None = None
        self.peers: tuple[PeerSpec, ...] = ()
        self.routes: tuple[RouteSpec, ...] = ()
        self.rules: tuple[RuleSpec, ...] = ()
        self.closed = False
        self._lock = threading.Lock()

    # DataPlane --------------------------------------------------------------------------------

    def addresses(self) -> tuple[LocalAddress, ...]:
        return self.address_list

    def tunnel(self) -> DeviceStatus | None:
        if self.tunnel_port is None:
            return None
        now = int(time.time())
        peers = tuple(
            PeerStatus(
                public_key=p.public_key,
                endpoint=p.endpoint,
                allowed_ips=p.allowed_ips,
                latest_handshake=now if p.allowed_ips else 0,
                rx_bytes=0,
                tx_bytes=0,
                persistent_keepalive=p.persistent_keepalive,
            )
            for p in self.peers
        )
        return DeviceStatus(self.public_key or None, self.tunnel_port, 0, peers)

    def run(self, step: Step) -> None:
        with self._lock:
            self.steps.append(step)
            error = self.fail.get(type(step))
            if error is None:
                match step:
                    case EnsureTunnel(port=port):
                        self.tunnel_port = port or 51820
                    case SetPeers(peers=peers):
                        self.peers = peers
                    case SetRoutes(routes=routes):
                        self.routes = routes
                    case SetRules(rules=rules):
                        self.rules = rules
        if error is not None:
            raise error

    def inventory(self) -> Inventory:
        """What this node's kernel would hold: the routes, rules and peers last set."""
        with self._lock:
            routes, rules = self.routes, self.rules
        return Inventory(routes, rules, self.tunnel(), None, time.time())

    def close(self) -> None:
        self.closed = True

    # For tests --------------------------------------------------------------------------------

    def take(self) -> list[Step]:
        """The steps recorded since the last call."""
        with self._lock:
            steps, self.steps = self.steps, []
        return steps
