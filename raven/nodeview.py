"""One Node as the planner needs it (:class:`NodeView`), read from the Node's JSON and checked
against the other Nodes. Pure, no I/O, never raises. (raven.view builds the whole picture.)

* **One object alone.** A field that is malformed or absurd is refused: pod CIDRs that are not
  CIDRs, wider than a /8 (IPv6 /32) or touching loopback, link-local, multicast, unspecified or
  reserved space (:func:`raven.addresses.parse_pod_cidr`); an InternalIP that is not a unicast
  address; a public key that is not canonical base64 of 32 bytes; a tunnel endpoint that is not
  an IP literal and a port; a probe address that is not an IP inside the node's own accepted pod
  CIDRs; a pool label that is not a valid object name. Such a field keeps the value accepted the
  last time (``previous``), so a pool that depends on it keeps its last good state; without
  one it is dropped.
* **Between Nodes.** When two Nodes clash, the one created later (``creationTimestamp``, then
  name; a missing or unreadable timestamp counts as latest) loses just the clashing field, so
  every agent decides alike whatever its history: a pod CIDR overlapping an accepted pod CIDR
  of another pool (overlaps inside one pool are harmless: one gateway carries both), a pod CIDR
  containing any node's InternalIP, an InternalIP inside an accepted pod CIDR or already another
  node's, a public key another node already publishes, a name seen twice. These refusals do not
  fall back to ``previous``: the other object is right.

Every refusal is a :class:`~raven.model.Problem` naming the Node and the field.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from raven.addresses import (
    AddressError,
    IPAddress,
    IPNetwork,
    parse_endpoint,
    parse_ip,
    parse_pod_cidr,
    parse_public_key,
    unicast_problem,
)
from raven.model import Problem
from raven.names import (
    POOL_LABEL,
    PROBE_ANNOTATION,
    PUBLIC_KEY_ANNOTATION,
    TUNNEL_ENDPOINT_ANNOTATION,
    valid_name,
)


@dataclass(frozen=True)
class NodeView:
    """One Node as the planner needs it: accepted values only (None/empty where refused).
    ``pod_cidrs`` are normalised (``with_prefixlen``), endpoints canonical."""

    name: str
    pool: str | None = None
    internal_ip: str | None = None
    pod_cidrs: tuple[str, ...] = ()
    # Pod CIDRs the node claims that were refused for clashing with another node's data: its
    # pods may still use them, so its own pool must not route anything overlapping them.
    clashing_cidrs: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    public_key: str | None = None  # WireGuard public key (base64), None until published/valid
    tunnel_endpoint: str | None = None  # ip:port the node's tunnel is reachable at, if known
    probe_address: str | None = None  # an address inside pod_cidrs that answers tunnel probes
    ready: bool = True
    problems: tuple[Problem, ...] = ()  # what was refused in this Node's data


def as_mapping(value: object) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


def creation_order(meta: Mapping[Any, Any]) -> tuple[int, float]:
    """Sort key for "created earlier": a readable creationTimestamp, else last."""
    raw = meta.get("creationTimestamp")
    if isinstance(raw, str) and raw.isascii():
        try:
            stamp = dt.datetime.fromisoformat(raw)
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=dt.UTC)
            return (0, stamp.timestamp())
        except (ValueError, OverflowError, OSError):
            pass
    return (1, 0.0)


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def short(value: object) -> str:
    """``value`` for a message: its repr, cut at 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def items(values: object) -> list[Any]:
    """The objects in a list (or a dict's values); nothing for anything else."""
    if isinstance(values, Mapping):
        return list(values.values())
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        return []
    return list(values)


@dataclass
class _Draft:
    """A Node being read: its fields so far, plus what the checks between Nodes need. The
    frozen NodeView is made once, at the end (:func:`_finish`)."""

    name: str
    created: tuple[int, float]
    pool: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    addresses: list[tuple[str, IPAddress]] = field(default_factory=list)  # (field, InternalIP)
    cidrs: list[tuple[str, IPNetwork]] = field(default_factory=list)  # (field, pod CIDR)
    clashing: list[IPNetwork] = field(default_factory=list)  # pod CIDRs refused for a clash
    public_key: str | None = None
    tunnel_endpoint: str | None = None
    probe: tuple[str, IPAddress] | None = None  # (field, address) to check against the CIDRs
    probe_address: str | None = None  # the probe address accepted
    old_probe: str | None = None  # the probe address last accepted, to keep if this one fails
    ready: bool = False
    problems: list[Problem] = field(default_factory=list)

    def refuse(self, field: str, reason: str, message: str, *pools: str | None) -> None:
        names = tuple(sorted({p for p in (self.pool, *pools) if p}))
        self.problems.append(Problem("Node", self.name, field, reason, message, names))


