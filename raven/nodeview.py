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
    """A Node being read: the view so far, plus what the checks between objects need."""

    view: NodeView
    created: tuple[int, float]
    addresses: list[tuple[str, IPAddress]]  # (field, InternalIP), valid ones, in order
    cidrs: list[tuple[str, IPNetwork]]  # (field, pod CIDR), accepted so far
    problems: list[Problem]
    probe: tuple[str, IPAddress] | None  # (field, probe address) to check against pod_cidrs
    old_probe: str | None = None  # the probe address last accepted, to keep if this one fails
    clashing: list[IPNetwork] = field(default_factory=list)  # pod CIDRs refused for a clash

    def refuse(self, field: str, reason: str, message: str, *pools: str | None) -> None:
        own = self.view.pool
        names = tuple(sorted({p for p in (own, *pools) if p}))
        self.problems.append(Problem("Node", self.view.name, field, reason, message, names))


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
    draft = _Draft(NodeView(name=name), creation_order(meta), [], [], [], None)
    view = draft.view

    labels: dict[str, str] = {}
    raw_labels = meta.get("labels")
    if raw_labels is not None and not isinstance(raw_labels, Mapping):
        draft.refuse("metadata.labels", "InvalidLabels", f"not an object, got {short(raw_labels)}")
    for key, value in as_mapping(raw_labels).items():
        if isinstance(key, str) and isinstance(value, str):
            labels[key] = value
    pool: str | None = None
    raw_pool = as_mapping(raw_labels).get(pool_label)
    if raw_pool is not None and raw_pool != "":
        if valid_name(raw_pool, limit=63):
            pool = str(raw_pool)
        else:
            pool = old.pool if old is not None else None
            draft.refuse(
                f"metadata.labels[{pool_label}]",
                "InvalidPoolLabel",
                f"not a valid pool name (a lower-case DNS name of at most 63 characters), got"
                f" {short(raw_pool)}; " + (f"keeping pool {pool}" if pool else "in no pool"),
            )
    view = dataclasses.replace(view, labels=labels, pool=pool)
    draft.view = view

    status = as_mapping(obj.get("status"))
    view = dataclasses.replace(
        view, internal_ip=_read_addresses(draft, status.get("addresses"), old)
    )
    ready = any(
        isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in as_list(status.get("conditions"))
    )
    draft.view = dataclasses.replace(view, ready=ready)
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
    key = _read_annotation(
        draft, annotations, PUBLIC_KEY_ANNOTATION, "InvalidPublicKey", "public key",
        lambda v: parse_public_key(v), old.public_key if old else None, broken,
    )  # fmt: skip
    endpoint = _read_annotation(
        draft, annotations, TUNNEL_ENDPOINT_ANNOTATION, "InvalidTunnelEndpoint", "endpoint",
        lambda v: parse_endpoint(v, hostname_ok=False), old.tunnel_endpoint if old else None,
        broken,
    )  # fmt: skip
    draft.view = dataclasses.replace(draft.view, public_key=key, tunnel_endpoint=endpoint)
    probe = _read_annotation(
        draft, annotations, PROBE_ANNOTATION, "InvalidProbeAddress", "probe address",
        lambda v: str(parse_ip(v)), old.probe_address if old else None, broken,
    )  # fmt: skip
    if probe is not None:
        draft.probe = (_ann(PROBE_ANNOTATION), ipaddress.ip_address(probe))
    draft.old_probe = old.probe_address if old is not None else None
    return draft, []


