"""Batched route programming at scale, against real netlink in throwaway namespaces.

Covers the batch socket (many messages per send, acks mapped back to the route that failed),
the reconciler's memory of what it applied (an update costs one write and no dump; a resync
finds what changed behind its back) and ``raven bench routes`` through the real CLI.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from raven.model import RAVEN_RTPROTO, RouteSpec
from raven.netlink import batch
from raven.netlink.batch import Refusal, RouteSocket, RouteWrite
from raven.netlink.errors import ApplyError
from raven.netlink.routes import RouteReconciler
from tests.netns.conftest import settle_links, sh

T = 9027
RAVEN = Path(sys.executable).with_name("raven")


@pytest.fixture
def node(netns: str) -> str:
    """A namespace with a veth pair (v0 10.9.0.1/24, fd00:9::1/64; v1), both up."""
    sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1", ns=netns)
    sh("ip", "link", "set", "v0", "up", ns=netns)
    sh("ip", "link", "set", "v1", "up", ns=netns)
    sh("ip", "addr", "add", "10.9.0.1/24", "dev", "v0", ns=netns)
    sh("ip", "addr", "add", "fd00:9::1/64", "dev", "v0", "nodad", ns=netns)
    settle_links(netns)  # the kernel's own IPv6 set-up is done before the test looks
    return netns


def ifindex(ns: str, dev: str) -> int:
    return int(sh("cat", f"/sys/class/net/{dev}/ifindex", ns=ns))


def kernel_table(ns: str, table: int = T, family: str = "-4") -> dict[str, str]:
    """dst -> the rest of the line, for our proto's routes as `ip route` prints them."""
    out = sh("ip", family, "route", "show", "table", str(table), "proto", str(RAVEN_RTPROTO), ns=ns)
    lines = (line.split(None, 1) for line in out.splitlines() if line.strip())
    return {parts[0]: parts[1].strip() if len(parts) > 1 else "" for parts in lines}


def host_routes(count: int, *, gateway: str = "10.9.0.2", first: str = "100.64.0.0") -> list:
    base = int(ipaddress.IPv4Address(first))
    return [
        RouteSpec(f"{ipaddress.IPv4Address(base + i)}/32", T, gateway, "v0", mtu=1400)
        for i in range(count)
    ]


def write(op: str, dst: str, **kw) -> RouteWrite:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    return RouteWrite(op, family, dst, T, RAVEN_RTPROTO, **kw)


# ---- the batch socket -------------------------------------------------------------------------


def test_one_failed_write_in_a_large_batch_is_named_and_hides_nothing(node):
    v0 = ifindex(node, "v0")
    writes = [
        write("add", f"100.64.{i // 256}.{i % 256}/32", gateway="10.9.0.2", oif=v0, mtu=1400)
        for i in range(3000)
    ]
    # Failures at the start, in the middle of a later chunk, and at the very end.
    writes[0] = write("add", "10.70.0.0/16", gateway="192.0.2.1", oif=v0)  # unreachable gw
    writes[batch.CHUNK + 17] = write("del", "10.71.0.0/16")  # nothing to delete
    writes[-1] = write("add", "10.72.0.0/16", oif=999999)  # no such interface
    with RouteSocket.open(node) as rs:
        results = rs.apply(writes)
    refused = {writes[i].label: r for i, r in enumerate(results) if r is not None}
    assert set(refused) == {
        "add 10.70.0.0/16 table 9027",
        f"del 10.71.0.0/16 table {T}",
        "add 10.72.0.0/16 table 9027",
    }
    assert refused["add 10.70.0.0/16 table 9027"].errno == 101  # ENETUNREACH
    assert refused[f"del 10.71.0.0/16 table {T}"].errno == 3  # ESRCH
    assert refused["add 10.72.0.0/16 table 9027"].errno == 19  # ENODEV
    assert "errno 101" in str(refused["add 10.70.0.0/16 table 9027"])
    have = kernel_table(node)
    assert len(have) == 3000 - 3
    assert have["100.64.4.2"] == "via 10.9.0.2 dev v0 mtu 1400"  # one from the second chunk
    assert not any(dst.startswith("10.7") for dst in have)


