"""Derive the MTU of Raven's routes and WireGuard device from the underlay's MTU.

A cross-pool packet leaves its node (possibly wrapped in VXLAN to reach a gateway that is not
on-link), then the gateway wraps it in WireGuard. The inner packet must fit after every wrap, so
the route MTU is the underlay MTU minus each overhead on the way:

* WireGuard: outer IP header + UDP 8 + WireGuard 32 = 60 over an IPv4 underlay, 80 over IPv6.
* VXLAN (member to gateway when not on-link): outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
  = 50. Subtracted on top of WireGuard's: both hops are assumed to share the underlay MTU, and
  being a little conservative costs a few bytes per packet, never a black hole.

The gateway also clamps TCP MSS; that lives in the gateway's reconciler, not here.
"""

from __future__ import annotations

WIREGUARD_OVERHEAD = {4: 60, 6: 80}
VXLAN_OVERHEAD = 50


def tunnel_mtu(underlay_mtu: int, *, underlay_family: int = 4) -> int:
    """MTU of the WireGuard device and of routes into it."""
    if underlay_family not in WIREGUARD_OVERHEAD:
        raise ValueError(f"underlay_family must be 4 or 6, got {underlay_family!r}")
    return underlay_mtu - WIREGUARD_OVERHEAD[underlay_family]


def route_mtu(underlay_mtu: int, *, underlay_family: int = 4, over_vxlan: bool = False) -> int:
    """MTU of a member's route towards its pool gateway."""
    mtu = tunnel_mtu(underlay_mtu, underlay_family=underlay_family)
    return mtu - VXLAN_OVERHEAD if over_vxlan else mtu
