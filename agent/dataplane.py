"""Applies a planned :class:`~raven.model.DesiredState` to this node's kernel.

The only place in the agent that touches netlink, ``wg`` or iptables, always through the
reconcilers (which diff and change only the difference). Order matters: the WireGuard device
and the VXLAN link exist before routes point into them, routes exist before the rule sends
lookups to them, and a VXLAN link no longer wanted goes only after the routes have left it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from agent.config import AgentSettings
from agent.probe import Prober
from gateway.wireguard import WireGuardDevice, WireGuardError
from raven.model import DesiredState, Role
from raven.netlink.errors import NetlinkError
from raven.netlink.mss import MssClamp
from raven.netlink.routes import RouteReconciler
from raven.netlink.rules import RuleReconciler
from raven.netlink.sysctl import ensure_ip_forward
from raven.netlink.vxlan import VxlanReconciler
from raven.view import ClusterView, Identity

log = logging.getLogger("raven.agent.dataplane")

#: A peer whose last handshake is older than this is down: WireGuard re-handshakes every
#: 2 minutes while traffic or keepalives flow, so 3 minutes without one means nothing flows.
HANDSHAKE_FRESH_S = 180


class DataPlane:
    """Reconcilers for one node, bound to the network namespace the agent runs in."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.ipr = IPRoute()
        self.routes = RouteReconciler(self.ipr, tables=(settings.table,))
        self.rules = RuleReconciler(self.ipr)
        self.wg = WireGuardDevice(settings.wg_interface, state_dir=settings.state_dir)
        self.mss = MssClamp()
        self.vxlan = VxlanReconciler(
            self.ipr, settings.vxlan_dev, vni=settings.vxlan_vni, port=settings.vxlan_port
        )
        self._underlay_dev: str | None = None  # as found by the last identity()
        self._rp_filter_warned = False

    def close(self) -> None:
        self.ipr.close()

    def identity(self, internal_ip: str | None) -> Identity | None:
        """This node's planner identity: the underlay is the link holding its InternalIP."""
        if internal_ip is None:
            return None
        family = ipaddress.ip_address(internal_ip).version
        for addr in self.ipr.get_addr():
            if addr.get_attr("IFA_ADDRESS") != internal_ip:
                continue
            link = self.ipr.get_links(addr["index"])[0]
            subnets = {
                ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}").network
                for a in self.ipr.get_addr(index=addr["index"])
            }
            self._underlay_dev = link.get_attr("IFLA_IFNAME")
            return Identity(
                node_name=self.settings.node_name,
                underlay_dev=link.get_attr("IFLA_IFNAME"),
                underlay_mtu=link.get_attr("IFLA_MTU"),
                underlay_family=family,
                underlay_subnets=tuple(
                    n.with_prefixlen
                    for n in sorted(subnets, key=lambda n: (n.version, n.network_address))
                ),
                wg_dev=self.settings.wg_interface,
                vxlan_dev=self.settings.vxlan_dev,
                vxlan_vni=self.settings.vxlan_vni,
                vxlan_port=self.settings.vxlan_port,
                table=self.settings.table,
                rule_priority=self.settings.rule_priority,
            )
        return None

    def local_addresses(self) -> list[str]:
        """Every IPv4 address on this node's links."""
        return [a.get_attr("IFA_ADDRESS") for a in self.ipr.get_addr(family=socket.AF_INET)]

    def apply(self, desired: DesiredState, *, resync: bool = True) -> None:
        """Apply ``desired``. ``resync=False`` (a change from the cluster) trusts the route
        reconciler's last view and skips the table dump; drift and the timer resync."""
        if desired.role in (Role.GATEWAY, Role.RELAY):
            self.wg.ensure(listen_port=desired.listen_port, mtu=desired.tunnel_mtu)
            self.wg.reconcile_peers(desired.peers)
            ensure_ip_forward(True)
            self.mss.ensure(self.settings.wg_interface)
        elif self.wg.exists():
            # Keep the device (a re-election needs no new process), but carry nothing.
            self.wg.reconcile_peers(())
        if desired.vxlan is not None:
            try:
                # A link made anew has none of the routes the route reconciler remembers.
                resync = self.vxlan.reconcile(desired.vxlan).link_changed or resync
            except NetlinkError as error:
                if desired.role == Role.MEMBER:
                    raise  # its routes would lead nowhere, or into a link that is not ours
                # A gateway still carries its on-link members and its own pods meanwhile.
                log.error("VXLAN link for members that are not on-link: %s", error)
            if desired.role == Role.MEMBER:
                self._warn_strict_rp_filter()
        self.routes.reconcile(desired.routes, resync=resync)
        self.rules.reconcile(desired.rules)
        if desired.vxlan is None:
            self.vxlan.reconcile(None)

    def _warn_strict_rp_filter(self) -> None:
        """Replies to a member that sends over VXLAN come back by the underlay, where a strict
        reverse-path filter (1) drops them. That setting is not Raven's to change: say so."""
        conf = Path("/proc/sys/net/ipv4/conf")
        values = {}
        for dev in ("all", self._underlay_dev):
            try:
                values[dev] = int((conf / str(dev) / "rp_filter").read_text())
            except (OSError, ValueError):
                continue
        strict = bool(values) and max(values.values()) == 1
        if strict and not self._rp_filter_warned:
            log.warning(
                "reverse-path filtering is strict on %s (rp_filter %s): the replies to the"
                " cross-pool traffic this node sends over %s arrive there and are dropped; set"
                " net.ipv4.conf.all.rp_filter and net.ipv4.conf.%s.rp_filter to 2 (loose) or 0",
                self._underlay_dev,
                ", ".join(f"{dev}={value}" for dev, value in values.items()),
                self.settings.vxlan_dev,
                self._underlay_dev,
            )
        self._rp_filter_warned = strict

    def peer_status(
        self, desired: DesiredState, view: ClusterView, probes: Prober | None = None
    ) -> list[dict[str, Any]]:
        """One Gateway status entry per planned peer, from the device's live dump."""
        try:
            dump = self.wg.dump()
        except WireGuardError as error:
            log.warning("cannot read %s: %s", self.settings.wg_interface, error)
            dump = None
        by_key = {n.public_key: n for n in view.nodes if n.public_key}
        now = time.time()
        entries = []
        for peer in desired.peers:
            live = dump.peer(peer.public_key) if dump is not None else None
            node = by_key.get(peer.public_key)
            handshake = live.latest_handshake if live is not None else 0
            figures = probes.figures(peer.public_key) if probes is not None else {}
            # A fresh handshake proves keys and endpoints; a probe that answers nothing at all
            # over the window proves the tunnel carries no traffic nonetheless.
            up = handshake > 0 and now - handshake < HANDSHAKE_FRESH_S
            up = up and figures.get("lossPercent") != 100
            entries.append(
                {
                    "node": node.name if node else "",
                    "pool": (node.pool or "") if node else "",
                    "publicKey": peer.public_key,
                    "endpoint": (live.endpoint or "")
                    if live is not None
                    else (peer.endpoint or ""),
                    "allowedIPs": list(peer.allowed_ips),
                    "state": "Up" if up else "Down",
                    "lastHandshake": (
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(handshake))
                        if handshake
                        else ""
                    ),
                    "rttMs": figures.get("rttMs"),
                    "lossPercent": figures.get("lossPercent"),
                }
            )
        return entries