def _ann(key: str) -> str:
    return f"metadata.annotations[{key}]"


def _kept(what: str, value: object) -> str:
    return f"keeping the {what} last accepted ({value})" if value else "ignored"


def _read_node(
    obj: object, pool_label: str, previous: Mapping[str, NodeView]
) -> tuple[_Draft | None, list[Problem]]:
    """One Node dict -> a draft, or None (and why) when it cannot even be named."""
    if not isinstance(obj, Mapping):
        return None, [
            Problem("Node", "", "", "InvalidObject", f"not an object, got {short(obj)}; ignored")
        ]
    meta = as_mapping(obj.get("metadata"))
    name = meta.get("name")
    if not valid_name(name):
        message = f"not a valid Node name, got {short(name)}; the Node is ignored"
        return None, [Problem("Node", "", "metadata.name", "InvalidName", message)]
    assert isinstance(name, str)
    old = previous.get(name)
    draft = _Draft(name, creation_order(meta))

    raw_labels = meta.get("labels")
    if raw_labels is not None and not isinstance(raw_labels, Mapping):
        draft.refuse("metadata.labels", "InvalidLabels", f"not an object, got {short(raw_labels)}")
    labels = as_mapping(raw_labels)
    draft.labels = {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}
    raw_pool = labels.get(pool_label)
    if raw_pool is not None and raw_pool != "":
        if valid_name(raw_pool, limit=63):
            draft.pool = str(raw_pool)
        else:
            draft.pool = old.pool if old is not None else None
            draft.refuse(
                f"metadata.labels[{pool_label}]",
                "InvalidPoolLabel",
                f"not a valid pool name (a lower-case DNS name of at most 63 characters), got"
                f" {short(raw_pool)}; "
                + (f"keeping pool {draft.pool}" if draft.pool else "in no pool"),
            )

    status = as_mapping(obj.get("status"))
    _read_addresses(draft, status.get("addresses"), old)
    draft.ready = any(
        isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in as_list(status.get("conditions"))
    )
    _read_pod_cidrs(draft, as_mapping(obj.get("spec")), old)

    raw_annotations = meta.get("annotations")
    annotations = as_mapping(raw_annotations)
    broken = raw_annotations is not None and not isinstance(raw_annotations, Mapping)
    if broken:
        draft.refuse(
            "metadata.annotations",
            "InvalidAnnotations",
            f"not an object, got {short(raw_annotations)}; "
            + ("keeping what was last accepted" if old is not None else "ignored"),
        )
    draft.public_key = _read_annotation(
        draft, annotations, PUBLIC_KEY_ANNOTATION, "InvalidPublicKey", "public key",
        parse_public_key, old.public_key if old else None, broken,
    )  # fmt: skip
    draft.tunnel_endpoint = _read_annotation(
        draft, annotations, TUNNEL_ENDPOINT_ANNOTATION, "InvalidTunnelEndpoint", "endpoint",
        lambda v: parse_endpoint(v, hostname_ok=False), old.tunnel_endpoint if old else None,
        broken,
    )  # fmt: skip
    probe = _read_annotation(
        draft, annotations, PROBE_ANNOTATION, "InvalidProbeAddress", "probe address",
        lambda v: str(parse_ip(v)), old.probe_address if old else None, broken,
    )  # fmt: skip
    if probe is not None:
        draft.probe = (_ann(PROBE_ANNOTATION), parse_ip(probe))
    draft.old_probe = old.probe_address if old is not None else None
    return draft, []


def _read_addresses(draft: _Draft, raw: object, old: NodeView | None) -> None:
    """status.addresses -> draft.addresses: the valid InternalIPs, in order (the first is the
    one used)."""
    if raw is not None and not isinstance(raw, list):
        kept = old.internal_ip if old is not None else None
        draft.refuse(
            "status.addresses",
            "InvalidInternalIP",
            f"not a list, got {short(raw)}; {_kept('InternalIP', kept)}",
        )
        if kept is not None:
            draft.addresses.append(("status.addresses", ipaddress.ip_address(kept)))
        return
    refused = False
    for index, entry in enumerate(as_list(raw)):
        if not isinstance(entry, Mapping) or entry.get("type") != "InternalIP":
            continue
        path = f"status.addresses[{index}].address"
        try:
            ip = parse_ip(entry.get("address"))
            why = unicast_problem(ip)
            if why is not None:
                raise AddressError(f"{why}, which no node can have")
        except AddressError as error:
            refused = True
            draft.refuse(path, "InvalidInternalIP", f"{error}; ignored")
            continue
        if all(ip != known for _, known in draft.addresses):
            draft.addresses.append((path, ip))
    if not draft.addresses and refused and old is not None and old.internal_ip is not None:
        draft.addresses.append(("status.addresses", ipaddress.ip_address(old.internal_ip)))