def _read_addresses(draft: _Draft, raw: object, old: NodeView | None) -> str | None:
    """status.addresses -> the first valid InternalIP (all valid ones stay in the draft)."""
    if raw is not None and not isinstance(raw, list):
        kept = old.internal_ip if old is not None else None
        draft.refuse(
            "status.addresses",
            "InvalidInternalIP",
            f"not a list, got {short(raw)}; {_kept('InternalIP', kept)}",
        )
        if kept is not None:
            draft.addresses.append(("status.addresses", ipaddress.ip_address(kept)))
        return kept
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
    return str(draft.addresses[0][1]) if draft.addresses else None


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
    inside = [str(a) for a in (ip, draft.old_probe) if a and _inside(a, draft.cidrs)]
    draft.view = dataclasses.replace(draft.view, probe_address=inside[0] if inside else None)
    if inside and inside[0] == str(ip):
        return
    accepted = ", ".join(str(net) for _, net in draft.cidrs) or "none"
    draft.refuse(
        path,
        "InvalidProbeAddress",
        f"{ip} is not inside the node's accepted pod CIDRs ({accepted}); "
        + (_kept("probe address", inside[0]) if inside else "not probed"),
    )


def _inside(address: str | IPAddress, cidrs: list[tuple[str, IPNetwork]]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in net for _, net in cidrs)


def _finish(draft: _Draft) -> NodeView:
    cidrs = sorted({net for _, net in draft.cidrs}, key=_net_key)
    own = {draft.view.pool} if draft.view.pool else set()
    problems = {
        dataclasses.replace(p, pools=tuple(sorted(set(p.pools) | own))) for p in draft.problems
    }
    clashing = sorted(set(draft.clashing), key=_net_key)
    return dataclasses.replace(
        draft.view,
        pod_cidrs=tuple(net.with_prefixlen for net in cidrs),
        clashing_cidrs=tuple(net.with_prefixlen for net in clashing),
        problems=tuple(sorted(problems)),
    )


def _net_key(net: IPNetwork) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


# Between Nodes ---------------------------------------------------------------------------


class _CidrIndex:
    """Accepted pod CIDRs, for "does this overlap one of another pool?" in O(log n) per check.
    CIDRs either nest or are disjoint, so an overlap is a supernet (one of at most 129
    prefixes) or a subnet (one whose start lies inside the new one)."""

    def __init__(self) -> None:
        self._owners: list[tuple[IPNetwork, NodeView]] = []  # in the order accepted
        self._exact: dict[tuple[int, int, int], list[int]] = {}  # -> indexes into _owners
        self._starts: dict[int, list[tuple[int, int]]] = {4: [], 6: []}  # (start, index)

    def add(self, net: IPNetwork, owner: NodeView) -> None:
        index = len(self._owners)
        self._owners.append((net, owner))
        start = int(net.network_address)
        self._exact.setdefault((net.version, net.prefixlen, start), []).append(index)
        bisect.insort(self._starts[net.version], (start, index))

    def containing(self, ip: IPAddress) -> tuple[IPNetwork, NodeView] | None:
        """The earliest accepted CIDR that contains ``ip``, or None."""
        return self.clash(ipaddress.ip_network(ip), lambda owner: True)

    def clash(
        self, net: IPNetwork, differs: Callable[[NodeView], bool]
    ) -> tuple[IPNetwork, NodeView] | None:
        """The earliest accepted CIDR overlapping ``net`` whose owner ``differs(owner)``."""
        found: list[int] = []
        bits = net.max_prefixlen
        start = int(net.network_address)
        for plen in range(net.prefixlen + 1):  # supernets of net, and net itself
            mask = ((1 << plen) - 1) << (bits - plen)
            found += [
                i
                for i in self._exact.get((net.version, plen, start & mask), ())
                if differs(self._owners[i][1])
            ][:1]
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


def _pool_of(view: NodeView) -> str:
    return f"pool {view.pool}" if view.pool else "in no pool"


def _other_pool(pool: str | None) -> Callable[[NodeView], bool]:
    """Pod CIDRs of nodes in one pool may overlap (one gateway carries both); any other
    overlap clashes, with nodes in no pool too (their CIDRs are the cluster's all the same)."""
    return lambda owner: owner.pool != pool


