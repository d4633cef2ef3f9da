"""What one node holds, as values: the collector script run on the node and its parser. Pure.

The script needs only what the agent's image has (``ip``, ``wg``, ``iptables-save``, a POSIX
shell, ``timeout``), so the same text runs in a lab node's namespace and in a cluster node's
agent container, with one round trip per node. Its sections are parsed here into
:class:`NodeFacts`; a section that failed is kept as an error, never guessed.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.dump import DeviceStatus, WireGuardError, parse_dump
from raven.model import LocalAddress

#: Run with ``WG`` (the WireGuard device) and ``TABLE`` (Raven's table) in the environment.
#: ``wg show`` gets 2 s: a stopped wireguard-go never answers. A table that does not exist
#: (no Raven state yet) reads as no routes. Builtins where a loop meets every process.
COLLECT_SCRIPT = r"""
j() { out=$("$@" 2>/dev/null) || out='[]'; echo "$out"; }
echo "@@ now"; date +%s
echo "@@ rules"; j ip -4 -j rule show
echo "@@ routes"; j ip -4 -j -d route show table "$TABLE"
echo "@@ main"; j ip -4 -j route show table main
echo "@@ links"; j ip -j -d link show
echo "@@ addrs"; j ip -4 -j addr show
echo "@@ sysctl"
cd /proc/sys/net/ipv4 && for f in ip_forward conf/*/forwarding conf/*/rp_filter; do
  v=; read -r v < "$f"; echo "$f $v"  # /proc/sys reads end without a newline: rc 1
done
echo "@@ wg"; timeout 2 wg show "$WG" dump 2>&1; echo "@@ wgrc $?"
echo "@@ wgproc"
for d in /proc/[0-9]*; do
  c=; read -r c < "$d/comm" 2>/dev/null
  [ "$c" = wireguard-go ] || continue
  stat=; read -r stat < "$d/stat"; set -- $stat
  echo "${d#/proc/} $3 $(tr '\0' ' ' < "$d/cmdline")"
done
echo "@@ mangle"; timeout 2 iptables-save -t mangle 2>&1
echo "@@ end"
"""


@dataclass(frozen=True)
class Link:
    name: str
    mtu: int
    up: bool
    kind: str  # "wireguard", "tun", "vxlan", "veth", "" ...


@dataclass(frozen=True)
class WgProcess:
    pid: int
    state: str  # /proc/PID/stat's state: R, S, T (stopped), Z ...
    argv: tuple[str, ...]


@dataclass(frozen=True)
class NodeFacts:
    """One node's data path as its kernel and WireGuard report it."""

    node: str
    wg_dev: str
    now: int = 0
    rules: tuple[Mapping[str, Any], ...] = ()
    routes: tuple[Mapping[str, Any], ...] = ()  # Raven's table
    main_routes: tuple[Mapping[str, Any], ...] = ()
    links: Mapping[str, Link] = field(default_factory=dict)
    addresses: tuple[LocalAddress, ...] = ()
    sysctl: Mapping[str, str] = field(default_factory=dict)  # "ip_forward", "conf/eth0/..."
    wg: DeviceStatus | None = None
    wg_error: str = ""  # why ``wg`` is None: no device, no answer, ...
    wg_processes: tuple[WgProcess, ...] = ()  # wireguard-go serving ``wg_dev``
    mangle: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()  # sections that could not be read

    def sysctl_int(self, key: str) -> int | None:
        try:
            return int(self.sysctl[key])
        except (KeyError, ValueError):
            return None

    def address_dev(self, address: str) -> LocalAddress | None:
        return next((a for a in self.addresses if a.address == address), None)

    def main_route_dev(self, ip: str) -> str | None:
        """The device of the most specific main-table route to ``ip`` (the CNI's), if any."""
        addr = ipaddress.ip_address(ip)
        best: tuple[int, str] | None = None
        for route in self.main_routes:
            dst = route.get("dst", "")
            net = ipaddress.ip_network("0.0.0.0/0" if dst == "default" else dst, strict=False)
            if addr in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, str(route.get("dev", "")))
        return best[1] if best else None


def _sections(text: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("@@ "):
            current = line[3:].strip()
            out.setdefault(current, [])
            continue
        out.setdefault(current, []).append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def _json_list(text: str) -> list[Any]:
    data = json.loads(text or "[]")
    return data if isinstance(data, list) else []


def parse_facts(node: str, wg_dev: str, text: str) -> NodeFacts:
    """The collector's output -> :class:`NodeFacts`. Never raises: what cannot be read is
    named in ``errors``."""
    s = _sections(text)
    errors: list[str] = []
    if "end" not in s:
        errors.append("the collector did not finish: " + text.strip()[-300:])

    def json_section(name: str) -> list[Any]:
        try:
            return _json_list(s.get(name, ""))
        except ValueError:
            errors.append(f"{name}: {s.get(name, '')[:200]!r}")
            return []

    links = {}
    for raw in json_section("links"):
        info = raw.get("linkinfo", {}) if isinstance(raw, dict) else {}
        name = str(raw.get("ifname", ""))
        links[name] = Link(
            name=name,
            mtu=int(raw.get("mtu", 0)),
            up="UP" in raw.get("flags", []),
            kind=str(info.get("info_kind", "")),
        )
    addresses = []
    for raw in json_section("addrs"):
        for a in raw.get("addr_info", []):
            addresses.append(
                LocalAddress(
                    address=a["local"],
                    prefixlen=int(a["prefixlen"]),
                    dev=str(raw.get("ifname", "")),
                    mtu=int(raw.get("mtu", 0)),
                    family=4,
                )
            )
    sysctl = {}
    for line in s.get("sysctl", "").splitlines():
        key, _, value = line.partition(" ")
        if key:
            sysctl[key] = value.strip()
    wg: DeviceStatus | None = None
    wg_error = ""
    rc_line = next((k for k in s if k.startswith("wgrc ")), "wgrc ?")
    code = rc_line.split()[1]
    if code == "0":
        try:
            wg = parse_dump(s.get("wg", ""))
        except WireGuardError as e:
            wg_error = str(e)
    elif code == "124":
        wg_error = f"`wg show {wg_dev}` got no answer within 2 s"
    else:
        wg_error = (s.get("wg", "").strip() or f"`wg show {wg_dev}` failed ({code})")[:300]
    procs = []
    for line in s.get("wgproc", "").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit():
            argv = tuple(parts[2:])
            if argv and argv[-1] == wg_dev and argv[0].endswith("wireguard-go"):
                procs.append(WgProcess(int(parts[0]), parts[1], argv))
    now = s.get("now", "").strip()
    return NodeFacts(
        node=node,
        wg_dev=wg_dev,
        now=int(now) if now.isdigit() else 0,
        rules=tuple(json_section("rules")),
        routes=tuple(json_section("routes")),
        main_routes=tuple(json_section("main")),
        links=links,
        addresses=tuple(addresses),
        sysctl=sysctl,
        wg=wg,
        wg_error=wg_error,
        wg_processes=tuple(procs),
        mangle=tuple(line for line in s.get("mangle", "").splitlines() if line.startswith("-A")),
        errors=tuple(errors),
    )
