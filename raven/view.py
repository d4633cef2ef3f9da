"""The planner's inputs, built from Kubernetes objects as the API returns them. Pure, no I/O.

:func:`cluster_view` turns Node, Gateway and Lease dicts into frozen views and refuses bad
input one field of one object at a time (DESIGN.md invariant 7). It never raises, whatever the
JSON shape; every refusal is a :class:`~raven.model.Problem` naming the object and the field,
and says which pools should hear of it.

* Nodes: see raven.nodeview (malformed fields keep the last accepted value; of two clashing
  Nodes the later one loses the clashing field).
* Gateways: a malformed spec keeps the last valid one (raven.gatewayspec); a Gateway without a
  valid pool name is ignored; of two Gateways claiming ``spec.relay`` the older one is the
  relay and the later one's pool is served as an edge pool.
* Leases: a holder that is not a node name counts as no holder.
* A problem with the relay's Gateway or with the relay's gateway node concerns every pool (every
  edge gateway peers with it); any other concerns the object's own pool and any pool it clashed
  with.

What the planner and the agent read from the resulting :class:`ClusterView` is accepted data.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from raven.addresses import AddressError, IPNetwork, parse_public_key
from raven.gatewayspec import GatewaySpec, GatewaySpecError, parse_gateway_spec
from raven.model import (
    DEFAULT_RULE_PRIORITY,
    DEFAULT_TABLE,
    DEFAULT_VXLAN_PORT,
    DEFAULT_VXLAN_VNI,
    Problem,
    default_vxlan_dev,
)
from raven.names import (
    POOL_LABEL,
    PROBE_ANNOTATION,
    PUBLIC_KEY_ANNOTATION,
    TUNNEL_ENDPOINT_ANNOTATION,
    lease_name,
    valid_name,
)
from raven.nodeview import (
    NodeView,
    as_mapping,
    creation_order,
    items,
    node_from_k8s,
    read_nodes,
    short,
)

__all__ = [
    "POOL_LABEL",
    "PROBE_ANNOTATION",
    "PUBLIC_KEY_ANNOTATION",
    "TUNNEL_ENDPOINT_ANNOTATION",
    "ClusterView",
    "GatewayView",
    "Identity",
    "NodeView",
    "cluster_view",
    "gateway_from_k8s",
    "lease_holder",
    "node_from_k8s",
    "valid_public_key",
]


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
    """Everything observed and accepted. ``holders`` maps pool -> the Lease holder's node name,
    as seen; ``relay`` is the relay pool (the oldest Gateway with ``spec.relay``), or None;
    ``problems`` is every refusal, sorted."""

    nodes: tuple[NodeView, ...] = ()
    gateways: Mapping[str, GatewayView] = field(default_factory=dict)
    holders: Mapping[str, str] = field(default_factory=dict)
    relay: str | None = None
    problems: tuple[Problem, ...] = ()


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
    # They are also protected (below).
    underlay_subnets: tuple[str, ...] = ()
    # CIDRs or addresses this node must keep reaching outside Raven (the API server's address,
    # ...): no remote pod CIDR overlapping one of them, or ``underlay_subnets``, is routed here.
    protected: tuple[str, ...] = ()
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
        for name, values in (
            ("underlay_subnets", self.underlay_subnets),
            ("protected", self.protected),
        ):
            for cidr in values:
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except (ValueError, TypeError):
                    raise ValueError(f"{name} has {cidr!r}, not a CIDR or address") from None
        if not 1 <= self.vxlan_vni < 2**24:
            raise ValueError(f"vxlan_vni must be from 1 to {2**24 - 1}, got {self.vxlan_vni!r}")
        if not 1 <= self.vxlan_port <= 65535:
            raise ValueError(f"vxlan_port must be from 1 to 65535, got {self.vxlan_port!r}")

    @property
    def vxlan_name(self) -> str:
        """The VXLAN device this node uses (explicit, or derived from the WireGuard name)."""
        return self.vxlan_dev or default_vxlan_dev(self.wg_dev)

    @property
    def protected_networks(self) -> tuple[IPNetwork, ...]:
        """``protected`` and ``underlay_subnets`` as networks (an address is a /32 or /128)."""
        return tuple(
            ipaddress.ip_network(c, strict=False) for c in (*self.protected, *self.underlay_subnets)
        )

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


def valid_public_key(key: object) -> bool:
    """A WireGuard public key: canonical base64 of 32 bytes, not all zero."""
    try:
        parse_public_key(key)
    except AddressError:
        return False
    return True


def gateway_from_k8s(obj: object, *, previous: GatewayView | None = None) -> GatewayView:
    """A ``Gateway`` dict -> :class:`GatewayView`. When the spec is invalid the previous valid
    spec stays in force (bad input changes nothing else), and ``spec_error`` says why. A Gateway
    without a valid name comes back with ``pool == ""``. Never raises."""
    obj = as_mapping(obj)
    meta = as_mapping(obj.get("metadata"))
    pool = meta.get("name")
    if not valid_name(pool, limit=63):
        return GatewayView(pool="")
    assert isinstance(pool, str)
    raw_generation = meta.get("generation")
    generation = raw_generation if type(raw_generation) is int and raw_generation >= 0 else 0
    try:
        spec = parse_gateway_spec(obj.get("spec"))
    except GatewaySpecError as error:
        kept = previous.spec if previous is not None and previous.pool == pool else None
        return GatewayView(pool=pool, spec=kept, spec_error=error, generation=generation)
    return GatewayView(pool=pool, spec=spec, generation=generation)


def lease_holder(obj: object) -> str | None:
    """A ``coordination.k8s.io`` Lease dict -> its holder's node name, or None (also when the
    holder is not a valid node name). Never raises."""
    holder = as_mapping(as_mapping(obj).get("spec")).get("holderIdentity")
    return holder if valid_name(holder) else None


def _read_gateways(
    gateways: object, previous: Mapping[str, GatewayView]
) -> tuple[dict[str, GatewayView], str | None, list[Problem]]:
    """Gateways by pool, the relay pool, and what was refused."""
    problems: list[Problem] = []
    read: list[tuple[tuple[Any, ...], GatewayView]] = []
    for obj in items(gateways):
        meta = as_mapping(as_mapping(obj).get("metadata"))
        view = gateway_from_k8s(obj, previous=previous.get(str(meta.get("name"))))
        if not view.pool:
            name = meta.get("name")
            message = f"not a valid pool name, got {short(name)}; the Gateway is ignored"
            if not isinstance(obj, Mapping):
                message = f"not an object, got {short(obj)}; ignored"
            field = "metadata.name" if isinstance(obj, Mapping) else ""
            reason = "InvalidName" if isinstance(obj, Mapping) else "InvalidObject"
            problems.append(Problem("Gateway", "", field, reason, message))
            continue
        read.append(((creation_order(meta), view.pool, repr(view)), view))
    read.sort(key=lambda item: item[0])
    by_pool: dict[str, GatewayView] = {}
    relay: str | None = None
    for _, view in read:
        if view.pool in by_pool:
            message = "another Gateway of this name, created earlier, is used; this one is ignored"
            problems.append(
                Problem(
                    "Gateway", view.pool, "metadata.name", "DuplicateName", message, (view.pool,)
                )
            )
            continue
        by_pool[view.pool] = view
        if view.spec_error is not None:
            kept = "keeping the last valid spec" if view.spec is not None else "using the defaults"
            for path, text in view.spec_error.errors:
                text = text[len(path) :].lstrip(": ") if text.startswith(path) else text
                problems.append(
                    Problem(
                        "Gateway", view.pool, path, "InvalidSpec", f"{text}; {kept}", (view.pool,)
                    )
                )
        if view.spec is not None and view.spec.relay:
            if relay is None:
                relay = view.pool
            else:
                problems.append(
                    Problem(
                        "Gateway",
                        view.pool,
                        "spec.relay",
                        "DuplicateRelay",
                        f"pool {relay} is the relay already (its Gateway is older); pool"
                        f" {view.pool} is served as an edge pool",
                        (view.pool,),
                    )
                )
    return dict(sorted(by_pool.items())), relay, problems


def _read_leases(leases: object) -> tuple[dict[str, str], list[Problem]]:
    holders: dict[str, str] = {}
    problems: list[Problem] = []
    for pool, lease in sorted(
        ((p, v) for p, v in as_mapping(leases).items() if isinstance(p, str)), key=lambda i: i[0]
    ):
        raw = as_mapping(as_mapping(lease).get("spec")).get("holderIdentity")
        if raw is None or raw == "":
            continue
        if valid_name(raw):
            holders[pool] = str(raw)
            continue
        problems.append(
            Problem(
                "Lease",
                lease_name(pool),
                "spec.holderIdentity",
                "InvalidHolder",
                f"not a node name, got {short(raw)}; the pool is taken to have no holder",
                (pool,) if valid_name(pool, limit=63) else (),
            )
        )
    return holders, problems


def _widen(
    problems: Iterable[Problem],
    relay: str | None,
    relay_holder: str | None,
    everyone: tuple[str, ...],
) -> list[Problem]:
    """Problems with the relay's Gateway or the relay's gateway node concern every pool:
    every edge gateway peers with it."""
    out = []
    for problem in problems:
        if (problem.kind == "Gateway" and problem.name and problem.name == relay) or (
            problem.kind == "Node" and problem.name and problem.name == relay_holder
        ):
            problem = dataclasses.replace(problem, pools=everyone)
        out.append(problem)
    return out


def cluster_view(
    nodes: Iterable[Any],
    gateways: Iterable[Any],
    leases: Mapping[str, Any],
    *,
    pool_label: str = POOL_LABEL,
    previous: ClusterView | None = None,
) -> ClusterView:
    """Build a :class:`ClusterView` from API dicts, refusing bad input field by field (see the
    module docstring). ``leases`` maps pool -> that pool's Lease (the election module owns
    Lease naming). ``previous`` is the view this agent built last time: refused fields keep
    what it accepted. Never raises, whatever the JSON shape."""
    old_nodes = {n.name: n for n in previous.nodes} if previous is not None else {}
    old_gateways = dict(previous.gateways) if previous is not None else {}
    node_views, problems = read_nodes(nodes, pool_label, old_nodes)
    gws, relay, gateway_problems = _read_gateways(gateways, old_gateways)
    holders, lease_problems = _read_leases(leases)
    problems += gateway_problems + lease_problems
    everyone = tuple(sorted({n.pool for n in node_views if n.pool} | set(gws)))
    relay_holder = holders.get(relay) if relay is not None else None
    node_views = [
        dataclasses.replace(
            n, problems=tuple(sorted(_widen(n.problems, relay, relay_holder, everyone)))
        )
        for n in node_views
    ]
    problems += [p for n in node_views for p in n.problems]
    problems = _widen(problems, relay, relay_holder, everyone)
    return ClusterView(
        nodes=tuple(sorted(node_views, key=lambda n: n.name)),
        gateways=gws,
        holders=holders,
        relay=relay,
        problems=tuple(sorted(set(problems))),
    )
