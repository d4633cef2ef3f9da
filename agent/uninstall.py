"""``raven-agent --cleanup``: remove every route, rule, link (WireGuard and VXLAN), clamp and key
file Raven made, and nothing else."""

from __future__ import annotations

import logging

from agent.config import AgentSettings
from gateway.wireguard import WireGuardDevice
from raven.netlink.kernel import uninstall as uninstall_kernel_state

log = logging.getLogger("raven.agent.uninstall")


def uninstall(settings: AgentSettings) -> int:
    """Exit status: 0 when everything Raven owned is gone, 1 when some part failed."""
    report = uninstall_kernel_state(
        tables=(settings.table,),
        wireguard=WireGuardDevice(settings.wg_interface, state_dir=settings.state_dir),
        vxlan_dev=settings.vxlan_dev,
        vxlan_vni=settings.vxlan_vni,
        vxlan_port=settings.vxlan_port,
    )
    log.info(
        "removed %d routes, %d rules, vxlan %s, mss clamp %s, wireguard %s",
        report.routes_deleted,
        report.rules_deleted,
        report.vxlan_removed,
        report.mss_removed,
        report.wireguard_removed,
    )
    for part, failure in report.failures.items():
        log.error("could not remove %s: %s", part, failure)
    return 1 if report.failures else 0
