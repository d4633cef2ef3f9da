"""Uninstall (``raven-agent --cleanup``): remove everything Raven added to this node, and nothing
else.

Each part is found by Raven's own marks: routes by our rtproto in our table(s), the rule by its
FRA_PROTOCOL stamp, the VXLAN link by its name and alias stamp (raven.netlink.vxlan), the MSS
clamp by its chain and tagged jump, the WireGuard device (and its wireguard-go) and the key file
through the object passed in. Forwarding is left as found, since
other components on the node may rely on it. Every part is attempted even when an earlier one
fails; failures are returned in ``CleanupReport.failures`` (part -> why), not raised, so the
caller can report what was removed and what was not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from raven.model import DEFAULT_TABLE, DEFAULT_VXLAN_PORT, DEFAULT_VXLAN_VNI
from raven.netlink.errors import NetlinkError
from raven.netlink.mss import MssClamp
from raven.netlink.routes import RouteReconciler
from raven.netlink.rules import RuleReconciler
from raven.netlink.vxlan import VxlanReconciler


class TearsDown(Protocol):
    """What cleanup needs from the WireGuard device (``gateway.wireguard.WireGuardDevice``)."""

    def teardown(self, *, remove_keys: bool = False) -> bool: ...


@dataclass
class CleanupReport:
    routes_deleted: int = 0
    rules_deleted: int = 0
    vxlan_removed: bool = False
    mss_removed: bool = False
    wireguard_removed: bool = False
    failures: dict[str, str] = field(default_factory=dict)  # part -> why; empty = all gone


def cleanup(
    ipr: Any,
    *,
    tables: Iterable[int] = (DEFAULT_TABLE,),
    mss: MssClamp | None = None,
    wireguard: TearsDown | None = None,
    remove_keys: bool = True,
    vxlan_dev: str | None = None,
    vxlan_vni: int = DEFAULT_VXLAN_VNI,
    vxlan_port: int = DEFAULT_VXLAN_PORT,
) -> CleanupReport:
    """Remove Raven's rule(s), routes, VXLAN link ``vxlan_dev`` (when it is ours), MSS clamp and
    WireGuard device (+ keys). ``vxlan_vni``/``vxlan_port`` recognise an unstamped link of ours."""
    report = CleanupReport()
    # The rule goes first, so lookups stop reaching our table before it empties.
    try:
        report.rules_deleted = len(RuleReconciler(ipr).remove_all().deleted)
    except NetlinkError as e:
        report.failures["rules"] = str(e)
    try:
        report.routes_deleted = len(RouteReconciler(ipr, tables=tables).remove_all().deleted)
    except NetlinkError as e:
        report.failures["routes"] = str(e)
    if vxlan_dev is not None:
        # After the routes, which may point into it.
        try:
            vxlan = VxlanReconciler(ipr, vxlan_dev, vni=vxlan_vni, port=vxlan_port)
            report.vxlan_removed = vxlan.remove()
        except NetlinkError as e:
            report.failures["vxlan"] = str(e)
    try:
        report.mss_removed = (mss or MssClamp()).remove()
    except NetlinkError as e:
        report.failures["mss clamp"] = str(e)
    if wireguard is not None:
        try:
            report.wireguard_removed = wireguard.teardown(remove_keys=remove_keys)
        except Exception as e:  # noqa: BLE001 - report every part, then fail once
            report.failures["wireguard"] = f"{type(e).__name__}: {e}"
    return report
