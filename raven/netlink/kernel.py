"""One namespace's kernel as the agent uses it: what it has (addresses, links) and the handle its
reconcilers write through; plus uninstall.

This is where the agent's netlink socket is opened, so nothing outside :mod:`raven.netlink`
imports pyroute2. :meth:`Kernel.addresses` is the only discovery the planner needs (which link
holds the node's InternalIP, its MTU and connected subnets); the agent turns that into its plan
inputs itself, purely.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]

from raven.model import DEFAULT_TABLE, DEFAULT_VXLAN_PORT, DEFAULT_VXLAN_VNI, LocalAddress
from raven.netlink.cleanup import CleanupReport, TearsDown, cleanup
from raven.netlink.routes import RouteReconciler
from raven.netlink.rules import RuleReconciler
from raven.netlink.vxlan import VxlanReconciler


class Kernel:
    """The namespace the process runs in (or ``netns``). Close it when done."""

    def __init__(self, netns: str | None = None) -> None:
        self.ipr: Any = IPRoute(netns=netns) if netns else IPRoute()

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def addresses(self) -> tuple[LocalAddress, ...]:
        """Every address on every link, with the link's name and MTU (reads only)."""
        links = {}
        for link in self.ipr.get_links():
            links[link["index"]] = (link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU"))
        out = []
        for addr in self.ipr.get_addr():
            name, mtu = links.get(addr["index"], (None, None))
            ip = addr.get_attr("IFA_ADDRESS")
            if name is None or ip is None:
                continue
            family = 6 if addr["family"] == socket.AF_INET6 else 4
            out.append(LocalAddress(ip, addr["prefixlen"], name, mtu or 1500, family))
        return tuple(sorted(out))

    def routes(self, tables: Iterable[int] = (DEFAULT_TABLE,)) -> RouteReconciler:
        return RouteReconciler(self.ipr, tables=tables)

    def rules(self) -> RuleReconciler:
        return RuleReconciler(self.ipr)

    def vxlan(self, dev: str, *, vni: int, port: int) -> VxlanReconciler:
        return VxlanReconciler(self.ipr, dev, vni=vni, port=port)


def uninstall(
    *,
    tables: Iterable[int] = (DEFAULT_TABLE,),
    wireguard: TearsDown | None = None,
    vxlan_dev: str | None = None,
    vxlan_vni: int = DEFAULT_VXLAN_VNI,
    vxlan_port: int = DEFAULT_VXLAN_PORT,
    netns: str | None = None,
) -> CleanupReport:
    """Remove everything Raven added to this namespace (:func:`raven.netlink.cleanup.cleanup`),
    keys included."""
    with Kernel(netns) as kernel:
        return cleanup(
            kernel.ipr,
            tables=tables,
            wireguard=wireguard,
            remove_keys=True,
            vxlan_dev=vxlan_dev,
            vxlan_vni=vxlan_vni,
            vxlan_port=vxlan_port,
        )