def _read_pod_cidrs(draft: _Draft, spec: Mapping[Any, Any], old: NodeView | None) -> None:
    """spec.podCIDRs (or the older spec.podCIDR) -> draft.cidrs. When any is refused and the
    Node had accepted CIDRs before, those stay (a pod CIDR never changes on a real cluster, so
    a bad one is an edit gone wrong)."""
    raw = spec.get("podCIDRs")
    entries: list[tuple[str, object]] = []
    bad: list[tuple[str, str]] = []
    if isinstance(raw, list) and raw:
        entries = [(f"spec.podCIDRs[{i}]", value) for i, value in enumerate(raw)]
    elif raw is not None and not isinstance(raw, list):
        bad.append(("spec.podCIDRs", f"not a list, got {short(raw)}"))
    if not entries and spec.get("podCIDR") not in (None, ""):
        entries = [("spec.podCIDR", spec.get("podCIDR"))]
    for path, value in entries:
        try:
            net = parse_pod_cidr(value)
        except AddressError as error:
            bad.append((path, str(error)))
            continue
        if all(net != known for _, known in draft.cidrs):
            draft.cidrs.append((path, net))
    if bad and old is not None and old.pod_cidrs:
        draft.cidrs = [("spec.podCIDRs", ipaddress.ip_network(c)) for c in old.pod_cidrs]
        tail = f"keeping the pod CIDRs last accepted ({', '.join(old.pod_cidrs)})"
    else:
        tail = "refused: no pool routes it"
    for path, message in bad:
        draft.refuse(path, "InvalidPodCIDR", f"{message}; {tail}")


def _read_annotation(
    draft: _Draft,
    annotations: Mapping[Any, Any],
    key: str,
    reason: str,
    what: str,
    parse: Any,
    old: str | None,
    broken: bool,
) -> str | None:
    """One annotation: None when absent, its parsed value, or (refused) the last accepted."""
    if broken:
        return old
    raw = annotations.get(key)
    if raw is None or raw == "":
        return None
    try:
        return str(parse(raw))
    except AddressError as error:
        draft.refuse(_ann(key), reason, f"{error}; {_kept(what, old)}")
        return old


def node_from_k8s(
    obj: object, *, pool_label: str = POOL_LABEL, previous: NodeView | None = None
) -> NodeView:
    """A ``Node`` dict -> :class:`NodeView`, checking this object alone (no clash with other
    Nodes is seen here: :func:`cluster_view` does that). A Node that has no valid name comes
    back with ``name == ""``. Never raises."""
    old = {previous.name: previous} if previous is not None else {}
    draft, problems = _read_node(obj, pool_label, old)
    if draft is None:
        return NodeView(name="", problems=tuple(problems))
    _check_probe(draft)
    return _finish(draft)


def _check_probe(draft: _Draft) -> None:
    """The probe address must lie inside the node's accepted pod CIDRs (it is pinged through
    the tunnel); else the last accepted one, if it still does."""
    if draft.probe is None:
        return
    path, ip = draft.probe
    if any(ip in net for _, net in draft.cidrs):
        draft.probe_address = str(ip)
        return
    old = ipaddress.ip_address(draft.old_probe) if draft.old_probe else None
    kept = old is not None and any(old in net for _, net in draft.cidrs)
    draft.probe_address = draft.old_probe if kept else None
    accepted = ", ".join(str(net) for _, net in draft.cidrs) or "none"
    draft.refuse(
        path,
        "InvalidProbeAddress",
        f"{ip} is not inside the node's accepted pod CIDRs ({accepted}); "
        + (_kept("probe address", draft.old_probe) if kept else "not probed"),
    )


