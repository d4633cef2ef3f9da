"""The gateway side of delegation: an HTTP CONNECT relay to the API server, for the pool's members.

Every node runs it (any member may have to stand in for another), on ``host:port`` (default
0.0.0.0:10264). Per connection it reads one request head (at most ``Limits.max_head`` bytes within
``Limits.head_timeout`` seconds), asks :func:`raven.heartbeat.admission.admit` and does what it
says:

- a tunnel: connect to the API server's address (``Limits.connect_timeout``), answer ``HTTP/1.1
  200 Connection Established``, then copy bytes both ways until either side closes. It never
  reads, parses or logs what passes: TLS stays end to end, the member keeps its own identity and
  the API server's NodeRestriction still applies. No idle timeout (a quiet watch is legitimate);
  TCP keepalive on both sockets finds a peer that vanished.
- ``GET /relay``: this node's relay state as JSON (what the members' heartbeats choose by).
- a refusal: status, a one-line reason, close. Refusals are logged with source, destination and
  reason, at most once per ``LOG_EVERY`` seconds per (source, reason), with how many were left out.

When this node's own path goes down, :meth:`Relay.close_tunnels` ends the open tunnels so the
members reconnect through another relay at once instead of waiting on a dead path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable

from raven.aio import cancel_and_wait
from raven.heartbeat.admission import (
    HEAD_TIMEOUT,
    HEAD_TOO_LARGE,
    UPSTREAM,
    Limits,
    Refusal,
    RelayStatus,
    RelayView,
    Tunnel,
    admit,
    parse_head,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 10264
LOG_EVERY = 30.0  # seconds between log lines about the same (source, reason)
CHUNK = 64 * 1024
REASON_PHRASES = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def keepalive(
    sock: socket.socket | None, *, idle: int = 30, interval: int = 10, count: int = 3
) -> None:
    """Turn TCP keepalive on: a peer gone without a word is found after about
    ``idle + interval * count`` seconds of silence (70 s by default)."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


class RefusalLog:
    """Log a refusal at most once per ``every`` seconds per (source, reason)."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # -> (logged at, left out)

    def refused(self, source: str, target: str, refusal: Refusal) -> None:
        key = (source, refusal.reason)
        now = time.monotonic()
        logged_at, left_out = self._last.get(key, (-1e9, 0))
        if now - logged_at < self.every:
            self._last[key] = (logged_at, left_out + 1)
            return
        if len(self._last) > 1024:  # a bound for a scan from many sources
            self._last.clear()
        self._last[key] = (now, 0)
        more = f" (and {left_out} more since the last line)" if left_out else ""
        log.warning(
            "relay refused %s -> %s: %d %s: %s%s",
            source,
            target or "-",
            refusal.status,
            refusal.reason,
            refusal.message,
            more,
        )


class Relay:
    """The relay server. Replace :attr:`view` whenever the node's state or the pool changes."""

    def __init__(
        self,
        view: RelayView,
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        limits: Limits | None = None,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.view = view
        self.host, self.port = host, port
        self.limits = limits or Limits()
        self.on_refusal = on_refusal
        self.refusal_log = RefusalLog()
        self.tunnels: dict[str, set[asyncio.Task[None]]] = {}  # source -> splicing tasks
        self.opened = 0  # tunnels opened since start
        self._server: asyncio.Server | None = None

    @property
    def open_tunnels(self) -> int:
        return sum(len(tasks) for tasks in self.tunnels.values())

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=self.limits.max_head
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self.close_tunnels()
            await self._server.wait_closed()
            self._server = None

    async def close_tunnels(self) -> None:
        """End every open tunnel (this node no longer reaches the cloud)."""
        tasks = [task for group in self.tunnels.values() for task in group]
        for task in tasks:
            await cancel_and_wait(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        source = str(peer[0])
        try:
            await self._handle(source, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to say to it
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(
        self, source: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(self.limits.head_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            await self._refuse(writer, source, "", Refusal(408, HEAD_TIMEOUT, "request too slow"))
            return
        except (asyncio.LimitOverrunError, ValueError):
            refusal = Refusal(
                431, HEAD_TOO_LARGE, f"request head over {self.limits.max_head} bytes"
            )
            await self._refuse(writer, source, "", refusal)
            return
        parsed = parse_head(head)
        if isinstance(parsed, Refusal):
            await self._refuse(writer, source, "", parsed)
            return
        outcome = admit(
            source,
            parsed,
            self.view,
            open_total=self.open_tunnels,
            open_from_source=len(self.tunnels.get(source, ())),
            limits=self.limits,
        )
        if isinstance(outcome, Refusal):
            await self._refuse(writer, source, parsed.target, outcome)
        elif isinstance(outcome, RelayStatus):
            body = json.dumps(outcome.body).encode() + b"\n"
            await _answer(writer, outcome.status, body, "application/json")
        else:
            await self._tunnel(source, outcome, reader, writer)

    async def _refuse(
        self, writer: asyncio.StreamWriter, source: str, target: str, refusal: Refusal
    ) -> None:
        self.refusal_log.refused(source, target, refusal)
        if self.on_refusal is not None:
            self.on_refusal(refusal.reason)
        await _answer(writer, refusal.status, refusal.message.encode() + b"\n", "text/plain")

    async def _tunnel(
        self,
        source: str,
        target: Tunnel,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                up_reader, up_writer = await asyncio.open_connection(target.host, target.port)
        except (OSError, TimeoutError) as e:
            refusal = Refusal(502, UPSTREAM, f"cannot connect to {target.host}:{target.port}")
            log.warning("relay for %s: cannot connect to the API server: %s", source, e)
            if self.on_refusal is not None:
                self.on_refusal(refusal.reason)
            await _answer(writer, refusal.status, refusal.message.encode() + b"\n", "text/plain")
            return
        keepalive(writer.get_extra_info("socket"))
        keepalive(up_writer.get_extra_info("socket"))
        task = asyncio.current_task()
        assert task is not None
        group = self.tunnels.setdefault(source, set())
        group.add(task)
        self.opened += 1
        try:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            await _splice(reader, writer, up_reader, up_writer)
        finally:
            group.discard(task)
            if not group:
                self.tunnels.pop(source, None)
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()


async def _answer(
    writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str
) -> None:
    phrase = REASON_PHRASES.get(status, "")
    writer.write(
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()


async def _splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until either side closes (or breaks), then stop both."""
    pumps = [
        asyncio.create_task(_pump(a_reader, b_writer), name="relay-up"),
        asyncio.create_task(_pump(b_reader, a_writer), name="relay-down"),
    ]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pump in pumps:
            await cancel_and_wait(pump)
