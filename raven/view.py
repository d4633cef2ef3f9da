"""The planner's inputs: what the cluster looks like and who this node is, plus pure builders.

The builders turn Kubernetes JSON dicts (as the API returns them: Node, Gateway, Lease) into
frozen views. Bad data in one object never raises here: it becomes ``None``/empty plus a
``problems`` entry so the planner can refuse just that part and say why. No I/O.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from raven.gatewayspec import GatewaySpec, GatewaySpecError, parse_gateway_spec
from raven.model import (
    DEFAULT_RULE_PRIORITY,
    DEFAULT_TABLE,
    DEFAULT_VXLAN_PORT,
    DEFAULT_VXLAN_VNI,
    default_vxlan_dev,
)
from raven.names import POOL_LABEL, PUBLIC_KEY_ANNOTATION, TUNNEL_ENDPOINT_ANNOTATION


@dataclass(frozen=True)
class NodeView:
    """One Node as the planner needs it. ``pod_cidrs`` are normalised (``with_prefixlen``)."""

    name: str
    pool: str | None = None
    internal_ip: str | None = None
    pod_cidrs: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    public_key: str | None = None  # WireGuard public key (base64), None until published/valid
    tunnel_endpoint: str | None = None  # host:port the node's tunnel is reachable at, if known
    ready: bool = True
    problems: tuple[str, ...] = ()  # what the builder refused in this Node's data


@dataclass(frozen=True)
class GatewayView:
    """A pool's Gateway object. ``spec`` is what to use: the parsed spec, or, when the current
    one is invalid, the last valid one (if any). ``spec_error`` says why the current one is bad."""

    pool: str
    spec: GatewaySpec | None = None
    spec_error: GatewaySpecError | None = None
    generation: int = 0


@dataclass(frozen=True)
class ClusterView:
    """Everything observed. ``holders`` maps pool -> the Lease holder's node name, as seen."""

    nodes: tuple[NodeView, ...] = ()
    gateways: Mapping[str, GatewayView] = field(default_factory=dict)
    holders: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Identity:
    """Who this node is and the local facts the plan depends on (inputs, never looked up)."""

    node_name: str
    underlay_dev: str  # interface members send cross-pool traffic out of, towards the gateway
    wg_dev: str  # this node's WireGuard interface name (unique on the host)
    underlay_mtu: int = 1500
    underlay_family: int = 4  # 4 or 6: the tunnel's outer header size depends on it
    # Subnets directly connected on ``underlay_dev`` (CIDRs, from the kernel's addresses). The
    # pool gateway is on-link when its InternalIP lies in one of them; else members reach it
    # over Raven's VXLAN link. Empty means unknown: the gateway is taken to be on-link.
    underlay_subnets: tuple[str, ...] = ()
    gateway_onlink: bool | None = None  # None: decided from underlay_subnets; True/False: forced
    vxlan_dev: str | None = None  # Raven's VXLAN link; None: raven.model.default_vxlan_dev(wg_dev)
    vxlan_vni: int = DEFAULT_VXLAN_VNI
    vxlan_port: int = DEFAULT_VXLAN_PORT
    table: int = DEFAULT_TABLE
    rule_priority: int = DEFAULT_RULE_PRIORITY

    def __post_init__(self) -> None:
        if self.underlay_family not in (4, 6):
            raise ValueError(f"underlay_family must be 4 or 6, got {self.underlay_family!r}")
        if not 1280 <= self.underlay_mtu <= 65535:
            raise ValueError(f"underlay_mtu must be from 1280 to 65535, got {self.underlay_mtu!r}")
        for cidr in self.underlay_subnets:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"underlay_subnets has {cidr!r}, not a CIDR") from None
        if not 1 <= self.vxlan_vni < 2**24:
            raise ValueError(f"vxlan_vni must be from 1 to {2**24 - 1}, got {self.vxlan_vni!r}")
        if not 1 <= self.vxlan_port <= 65535:
            raise ValueError(f"vxlan_port must be from 1 to 65535, got {self.vxlan_port!r}")

    @property
    def vxlan_name(self) -> str:
        """The VXLAN device this node uses (explicit, or derived from the WireGuard name)."""
        return self.vxlan_dev or default_vxlan_dev(self.wg_dev)

    def gateway_on_link(self, address: str) -> bool:
        """Is the pool gateway at ``address`` directly reachable on the underlay (no router in
        between)? ``gateway_onlink`` overrides; unknown subnets count as on-link."""
        if self.gateway_onlink is not None:
            return self.gateway_onlink
        return self.on_underlay(address)

    def on_underlay(self, address: str) -> bool:
        """Does ``address`` lie in a subnet connected on the underlay (unknown subnets: yes)?"""
        if not self.underlay_subnets:
            return True
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(c, strict=False) for c in self.underlay_subnets)


