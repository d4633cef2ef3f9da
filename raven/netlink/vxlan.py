"""VXLAN reconciler: keeps Raven's one VXLAN link, its neighbour and its forwarding entries as
desired.

A member whose pool gateway is not on-link routes remote pools' CIDRs ``via <gateway> dev <vx>
onlink``; the kernel then needs, on that link, a permanent neighbour ``<gateway> lladdr <its
VXLAN MAC>`` and a forwarding entry ``<that MAC> dst <gateway>`` telling VXLAN where to send
the frame. A gateway has the same link (no entries) to decapsulate what members send, with
reverse-path filtering loose on it (packets from members' pods arrive on it while the route back
to them leaves by the underlay) and forwarding on. The link also carries one IPv4 address,
:data:`LINK_ADDRESS`/32 with scope link: the kernel's reverse-path check refuses every packet
arriving on a device without an IPv4 address whenever filtering is on (``all`` or the device),
loose or not. A /32 adds no route to the main table, and scope link keeps it from ever being
picked as a source address.

The link is Raven's when it is a VXLAN link whose alias (``IFLA_IFALIAS``) is :data:`ALIAS`.
The kernel ignores an alias given at creation, so it is stamped right after; an unstamped VXLAN
link with our name, VNI and port is one an interrupted agent created and is claimed. Any other
link with the name is never touched: the reconcile fails naming it. Learning is off, the MAC is
the planned one, IPv6 address generation is off (no link-local address, no IPv6 route appears).

Only the difference is written; ``writes`` counts netlink writes, so an idle reconcile costs
none. A link whose VNI, port or local address differ is deleted and created again (the kernel
cannot change those in place). Neighbour and forwarding entries are diffed; only permanent ones
on our link are ever deleted (transient ones the kernel makes age out on their own).
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError as PyNetlinkError  # type: ignore[import-untyped]

from raven.model import DEFAULT_VXLAN_PORT, DEFAULT_VXLAN_VNI, VxlanSpec
from raven.netlink.batch import RouteSocket, netns_of
from raven.netlink.errors import ApplyError, BadSpec

#: The alias that marks a VXLAN link as Raven's.
ALIAS = "raven: vxlan to a pool gateway that is not on-link"
#: Reverse-path filter on our link: 2 = loose (a route back exists, by any device).
RP_FILTER_LOOSE = 2
#: The link's one address (see above): in 240.0.0.0/4, which is reserved and never routed.
LINK_ADDRESS = "240.90.27.1"
RT_SCOPE_LINK = 253

NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
IFF_UP = 0x1
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

# Raw RTM_SETLINK pieces for per-device IPv4 settings and IPv6 address generation, which
# pyroute2 0.9 cannot encode (linux/rtnetlink.h, if_link.h, ip.h).
RTM_SETLINK = 19
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLA_F_NESTED = 0x8000
IFLA_AF_SPEC = 26
IFLA_INET_CONF = 1
IFLA_INET6_ADDR_GEN_MODE = 8
IN6_ADDR_GEN_MODE_NONE = 1
IPV4_DEVCONF_FORWARDING = 1
IPV4_DEVCONF_RP_FILTER = 8


@dataclass
class VxlanChanges:
    """What one reconcile did; all empty/False when the kernel already matched."""

    created: bool = False
    deleted: bool = False  # the link went away (no longer desired, or recreated)
    link_updates: list[str] = field(default_factory=list)  # e.g. "mtu 1450", "up", "rp_filter"
    neighbours: list[str] = field(default_factory=list)  # e.g. "add 192.168.10.10"
    fdb: list[str] = field(default_factory=list)  # e.g. "del 0e:52:c0:a8:0a:0a dst 192.168..."

    @property
    def link_changed(self) -> bool:
        """True when the link was created or deleted: routes through it must be re-checked."""
        return self.created or self.deleted

    @property
    def empty(self) -> bool:
        return not (
            self.created or self.deleted or self.link_updates or self.neighbours or self.fdb
        )


@dataclass(frozen=True)
class LinkState:
    """Our link as the kernel has it now."""

    index: int
    kind: str | None
    alias: str | None
    vni: int | None
    port: int | None
    local: str | None
    learning: bool
    mac: str | None
    mtu: int | None
    up: bool
    rp_filter: int | None
    forwarding: int | None
    addr_gen_mode: int | None  # None: no IPv6 on this host


def check(spec: VxlanSpec) -> VxlanSpec:
    """The spec with addresses in canonical form; BadSpec names a malformed field."""
    if not 1 <= spec.vni < 2**24:
        raise BadSpec(f"vxlan {spec.dev}: vni {spec.vni} is outside 1..{2**24 - 1}")
    if not 1 <= spec.port <= 65535:
        raise BadSpec(f"vxlan {spec.dev}: port {spec.port} is outside 1..65535")
    if not 68 <= spec.mtu <= 65535:
        raise BadSpec(f"vxlan {spec.dev}: mtu {spec.mtu} is outside 68..65535")
    try:
        local = ipaddress.ip_address(spec.local)
    except ValueError:
        raise BadSpec(f"vxlan {spec.dev}: local {spec.local!r} is not an IP address") from None
    mac = spec.mac.lower()
    if not _MAC.match(mac):
        raise BadSpec(f"vxlan {spec.dev}: mac {spec.mac!r} is not a MAC address")
    peers = []
    for peer in spec.peers:
        try:
            ip = ipaddress.ip_address(peer.ip)
        except ValueError:
            raise BadSpec(f"vxlan {spec.dev}: peer {peer.ip!r} is not an IP address") from None
        if ip.version != local.version:
            raise BadSpec(f"vxlan {spec.dev}: peer {ip} is not of the family of local {local}")
        if not _MAC.match(peer.mac.lower()):
            raise BadSpec(f"vxlan {spec.dev}: peer {ip} has mac {peer.mac!r}, not a MAC address")
        peers.append(type(peer)(str(ip), peer.mac.lower()))
    return VxlanSpec(spec.dev, spec.vni, spec.port, str(local), mac, spec.mtu, tuple(sorted(peers)))


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


class VxlanReconciler:
    """Keeps the VXLAN link named ``dev`` (and only it) as desired.

    ``vni`` and ``port`` say which unstamped link of that name counts as ours on removal (one
    an interrupted agent created); a reconcile uses the spec's own values.
    """

    def __init__(
        self,
        ipr: Any,
        dev: str,
        *,
        vni: int = DEFAULT_VXLAN_VNI,
        port: int = DEFAULT_VXLAN_PORT,
    ) -> None:
        self.ipr = ipr
        self.dev = dev
        self.vni = vni
        self.port = port
        self.writes = 0

    # Reads ----------------------------------------------------------------------------------

    def current(self) -> LinkState | None:
        """The link named ``dev`` now, whoever owns it; None when there is none."""
        found = self.ipr.link_lookup(ifname=self.dev)
        if not found:
            return None
        msgs = self.ipr.get_links(found[0])
        if not msgs:
            return None
        msg = msgs[0]
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        data = info.get_attr("IFLA_INFO_DATA") if info is not None and kind == "vxlan" else None

        def vx(name: str) -> Any:
            return data.get_attr(name) if data is not None else None

        spec = msg.get_attr("IFLA_AF_SPEC")
        inet = spec.get_attr("AF_INET") if spec is not None else None
        inet6 = spec.get_attr("AF_INET6") if spec is not None else None
        return LinkState(
            index=msg["index"],
            kind=kind,
            alias=msg.get_attr("IFLA_IFALIAS"),
            vni=vx("IFLA_VXLAN_ID"),
            port=vx("IFLA_VXLAN_PORT"),
            local=vx("IFLA_VXLAN_LOCAL") or vx("IFLA_VXLAN_LOCAL6"),
            learning=bool(vx("IFLA_VXLAN_LEARNING")),
            mac=(msg.get_attr("IFLA_ADDRESS") or "").lower() or None,
            mtu=msg.get_attr("IFLA_MTU"),
            up=bool(msg["flags"] & IFF_UP),
            rp_filter=inet["rp_filter"] if inet is not None else None,
            forwarding=inet["forwarding"] if inet is not None else None,
            addr_gen_mode=inet6.get_attr("IFLA_INET6_ADDR_GEN_MODE") if inet6 is not None else None,
        )

    def ours(self, link: LinkState, *, vni: int | None = None, port: int | None = None) -> bool:
        """Raven's link: stamped with our alias, or an unstamped VXLAN link with our VNI and
        port (created by an agent that died before stamping it)."""
        if link.kind != "vxlan":
            return False
        if link.alias == ALIAS:
            return True
        vni = self.vni if vni is None else vni
        port = self.port if port is None else port
        return not link.alias and link.vni == vni and link.port == port

    def neighbours(self, index: int) -> dict[str, tuple[str | None, int]]:
        """IP -> (MAC, NUD state) of every neighbour entry on link ``index``."""
        found = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self.ipr.get_neighbours(ifindex=index, family=family):
                if msg["ifindex"] != index or msg.get_attr("NDA_DST") is None:
                    continue
                lladdr = msg.get_attr("NDA_LLADDR")
                found[str(msg.get_attr("NDA_DST"))] = (
                    lladdr.lower() if lladdr else None,
                    msg["state"],
                )
        return found

    def fdb(self, index: int) -> dict[tuple[str, str], int]:
        """(MAC, destination IP) -> NUD state of every forwarding entry on link ``index``."""
        found = {}
        for msg in self.ipr.fdb("dump", ifindex=index):
            dst, lladdr = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
            if msg["ifindex"] != index or dst is None or lladdr is None:
                continue
            found[(lladdr.lower(), str(dst))] = msg["state"]
        return found

    # Writes ---------------------------------------------------------------------------------

    def reconcile(self, spec: VxlanSpec | None) -> VxlanChanges:
        """Make the kernel hold ``spec`` (None: no link of ours). Raises BadSpec for a bad spec
        or a foreign link in the way, ApplyError naming every write that failed."""
        changes = VxlanChanges()
        failures: dict[str, str] = {}
        link = self.current()
        if spec is None:
            if link is not None and self.ours(link):
                what = f"delete link {self.dev}"
                changes.deleted = self._write(failures, what, "link", "del", index=link.index)
            if failures:
                raise ApplyError(f"vxlan {self.dev}", failures)
            return changes

        spec = check(spec)
        if spec.dev != self.dev:
            raise BadSpec(f"vxlan spec is for {spec.dev!r}; this reconciler keeps {self.dev!r}")
        if link is not None and not self.ours(link, vni=spec.vni, port=spec.port):
            raise BadSpec(
                f"a link named {self.dev} exists and is not Raven's (kind {link.kind or '?'},"
                f" alias {link.alias!r}); it is left alone: give Raven's VXLAN link another name"
            )
        if link is not None and (
            link.vni != spec.vni
            or link.port != spec.port
            or link.local != spec.local
            or link.learning
        ):
            self._write(failures, f"delete link {self.dev}", "link", "del", index=link.index)
            changes.deleted = True
            link = None
        if link is None and not failures:
            link = self._create(spec, failures)
            changes.created = link is not None
        if link is None:
            raise ApplyError(f"vxlan {self.dev}", failures)

        self._update_link(link, spec, changes, failures)
        self._ensure_address(link.index, changes, failures)
        self._sync_neighbours(link.index, spec, changes, failures)
        self._sync_fdb(link.index, spec, changes, failures)
        if failures:
            raise ApplyError(f"vxlan {self.dev}", failures)
        return changes

    def remove(self) -> bool:
        """Delete our link if it is there (uninstall); True when one was deleted."""
        return self.reconcile(None).deleted

    def _create(self, spec: VxlanSpec, failures: dict[str, str]) -> LinkState | None:
        local = "vxlan_local6" if ":" in spec.local else "vxlan_local"
        ok = self._write(
            failures,
            f"create link {self.dev}",
            "link",
            "add",
            ifname=self.dev,
            kind="vxlan",
            vxlan_id=spec.vni,
            vxlan_port=spec.port,
            vxlan_learning=0,
            address=spec.mac,
            mtu=spec.mtu,
            **{local: spec.local},
        )
        return self.current() if ok else None

    def _update_link(
        self, link: LinkState, spec: VxlanSpec, changes: VxlanChanges, failures: dict[str, str]
    ) -> None:
        # Per-device IPv4 settings and IPv6 address generation first: before the link is up.
        conf: dict[int, int] = {}
        if link.rp_filter != RP_FILTER_LOOSE:
            conf[IPV4_DEVCONF_RP_FILTER] = RP_FILTER_LOOSE
        if link.forwarding != 1:
            conf[IPV4_DEVCONF_FORWARDING] = 1
        gen_mode = link.addr_gen_mode is not None and link.addr_gen_mode != IN6_ADDR_GEN_MODE_NONE
        if (conf or gen_mode) and self._set_af_spec(link.index, conf, gen_mode, failures):
            changes.link_updates += [
                *(["rp_filter"] if IPV4_DEVCONF_RP_FILTER in conf else []),
                *(["forwarding"] if IPV4_DEVCONF_FORWARDING in conf else []),
                *(["addrgenmode none"] if gen_mode else []),
            ]
        attrs: dict[str, Any] = {}
        if link.alias != ALIAS:
            attrs["ifalias"] = ALIAS
        if link.mac != spec.mac:
            attrs["address"] = spec.mac
        if link.mtu != spec.mtu:
            attrs["mtu"] = spec.mtu
        if not link.up:
            attrs["state"] = "up"
        if attrs:
            what = f"set link {self.dev} " + " ".join(sorted(attrs))
            if self._write(failures, what, "link", "set", index=link.index, **attrs):
                changes.link_updates += sorted(attrs)

    def _ensure_address(self, index: int, changes: VxlanChanges, failures: dict[str, str]) -> None:
        have = {
            a.get_attr("IFA_ADDRESS") for a in self.ipr.get_addr(index=index, family=socket.AF_INET)
        }
        if LINK_ADDRESS in have:
            return
        what = f"address {LINK_ADDRESS}/32 scope link"
        address = {"index": index, "address": LINK_ADDRESS, "prefixlen": 32}
        if self._write(failures, what, "addr", "add", scope=RT_SCOPE_LINK, **address):
            changes.link_updates.append(f"address {LINK_ADDRESS}")

    def _sync_neighbours(
        self, index: int, spec: VxlanSpec, changes: VxlanChanges, failures: dict[str, str]
    ) -> None:
        have = self.neighbours(index)
        want = {p.ip: p.mac for p in spec.peers}
        for ip, (_mac, state) in sorted(have.items()):
            if ip not in want and state & NUD_PERMANENT:
                what = f"del neighbour {ip}"
                if self._write(failures, what, "neigh", "del", dst=ip, ifindex=index):
                    changes.neighbours.append(f"del {ip}")
        for ip, mac in sorted(want.items()):
            if have.get(ip) == (mac, NUD_PERMANENT):
                continue
            what = f"neighbour {ip} lladdr {mac}"
            neigh = {"dst": ip, "lladdr": mac, "ifindex": index, "state": NUD_PERMANENT}
            if self._write(failures, what, "neigh", "replace", **neigh):
                changes.neighbours.append(f"set {ip}")

    def _sync_fdb(
        self, index: int, spec: VxlanSpec, changes: VxlanChanges, failures: dict[str, str]
    ) -> None:
        have = self.fdb(index)
        want = {(p.mac, p.ip) for p in spec.peers}
        for mac, ip in sorted(have.keys() - want):
            if have[(mac, ip)] & NUD_PERMANENT:
                what = f"del fdb {mac} dst {ip}"
                if self._write(failures, what, "fdb", "del", ifindex=index, lladdr=mac, dst=ip):
                    changes.fdb.append(f"del {mac} dst {ip}")
        for mac, ip in sorted(want):
            if have.get((mac, ip), 0) & NUD_PERMANENT:
                continue
            what = f"fdb {mac} dst {ip}"
            if self._write(failures, what, "fdb", "append", ifindex=index, lladdr=mac, dst=ip):
                changes.fdb.append(f"add {mac} dst {ip}")

    def _write(self, failures: dict[str, str], what: str, call: str, *args: Any, **kw: Any) -> bool:
        self.writes += 1
        try:
            getattr(self.ipr, call)(*args, **kw)
        except PyNetlinkError as e:
            failures[what] = f"{e.args[-1]} (errno {e.code})"
            return False
        return True

    def _set_af_spec(
        self, index: int, conf: dict[int, int], addr_gen_none: bool, failures: dict[str, str]
    ) -> bool:
        """One raw RTM_SETLINK with IFLA_AF_SPEC: IPv4 devconf values and/or IPv6 address
        generation off, sent from the namespace ``ipr`` works in."""
        self.writes += 1
        specs = b""
        if conf:
            values = b"".join(_nla(k, struct.pack("=I", v)) for k, v in sorted(conf.items()))
            specs += _nla(
                socket.AF_INET | NLA_F_NESTED, _nla(IFLA_INET_CONF | NLA_F_NESTED, values)
            )
        if addr_gen_none:
            mode = _nla(IFLA_INET6_ADDR_GEN_MODE, struct.pack("=B", IN6_ADDR_GEN_MODE_NONE))
            specs += _nla(socket.AF_INET6 | NLA_F_NESTED, mode)
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)
        body += _nla(IFLA_AF_SPEC | NLA_F_NESTED, specs)
        header = struct.pack("=IHHII", 16 + len(body), RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0)
        what = f"set link {self.dev} rp_filter/forwarding/addrgenmode"
        try:
            with RouteSocket.open(netns_of(self.ipr)) as rs:
                rs.sock.send(header + body)
                reply = rs.sock.recv(65536)
        except OSError as e:
            failures[what] = str(e)
            return False
        _, kind, _, _, _ = struct.unpack_from("=IHHII", reply)
        code = struct.unpack_from("=i", reply, 16)[0] if kind == NLMSG_ERROR else 0
        if code:
            failures[what] = f"{errno.errorcode.get(-code, '?')} (errno {-code})"
            return False
        return True
