"""Route reconciler: makes Raven's routing table hold exactly the desired routes.

It dumps only routes in Raven's table(s) stamped with :data:`raven.model.RAVEN_RTPROTO`, diffs
them against the desired :class:`~raven.model.RouteSpec` tuple by identity key ``(table, dst)``
and attributes (gateway, dev, onlink, mtu), and sends only the difference: ``add`` for a new
key, ``replace`` for a changed one, ``del`` for one no longer wanted. Routes in other tables or
without our proto are never read as ours and never written. ``writes`` counts every netlink
write, so "nothing to change costs zero writes, one changed route costs one" can be checked.

Writes are batched: the whole difference goes to the kernel in a few ``send`` calls and the
acks are matched back to routes (:mod:`raven.netlink.batch`), so a 10,000-route sync takes a
fraction of a second. The reconciler also remembers what it applied, so an update from the
cluster can skip the dump (``resync=False``); drift events and periodic checks resync.

Links are looked up through an injected pyroute2 ``IPRoute``-like object (``IPRoute()`` in the
agent, which runs inside the node's namespace; ``IPRoute(netns=...)`` in tests); route reads and
writes use a raw netlink socket opened in that same namespace.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from errno import ESRCH
from typing import Any

from raven.model import DEFAULT_TABLE, RAVEN_RTPROTO, RouteSpec
from raven.netlink.batch import KernelRoute, RouteSocket, RouteWrite, netns_of
from raven.netlink.errors import ApplyError, BadSpec, NetlinkError
from raven.netlink.links import LinkIndex

RTNH_F_ONLINK = 4
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255


@dataclass
class RouteChanges:
    """What one reconcile did, by key; all empty when the table already matched."""

    added: list[RouteSpec] = field(default_factory=list)
    replaced: list[RouteSpec] = field(default_factory=list)
    deleted: list[RouteSpec] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return len(self.added) + len(self.replaced) + len(self.deleted)


def _fast_v4_network(text: str) -> str | None:
    """Canonical form of a plain IPv4 ``a.b.c.d/n``, or None to let ``ipaddress`` decide.

    ``ipaddress`` takes ~15 us per CIDR, which alone would cost a 10,000-route sync more than
    the kernel needs to install them; inet_pton is strict dotted-quad, like ``ipaddress``.
    """
    addr, sep, plen = text.partition("/")
    try:
        packed = socket.inet_pton(socket.AF_INET, addr)
    except OSError:
        return None
    if not sep:
        n = 32
    elif plen.isascii() and plen.isdigit() and len(plen) <= 2 and int(plen) <= 32:
        n = int(plen)
    else:
        return None
    value = int.from_bytes(packed, "big") & (0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF
    return f"{socket.inet_ntop(socket.AF_INET, value.to_bytes(4, 'big'))}/{n}"


def _fast_v4_address(text: str) -> str | None:
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
    except OSError:
        return None


def normalise(spec: RouteSpec) -> RouteSpec:
    """The spec with dst and gateway in canonical form; BadSpec names a malformed field."""
    dst = _fast_v4_network(spec.dst)
    if dst is None:
        try:
            dst = ipaddress.ip_network(spec.dst, strict=False).with_prefixlen
        except ValueError as e:
            raise BadSpec(f"route dst {spec.dst!r} is not a CIDR: {e}") from None
    gw = spec.gateway
    if gw is not None:
        fast = _fast_v4_address(gw)
        if fast is not None:
            gw = fast
        else:
            try:
                gw = str(ipaddress.ip_address(gw))
            except ValueError:
                raise BadSpec(f"route {dst}: gateway {gw!r} is not an IP address") from None
    if spec.gateway is None and spec.dev is None:
        raise BadSpec(f"route {dst}: needs a gateway or a dev")
    if spec.mtu is not None and not 68 <= spec.mtu <= 65535:
        raise BadSpec(f"route {dst}: mtu {spec.mtu} is outside 68..65535")
    if not 0 < spec.table < 2**32 or spec.table in (253, 254, 255):
        raise BadSpec(f"route {dst}: table {spec.table} is reserved or invalid")
    return RouteSpec(dst, spec.table, gw, spec.dev, spec.onlink, spec.mtu)


def _family(cidr: str) -> int:
    return socket.AF_INET6 if ":" in cidr else socket.AF_INET


def _from_kernel(route: KernelRoute, links: LinkIndex) -> RouteSpec:
    if route.family == socket.AF_INET and route.dst:
        # The kernel stores dst masked to its prefix, and inet_ntop's IPv4 form is canonical.
        dst = f"{route.dst}/{route.dst_len}"
    else:
        zero = "::" if route.family == socket.AF_INET6 else "0.0.0.0"
        net = ipaddress.ip_network(f"{route.dst or zero}/{route.dst_len}", strict=False)
        dst = net.with_prefixlen
    return RouteSpec(
        dst=dst,
        table=route.table,
        gateway=route.gateway,
        dev=links.name(route.oif),
        onlink=bool(route.flags & RTNH_F_ONLINK),
        mtu=route.mtu or None,
    )


def _same(want: RouteSpec, have: RouteSpec) -> bool:
    # dev=None means "kernel picks the device from the gateway", so the dumped dev is not ours
    # to compare.
    return (
        want.gateway == have.gateway
        and (want.dev is None or want.dev == have.dev)
        and want.onlink == have.onlink
        and want.mtu == have.mtu
    )


class _Auto:
    """Marker: take the namespace from the ``IPRoute`` handle."""


AUTO = _Auto()


class RouteReconciler:
    """Keeps Raven's routes in ``tables`` equal to the desired set. One per namespace.

    Writes go out in batches (:mod:`raven.netlink.batch`). The reconciler remembers what it
    last saw and applied; ``reconcile(..., resync=False)`` diffs against that memory instead
    of dumping the table, for the common "the cluster changed" update. A resync (the default)
    dumps first, so anything changed behind our back is found and put right.
    """

    def __init__(
        self,
        ipr: Any,
        *,
        tables: Iterable[int] = (DEFAULT_TABLE,),
        netns: str | None | _Auto = AUTO,
    ) -> None:
        self.ipr = ipr
        self.tables = set(tables)
        #: Namespace the batch socket is opened in; by default the one ``ipr`` works in.
        self.netns = netns_of(ipr) if isinstance(netns, _Auto) else netns
        #: Netlink writes sent since creation (adds + replaces + deletes), for tests and metrics.
        self.writes = 0
        #: Dumps taken since creation (each one a read of our tables), for tests and metrics.
        self.dumps = 0
        # Our routes as last dumped and then written; None when unknown (never dumped, or a
        # write failed and the kernel's state is uncertain).
        self._known: dict[tuple[int, str], RouteSpec] | None = None
        self._known_tables: set[int] = set()

    def current(self) -> dict[tuple[int, str], RouteSpec]:
        """Raven's routes now in the kernel, by key (reads only)."""
        links = LinkIndex(self.ipr)
        with RouteSocket.open(self.netns) as rs:
            return self._dump(rs, links, self.tables)

    def _dump(
        self, rs: RouteSocket, links: LinkIndex, tables: Iterable[int]
    ) -> dict[tuple[int, str], RouteSpec]:
        self.dumps += 1
        wanted = set(tables)
        have: dict[tuple[int, str], RouteSpec] = {}
        for route in rs.dump(proto=RAVEN_RTPROTO):
            # Filter again ourselves: never let another table or proto look like ours.
            if route.proto != RAVEN_RTPROTO or route.table not in wanted:
                continue
            spec = _from_kernel(route, links)
            have[spec.key] = spec
        return have

    def reconcile(self, desired: Iterable[RouteSpec], *, resync: bool = True) -> RouteChanges:
        """Make the kernel match ``desired``; raise ApplyError (after doing the rest) if any
        write failed, BadSpec before any write if the input is malformed.

        ``resync=False`` trusts what this reconciler last saw and applied and skips the dump
        (it still dumps when it knows nothing yet); use it for updates that come from the
        cluster, and a resync for drift events and periodic checks.
        """
        want: dict[tuple[int, str], RouteSpec] = {}
        for spec in desired:
            spec = _normalise_cached(spec)
            key = (spec.table, spec.dst)  # RouteSpec.key, inlined: this loop runs per route
            if want.setdefault(key, spec) != spec:
                raise BadSpec(f"two different routes for {spec.dst} in table {spec.table}")
        tables = self.tables | {t for t, _ in want}
        links = LinkIndex(self.ipr)
        rs: RouteSocket | None = None
        try:
            if resync or self._known is None or not tables <= self._known_tables:
                rs = RouteSocket.open(self.netns)
                have = self._dump(rs, links, tables)
                self._known, self._known_tables = dict(have), set(tables)
            else:
                have = self._known
            changes, failures = self._write_diff(rs, links, have, want)
        finally:
            if rs is not None:
                rs.close()
        self.tables = tables
        if failures:
            raise ApplyError("route reconcile", failures)
        return changes

    def remove_all(self) -> RouteChanges:
        """Delete every route with our proto in our tables (uninstall)."""
        return self.reconcile(())

    def _write_diff(
        self,
        rs: RouteSocket | None,
        links: LinkIndex,
        have: dict[tuple[int, str], RouteSpec],
        want: dict[tuple[int, str], RouteSpec],
    ) -> tuple[RouteChanges, dict[str, str]]:
        changes = RouteChanges()
        failures: dict[str, str] = {}
        # Deletes first, so a route that moved between keys never collides with itself.
        planned: list[tuple[RouteWrite, RouteSpec, list[RouteSpec]]] = []
        for key in sorted(have.keys() - want.keys()):
            planned.append((_message("del", have[key], links), have[key], changes.deleted))
        # In desired order (the planner sorts): sorting 10,000 keys per update is wasted work.
        for key, spec in want.items():
            if key in have and _same(spec, have[key]):
                continue
            op, done = ("add", changes.added) if key not in have else ("replace", changes.replaced)
            try:
                planned.append((_message(op, spec, links), spec, done))
            except BadSpec as e:
                failures[f"{op} {spec.dst} table {spec.table}"] = str(e)
        if planned:
            self.writes += len(planned)
            try:
                if rs is None:
                    with RouteSocket.open(self.netns) as own:
                        results = own.apply([w for w, _, _ in planned])
                else:
                    results = rs.apply([w for w, _, _ in planned])
            except NetlinkError:
                self._known = None  # some writes' outcome is unknown: dump next time
                raise
            known = self._known if self._known is not None else {}
            for (write, spec, done), refusal in zip(planned, results, strict=True):
                # A delete of a route that is already gone got what it wanted (a stale memory
                # of what we applied, after someone removed it behind our back).
                if refusal is not None and not (write.op == "del" and refusal.errno == ESRCH):
                    failures[write.label] = str(refusal)
                    continue
                done.append(spec)
                if write.op == "del":
                    known.pop(spec.key, None)
                else:
                    known[spec.key] = spec
        if failures:
            # What the kernel holds after a refused write is ours to find out by dumping.
            self._known = None
        return changes, failures


@functools.lru_cache(maxsize=65536)
def _normalise_cached(spec: RouteSpec) -> RouteSpec:
    # Specs are frozen and the planner repeats the same ones every loop: parse each once.
    return normalise(spec)


def clear_spec_cache() -> None:
    """Forget parsed specs (for benchmarks that time a cold full sync)."""
    _normalise_cached.cache_clear()


def _message(op: str, spec: RouteSpec, links: LinkIndex) -> RouteWrite:
    """The kernel message for ``op`` on ``spec``; BadSpec if its device does not exist."""
    family = _family(spec.dst)
    if op == "del":
        # As `ip route del` does: match the route whatever its scope.
        return RouteWrite(op, family, spec.dst, spec.table, RAVEN_RTPROTO, scope=RT_SCOPE_NOWHERE)
    return RouteWrite(
        op,
        family,
        spec.dst,
        spec.table,
        RAVEN_RTPROTO,
        gateway=spec.gateway,
        oif=links.index(spec.dev) if spec.dev is not None else None,
        # What `ip route add DST dev X` does: a direct route is link-scoped.
        scope=0 if spec.gateway is not None else RT_SCOPE_LINK,
        flags=RTNH_F_ONLINK if spec.onlink else 0,
        mtu=spec.mtu,
    )
