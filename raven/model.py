"""Data-path values that the planner produces and the reconcilers apply.

Plain frozen dataclasses, never pyroute2 messages, so the planner runs and is tested anywhere
and two plans compare with ``==``. Everything sorts, so equal input gives equal output.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from raven.addresses import endpoint_hostname

#: Raven's own routing table, and the priority of the one rule that sends lookups to it.
#: Both sit clear of the kernel's defaults (local 0, main 32766, default 32767) and of the
#: ranges CNIs commonly use.
DEFAULT_TABLE = 9027
DEFAULT_RULE_PRIORITY = 9027
#: The rtproto Raven stamps on its routes, so a restarted agent finds its own entries.
RAVEN_RTPROTO = 149
#: Raven's VXLAN link towards a pool gateway that is not on-link: its VNI and UDP port. The port
#: stays clear of 4789 and 8472, which CNIs (Flannel, Calico, Cilium) use for their own VXLAN.
DEFAULT_VXLAN_VNI = 9027
DEFAULT_VXLAN_PORT = 4790


def default_vxlan_dev(wg_dev: str) -> str:
    """The VXLAN device name that goes with a WireGuard device name: its last ``wg`` becomes
    ``vx`` (``rlwg3`` -> ``rlvx3``), else ``-vx`` is appended (``raven0`` -> ``raven0-vx``)."""
    head, sep, tail = wg_dev.rpartition("wg")
    if sep:
        return f"{head}vx{tail}"
    return f"{wg_dev[:12]}-vx"


class Role(enum.StrEnum):
    """What this node does for its pool."""

    NONE = "none"  # not in any pool, or its pool cannot be served: Raven leaves it alone
    MEMBER = "member"  # steers remote pools' CIDRs to the pool gateway
    GATEWAY = "gateway"  # carries the pool's cross-pool traffic through WireGuard
    RELAY = "relay"  # gateway of the relay pool: one peer per pool gateway


@dataclass(frozen=True, order=True)
class RouteSpec:
    """One route in Raven's table. Identity: (table, dst)."""

    dst: str  # CIDR, normalised (ipaddress.ip_network(..).with_prefixlen)
    table: int = DEFAULT_TABLE
    gateway: str | None = None  # next hop; None for a route straight into ``dev``
    dev: str | None = None  # output interface by name; None lets the kernel pick by gateway
    onlink: bool = False
    mtu: int | None = None

    @property
    def key(self) -> tuple[int, str]:
        return (self.table, self.dst)


@dataclass(frozen=True, order=True)
class RuleSpec:
    """One policy rule: lookups at ``priority`` go to ``table``. Identity: (priority, table)."""

    priority: int = DEFAULT_RULE_PRIORITY
    table: int = DEFAULT_TABLE
    family: int = 4

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.family, self.priority, self.table)


@dataclass(frozen=True, order=True)
class PeerSpec:
    """One WireGuard peer. Identity: the public key.

    ``endpoint`` is validated and canonical: ``1.2.3.4:9`` or ``[2001:db8::1]:9`` (as
    ``wg show`` prints it), or ``name:9`` when a Gateway's ``spec.endpoint`` names a host. The
    planner never resolves names; :attr:`endpoint_hostname` says when the caller must (off its
    event loop) before handing the peer to ``wg``.
    """

    public_key: str
    allowed_ips: tuple[str, ...] = ()  # sorted CIDRs
    endpoint: str | None = None  # host:port to dial; None lets the peer find us (NAT'd edge)
    persistent_keepalive: int = 0  # seconds, 0 = off

    @property
    def key(self) -> str:
        return self.public_key

    @property
    def endpoint_hostname(self) -> str | None:
        """The DNS name to resolve before dialling, or None (an IP literal, or no endpoint)."""
        return endpoint_hostname(self.endpoint) if self.endpoint is not None else None


@dataclass(frozen=True, order=True)
class VxlanPeer:
    """A node reached over Raven's VXLAN link: its underlay address and its VXLAN MAC."""

    ip: str
    mac: str


@dataclass(frozen=True)
class VxlanSpec:
    """Raven's VXLAN link. A member whose pool gateway is not on-link sends cross-pool packets
    over it (``peers`` = that gateway); a gateway has one to decapsulate them (no peers: its
    replies go back by the CNI's routes in the main table)."""

    dev: str
    vni: int = DEFAULT_VXLAN_VNI
    port: int = DEFAULT_VXLAN_PORT
    local: str = ""  # this node's underlay address (InternalIP), the outer source
    mac: str = ""  # this node's VXLAN MAC, derived from ``local`` (raven.plan.vxlan_mac)
    mtu: int = 1450  # underlay MTU - VXLAN overhead (raven.mtu.vxlan_mtu)
    peers: tuple[VxlanPeer, ...] = ()  # sorted


@dataclass(frozen=True, order=True)
class LocalAddress:
    """One address on one of this node's links, as the kernel reports it (a plan input)."""

    address: str  # without prefix length
    prefixlen: int
    dev: str
    mtu: int
    family: int  # 4 or 6


@dataclass(frozen=True, order=True)
class Problem:
    """One piece of input refused, or one reason a plan is incomplete, naming the object and
    the field so an operator can find and fix it.

    ``kind``/``name`` name the object (``Node``, ``Gateway``, ``Lease``; ``Pool`` or ``Cluster``
    when no single object is at fault; ``name`` is "" when the object has none). ``field`` is a
    JSON path into it (``spec.podCIDRs[0]``, ``metadata.annotations[raven.io/public-key]``; ""
    for the whole object). ``reason`` is CamelCase, for a condition or an Event. ``message``
    says what is wrong and what was done about it. ``pools`` are the pools whose Gateway should
    report it: the object's own pool, the pools whose objects it clashed with, and every pool
    when the relay depends on it.
    """

    kind: str
    name: str
    field: str
    reason: str
    message: str
    pools: tuple[str, ...] = ()  # sorted

    def __str__(self) -> str:
        where = " ".join(p for p in (self.kind, self.name) if p)
        if self.field:
            where += f" {self.field}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class DesiredState:
    """Everything one node's data path should hold. Sorted tuples, compared whole."""

    role: Role = Role.NONE
    routes: tuple[RouteSpec, ...] = ()
    rules: tuple[RuleSpec, ...] = ()
    peers: tuple[PeerSpec, ...] = ()
    forwarding: bool = False
    # Sorted: the refused input and missing pieces of the pools this node's plan depends on.
    problems: tuple[Problem, ...] = field(default=())
    # Gateway/relay only (None elsewhere): the WireGuard device's UDP port (the pool's
    # spec.tunnelPort) and MTU (underlay - WireGuard overhead, see raven.mtu).
    listen_port: int | None = None
    tunnel_mtu: int | None = None
    # Raven's VXLAN link (raven.netlink.vxlan), or None when this node needs none (it is then
    # removed if present): on a member whose gateway is not on-link, and on every gateway/relay.
    vxlan: VxlanSpec | None = None