def _accept_between(drafts: list[_Draft]) -> list[NodeView]:
    """Refuse the later object's field wherever two Nodes clash (see the module docstring).
    ``drafts`` are in creation order."""
    cidrs = _CidrIndex()
    addresses: dict[IPAddress, NodeView] = {}
    by_int: dict[int, list[tuple[int, IPAddress]]] = {4: [], 6: []}  # sorted (int, ip)
    keys: dict[str, NodeView] = {}
    views = []
    for draft in drafts:
        me = draft.view
        kept_addresses = []
        for path, ip in draft.addresses:
            other = addresses.get(ip)
            inside = cidrs.containing(ip)
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
                kept_addresses.append((path, ip))
        draft.addresses = kept_addresses
        for _, ip in kept_addresses:
            addresses[ip] = me
            bisect.insort(by_int[ip.version], (int(ip), ip))
        internal_ip = str(kept_addresses[0][1]) if kept_addresses else None
        draft.view = me = dataclasses.replace(me, internal_ip=internal_ip)

        kept_cidrs = []
        for path, net in draft.cidrs:
            row = by_int[net.version]
            at = bisect.bisect_left(row, (int(net.network_address),))
            covered = (
                row[at][1] if at < len(row) and row[at][0] <= int(net.broadcast_address) else None
            )
            clash = cidrs.clash(net, _other_pool(me.pool))
            if covered is not None:
                owner = addresses[covered]
                whose = "this node's own" if owner.name == me.name else f"node {owner.name}'s"
                draft.refuse(
                    path,
                    "PodCIDRCoversNode",
                    f"{net} contains {covered}, {whose} InternalIP; routing it would take"
                    f" that node's underlay away; refused: no pool routes it",
                    owner.pool,
                )
            elif clash is not None:
                other_net, owner = clash
                draft.refuse(
                    path,
                    "PodCIDROverlap",
                    f"{net} overlaps pod CIDR {other_net} of node {owner.name}"
                    f" ({_pool_of(owner)}), created earlier; refused: no pool routes it",
                    owner.pool,
                )
            else:
                kept_cidrs.append((path, net))
                continue
            draft.clashing.append(net)
        draft.cidrs = kept_cidrs
        for _, net in kept_cidrs:
            cidrs.add(net, me)

        key = me.public_key
        if key is not None:
            owner_of_key = keys.get(key)
            if owner_of_key is not None:
                draft.refuse(
                    _ann(PUBLIC_KEY_ANNOTATION),
                    "DuplicatePublicKey",
                    f"node {owner_of_key.name} ({_pool_of(owner_of_key)}), created earlier,"
                    f" already publishes this key; refused: WireGuard tells peers apart by key,"
                    f" so this node gets no tunnel",
                    owner_of_key.pool,
                )
                draft.view = me = dataclasses.replace(me, public_key=None)
            else:
                keys[key] = me
        _check_probe(draft)
        views.append(_finish(draft))
    return views


def read_nodes(
    nodes: object, pool_label: str, previous: Mapping[str, NodeView]
) -> tuple[list[NodeView], list[Problem]]:
    problems: list[Problem] = []
    drafts: list[_Draft] = []
    for obj in items(nodes):
        draft, refused = _read_node(obj, pool_label, previous)
        problems.extend(refused)
        if draft is not None:
            drafts.append(draft)
    drafts.sort(key=_draft_order)
    unique: dict[str, _Draft] = {}
    for draft in drafts:
        first = unique.setdefault(draft.view.name, draft)
        if first is not draft:
            problems.append(
                Problem(
                    "Node",
                    draft.view.name,
                    "metadata.name",
                    "DuplicateName",
                    "another Node of this name, created earlier, is used; this one is ignored",
                    tuple(p for p in (draft.view.pool,) if p),
                )
            )
    views = _accept_between(list(unique.values()))
    return views, problems


def _draft_order(draft: _Draft) -> tuple[Any, ...]:
    """Creation order; equal stamps by name; full duplicates by content, so the outcome never
    depends on the order the objects were listed in."""
    view = draft.view
    content = (
        view.pool or "",
        [str(ip) for _, ip in draft.addresses],
        [net.with_prefixlen for _, net in draft.cidrs],
        view.public_key or "",
        view.tunnel_endpoint or "",
        str(draft.probe[1]) if draft.probe else "",
        sorted(view.labels.items()),
        view.ready,
        sorted(draft.problems),
    )
    return (draft.created, view.name, repr(content))
