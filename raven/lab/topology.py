"""Lab topology: the YAML schema, its validation, and every name and address derived from it.

A topology file describes the simulated Internet segment, the pools (public, or a LAN behind a
NAT router, optionally with more subnets behind a LAN router: a routed LAN whose nodes are not
all on-link with each other) and the nodes. Everything else the lab builds -- namespace names,
interface names, addresses, pods -- is derived here, deterministically, so ``up``, ``status``
and ``down`` agree and a bad file is refused before anything is created.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# The simulated Internet lives in the first half of 198.18.0.0/15 (RFC 2544 benchmark space);
# the second half is reserved for the one host<->lab veth of each lab (see hostlink_subnet).
INTERNET_RANGE = ipaddress.IPv4Network("198.18.0.0/16")
HOSTLINK_RANGE = ipaddress.IPv4Network("198.19.0.0/16")

IFNAMSIZ = 15  # the kernel's limit on interface names (IFNAMSIZ - 1 for the NUL)
NETNS_NAME_MAX = 255  # a netns name is a file name under /run/netns
_DNS_LABELISH = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,7}$")

# Fixed interface names inside lab namespaces. Names derived from node and pool names only appear
# on the switch side, so a node name is also the name of its port on the segment it is plugged into.
UPLINK_IF = "eth0"  # node/router/api uplink to its segment
POD_IF = "pod0"  # node side of the veth to its pod
POD_INNER_IF = "eth0"  # pod side
BRIDGE_IF = "br0"  # the switch of a segment (Internet segment, or a pool's LAN in its router)
# A routed LAN's extra subnets are bridges br1, br2, ... in the site's LAN router, whose uplink
# port on the NAT router's LAN is "lr-<pool>".
LAN_ROUTER_PORT = "lr-{pool}"
API_PORT_IF = "_api"  # the API server's port on the Internet switch
HOST_PORT_IF = "_host"  # lab side of the host veth, in the API server namespace


class TopologyError(ValueError):
    """A topology file that cannot be built; each problem names its field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("bad topology:\n  " + "\n  ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PoolSpec(_Strict):
    name: str = Field(description="Node pool name (the apps.openyurt.io/nodepool label value).")
    public: bool = Field(
        default=False,
        description="Nodes sit directly on the Internet segment with public addresses.",
    )
    lan: ipaddress.IPv4Network | None = Field(
        default=None, description="The pool's LAN behind its NAT router (required unless public)."
    )
    subnets: list[ipaddress.IPv4Network] = Field(
        default_factory=list,
        description="More subnets of the site, each its own segment behind the site's LAN "
        "router (which sits on 'lan' and routes between them): nodes on different segments are "
        "not on-link with each other. Only for a pool behind NAT.",
    )
    relay: bool = Field(
        default=False,
        description="The lab pre-creates this pool's Gateway with spec.relay: true, so its "
        "gateway is the relay every other pool dials (must be public; at most one pool).",
    )


class NodeSpec(_Strict):
    name: str
    pool: str
    pod_cidr: ipaddress.IPv4Network = Field(alias="podCIDR")
    subnet: ipaddress.IPv4Network | None = Field(
        default=None,
        description="The segment the node is plugged into: its pool's 'lan' (the default) or "
        "one of the pool's 'subnets'.",
    )


class ApiServerSpec(_Strict):
    port: int = Field(default=6443, ge=1, le=65535)


class TopologySpec(_Strict):
    name: str = "lab"
    internet: ipaddress.IPv4Network = ipaddress.IPv4Network("198.18.0.0/24")
    apiserver: ApiServerSpec = ApiServerSpec()
    pools: list[PoolSpec]
    nodes: list[NodeSpec]


# ---- derived, resolved view -------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    pool: str
    netns: str
    ip: ipaddress.IPv4Address


@dataclass(frozen=True)
class Node:
    name: str
    pool: str
    netns: str
    ip: ipaddress.IPv4Address  # InternalIP: LAN address, or public address for a public pool
    prefixlen: int  # of the segment the node is on
    gateway: ipaddress.IPv4Address | None  # default route (the NAT router) for LAN nodes
    switch_netns: str  # namespace holding the bridge this node's uplink is plugged into
    pod_cidr: ipaddress.IPv4Network
    pod_gateway: ipaddress.IPv4Address  # node-side address on the pod veth (first host of CIDR)
    pod: Pod
    index: int  # position in the topology; used for short host-unique names (WireGuard)
    bridge: str = BRIDGE_IF  # the bridge in switch_netns this node's uplink is a port of
    # Next hop towards the pool's nodes on other segments (a routed LAN's LAN router), or None
    # when the whole pool is on one segment.
    lan_gateway: ipaddress.IPv4Address | None = None


@dataclass(frozen=True)
class Router:
    pool: str
    netns: str
    public_ip: ipaddress.IPv4Address
    lan: ipaddress.IPv4Network
    lan_ip: ipaddress.IPv4Address
    port: str  # its port name on the Internet switch


@dataclass(frozen=True)
class Segment:
    """One extra subnet of a routed LAN: a bridge in the LAN router."""

    network: ipaddress.IPv4Network
    bridge: str
    router_ip: ipaddress.IPv4Address  # the LAN router's address on it: its nodes' default route


@dataclass(frozen=True)
class LanRouter:
    """The router inside a site that joins the LAN and the site's extra subnets."""

    pool: str
    netns: str
    lan_ip: ipaddress.IPv4Address  # its address on the NAT router's LAN
    nat_ip: ipaddress.IPv4Address  # the NAT router's LAN address: its default route
    port: str  # its port name on the NAT router's LAN bridge
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Lab:
    """Everything ``up`` builds, for one topology and one prefix."""

    prefix: str
    name: str
    internet: ipaddress.IPv4Network
    inet_netns: str
    api_netns: str
    api_ip: ipaddress.IPv4Address
    api_port: int
    pools: tuple[PoolSpec, ...]
    nodes: tuple[Node, ...]
    routers: tuple[Router, ...]
    lan_routers: tuple[LanRouter, ...] = ()

    @property
    def pods(self) -> tuple[Pod, ...]:
        return tuple(n.pod for n in self.nodes)

    @property
    def host_if(self) -> str:
        return host_if_name(self.prefix)

    def all_netns(self) -> list[str]:
        """Every namespace, in build order (switches first)."""
        names = [self.inet_netns, self.api_netns]
        names += [r.netns for r in self.routers]
        names += [r.netns for r in self.lan_routers]
        for n in self.nodes:
            names += [n.netns, n.pod.netns]
        return names

    def wg_ifname(self, node: str) -> str:
        """A host-unique WireGuard interface name (wireguard-go sockets are host-wide)."""
        idx = next(n.index for n in self.nodes if n.name == node)
        return f"{self.prefix}wg{idx}"


def check_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ValueError(
            f"lab prefix {prefix!r}: must be 1-8 lowercase letters/digits starting with a letter"
        )
    return prefix


def host_if_name(prefix: str) -> str:
    return f"{prefix}-host"


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def parse_topology(data: Any, *, source: str = "topology") -> TopologySpec:
    """Validate the raw YAML data; every error names its field, e.g. ``nodes[3].pool``."""
    if not isinstance(data, dict):
        raise TopologyError([f"{source}: expected a mapping at the top level"])
    try:
        spec = TopologySpec.model_validate(data)
    except ValidationError as e:
        raise TopologyError(
            [f"{_loc(err['loc'])}: {err['msg']}" for err in e.errors(include_url=False)]
        ) from None
    return spec


def load_topology_file(path: Path) -> TopologySpec:
    try:
        text = path.read_text()
    except OSError as e:
        raise TopologyError([f"{path}: cannot read ({e.strerror})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TopologyError([f"{path}: not valid YAML ({e})"]) from None
    return parse_topology(data, source=str(path))


def _check_name(problems: list[str], field: str, name: str, *, max_len: int, what: str) -> None:
    if not _DNS_LABELISH.match(name):
        problems.append(
            f"{field}: {name!r} must be lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    elif len(name) > max_len:
        problems.append(
            f"{field}: {name!r} is {len(name)} characters; it becomes {what}, "
            f"so at most {max_len} are allowed (the kernel limits interface names to {IFNAMSIZ})"
        )


def resolve(spec: TopologySpec, prefix: str) -> Lab:
    """Check the cross-field rules and derive every name and address. Raises TopologyError."""
    check_prefix(prefix)
    problems: list[str] = []

    # Names: a node name is its port name on its switch; a pool's router port is "nat-<pool>".
    pool_index: dict[str, int] = {}
    for i, pool in enumerate(spec.pools):
        _check_name(
            problems,
            f"pools[{i}].name",
            pool.name,
            max_len=IFNAMSIZ - 4,
            what="its NAT router's interface name 'nat-<pool>'",
        )
        if pool.name in pool_index:
            problems.append(
                f"pools[{i}].name: duplicate pool name {pool.name!r} "
                f"(also pools[{pool_index[pool.name]}])"
            )
        else:
            pool_index[pool.name] = i
        if pool.public and pool.lan is not None:
            problems.append(f"pools[{i}].lan: a public pool has no LAN (drop 'lan' or 'public')")
        if not pool.public and pool.lan is None:
            problems.append(f"pools[{i}].lan: required for a pool behind NAT (or set public: true)")
        if pool.relay and not pool.public:
            problems.append(
                f"pools[{i}].relay: the relay pool must be public (edge gateways dial it)"
            )
        if pool.subnets and pool.public:
            problems.append(
                f"pools[{i}].subnets: a public pool has no LAN, so no subnets behind one"
            )
    relays = [p.name for p in spec.pools if p.relay]
    if len(relays) > 1:
        problems.append(f"pools: at most one pool may set relay: true, got {', '.join(relays)}")
    if not spec.pools:
        problems.append("pools: at least one pool is required")

    node_index: dict[str, int] = {}
    for i, node in enumerate(spec.nodes):
        _check_name(
            problems,
            f"nodes[{i}].name",
            node.name,
            max_len=IFNAMSIZ,
            what="its port's interface name on its segment",
        )
        if node.name in node_index:
            problems.append(
                f"nodes[{i}].name: duplicate node name {node.name!r} "
                f"(also nodes[{node_index[node.name]}])"
            )
        else:
            node_index[node.name] = i
        if node.pool not in pool_index:
            known = ", ".join(p.name for p in spec.pools) or "none"
            problems.append(f"nodes[{i}].pool: unknown pool {node.pool!r} (pools: {known})")
        if node.pod_cidr.prefixlen > 30:
            problems.append(
                f"nodes[{i}].podCIDR: {node.pod_cidr} is too small (need /30 or larger)"
            )
        home = spec.pools[pool_index[node.pool]] if node.pool in pool_index else None
        if node.subnet is not None and home is not None:
            if home.public:
                problems.append(
                    f"nodes[{i}].subnet: pool {home.name} is public; its nodes sit on the "
                    "Internet segment"
                )
            elif node.subnet not in _segments(home):
                known = ", ".join(str(n) for n in _segments(home))
                problems.append(
                    f"nodes[{i}].subnet: {node.subnet} is not a segment of pool {home.name} "
                    f"(its segments: {known})"
                )
    if not spec.nodes:
        problems.append("nodes: at least one node is required")

    # Address ranges must not overlap one another (the Internet segment must also stay in range).
    if not spec.internet.subnet_of(INTERNET_RANGE):
        problems.append(f"internet: {spec.internet} must lie inside {INTERNET_RANGE}")
    ranges: list[tuple[str, ipaddress.IPv4Network]] = [
        ("internet", spec.internet),
        ("(host link range)", HOSTLINK_RANGE),
    ]
    ranges += [(f"pools[{i}].lan", p.lan) for i, p in enumerate(spec.pools) if p.lan is not None]
    ranges += [
        (f"pools[{i}].subnets[{k}]", net)
        for i, p in enumerate(spec.pools)
        for k, net in enumerate(p.subnets)
    ]
    ranges += [(f"nodes[{i}].podCIDR", n.pod_cidr) for i, n in enumerate(spec.nodes)]
    for a in range(len(ranges)):
        for b in range(a + 1, len(ranges)):
            (fa, na), (fb, nb) = ranges[a], ranges[b]
            if na.overlaps(nb):
                problems.append(f"{fb}: {nb} overlaps {fa} ({na})")

    # Enough addresses on each segment: .1 unused, .2 API server, then routers and public nodes.
    public_nodes = [
        n for n in spec.nodes if n.pool in pool_index and spec.pools[pool_index[n.pool]].public
    ]
    nat_pools = [p for p in spec.pools if not p.public]
    needed = 10 + len(nat_pools) + len(public_nodes)
    if spec.internet.num_addresses - 2 < needed:
        problems.append(f"internet: {spec.internet} is too small for {needed} addresses")
    for i, pool in enumerate(spec.pools):
        if pool.lan is None or pool.public:
            continue
        for field, net in [(f"pools[{i}].lan", pool.lan)] + [
            (f"pools[{i}].subnets[{k}]", n) for k, n in enumerate(pool.subnets)
        ]:
            members = sum(1 for n in spec.nodes if n.pool == pool.name and _segment(n, pool) == net)
            if net.num_addresses - 2 < 10 + members:
                problems.append(f"{field}: {net} is too small for {members} nodes")

    # Namespace names derived from the prefix; make sure none collide or exceed the limit.
    if not problems:
        ns_owner: dict[str, str] = {}
        candidates = [(f"{prefix}-inet", "(internet)"), (f"{prefix}-api", "(apiserver)")]
        candidates += [
            (f"{prefix}-{p.name}-nat", f"pools[{i}].name")
            for i, p in enumerate(spec.pools)
            if not p.public
        ]
        candidates += [
            (f"{prefix}-{p.name}-lan", f"pools[{i}].name")
            for i, p in enumerate(spec.pools)
            if p.subnets
        ]
        for i, n in enumerate(spec.nodes):
            candidates += [
                (f"{prefix}-{n.name}", f"nodes[{i}].name"),
                (f"{prefix}-{n.name}-pod", f"nodes[{i}].name"),
            ]
        for ns, field in candidates:
            if len(ns) > NETNS_NAME_MAX:
                problems.append(f"{field}: namespace name {ns!r} is longer than {NETNS_NAME_MAX}")
            if ns in ns_owner:
                problems.append(f"{field}: namespace name {ns!r} collides with {ns_owner[ns]}")
            ns_owner.setdefault(ns, field)

        _check_ports(spec, problems)

    if problems:
        raise TopologyError(problems)
    return _derive(spec, prefix)


def _segments(pool: PoolSpec) -> list[ipaddress.IPv4Network]:
    """The segments a LAN pool's nodes can sit on: its LAN, then its subnets."""
    return ([pool.lan] if pool.lan is not None else []) + list(pool.subnets)


def _segment(node: NodeSpec, pool: PoolSpec) -> ipaddress.IPv4Network | None:
    return node.subnet if node.subnet is not None else pool.lan


def _check_ports(spec: TopologySpec, problems: list[str]) -> None:
    """A node's port on its switch is named after the node: it must not take the name of
    another interface in that switch's namespace."""
    pools = {p.name: p for p in spec.pools}
    ports: dict[str, dict[str, str]] = {"internet": {BRIDGE_IF: "(internet switch)"}}
    ports["internet"][API_PORT_IF] = "(apiserver port)"
    for i, pool in enumerate(spec.pools):
        if pool.public:
            continue
        ports["internet"].setdefault(f"nat-{pool.name}", f"pools[{i}].name")
        ports[f"nat {pool.name}"] = {UPLINK_IF: "(router uplink)", BRIDGE_IF: "(LAN switch)"}
        if pool.subnets:
            ports[f"nat {pool.name}"][LAN_ROUTER_PORT.format(pool=pool.name)] = f"pools[{i}].name"
            ports[f"lan {pool.name}"] = {UPLINK_IF: "(LAN router uplink)"}
            for k in range(len(pool.subnets)):
                ports[f"lan {pool.name}"][f"br{k + 1}"] = f"pools[{i}].subnets[{k}]"
    for i, node in enumerate(spec.nodes):
        pool = pools[node.pool]
        if pool.public:
            switch = "internet"
        else:
            switch = f"nat {pool.name}" if _segment(node, pool) == pool.lan else f"lan {pool.name}"
        taken = ports[switch]
        if node.name in taken:
            problems.append(
                f"nodes[{i}].name: {node.name!r} is also the name of {taken[node.name]} on the "
                "switch the node is plugged into; choose another node name"
            )
        taken.setdefault(node.name, f"nodes[{i}]")


def _derive(spec: TopologySpec, prefix: str) -> Lab:
    inet_hosts = iter(spec.internet.hosts())
    next(inet_hosts)  # .1 left free
    api_ip = next(inet_hosts)
    for _ in range(7):  # .3-.9 spare, public addresses start at .10
        next(inet_hosts)
    pools = {p.name: p for p in spec.pools}

    routers: list[Router] = []
    for pool in spec.pools:
        if pool.public or pool.lan is None:
            continue
        routers.append(
            Router(
                pool=pool.name,
                netns=f"{prefix}-{pool.name}-nat",
                public_ip=next(inet_hosts),
                lan=pool.lan,
                lan_ip=pool.lan[1],
                port=f"nat-{pool.name}",
            )
        )
    router_of = {r.pool: r for r in routers}
    lan_routers = [
        LanRouter(
            pool=pool.name,
            netns=f"{prefix}-{pool.name}-lan",
            lan_ip=pool.lan[2],
            nat_ip=pool.lan[1],
            port=LAN_ROUTER_PORT.format(pool=pool.name),
            segments=tuple(
                Segment(net, f"br{k + 1}", net[1]) for k, net in enumerate(pool.subnets)
            ),
        )
        for pool in spec.pools
        if pool.subnets and pool.lan is not None and not pool.public
    ]
    lan_router_of = {r.pool: r for r in lan_routers}

    next_host: dict[ipaddress.IPv4Network, int] = {}  # per segment, hosts from .10
    nodes: list[Node] = []
    for idx, ns in enumerate(spec.nodes):
        pool = pools[ns.pool]
        bridge, lan_gw = BRIDGE_IF, None
        if pool.public:
            ip, plen, gw, switch = next(inet_hosts), spec.internet.prefixlen, None, f"{prefix}-inet"
        else:
            r = router_of[pool.name]
            net = _segment(ns, pool) or r.lan
            k = next_host.get(net, 10)
            next_host[net] = k + 1
            lr = lan_router_of.get(pool.name)
            segment = next((g for g in lr.segments if g.network == net), None) if lr else None
            if lr is None:
                ip, plen, gw, switch = r.lan[k], r.lan.prefixlen, r.lan_ip, r.netns
            elif segment is None:  # on the NAT router's LAN, with the LAN router beside it
                ip, plen, gw, switch = r.lan[k], r.lan.prefixlen, r.lan_ip, r.netns
                lan_gw = lr.lan_ip
            else:
                ip, plen, gw, switch = net[k], net.prefixlen, segment.router_ip, lr.netns
                bridge, lan_gw = segment.bridge, segment.router_ip
        pod = Pod(
            name=f"{ns.name}-pod",
            node=ns.name,
            pool=ns.pool,
            netns=f"{prefix}-{ns.name}-pod",
            ip=ns.pod_cidr[2],
        )
        nodes.append(
            Node(
                name=ns.name,
                pool=ns.pool,
                netns=f"{prefix}-{ns.name}",
                ip=ip,
                prefixlen=plen,
                gateway=gw,
                switch_netns=switch,
                pod_cidr=ns.pod_cidr,
                pod_gateway=ns.pod_cidr[1],
                pod=pod,
                index=idx,
                bridge=bridge,
                lan_gateway=lan_gw,
            )
        )
    return Lab(
        prefix=prefix,
        name=spec.name,
        internet=spec.internet,
        inet_netns=f"{prefix}-inet",
        api_netns=f"{prefix}-api",
        api_ip=api_ip,
        api_port=spec.apiserver.port,
        pools=tuple(spec.pools),
        nodes=tuple(nodes),
        routers=tuple(routers),
        lan_routers=tuple(lan_routers),
    )