def _finish(draft: _Draft) -> NodeView:
    cidrs = sorted({net for _, net in draft.cidrs}, key=_net_key)
    clashing = sorted(set(draft.clashing), key=_net_key)
    own = {draft.pool} if draft.pool else set()
    problems = {
        dataclasses.replace(p, pools=tuple(sorted(set(p.pools) | own))) if own - set(p.pools)
        else p
        for p in draft.problems
    }  # fmt: skip
    return NodeView(
        name=draft.name,
        pool=draft.pool,
        internal_ip=str(draft.addresses[0][1]) if draft.addresses else None,
        pod_cidrs=tuple(net.with_prefixlen for net in cidrs),
        clashing_cidrs=tuple(net.with_prefixlen for net in clashing),
        labels=draft.labels,
        public_key=draft.public_key,
        tunnel_endpoint=draft.tunnel_endpoint,
        probe_address=draft.probe_address,
        ready=draft.ready,
        problems=tuple(sorted(problems)),
    )


def _net_key(net: IPNetwork) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


# Between Nodes ---------------------------------------------------------------------------


class _CidrIndex:
    """Accepted pod CIDRs, for "does this overlap one of another pool?" in O(log n) per check.
    CIDRs either nest or are disjoint, so an overlap is a supernet (at most one per prefix
    length in use) or a subnet (one whose start lies inside the new one)."""

    def __init__(self) -> None:
        self._owners: list[tuple[IPNetwork, _Draft]] = []  # in the order accepted
        self._exact: dict[tuple[int, int, int], list[int]] = {}  # -> indexes into _owners
        self._prefixes: dict[int, set[int]] = {4: set(), 6: set()}  # prefix lengths in use
        self._starts: dict[int, list[tuple[int, int]]] = {4: [], 6: []}  # (start, index)

    def add(self, net: IPNetwork, owner: _Draft) -> None:
        index = len(self._owners)
        self._owners.append((net, owner))
        start = int(net.network_address)
        self._exact.setdefault((net.version, net.prefixlen, start), []).append(index)
        self._prefixes[net.version].add(net.prefixlen)
        bisect.insort(self._starts[net.version], (start, index))

    def containing(self, ip: IPAddress) -> tuple[IPNetwork, _Draft] | None:
        """The earliest accepted CIDR that contains ``ip``, or None."""
        bits, value = ip.max_prefixlen, int(ip)
        found = [
            hits[0]
            for plen in self._prefixes[ip.version]
            if (
                hits := self._exact.get((ip.version, plen, value >> (bits - plen) << (bits - plen)))
            )
        ]
        return self._owners[min(found)] if found else None

    def clash(
        self, net: IPNetwork, differs: Callable[[_Draft], bool]
    ) -> tuple[IPNetwork, _Draft] | None:
        """The earliest accepted CIDR overlapping ``net`` whose owner ``differs(owner)``."""
        found: list[int] = []
        bits = net.max_prefixlen
        start = int(net.network_address)
        for plen in self._prefixes[net.version]:  # supernets of net, and net itself
            if plen <= net.prefixlen:
                mask = ((1 << plen) - 1) << (bits - plen)
                hits = self._exact.get((net.version, plen, start & mask), ())
                found += [i for i in hits if differs(self._owners[i][1])][:1]
        starts = self._starts[net.version]
        end = int(net.broadcast_address)
        at = bisect.bisect_left(starts, (start, -1))
        while at < len(starts) and starts[at][0] <= end:  # subnets of net
            index = starts[at][1]
            other, owner = self._owners[index]
            if other.prefixlen >= net.prefixlen and differs(owner):
                found.append(index)
            at += 1
        return self._owners[min(found)] if found else None


def _pool_of(draft: _Draft) -> str:
    return f"pool {draft.pool}" if draft.pool else "in no pool"


def _other_pool(pool: str | None) -> Callable[[_Draft], bool]:
    """Pod CIDRs of nodes in one pool may overlap (one gateway carries both); any other
    overlap clashes, with nodes in no pool too (their CIDRs are the cluster's all the same)."""
    return lambda owner: owner.pool != pool


class _Accepted:
    """What earlier Nodes hold: pod CIDRs, InternalIPs, public keys."""

    def __init__(self) -> None:
        self.cidrs = _CidrIndex()
        self.addresses: dict[IPAddress, _Draft] = {}
        self.sorted_ips: dict[int, list[tuple[int, IPAddress]]] = {4: [], 6: []}
        self.keys: dict[str, _Draft] = {}

    def address_in(self, net: IPNetwork) -> IPAddress | None:
        """The lowest accepted InternalIP inside ``net``, or None."""
        row = self.sorted_ips[net.version]
        at = bisect.bisect_left(row, (int(net.network_address),))
        if at < len(row) and row[at][0] <= int(net.broadcast_address):
            return row[at][1]
        return None


