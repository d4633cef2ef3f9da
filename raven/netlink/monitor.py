"""Netlink monitor: notices when someone else undoes Raven's routes, rule or VXLAN entries.

A background thread listens to the kernel's route, rule, link, address and neighbour
notifications in one namespace and calls ``on_drift(reason)`` when one may have changed Raven's
state: a route with our proto in our table added, changed or deleted, a rule stamped with our
protocol added or deleted, a neighbour or forwarding entry changed on Raven's VXLAN link (known
by its alias stamp, raven.netlink.vxlan.ALIAS), or a link or address going away or coming back
(the kernel flushes IPv4 routes of a deleted link or address *without* a route notification, so
those events count too). The caller then runs its reconcilers, which put back only what is
missing; our own writes also trigger one such call, which costs a dump and zero writes.

It reads a raw netlink socket and parses every datagram waiting, so a burst is never left half
read; a receive buffer overrun (events lost) counts as drift too. Events arriving together are
coalesced (``debounce``), so a burst causes one call. The callback runs on the monitor's
thread: an asyncio agent passes something like
``lambda reason: loop.call_soon_threadsafe(drift.set)``.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.rtnl import (  # type: ignore[import-untyped]
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV4_RULE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_IPV6_RULE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
)
from pyroute2.netlink.rtnl.marshal import MarshalRtnl  # type: ignore[import-untyped]

from raven.model import DEFAULT_TABLE, RAVEN_RTPROTO
from raven.netlink.batch import SOL_NETLINK, RouteSocket
from raven.netlink.vxlan import ALIAS

log = logging.getLogger("raven.netlink.monitor")

GROUPS = (
    RTMGRP_LINK
    | RTMGRP_IPV4_IFADDR
    | RTMGRP_IPV6_IFADDR
    | RTMGRP_IPV4_ROUTE
    | RTMGRP_IPV6_ROUTE
    | RTMGRP_IPV4_RULE
    | RTMGRP_IPV6_RULE
    | RTMGRP_NEIGH
)
NETLINK_ADD_MEMBERSHIP = 1


def raven_link(msg: Any) -> bool:
    """Is this RTM_NEWLINK about a link of Raven's (its VXLAN link)?"""
    return bool(msg.get("IFLA_IFALIAS") == ALIAS)


def drift_reason(msg: Any, tables: set[int], links: set[int] | None = None) -> str | None:
    """Why this notification may have changed Raven's state, or None when it cannot have.
    ``links`` are the indexes of Raven's own links, whose neighbour entries are all ours."""
    event = msg.get("event", "")
    if event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
        table = msg.get("table") or msg["table"]
        if msg["proto"] == RAVEN_RTPROTO and table in tables:
            return f"{event} {msg.get('dst')}/{msg['dst_len']} table {table}"
        return None
    if event in ("RTM_NEWRULE", "RTM_DELRULE"):
        if msg.get("FRA_PROTOCOL") == RAVEN_RTPROTO:
            return f"{event} priority {msg.get('FRA_PRIORITY')}"
        return None
    if event in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
        # Neighbours elsewhere are the kernel's and come and go all the time.
        if links and msg.get("ifindex") in links:
            return f"{event} {msg.get('NDA_DST') or msg.get('NDA_LLADDR')}"
        return None
    if event in ("RTM_DELLINK", "RTM_DELADDR"):
        return event
    if event == "RTM_NEWLINK" and msg.get("IFLA_IFNAME"):
        # Link state changes (up/down, a device created) can make a failed route addable.
        return f"{event} {msg.get('IFLA_IFNAME')}"
    return None


class KernelWatch:
    """Calls ``on_drift`` (on its own thread) when Raven's kernel state may have been undone."""

    def __init__(
        self,
        on_drift: Callable[[str], None],
        *,
        netns: str | None = None,
        tables: Iterable[int] = (DEFAULT_TABLE,),
        debounce: float = 0.05,
    ) -> None:
        self.on_drift = on_drift
        self.netns = netns
        self.tables = set(tables)
        self.debounce = debounce  # seconds to gather a burst into one call
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        """Start listening; returns once the subscription is live, so nothing is missed."""
        if self._thread is not None:
            raise RuntimeError("KernelWatch already started")
        self._thread = threading.Thread(target=self._run, name="raven-netlink-watch", daemon=True)
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("netlink monitor did not start within 5s")

    @property
    def alive(self) -> bool:
        """False once the thread died (e.g. the namespace vanished): restart or fall back to
        periodic reconciles."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> KernelWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            links = self._raven_links()
            rs = RouteSocket.open(self.netns)
        except Exception:
            log.exception("netlink monitor could not start")
            self._ready.set()
            raise
        sock, marshal = rs.sock, MarshalRtnl()
        try:
            for bit in range(32):
                if GROUPS & (1 << bit):
                    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, bit + 1)
            sock.setblocking(False)
            self._ready.set()
            pending: list[str] = []
            deadline = 0.0
            while not self._stop.is_set():
                timeout = max(0.0, deadline - time.monotonic()) if pending else 0.2
                readable, _, _ = select.select([sock], [], [], timeout)
                reasons = self._drain(sock, marshal, links) if readable else []
                if reasons and not pending:
                    deadline = time.monotonic() + self.debounce
                pending += reasons
                if pending and time.monotonic() >= deadline:
                    reasons, pending = pending, []
                    try:
                        self.on_drift("; ".join(reasons[:5]))
                    except Exception:  # keep watching: one bad callback must not blind us
                        log.exception("on_drift callback failed")
        except Exception:
            log.exception("netlink monitor stopped unexpectedly")
            raise
        finally:
            self._ready.set()
            rs.close()

    def _raven_links(self) -> set[int]:
        with IPRoute(netns=self.netns) if self.netns else IPRoute() as ipr:
            return {link["index"] for link in ipr.get_links() if raven_link(link)}

    def _drain(self, sock: socket.socket, marshal: Any, links: set[int]) -> list[str]:
        """Read every datagram waiting; keep ``links`` current; the reasons found."""
        reasons: list[str] = []
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return reasons
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                reasons.append("notifications lost (receive buffer overrun)")
                continue
            for msg in marshal.parse(data):
                event = msg.get("event", "")
                if event == "RTM_NEWLINK" and raven_link(msg):
                    links.add(msg["index"])
                elif event in ("RTM_NEWLINK", "RTM_DELLINK"):
                    links.discard(msg["index"])
                reason = drift_reason(msg, self.tables, links)
                if reason is not None:
                    reasons.append(reason)