def valid_public_key(key: str) -> bool:
    """A WireGuard public key: base64 of exactly 32 bytes."""
    try:
        return len(base64.b64decode(key, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _internal_ip(addresses: Iterable[Mapping[str, Any]]) -> str | None:
    for address in addresses:
        if address.get("type") == "InternalIP":
            try:
                return str(ipaddress.ip_address(address.get("address", "")))
            except ValueError:
                continue
    return None


def node_from_k8s(obj: Mapping[str, Any], *, pool_label: str = POOL_LABEL) -> NodeView:
    """A ``Node`` dict -> :class:`NodeView`. Bad CIDRs and keys are dropped and noted."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    name = str(meta.get("name", ""))
    labels = dict(meta.get("labels") or {})
    annotations = meta.get("annotations") or {}
    problems = []

    cidrs = []
    for raw in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []):
        try:
            cidrs.append(ipaddress.ip_network(raw, strict=False).with_prefixlen)
        except (ValueError, TypeError):
            problems.append(f"node {name}: spec.podCIDRs has {raw!r}, not a CIDR; ignored")

    key = annotations.get(PUBLIC_KEY_ANNOTATION) or None
    if key is not None and not valid_public_key(key):
        problems.append(
            f"node {name}: annotation {PUBLIC_KEY_ANNOTATION} is not a WireGuard public key"
            f" (base64 of 32 bytes), got {key!r}; ignored"
        )
        key = None

    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return NodeView(
        name=name,
        pool=labels.get(pool_label) or None,
        internal_ip=_internal_ip(status.get("addresses") or []),
        pod_cidrs=tuple(sorted(set(cidrs))),
        labels=labels,
        public_key=key,
        tunnel_endpoint=annotations.get(TUNNEL_ENDPOINT_ANNOTATION) or None,
        ready=ready,
        problems=tuple(problems),
    )


def gateway_from_k8s(obj: Mapping[str, Any], *, previous: GatewayView | None = None) -> GatewayView:
    """A ``Gateway`` dict -> :class:`GatewayView`. When the spec is invalid the previous valid
    spec stays in force (bad input changes nothing else), and ``spec_error`` says why."""
    meta = obj.get("metadata") or {}
    pool = str(meta.get("name", ""))
    generation = int(meta.get("generation") or 0)
    try:
        spec = parse_gateway_spec(obj.get("spec"))
    except GatewaySpecError as error:
        kept = previous.spec if previous is not None and previous.pool == pool else None
        return GatewayView(pool=pool, spec=kept, spec_error=error, generation=generation)
    return GatewayView(pool=pool, spec=spec, generation=generation)


def lease_holder(obj: Mapping[str, Any] | None) -> str | None:
    """A ``coordination.k8s.io`` Lease dict -> its holder's node name, or None."""
    if not obj:
        return None
    return (obj.get("spec") or {}).get("holderIdentity") or None


def cluster_view(
    nodes: Iterable[Mapping[str, Any]],
    gateways: Iterable[Mapping[str, Any]],
    leases: Mapping[str, Mapping[str, Any]],
    *,
    pool_label: str = POOL_LABEL,
    previous: ClusterView | None = None,
) -> ClusterView:
    """Build a :class:`ClusterView` from API dicts. ``leases`` maps pool -> that pool's Lease
    (the election module owns Lease naming). ``previous`` supplies last valid Gateway specs."""
    old = previous.gateways if previous is not None else {}
    gws = {}
    for obj in gateways:
        pool = str((obj.get("metadata") or {}).get("name", ""))
        gws[pool] = gateway_from_k8s(obj, previous=old.get(pool))
    holders = {pool: h for pool, lease in leases.items() if (h := lease_holder(lease))}
    node_views = sorted((node_from_k8s(n, pool_label=pool_label) for n in nodes), key=_by_name)
    return ClusterView(
        nodes=tuple(node_views),
        gateways=dict(sorted(gws.items())),
        holders=dict(sorted(holders.items())),
    )


def _by_name(node: NodeView) -> str:
    return node.name
