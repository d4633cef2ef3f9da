"""Route reconciler: makes Raven's routing table hold exactly the desired routes.

It dumps only routes in Raven's table(s) stamped with :data:`raven.model.RAVEN_RTPROTO`, diffs
them against the desired :class:`~raven.model.RouteSpec` tuple by identity key ``(table, dst)``
and attributes (gateway, dev, onlink, mtu), and sends only the difference: ``add`` for a new
key, ``replace`` for a changed one, ``del`` for one no longer wanted. Routes in other tables or
without our proto are never read as ours and never written. ``writes`` counts every netlink
write, so "nothing to change costs zero writes, one changed route costs one" can be checked.

It works on an injected pyroute2 ``IPRoute``-like object (``IPRoute()`` in the agent, which
runs inside the node's namespace; ``IPRoute(netns=...)`` in tests).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError as PyNetlinkError  # type: ignore[import-untyped]

from raven.model import DEFAULT_TABLE, RAVEN_RTPROTO, RouteSpec
from raven.netlink.errors import ApplyError, BadSpec
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


def normalise(spec: RouteSpec) -> RouteSpec:
    """The spec with dst and gateway in canonical form; BadSpec names a malformed field."""
    try:
        dst = ipaddress.ip_network(spec.dst, strict=False).with_prefixlen
    except ValueError as e:
        raise BadSpec(f"route dst {spec.dst!r} is not a CIDR: {e}") from None
    gw = spec.gateway
    if gw is not None:
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


def _from_kernel(msg: Any, links: LinkIndex) -> RouteSpec:
    family = msg["family"]
    dst = msg.get("dst") or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    metrics = msg.get("metrics")
    mtu = metrics.get("mtu") if metrics is not None else None
    if mtu is None and metrics is not None:
        mtu = dict(metrics.get("attrs", [])).get("RTAX_MTU")
    return RouteSpec(
        dst=ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False).with_prefixlen,
        table=msg.get("table") or msg["table"],
        gateway=msg.get("gateway"),
        dev=links.name(msg.get("oif")),
        onlink=bool(msg["flags"] & RTNH_F_ONLINK),
        mtu=mtu or None,
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


class RouteReconciler:
    """Keeps Raven's routes in ``tables`` equal to the desired set. One per namespace."""

    def __init__(self, ipr: Any, *, tables: Iterable[int] = (DEFAULT_TABLE,)) -> None:
        self.ipr = ipr
        self.tables = set(tables)
        #: Netlink writes sent since creation (adds + replaces + deletes), for tests and metrics.
        self.writes = 0

    def current(self) -> dict[tuple[int, str], RouteSpec]:
        """Raven's routes now in the kernel, by key (reads only)."""
        links = LinkIndex(self.ipr)
        return self._dump(links, self.tables)

    def _dump(self, links: LinkIndex, tables: Iterable[int]) -> dict[tuple[int, str], RouteSpec]:
        have: dict[tuple[int, str], RouteSpec] = {}
        for table in sorted(tables):
            for msg in self.ipr.route("dump", table=table, proto=RAVEN_RTPROTO):
                # Filter again ourselves: never let another table or proto look like ours.
                if msg["proto"] != RAVEN_RTPROTO or (msg.get("table") or msg["table"]) != table:
                    continue
                spec = _from_kernel(msg, links)
                have[spec.key] = spec
        return have

    def reconcile(self, desired: Iterable[RouteSpec]) -> RouteChanges:
        """Make the kernel match ``desired``; raise ApplyError (after doing the rest) if any
        write failed, BadSpec before any write if the input is malformed."""
        want: dict[tuple[int, str], RouteSpec] = {}
        for spec in desired:
            spec = normalise(spec)
            if spec.key in want and want[spec.key] != spec:
                raise BadSpec(f"two different routes for {spec.dst} in table {spec.table}")
            want[spec.key] = spec
        links = LinkIndex(self.ipr)
        have = self._dump(links, self.tables | {t for t, _ in want})
        changes = RouteChanges()
        failures: dict[str, str] = {}
        for key in sorted(have.keys() - want.keys()):
            self._write("del", have[key], links, changes.deleted, failures)
        for key in sorted(want):
            spec = want[key]
            if key not in have:
                self._write("add", spec, links, changes.added, failures)
            elif not _same(spec, have[key]):
                self._write("replace", spec, links, changes.replaced, failures)
        self.tables |= {t for t, _ in want}
        if failures:
            raise ApplyError("route reconcile", failures)
        return changes

    def remove_all(self) -> RouteChanges:
        """Delete every route with our proto in our tables (uninstall)."""
        return self.reconcile(())

    def _write(
        self,
        op: str,
        spec: RouteSpec,
        links: LinkIndex,
        done: list[RouteSpec],
        failures: dict[str, str],
    ) -> None:
        args: dict[str, Any] = {
            "dst": spec.dst,
            "table": spec.table,
            "proto": RAVEN_RTPROTO,
            "family": _family(spec.dst),
        }
        if op == "del":
            # As `ip route del` does: match the route whatever its scope.
            args["scope"] = RT_SCOPE_NOWHERE
        else:
            try:
                if spec.dev is not None:
                    args["oif"] = links.index(spec.dev)
            except BadSpec as e:
                failures[f"{op} {spec.dst} table {spec.table}"] = str(e)
                return
            if spec.gateway is not None:
                args["gateway"] = spec.gateway
            else:
                # What `ip route add DST dev X` does: a direct route is link-scoped.
                args["scope"] = RT_SCOPE_LINK
            if spec.onlink:
                args["flags"] = RTNH_F_ONLINK
            if spec.mtu is not None:
                args["metrics"] = {"mtu": spec.mtu}
        self.writes += 1
        try:
            self.ipr.route(op, **args)
        except PyNetlinkError as e:
            failures[f"{op} {spec.dst} table {spec.table}"] = f"{e.args[-1]} (errno {e.code})"
            return
        done.append(spec)
