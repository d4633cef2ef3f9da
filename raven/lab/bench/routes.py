"""``raven bench routes``: how fast Raven's route reconciler programs a large table.

In a throwaway network namespace (a veth pair stands in for a dummy device, which this kernel
lacks) it installs ``count`` /32 routes ``via 10.9.0.2 dev v0 mtu 1400`` into Raven's table,
once by a fresh :class:`~raven.netlink.routes.RouteReconciler` (a full sync, as an agent does
after a start) and once by ``ip -batch`` with the same routes, flushing the table between
runs. Each is run ``rounds`` times, alternating, and the best of each counts (machines are
noisy; the best run is the one least disturbed). Then, on the synced table, it changes one
route (``update_one_route_writes``, expected 1) and reconciles the unchanged set again with a
full dump (``idle_reconcile_writes``, expected 0). Every run is checked against the kernel: a
run that left the wrong routes is an error, not a figure. The namespace is removed at the end,
also on errors.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from raven.model import DEFAULT_TABLE, RAVEN_RTPROTO, RouteSpec
from raven.netlink.batch import RouteSocket
from raven.netlink.errors import NetlinkError
from raven.netlink.kernel import Kernel
from raven.netlink.routes import RouteReconciler, clear_spec_cache

FIRST_DST = ipaddress.IPv4Address("100.64.0.0")  # /32s counted up from here (CGNAT space)
MAX_COUNT = 1 << 22  # stays inside 100.64.0.0/10
GATEWAY = "10.9.0.2"
MOVED_GATEWAY = "10.9.0.3"
MTU = 1400


class BenchError(Exception):
    """The benchmark could not run or could not measure; the message says what failed."""


def _sh(*argv: str, ns: str | None = None, timeout: float = 60) -> str:
    """Run a command (in namespace ``ns``); BenchError naming the command when it fails."""
    full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    try:
        res = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(full)}` did not finish within {timeout}s") from None
    if res.returncode != 0:
        raise BenchError(f"`{' '.join(full)}` failed: {(res.stderr or res.stdout).strip()}")
    return res.stdout


@contextmanager
def _namespace() -> Iterator[str]:
    """A namespace with v0 (10.9.0.1/24) and its veth peer v1, both up; removed afterwards."""
    name = f"rvbr{os.getpid() % 10000}{secrets.token_hex(2)}"
    _sh("ip", "netns", "add", name)
    try:
        _sh("ip", "-n", name, "link", "set", "lo", "up")
        _sh("ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _sh("ip", "-n", name, "link", "set", "v0", "up")
        _sh("ip", "-n", name, "link", "set", "v1", "up")
        _sh("ip", "-n", name, "addr", "add", "10.9.0.1/24", "dev", "v0")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _routes(count: int, table: int) -> list[RouteSpec]:
    first = int(FIRST_DST)
    return [
        RouteSpec(f"{ipaddress.IPv4Address(first + i)}/32", table, GATEWAY, "v0", mtu=MTU)
        for i in range(count)
    ]


def _installed(ns: str, table: int) -> dict[str, tuple[str | None, int | None]]:
    """Our routes in ``table`` as dst -> (gateway, mtu), read straight from the kernel."""
    with RouteSocket.open(ns) as rs:
        return {
            f"{r.dst}/{r.dst_len}": (r.gateway, r.mtu)
            for r in rs.dump(proto=RAVEN_RTPROTO)
            if r.table == table
        }


def _expect(ns: str, routes: Sequence[RouteSpec], what: str) -> None:
    table = routes[0].table
    have = _installed(ns, table)
    want = {r.dst: (r.gateway, r.mtu) for r in routes}
    if have != want:
        wrong = len(set(have.items()) ^ set(want.items()))
        raise BenchError(f"{what}: table {table} holds {len(have)} routes, {wrong} differ")


def _flush(ns: str, table: int) -> None:
    _sh("ip", "-n", ns, "route", "flush", "table", str(table))
    if _installed(ns, table):
        raise BenchError(f"table {table} in {ns} is not empty after a flush")


def _ip_batch(ns: str, routes: Sequence[RouteSpec], workdir: str) -> float:
    """Seconds ``ip -batch`` takes to add ``routes`` (process start included, as for any
    tool that shells out to it)."""
    path = os.path.join(workdir, "routes.batch")
    with open(path, "w") as f:
        for r in routes:
            f.write(
                f"route add {r.dst} via {r.gateway} dev {r.dev} table {r.table}"
                f" proto {RAVEN_RTPROTO} mtu {r.mtu}\n"
            )
    start = time.perf_counter()
    _sh("ip", "-n", ns, "-batch", path, timeout=300)
    return time.perf_counter() - start


def _raven_sync(kernel: Kernel, routes: Sequence[RouteSpec]) -> tuple[float, RouteReconciler]:
    """Seconds a fresh reconciler takes for a full sync of ``routes``, and the reconciler."""
    clear_spec_cache()  # a full sync after a start parses every spec; don't time a warm cache
    rec = kernel.routes((routes[0].table,))
    start = time.perf_counter()
    try:
        changes = rec.reconcile(routes)
    except NetlinkError as e:
        raise BenchError(f"reconciler full sync failed: {str(e)[:500]}") from e
    elapsed = time.perf_counter() - start
    if len(changes.added) != len(routes) or rec.writes != len(routes):
        raise BenchError(f"full sync of {len(routes)} routes made {rec.writes} writes")
    return elapsed, rec


def run(count: int = 10000, rounds: int = 3, table: int = DEFAULT_TABLE) -> dict[str, Any]:
    """Measure; see the module docstring for what each figure means."""
    if not 1 <= count <= MAX_COUNT:
        raise BenchError(f"--count {count}: expected 1..{MAX_COUNT}")
    if not 1 <= rounds <= 20:
        raise BenchError(f"--rounds {rounds}: expected 1..20")
    if not 0 < table < 2**32 or table in (253, 254, 255):
        raise BenchError(f"--table {table}: reserved or invalid")
    if os.geteuid() != 0:
        raise BenchError("needs root (network namespaces)")
    if shutil.which("ip") is None:
        raise BenchError("missing tool: ip (iproute2)")
    routes = _routes(count, table)
    raven_s: list[float] = []
    ip_s: list[float] = []
    with _namespace() as ns, tempfile.TemporaryDirectory() as workdir, Kernel(ns) as kernel:
        rec: RouteReconciler | None = None
        for _ in range(rounds):
            ip_s.append(_ip_batch(ns, routes, workdir))
            _expect(ns, routes, "ip -batch")
            _flush(ns, table)
            elapsed, rec = _raven_sync(kernel, routes)
            raven_s.append(elapsed)
            _expect(ns, routes, "reconciler full sync")
            if len(raven_s) < rounds:
                _flush(ns, table)
        assert rec is not None  # rounds >= 1

        # One route moves to another next hop: one write, no dump needed.
        changed = list(routes)
        i = count // 2
        changed[i] = RouteSpec(routes[i].dst, table, MOVED_GATEWAY, "v0", mtu=MTU)
        before, dumps = rec.writes, rec.dumps
        start = time.perf_counter()
        rec.reconcile(changed, resync=False)
        update_s = time.perf_counter() - start
        update_writes, update_dumps = rec.writes - before, rec.dumps - dumps
        _expect(ns, changed, "after updating one route")

        # Nothing changed: a resync dumps the table and must write nothing.
        before = rec.writes
        start = time.perf_counter()
        rec.reconcile(changed)
        resync_s = time.perf_counter() - start
        idle_writes = rec.writes - before
        _expect(ns, changed, "after an idle resync")

    best_raven, best_ip = min(raven_s), min(ip_s)
    return {
        "count": count,
        "rounds": rounds,
        "routes_per_s": round(count / best_raven, 1),
        "ip_batch_routes_per_s": round(count / best_ip, 1),
        "ratio": round(best_ip / best_raven, 3),
        "full_sync_ms": round(best_raven * 1000, 2),
        "ip_batch_ms": round(best_ip * 1000, 2),
        "update_one_route_writes": update_writes,
        "update_one_route_dumps": update_dumps,
        "update_one_route_ms": round(update_s * 1000, 3),
        "idle_reconcile_writes": idle_writes,
        "idle_resync_ms": round(resync_s * 1000, 2),
    }
