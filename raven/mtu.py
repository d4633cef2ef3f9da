"""Derive the MTU of Raven's routes, WireGuard device and VXLAN link from the underlay's MTU.

A cross-pool packet leaves its node, possibly wrapped in VXLAN to reach a gateway that is not
on-link; the gateway unwraps it and wraps it in WireGuard. The wraps come one after the other,
never nested, so the inner packet must fit after each of them on its own, and the route MTU is
the underlay MTU minus the larger overhead on the way:

* WireGuard: outer IP header + UDP 8 + WireGuard 32 = 60 over an IPv4 underlay, 80 over IPv6.
* VXLAN (member to gateway when not on-link): outer IP header + UDP 8 + VXLAN 8 + inner Ethernet
  14 = 50 over an IPv4 underlay, 70 over IPv6.

Both hops are assumed to share the underlay MTU, so going through VXLAN costs no route MTU
(WireGuard's overhead is the larger one); the VXLAN link itself gets underlay - VXLAN overhead.
The gateway also clamps TCP MSS; that lives in the gateway's reconciler, not here.
"""

from __future__ import annotations

WIREGUARD_OVERHEAD = {4: 60, 6: 80}
VXLAN_OVERHEAD = {4: 50, 6: 70}


def _check_family(underlay_family: int) -> None:
    if underlay_family not in WIREGUARD_OVERHEAD:
        raise ValueError(f"underlay_family must be 4 or 6, got {underlay_family!r}")


def tunnel_mtu(underlay_mtu: int, *, underlay_family: int = 4) -> int:
    """MTU of the WireGuard device and of routes into it."""
    _check_family(underlay_family)
    return underlay_mtu - WIREGUARD_OVERHEAD[underlay_family]


def vxlan_mtu(underlay_mtu: int, *, underlay_family: int = 4) -> int:
    """MTU of Raven's VXLAN link: what fits in one underlay packet after the VXLAN wrap."""
    _check_family(underlay_family)
    return underlay_mtu - VXLAN_OVERHEAD[underlay_family]


def route_mtu(underlay_mtu: int, *, underlay_family: int = 4, over_vxlan: bool = False) -> int:
    """MTU of a member's route towards its pool gateway: what fits through every hop."""
    mtu = tunnel_mtu(underlay_mtu, underlay_family=underlay_family)
    if over_vxlan:
        return min(mtu, vxlan_mtu(underlay_mtu, underlay_family=underlay_family))
    return mtu
