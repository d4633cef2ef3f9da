"""Forwarding switch and TCP MSS clamp inside a throwaway namespace."""

from __future__ import annotations

import sys

from raven.netlink.mss import CHAIN, MssClamp
from tests.netns.conftest import sh

PROG = (
    "import sys; from raven.netlink.sysctl import ensure_ip_forward as e; "
    "print(e(sys.argv[1] == 'on'))"
)


def forward(ns: str, state: str) -> str:
    return sh(sys.executable, "-c", PROG, state, ns=ns).strip()


def test_ip_forward_written_only_when_different(netns):
    host_before = open("/proc/sys/net/ipv4/ip_forward").read()
    # A new namespace copies the host's setting, whatever another program made it: start off.
    sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=netns)
    assert sh("cat", "/proc/sys/net/ipv4/ip_forward", ns=netns).strip() == "0"
    assert forward(netns, "on") == "True"
    assert sh("cat", "/proc/sys/net/ipv4/ip_forward", ns=netns).strip() == "1"
    assert forward(netns, "on") == "False"  # no write the second time
    assert forward(netns, "off") == "True"
    assert open("/proc/sys/net/ipv4/ip_forward").read() == host_before  # the host is untouched


def save(ns: str) -> list[str]:
    # iptables-save prints timestamps in comment lines; the rules are what matter.
    out = sh("iptables-save", ns=ns)
    return [line for line in out.splitlines() if not line.startswith("#")]


def test_mss_clamp_idempotent_and_removed_exactly(netns):
    sh("iptables", "-t", "mangle", "-A", "FORWARD", "-p", "udp", "-j", "ACCEPT", ns=netns)
    sh("iptables", "-t", "filter", "-A", "FORWARD", "-j", "ACCEPT", ns=netns)
    before = save(netns)
    clamp = MssClamp(netns=netns)
    assert clamp.ensure("wgx0") is True
    assert clamp.rules() == [
        f"-A {CHAIN} -o wgx0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
    ]
    jumps = [line for line in save(netns) if f"-j {CHAIN}" in line]
    assert len(jumps) == 1 and jumps[0].startswith("-A FORWARD")
    writes = clamp.writes
    assert clamp.ensure("wgx0") is False and clamp.writes == writes
    # A different device replaces the one clamp rule, not adds a second.
    assert clamp.ensure("wgy0") is True
    assert len(clamp.rules()) == 1 and "-o wgy0" in clamp.rules()[0]
    assert clamp.remove() is True
    assert save(netns) == before
    assert clamp.remove() is False