def test_add_replace_delete_and_dump_round_trip_both_families(node):
    v0, v1 = ifindex(node, "v0"), ifindex(node, "v1")
    with RouteSocket.open(node) as rs:
        assert (
            rs.apply(
                [
                    write("add", "10.50.0.0/16", gateway="10.9.0.2", oif=v0, mtu=1400),
                    write("add", "10.51.0.0/16", gateway="172.16.0.9", oif=v0, flags=4),  # onlink
                    write("add", "10.52.0.0/16", oif=v1, scope=253),
                    write("add", "fd00:50::/64", gateway="fd00:9::2", oif=v0, mtu=1380),
                ]
            )
            == [None] * 4
        )
        assert kernel_table(node) == {
            "10.50.0.0/16": "via 10.9.0.2 dev v0 mtu 1400",
            "10.51.0.0/16": "via 172.16.0.9 dev v0 onlink",
            "10.52.0.0/16": "dev v1 scope link",
        }
        dumped = {(r.dst, r.dst_len): r for r in rs.dump(proto=RAVEN_RTPROTO) if r.table == T}
        assert dumped[("10.50.0.0", 16)].gateway == "10.9.0.2"
        assert dumped[("10.50.0.0", 16)].mtu == 1400 and dumped[("10.50.0.0", 16)].oif == v0
        assert dumped[("10.51.0.0", 16)].flags & 4
        assert dumped[("10.52.0.0", 16)].gateway is None and dumped[("10.52.0.0", 16)].scope == 253
        assert dumped[("fd00:50::", 64)].gateway == "fd00:9::2"
        assert dumped[("fd00:50::", 64)].mtu == 1380

        # A second add of an existing key is refused; replace changes it in place.
        again = rs.apply([write("add", "10.50.0.0/16", gateway="10.9.0.3", oif=v0)])
        assert len(again) == 1 and isinstance(again[0], Refusal) and again[0].errno == 17
        rs.apply([write("replace", "fd00:50::/64", gateway="fd00:9::3", oif=v0)])
        v6 = kernel_table(node, family="-6")
        assert list(v6) == ["fd00:50::/64"] and "via fd00:9::3" in v6["fd00:50::/64"]

        assert rs.apply([write("del", d, scope=255) for d in ("10.50.0.0/16", "fd00:50::/64")]) == [
            None,
            None,
        ]
    assert "10.50.0.0/16" not in kernel_table(node)
    assert kernel_table(node, family="-6") == {}


def test_socket_opened_in_a_namespace_leaves_this_thread_where_it_was(node):
    mine = os.readlink("/proc/thread-self/ns/net")
    with RouteSocket.open(node) as rs:
        rs.apply([write("add", "10.90.0.0/16", gateway="10.9.0.2", oif=ifindex(node, "v0"))])
    assert os.readlink("/proc/thread-self/ns/net") == mine
    assert "10.90.0.0/16" in kernel_table(node)
    # ... and nothing leaked into the namespace this test runs in.
    host = subprocess.run(
        ["ip", "route", "show", "table", str(T), "10.90.0.0/16"], capture_output=True, text=True
    )
    assert "10.90.0.0" not in host.stdout


def test_unknown_namespace_is_named():
    with pytest.raises(batch.BatchSocketError, match="no-such-ns-h7"):
        RouteSocket.open("no-such-ns-h7")


# ---- the reconciler at scale ------------------------------------------------------------------


