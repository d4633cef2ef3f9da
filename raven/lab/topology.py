"""Lab topology: the YAML schema, its validation, and every name and address derived from it.

A topology file describes the simulated Internet segment, the pools (public, or a LAN behind a
NAT router) and the nodes. Everything else the lab builds -- namespace names, interface names,
addresses, pods -- is derived here, deterministically, so ``up``, ``status`` and ``down`` agree
and a bad file is refused before anything is created.
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
    relay: bool = Field(
        default=False,
        description="The lab pre-creates this pool's Gateway with spec.relay: true, so its "
        "gateway is the relay every other pool dials (must be public; at most one pool).",
    )


class NodeSpec(_Strict):
    name: str
    pool: str
    pod_cidr: ipaddress.IPv4Network = Field(alias="podCIDR")


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


@dataclass(frozen=True)
class Router:
    pool: str
    netns: str
    public_ip: ipaddress.IPv4Address
    lan: ipaddress.IPv4Network
    lan_ip: ipaddress.IPv4Address
    port: str  # its port name on the Internet switch


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
        if pool.lan is None:
            continue
        members = sum(1 for n in spec.nodes if n.pool == pool.name)
        if pool.lan.num_addresses - 2 < 10 + members:
            problems.append(f"pools[{i}].lan: {pool.lan} is too small for {members} nodes")

    # Namespace names derived from the prefix; make sure none collide or exceed the limit.
    if not problems:
        ns_owner: dict[str, str] = {}
        candidates = [(f"{prefix}-inet", "(internet)"), (f"{prefix}-api", "(apiserver)")]
        candidates += [
            (f"{prefix}-{p.name}-nat", f"pools[{i}].name")
            for i, p in enumerate(spec.pools)
            if not p.public
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

    if problems:
        raise TopologyError(problems)
    return _derive(spec, prefix)


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

    lan_next: dict[str, int] = {}
    nodes: list[Node] = []
    for idx, ns in enumerate(spec.nodes):
        pool = pools[ns.pool]
        if pool.public:
            ip, plen, gw, switch = next(inet_hosts), spec.internet.prefixlen, None, f"{prefix}-inet"
        else:
            r = router_of[pool.name]
            k = lan_next.get(pool.name, 10)
            lan_next[pool.name] = k + 1
            ip, plen, gw, switch = r.lan[k], r.lan.prefixlen, r.lan_ip, r.netns
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
    )