def _check_addresses(draft: _Draft, seen: _Accepted) -> None:
    kept = []
    for path, ip in draft.addresses:
        other = seen.addresses.get(ip)
        inside = seen.cidrs.containing(ip)
        if other is not None:
            draft.refuse(
                path,
                "DuplicateInternalIP",
                f"{ip} is already the InternalIP of node {other.name} ({_pool_of(other)}),"
                f" created earlier; refused",
                other.pool,
            )
        elif inside is not None:
            net, owner = inside
            draft.refuse(
                path,
                "InternalIPInPodCIDR",
                f"{ip} lies inside pod CIDR {net} of node {owner.name} ({_pool_of(owner)}),"
                f" created earlier, so the pools route it to that node's pods; refused",
                owner.pool,
            )
        else:
            kept.append((path, ip))
            seen.addresses[ip] = draft
            bisect.insort(seen.sorted_ips[ip.version], (int(ip), ip))
    draft.addresses = kept


def _check_cidrs(draft: _Draft, seen: _Accepted) -> None:
    kept = []
    for path, net in draft.cidrs:
        covered = seen.address_in(net)
        clash = seen.cidrs.clash(net, _other_pool(draft.pool))
        if covered is not None:
            owner = seen.addresses[covered]
            whose = "this node's own" if owner is draft else f"node {owner.name}'s"
            draft.refuse(
                path,
                "PodCIDRCoversNode",
                f"{net} contains {covered}, {whose} InternalIP; routing it would take that"
                f" node's underlay away; refused: no pool routes it",
                owner.pool,
            )
        elif clash is not None:
            other_net, owner = clash
            draft.refuse(
                path,
                "PodCIDROverlap",
                f"{net} overlaps pod CIDR {other_net} of node {owner.name} ({_pool_of(owner)}),"
                f" created earlier; refused: no pool routes it",
                owner.pool,
            )
        else:
            kept.append((path, net))
            continue
        draft.clashing.append(net)
    draft.cidrs = kept
    for _, net in kept:
        seen.cidrs.add(net, draft)


def _check_key(draft: _Draft, seen: _Accepted) -> None:
    key = draft.public_key
    if key is None:
        return
    owner = seen.keys.setdefault(key, draft)
    if owner is draft:
        return
    draft.refuse(
        _ann(PUBLIC_KEY_ANNOTATION),
        "DuplicatePublicKey",
        f"node {owner.name} ({_pool_of(owner)}), created earlier, already publishes this key;"
        f" refused: WireGuard tells peers apart by key, so this node gets no tunnel",
        owner.pool,
    )
    draft.public_key = None


def read_nodes(
    nodes: object, pool_label: str, previous: Mapping[str, NodeView]
) -> tuple[list[NodeView], list[Problem]]:
    """Every Node object -> its view, checked alone and then against the Nodes created before
    it; plus the problems of the objects that could not be used at all."""
    problems: list[Problem] = []
    drafts: list[_Draft] = []
    for obj in items(nodes):
        draft, refused = _read_node(obj, pool_label, previous)
        problems.extend(refused)
        if draft is not None:
            drafts.append(draft)
    names = [d.name for d in drafts]
    twice = {n for n in names if names.count(n) > 1} if len(set(names)) < len(names) else set()
    drafts.sort(key=lambda d: (d.created, d.name, _content(d) if d.name in twice else ""))
    seen = _Accepted()
    views = []
    used: set[str] = set()
    for draft in drafts:
        if draft.name in used:
            problems.append(
                Problem(
                    "Node",
                    draft.name,
                    "metadata.name",
                    "DuplicateName",
                    "another Node of this name, created earlier, is used; this one is ignored",
                    (draft.pool,) if draft.pool else (),
                )
            )
            continue
        used.add(draft.name)
        # Addresses first: a node's own pod CIDR must not contain its own InternalIP either.
        _check_addresses(draft, seen)
        _check_cidrs(draft, seen)
        _check_key(draft, seen)
        _check_probe(draft)
        views.append(_finish(draft))
    return views, problems


def _content(draft: _Draft) -> str:
    """Two Nodes of one name and creation time are told apart by content, so the outcome never
    depends on the order the objects were listed in."""
    return repr(
        (
            draft.pool or "",
            [str(ip) for _, ip in draft.addresses],
            [net.with_prefixlen for _, net in draft.cidrs],
            draft.public_key or "",
            draft.tunnel_endpoint or "",
            str(draft.probe[1]) if draft.probe else "",
            sorted(draft.labels.items()),
            draft.ready,
            sorted(draft.problems),
        )
    )
