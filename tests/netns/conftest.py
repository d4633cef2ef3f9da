"""Fixtures for tests that need root: throwaway network namespaces with unique names.

Every name carries this process's PID and a random suffix, so parallel runs never collide, and
everything made here (namespaces, wireguard-go processes) is removed by its own name or PID.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.waiting import wait_for

pytestmark = pytest.mark.root


def sh(*args: str, ns: str | None = None, check: bool = True) -> str:
    """Run a command (inside ``ns`` when given) and return its stdout."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {proc.stderr}")
    return proc.stdout


def unique(prefix: str) -> str:
    """A short host-unique name (interface names are limited to 15 characters)."""
    return f"{prefix}{os.getpid() % 10000}{secrets.token_hex(2)}"[:15]


def settle_links(ns: str, *, deadline: float = 30) -> None:
    """Wait until the kernel has finished setting up IPv6 on the links of ``ns`` that have a
    carrier: each Ethernet-like link has its link-local address, and no address is still
    tentative (duplicate address detection). Until then the kernel keeps adding addresses and
    routes on its own (a second or more on a busy machine), so a snapshot taken earlier would
    differ from one taken later for reasons that have nothing to do with the test."""

    def settled() -> bool:
        modes = {
            link["ifname"]: link.get("inet6_addr_gen_mode")
            for link in json.loads(sh("ip", "-j", "-d", "link", "show", ns=ns))
        }
        for link in json.loads(sh("ip", "-j", "addr", "show", ns=ns)):
            name, infos = link["ifname"], link.get("addr_info", [])
            assert not any(a.get("tentative") for a in infos), f"{name}: {infos}"
            if (
                "LOWER_UP" not in link.get("flags", [])
                or link.get("link_type") != "ether"
                or modes.get(name) == "none"
                or sh("sysctl", "-n", f"net.ipv6.conf.{name}.disable_ipv6", ns=ns).strip() != "0"
            ):
                continue
            local = [a for a in infos if a.get("family") == "inet6" and a.get("scope") == "link"]
            assert local, f"{name} has no IPv6 link-local address yet"
        return True

    wait_for(settled, deadline, f"the links of {ns} to settle", interval=0.1)


def reported_so_far(reports: queue.Queue[str], ns: str, *, deadline: float = 10) -> list[str]:
    """Every reason a KernelWatch on ``ns`` has reported (or was about to) so far, in order;
    the queue it reports to then holds only what happens next.

    Adds a link with a fresh name (an empty bridge), a change the watch reports, and takes
    reports up to the one naming it. The kernel queues a socket's notifications in order, so
    whatever the watch reports about earlier changes comes before: the list is complete, with
    no guess at how long to wait. The marker's own reasons are left out; its link stays down
    and goes with the namespace.
    """
    marker = unique("mk")
    sh("ip", "link", "add", marker, "type", "bridge", ns=ns)
    reasons: list[str] = []
    end = time.monotonic() + deadline
    while True:
        try:
            report = reports.get(timeout=max(0.01, end - time.monotonic()))
        except queue.Empty:
            raise AssertionError(
                f"no report of the marker link {marker} within {deadline}s; reported: {reasons}"
            ) from None
        mine = [r for r in report.split("; ") if not r.endswith(f" {marker}")]
        reasons += mine
        if len(mine) < len(report.split("; ")):
            return reasons


@pytest.fixture
def make_netns() -> Iterator:
    if os.geteuid() != 0:
        pytest.fail("tests/netns need root (network namespaces)")
    made: list[str] = []

    def make(prefix: str = "rvn") -> str:
        name = unique(prefix)
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns(make_netns) -> str:
    return make_netns()


@pytest.fixture
def ipr(netns: str) -> Iterator:
    from pyroute2 import IPRoute

    with IPRoute(netns=netns) as handle:
        yield handle
