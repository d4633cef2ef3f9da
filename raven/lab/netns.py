"""Build and teardown primitives for the lab: namespaces, veths, bridges, addresses, routes, NAT.

Thin wrappers over pyroute2 (netlink) plus ``ip netns exec`` for sysctl and iptables, which are
the natural tools there. ``ns=None`` means the host's namespace. Nothing here knows the topology.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

NETNS_DIR = Path("/run/netns")


class LabNetError(RuntimeError):
    """A netlink, sysctl or iptables step of the lab failed."""


def _ipr(ns: str | None) -> IPRoute:
    return IPRoute(netns=ns) if ns else IPRoute()


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def create_netns(name: str) -> None:
    if name in list_netns():
        raise LabNetError(f"network namespace {name} already exists")
    netns.create(name)
    with _ipr(name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


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
    with _ipr(name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def remove_netns(name: str) -> bool:
    """Remove a namespace (its links go with it). False if it did not exist."""
    if name not in list_netns():
        return False
    netns.remove(name)
    return True


def ns_pids(name: str) -> list[int]:
    """PIDs of processes living in the namespace (to report what a removal would strand)."""
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()] if out.returncode == 0 else []


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabNetError(f"interface {ifname} not found")
    return int(found[0])


def add_veth(ns_a: str | None, if_a: str, ns_b: str | None, if_b: str) -> None:
    """A veth pair with one end in each namespace, both up."""
    peer: dict[str, object] = {"ifname": if_b}
    if ns_b is not None:
        peer["net_ns_fd"] = ns_b
    try:
        with _ipr(ns_a) as ipr:
            ipr.link("add", ifname=if_a, kind="veth", peer=peer)
            ipr.link("set", index=_index(ipr, if_a), state="up")
        with _ipr(ns_b) as ipr:
            ipr.link("set", index=_index(ipr, if_b), state="up")
    except NetlinkError as e:
        raise LabNetError(f"veth {ns_a or 'host'}/{if_a} <-> {ns_b or 'host'}/{if_b}: {e}") from e


def add_bridge(ns: str, name: str) -> None:
    with _ipr(ns) as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        ipr.link("set", index=_index(ipr, name), state="up")


def set_master(ns: str, ifname: str, bridge: str) -> None:
    with _ipr(ns) as ipr:
        ipr.link("set", index=_index(ipr, ifname), master=_index(ipr, bridge))


def add_address(ns: str | None, ifname: str, ip: ipaddress.IPv4Address, prefixlen: int) -> None:
    with _ipr(ns) as ipr:
        ipr.addr("add", index=_index(ipr, ifname), address=str(ip), prefixlen=prefixlen)


def add_route(
    ns: str,
    dst: str,
    *,
    gateway: ipaddress.IPv4Address | None = None,
    ifname: str | None = None,
) -> None:
    """A route in the main table: ``dst`` is a CIDR or ``default``."""
    kwargs: dict[str, object] = {"dst": "0.0.0.0/0" if dst == "default" else dst}
    with _ipr(ns) as ipr:
        if gateway is not None:
            kwargs["gateway"] = str(gateway)
        if ifname is not None:
            kwargs["oif"] = _index(ipr, ifname)
            if gateway is None:
                kwargs["scope"] = 253  # link: directly reachable, as for a veth peer's /32
        try:
            ipr.route("add", **kwargs)
        except NetlinkError as e:
            raise LabNetError(f"route {dst} in {ns}: {e}") from e


def link_names(ns: str | None) -> list[str]:
    with _ipr(ns) as ipr:
        return sorted(str(link.get("ifname")) for link in ipr.get_links())


def delete_link(ns: str | None, ifname: str) -> bool:
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        ipr.link("del", index=found[0])
        return True


def host_addresses() -> list[ipaddress.IPv4Interface]:
    with IPRoute() as ipr:
        return [
            ipaddress.IPv4Interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr(family=2)
        ]


def host_routes() -> list[ipaddress.IPv4Network]:
    with IPRoute() as ipr:
        out = []
        for r in ipr.get_routes(family=2, table=254):
            dst = r.get("RTA_DST")
            out.append(ipaddress.IPv4Network(f"{dst or '0.0.0.0'}/{r['dst_len']}", strict=False))
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
