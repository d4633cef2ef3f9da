"""The agent's data plane: a small :class:`DataPlane` protocol, and the kernel behind it.

The runtime only ever asks three things of a data plane: what addresses this node has, what its
WireGuard device holds, and to run one step (:mod:`agent.steps`); ``/status`` may also ask a
data plane that has one for its ``inventory()`` (what Raven owns in the kernel, read on
request). :class:`KernelDataPlane` answers with netlink (:mod:`raven.netlink`),
``wg``/wireguard-go (:mod:`gateway.wireguard`), iptables (the MSS clamp) and ``/proc/sys``;
every step diffs and changes only the difference.
A recording fake (``raven.lab.testing.dataplane``) answers the same protocol for tests and the
simulated fleet.

pyroute2's synchronous socket is not safe across threads, so the runtime calls a data plane
from one dedicated thread only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

from agent.config import AgentSettings
from agent.nodestatus import Inventory
from agent.steps import (
    ClampMss,
    EnableForwarding,
    EnsureTunnel,
    SetPeers,
    SetRoutes,
    SetRules,
    SetVxlan,
    Step,
)
from gateway.dump import DeviceStatus, WireGuardError
from gateway.wireguard import WireGuardDevice
from raven.model import LocalAddress
from raven.netlink.kernel import Kernel
from raven.netlink.mss import MssClamp
from raven.netlink.sysctl import ensure_ip_forward

log = logging.getLogger("raven.agent.dataplane")


class DataPlane(Protocol):
    """What the runtime needs of a node's data plane."""

    def addresses(self) -> tuple[LocalAddress, ...]:
        """Every local address, with its link's name and MTU."""
        ...

    def tunnel(self) -> DeviceStatus | None:
        """The WireGuard device's peers as it holds them now; None when there is no device."""
        ...

    def run(self, step: Step) -> None:
        """Carry out one step; raise on failure (the message says what failed)."""
        ...

    def close(self) -> None: ...


class KernelDataPlane:
    """The node's kernel, in the namespace the agent runs in."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.kernel = Kernel()
        self.route_reconciler = self.kernel.routes((settings.table,))
        self.rule_reconciler = self.kernel.rules()
        self.vxlan = self.kernel.vxlan(
            settings.vxlan_dev, vni=settings.vxlan_vni, port=settings.vxlan_port
        )
        self.wg = WireGuardDevice(settings.wg_interface, state_dir=settings.state_dir)
        self.mss = MssClamp()
        self._link_renewed = False  # the VXLAN link was made anew: dump the route table
        self._rp_filter_warned = False

    def writes_by_kind(self) -> dict[str, int]:
        """Kernel writes so far, by kind, for metrics and tests."""
        return {
            "route": self.route_reconciler.writes,
            "rule": self.rule_reconciler.writes,
            "vxlan": self.vxlan.writes,
            "wireguard": self.wg.wg_set_calls + self.wg.link_writes,
        }

    def close(self) -> None:
        self.kernel.close()

    def addresses(self) -> tuple[LocalAddress, ...]:
        return self.kernel.addresses()

    def tunnel(self) -> DeviceStatus | None:
        if not self.wg.exists():
            return None
        try:
            return self.wg.dump()
        except WireGuardError as error:
            log.warning("cannot read %s: %s", self.settings.wg_interface, error)
            return None

    def inventory(self) -> Inventory:
        """What Raven owns in this namespace's kernel now (reads only: one dump of Raven's
        table, the rules, the VXLAN link and ``wg show``), for ``/status``."""
        link = self.vxlan.current()
        vxlan = None
        if link is not None and self.vxlan.ours(link):
            vxlan = {
                "dev": self.settings.vxlan_dev,
                "vni": link.vni,
                "port": link.port,
                "local": link.local,
                "mtu": link.mtu,
                "up": link.up,
                "rpFilter": link.rp_filter,
            }
        return Inventory(
            routes=tuple(sorted(self.route_reconciler.current().values())),
            rules=tuple(sorted(self.rule_reconciler.current().values())),
            tunnel=self.tunnel(),
            vxlan=vxlan,
            read_at=time.time(),
        )

    def run(self, step: Step) -> None:
        match step:
            case EnsureTunnel(port=port, mtu=mtu):
                self.wg.ensure(listen_port=port, mtu=mtu)
            case SetPeers(peers=peers):
                if peers or self.wg.exists():
                    self.wg.reconcile_peers(peers)
            case EnableForwarding():
                ensure_ip_forward(True)
            case ClampMss(dev=dev):
                self.mss.ensure(dev)
            case SetVxlan(spec=spec, required=required):
                changes = self.vxlan.reconcile(spec)
                # A link made anew has none of the routes the route reconciler remembers.
                self._link_renewed = self._link_renewed or changes.link_changed
                if spec is not None and required:
                    self._warn_strict_rp_filter(spec.local)
            case SetRoutes(routes=routes, resync=resync):
                resync, self._link_renewed = resync or self._link_renewed, False
                self.route_reconciler.reconcile(routes, resync=resync)
            case SetRules(rules=rules):
                self.rule_reconciler.reconcile(rules)

    def _warn_strict_rp_filter(self, local: str) -> None:
        """Replies to a member that sends over VXLAN come back by the underlay, where a strict
        reverse-path filter (1) drops them. That setting is not Raven's to change: say so."""
        underlay = next((a.dev for a in self.addresses() if a.address == local), None)
        conf = Path("/proc/sys/net/ipv4/conf")
        values = {}
        for dev in ("all", underlay):
            if dev is None:
                continue
            try:
                values[dev] = int((conf / dev / "rp_filter").read_text())
            except (OSError, ValueError):
                continue
        # The kernel applies the larger of "all" and the interface's value.
        strict = bool(values) and max(values.values()) == 1
        if strict and not self._rp_filter_warned:
            log.warning(
                "reverse-path filtering is strict on %s (rp_filter %s): the replies to the"
                " cross-pool traffic this node sends over %s arrive there and are dropped; set"
                " net.ipv4.conf.all.rp_filter and net.ipv4.conf.%s.rp_filter to 2 (loose) or 0",
                underlay,
                ", ".join(f"{dev}={value}" for dev, value in values.items()),
                self.settings.vxlan_dev,
                underlay,
            )
        self._rp_filter_warned = strict
