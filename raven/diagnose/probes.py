"""Probes that ``ping`` cannot send, built and read with scapy, run on a node (its network
namespace in the lab, its agent container on a cluster):

- :class:`Echo`: ICMP echoes of exact sizes with DF set, from an address of the node's own (its
  probe address, inside its pod CIDR, so the reply comes back through the tunnels), with a TTL;
  each comes back answered, refused with an ICMP error (type, code, from whom), or lost;
- :class:`Udp`: tagged UDP datagrams of exact sizes with DF set, from a chosen source port
  (the tunnel's own, so a NAT uses the tunnel's mapping) to a chosen address and port;
- :class:`Capture`: listens on every interface of the node for a while and reports where a
  probe (by ICMP id or UDP tag) was seen: interface, direction, size, source address and port.

Requests and results are plain values with a JSON form, so a node can run them from the command
line (``python -m raven.diagnose.probes REQUEST``: one JSON line out; a capture prints
``ready`` first). The interpretation of results lives in :mod:`raven.diagnose.checks`.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

ETH_P_ALL = 0x0003
ARPHRD_ETHER = 1
PACKET_OUTGOING = 4


@dataclass(frozen=True)
class Echo:
    src: str
    dst: str
    sizes: tuple[int, ...]  # whole IP packets, bytes
    ident: int
    ttl: int = 64
    timeout: float = 1.0


@dataclass(frozen=True)
class EchoReply:
    size: int
    outcome: str  # "reply", "error", "lost"
    detail: str = ""  # for an error: "ICMP 3/4 from 192.168.10.10"
    rtt_ms: float | None = None


@dataclass(frozen=True)
class Udp:
    src: str
    sport: int
    dst: str
    dport: int
    sizes: tuple[int, ...]
    tag: str  # ASCII, starts every payload


@dataclass(frozen=True)
class Capture:
    duration: float
    icmp_id: int | None = None
    udp_tag: str | None = None


@dataclass(frozen=True)
class Seen:
    ifname: str
    outgoing: bool
    size: int  # IP packet length
    src: str
    dst: str
    sport: int = 0  # UDP only
    kind: str = ""  # "echo-request", "echo-reply", "udp"


@dataclass(frozen=True)
class CaptureResult:
    seen: tuple[Seen, ...] = field(default=())
    error: str = ""


Request = Echo | Udp | Capture


def to_json(request: Request) -> str:
    return json.dumps({"kind": type(request).__name__, **asdict(request)})


def from_json(text: str) -> Request:
    data = json.loads(text)
    kind = data.pop("kind")
    if "sizes" in data:
        data["sizes"] = tuple(data["sizes"])
    cls: Any = {"Echo": Echo, "Udp": Udp, "Capture": Capture}[kind]
    request: Request = cls(**data)
    return request


def echo_results_from_json(data: list[dict[str, Any]]) -> tuple[EchoReply, ...]:
    return tuple(EchoReply(**d) for d in data)


def capture_from_json(data: dict[str, Any]) -> CaptureResult:
    return CaptureResult(tuple(Seen(**s) for s in data.get("seen", [])), data.get("error", ""))


# ---- running them (on the node) --------------------------------------------------------------


def _payload(tag: bytes, size: int, header: int) -> bytes:
    n = max(size - header, len(tag))
    return (tag * (n // max(len(tag), 1) + 1))[:n]


def send_echo(req: Echo) -> tuple[EchoReply, ...]:
    """Send one echo per size (DF set), wait up to ``timeout`` for all of them."""
    from scapy.layers.inet import ICMP, IP, ICMPerror, IPerror  # noqa: F401

    rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sent: dict[int, tuple[int, float]] = {}  # seq -> (size, time)
    results: dict[int, EchoReply] = {}
    try:
        for seq, size in enumerate(req.sizes, start=1):
            pkt = IP(src=req.src, dst=req.dst, ttl=req.ttl, flags="DF") / ICMP(
                type=8, id=req.ident, seq=seq
            )
            pkt = pkt / _payload(b"raven-diagnose ", size, 28)
            try:
                tx.sendto(bytes(pkt), (req.dst, 0))
                sent[seq] = (size, time.monotonic())
            except OSError as e:
                results[seq] = EchoReply(size, "error", f"not sent: {e.strerror}")
        deadline = time.monotonic() + req.timeout
        while len(results) < len(req.sizes):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([rx], [], [], left)[0]:
                break
            data = rx.recv(65535)
            ip = IP(data)
            icmp = ip.getlayer(ICMP)
            if icmp is None:
                continue
            if icmp.type == 0 and icmp.id == req.ident and icmp.seq in sent:
                size, t0 = sent[icmp.seq]
                rtt = round((time.monotonic() - t0) * 1000, 2)
                results[icmp.seq] = EchoReply(size, "reply", rtt_ms=rtt)
            elif icmp.type in (3, 11, 12):
                inner = icmp.payload
                quoted = inner.getlayer(ICMPerror) if inner is not None else None
                if quoted is not None and quoted.id == req.ident and quoted.seq in sent:
                    size, _ = sent[quoted.seq]
                    detail = f"ICMP {icmp.type}/{icmp.code} from {ip.src}"
                    if icmp.type == 3 and icmp.code == 4:
                        detail += f" (next-hop MTU {icmp.nexthopmtu})"
                    results.setdefault(quoted.seq, EchoReply(size, "error", detail))
    finally:
        rx.close()
        tx.close()
    return tuple(
        results.get(seq, EchoReply(size, "lost")) for seq, size in enumerate(req.sizes, start=1)
    )


def send_udp(req: Udp) -> None:
    """Send one tagged datagram per size, DF set; nothing comes back (a capture tells)."""
    from scapy.layers.inet import IP, UDP

    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        for size in req.sizes:
            body = _payload(f"{req.tag}:{size}:".encode(), size, 28)
            pkt = IP(src=req.src, dst=req.dst, flags="DF") / UDP(sport=req.sport, dport=req.dport)
            try:
                tx.sendto(bytes(pkt / body), (req.dst, 0))
            except OSError:
                continue  # bigger than a local MTU: the capture shows it never left
    finally:
        tx.close()


def capture(req: Capture, *, ready: Callable[[], None] = lambda: None) -> CaptureResult:
    """Listen on every interface for ``duration`` seconds; report each sighting of the probe."""
    from scapy.layers.inet import ICMP, IP, UDP

    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except OSError as e:
        ready()
        return CaptureResult(error=f"cannot capture: {e.strerror}")
    seen: list[Seen] = []
    try:
        sock.setblocking(False)
        ready()
        deadline = time.monotonic() + req.duration
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not select.select([sock], [], [], left)[0]:
                continue
            data, addr = sock.recvfrom(65535)
            ifname, proto, pkttype, hatype = addr[0], addr[1], addr[2], addr[3]
            if hatype == ARPHRD_ETHER:
                if proto != 0x0800:
                    continue
                data = data[14:]
            elif not data or data[0] >> 4 != 4:
                continue
            ip = IP(data)
            outgoing = pkttype == PACKET_OUTGOING
            icmp = ip.getlayer(ICMP)
            if req.icmp_id is not None and icmp is not None and icmp.type in (0, 8):
                if icmp.id == req.icmp_id:
                    kind = "echo-request" if icmp.type == 8 else "echo-reply"
                    seen.append(Seen(ifname, outgoing, ip.len, ip.src, ip.dst, kind=kind))
                continue
            udp = ip.getlayer(UDP)
            if req.udp_tag is not None and udp is not None:
                if bytes(udp.payload).startswith(req.udp_tag.encode()):
                    seen.append(
                        Seen(ifname, outgoing, ip.len, ip.src, ip.dst, udp.sport, kind="udp")
                    )
    finally:
        sock.close()
    return CaptureResult(tuple(seen))


def run(request: Request, *, ready: Callable[[], None] = lambda: None) -> Any:
    """Carry out one request; its JSON-able result."""
    if isinstance(request, Echo):
        return [asdict(r) for r in send_echo(request)]
    if isinstance(request, Udp):
        send_udp(request)
        return {}
    return asdict(capture(request, ready=ready))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    request = from_json(args[0])

    def ready() -> None:
        print("ready", flush=True)

    print(json.dumps(run(request, ready=ready)), flush=True)


if __name__ == "__main__":
    main()
