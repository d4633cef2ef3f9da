"""Fixtures for tests that need root: throwaway network namespaces with unique names.

Every name carries this process's PID and a random suffix, so parallel runs never collide, and
everything made here (namespaces, wireguard-go processes) is removed by its own name or PID.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

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