def test_full_sync_of_thousands_then_update_costs_one_write_and_no_dump(node, ipr, monkeypatch):
    # Count the batches the socket sends (how fast that is, `raven bench routes` measures).
    sent: list[int] = []
    real = RouteSocket._apply_chunk

    def counted(self, writes, start, end, results):
        sent.append(end - start)
        return real(self, writes, start, end, results)

    monkeypatch.setattr(RouteSocket, "_apply_chunk", counted)
    routes = host_routes(5000)
    rec = RouteReconciler(ipr)
    changes = rec.reconcile(routes)
    assert len(changes.added) == 5000 and rec.writes == 5000
    have = kernel_table(node)
    assert len(have) == 5000 and have["100.64.19.135"] == "via 10.9.0.2 dev v0 mtu 1400"
    # Batched: a few sends of up to CHUNK routes each, not one message and ack per route.
    assert sum(sent) == 5000 and len(sent) == -(-5000 // batch.CHUNK), sent

    moved = list(routes)
    moved[2500] = RouteSpec(routes[2500].dst, T, "10.9.0.3", "v0", mtu=1400)
    dumps = rec.dumps
    assert rec.reconcile(moved, resync=False).replaced == [moved[2500]]
    assert rec.writes == 5001 and rec.dumps == dumps  # one write, no dump
    assert kernel_table(node)[moved[2500].dst.removesuffix("/32")] == "via 10.9.0.3 dev v0 mtu 1400"

    assert rec.reconcile(moved, resync=False).writes == 0 and rec.dumps == dumps
    assert rec.reconcile(moved).writes == 0 and rec.dumps == dumps + 1  # resync: dump, no write
    assert rec.writes == 5001

    assert len(rec.remove_all().deleted) == 5000
    assert kernel_table(node) == {}


def test_resync_finds_what_changed_behind_its_back_update_alone_does_not(node, ipr):
    routes = host_routes(50)
    rec = RouteReconciler(ipr)
    rec.reconcile(routes)
    sh("ip", "route", "del", "100.64.0.7/32", "table", str(T), ns=node)
    # Trusting its memory, an update does not notice (that is what resyncs are for) ...
    assert rec.reconcile(routes, resync=False).writes == 0
    assert "100.64.0.7" not in kernel_table(node)
    # ... a resync does, and puts back exactly that route.
    assert rec.reconcile(routes).added == [routes[7]]
    assert len(kernel_table(node)) == 50


def test_update_that_deletes_a_route_already_gone_is_not_an_error(node, ipr):
    routes = host_routes(10)
    rec = RouteReconciler(ipr)
    rec.reconcile(routes)
    sh("ip", "route", "del", "100.64.0.3/32", "table", str(T), ns=node)
    changes = rec.reconcile(routes[:3] + routes[4:], resync=False)
    assert changes.deleted == [routes[3]] and rec.writes == 11
    assert len(kernel_table(node)) == 9


def test_kernel_refusal_names_the_route_applies_the_rest_and_forces_a_dump(node, ipr):
    good = host_routes(2000)
    bad = RouteSpec("10.70.0.0/16", T, "192.0.2.1", "v0")  # gateway not on any link
    rec = RouteReconciler(ipr)
    with pytest.raises(ApplyError, match=r"add 10\.70\.0\.0/16 table 9027: Network is unreachable"):
        rec.reconcile([*good[:1000], bad, *good[1000:]])
    assert len(kernel_table(node)) == 2000
    # After a failure the reconciler does not trust its memory: the next update dumps.
    dumps = rec.dumps
    assert rec.reconcile(good, resync=False).writes == 0
    assert rec.dumps == dumps + 1


def test_restarted_reconciler_adopts_a_large_table_without_writing(node, ipr):
    routes = host_routes(3000)
    RouteReconciler(ipr).reconcile(routes)
    fresh = RouteReconciler(ipr)
    assert fresh.reconcile(routes, resync=False).writes == 0  # knows nothing yet: dumps
    assert fresh.dumps == 1 and fresh.writes == 0


# ---- the benchmark, through the real CLI ------------------------------------------------------


def test_bench_routes_cli_reports_consistent_figures():
    proc = subprocess.run(
        [str(RAVEN), "bench", "routes", "--count", "2000", "--rounds", "1", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["count"] == 2000 and figures["rounds"] == 1
    assert figures["routes_per_s"] > 0 and figures["ip_batch_routes_per_s"] > 0
    assert figures["full_sync_ms"] > 0 and figures["ip_batch_ms"] > 0
    assert figures["routes_per_s"] == pytest.approx(
        2000 / (figures["full_sync_ms"] / 1000), rel=0.01
    )
    assert figures["ratio"] == pytest.approx(
        figures["routes_per_s"] / figures["ip_batch_routes_per_s"], rel=0.01
    )
    assert figures["update_one_route_writes"] == 1
    assert figures["update_one_route_dumps"] == 0
    assert figures["idle_reconcile_writes"] == 0
    assert figures["update_one_route_ms"] > 0 and figures["idle_resync_ms"] > 0


def test_bench_routes_cli_refuses_a_bad_count():
    proc = subprocess.run(
        [str(RAVEN), "bench", "routes", "--count", "0"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and "--count 0" in proc.stderr
