"""Build and teardown primitives for the lab: namespaces, veths, bridges, addresses, routes, NAT.

Thin wrappers over iproute2's ``ip`` (the lab builds links once; only the agent keeps a netlink
socket, in raven.netlink) plus ``ip netns exec`` for sysctl and iptables. ``ns=None`` means the
host's namespace. Nothing here knows the topology.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")


class LabNetError(RuntimeError):
    """A netlink, sysctl or iptables step of the lab failed."""


def _ip(ns: str | None, *args: str, json_out: bool = False) -> str:
    """Run ``ip`` (in ``ns`` when given); LabNetError naming the command when it fails."""
    cmd = ["ip", *(["-n", ns] if ns else []), *(["-j"] if json_out else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabNetError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def create_netns(name: str) -> None:
    if name in list_netns():
        raise LabNetError(f"network namespace {name} already exists")
    _ip(None, "netns", "add", name)
    _ip(name, "link", "set", "lo", "up")


def attach_netns(name: str, pid: int) -> None:
    """Name the network namespace of process ``pid`` (a container's, say) ``name``, as
    ``ip netns attach`` does, and bring its loopback up. ``remove_netns`` drops the name again;
    the namespace itself lives on while a process holds it."""
    if name in list_netns():
        raise LabNetError(f"network namespace {name} already exists")
    proc = subprocess.run(
        ["ip", "netns", "attach", name, str(pid)], capture_output=True, text=True, timeout=10
    )
    if proc.returncode != 0:
        raise LabNetError(f"ip netns attach {name} {pid}: {proc.stderr.strip()}")
    _ip(name, "link", "set", "lo", "up")


def remove_netns(name: str) -> bool:
    """Remove a namespace (its links go with it). False if it did not exist."""
    if name not in list_netns():
        return False
    _ip(None, "netns", "del", name)
    return True


def ns_pids(name: str) -> list[int]:
    """PIDs of processes living in the namespace (to report what a removal would strand)."""
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()] if out.returncode == 0 else []


def add_veth(ns_a: str | None, if_a: str, ns_b: str | None, if_b: str) -> None:
    """A veth pair with one end in each namespace, both up."""
    try:
        peer = ["peer", "name", if_b, *(["netns", ns_b] if ns_b is not None else [])]
        _ip(ns_a, "link", "add", if_a, "type", "veth", *peer)
        _ip(ns_a, "link", "set", if_a, "up")
        _ip(ns_b, "link", "set", if_b, "up")
    except LabNetError as e:
        raise LabNetError(f"veth {ns_a or 'host'}/{if_a} <-> {ns_b or 'host'}/{if_b}: {e}") from e


def add_bridge(ns: str, name: str) -> None:
    _ip(ns, "link", "add", name, "type", "bridge")
    _ip(ns, "link", "set", name, "up")


def set_master(ns: str, ifname: str, bridge: str) -> None:
    _ip(ns, "link", "set", ifname, "master", bridge)


def add_address(ns: str | None, ifname: str, ip: ipaddress.IPv4Address, prefixlen: int) -> None:
    _ip(ns, "addr", "add", f"{ip}/{prefixlen}", "dev", ifname)


def add_route(
    ns: str,
    dst: str,
    *,
    gateway: ipaddress.IPv4Address | None = None,
    ifname: str | None = None,
) -> None:
    """A route in the main table: ``dst`` is a CIDR or ``default``."""
    args = ["route", "add", dst]
    if gateway is not None:
        args += ["via", str(gateway)]
    if ifname is not None:
        args += ["dev", ifname]
        if gateway is None:
            args += ["scope", "link"]  # directly reachable, as for a veth peer's /32
    try:
        _ip(ns, *args)
    except LabNetError as e:
        raise LabNetError(f"route {dst} in {ns}: {e}") from e


def link_names(ns: str | None) -> list[str]:
    return sorted(
        str(link["ifname"]) for link in json.loads(_ip(ns, "link", "show", json_out=True))
    )


def delete_link(ns: str | None, ifname: str) -> bool:
    if ifname not in link_names(ns):
        return False
    _ip(ns, "link", "del", ifname)
    return True


def host_addresses() -> list[ipaddress.IPv4Interface]:
    out = []
    for link in json.loads(_ip(None, "-4", "addr", "show", json_out=True)):
        for a in link.get("addr_info", []):
            out.append(ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}"))
    return out


def host_routes() -> list[ipaddress.IPv4Network]:
    out = []
    for r in json.loads(_ip(None, "-4", "route", "show", "table", "main", json_out=True)):
        dst = r.get("dst", "default")
        out.append(ipaddress.IPv4Network("0.0.0.0/0" if dst == "default" else dst, strict=False))
    return out


def in_netns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def run_in(ns: str, argv: list[str]) -> str:
    proc = subprocess.run(in_netns(ns, argv), capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabNetError(f"in {ns}: {' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def enable_forwarding(ns: str) -> None:
    run_in(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])


def add_masquerade(
    ns: str,
    chain: str,
    source: ipaddress.IPv4Network | Sequence[ipaddress.IPv4Network],
    out_if: str,
) -> None:
    """SNAT the LAN (and a routed LAN's other subnets) behind ``out_if`` (a NAT router), in a
    chain of our own in the nat table."""
    sources = [source] if isinstance(source, ipaddress.IPv4Network) else list(source)
    run_in(ns, ["iptables", "-w", "-t", "nat", "-N", chain])
    for net in sources:
        rule = ["-A", chain, "-s", str(net), "-o", out_if, "-j", "MASQUERADE"]
        run_in(ns, ["iptables", "-w", "-t", "nat", *rule])
    run_in(ns, ["iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-j", chain])


def disable_ipv6(ifname: str) -> None:
    """Turn IPv6 off on a host interface, so it carries no address the lab did not choose."""
    Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1\n")
