"""Netlink monitor: notices when someone else undoes Raven's routes or rule.

A background thread listens to the kernel's route, rule, link and address notifications in one
namespace and calls ``on_drift(reason)`` when one may have changed Raven's state: a route with
our proto in our table added, changed or deleted, a rule stamped with our protocol added or
deleted, or a link or address going away or coming back (the kernel flushes IPv4 routes of a
deleted link or address *without* a route notification, so those events count too). The
caller then runs its reconcilers, which put back only what is missing; our own writes also
trigger one such call, which costs a dump and zero writes.

Events arriving together are coalesced (``debounce``), so a burst causes one call. The callback
runs on the monitor's thread: an asyncio agent passes something like
``lambda reason: loop.call_soon_threadsafe(drift.set)``.
"""

from __future__ import annotations

import logging
import select
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
)

from raven.model import DEFAULT_TABLE, RAVEN_RTPROTO

log = logging.getLogger("raven.netlink.monitor")

GROUPS = (
    RTMGRP_LINK
    | RTMGRP_IPV4_IFADDR
    | RTMGRP_IPV6_IFADDR
    | RTMGRP_IPV4_ROUTE
    | RTMGRP_IPV6_ROUTE
    | RTMGRP_IPV4_RULE
    | RTMGRP_IPV6_RULE
)


def drift_reason(msg: Any, tables: set[int]) -> str | None:
    """Why this notification may have changed Raven's state, or None when it cannot have."""
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
        sock = IPRoute(netns=self.netns) if self.netns else IPRoute()
        try:
            sock.bind(groups=GROUPS)
            self._ready.set()
            pending: list[str] = []
            deadline = 0.0
            while not self._stop.is_set():
                timeout = max(0.0, deadline - time.monotonic()) if pending else 0.2
                readable, _, _ = select.select([sock.fileno()], [], [], timeout)
                if readable:
                    for msg in sock.get():
                        reason = drift_reason(msg, self.tables)
                        if reason is not None:
                            if not pending:
                                deadline = time.monotonic() + self.debounce
                            pending.append(reason)
                if pending and time.monotonic() >= deadline:
                    reasons, pending = "; ".join(pending[:5]), []
                    try:
                        self.on_drift(reasons)
                    except Exception:  # keep watching: one bad callback must not blind us
                        log.exception("on_drift callback failed")
        except Exception:
            log.exception("netlink monitor stopped unexpectedly")
            raise
        finally:
            self._ready.set()
            sock.close()
