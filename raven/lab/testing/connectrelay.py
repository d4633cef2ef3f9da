"""A minimal HTTP CONNECT relay on loopback for tests: ``with run_relay() as relay: ...``.

It stands in for a pool member's relay (the way a cut-off node's cloud traffic goes while its
cloud path says ``via``): it accepts ``CONNECT host:port``, opens a TCP connection there and
splices bytes both ways, nothing more. TLS runs inside the tunnel end to end, so it sees no
credential. It tunnels to loopback destinations only (403 otherwise), and counts what it carried
so a test can tell which way traffic went.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

MAX_HEAD = 16 * 1024


@dataclass
class RelayStats:
    tunnels: int = 0  # tunnels opened since start
    open: int = 0  # tunnels open now
    refused: int = 0  # CONNECTs refused (not loopback, malformed, target down)
    targets: list[str] = field(default_factory=list)  # host:port of every tunnel, in order


class ConnectRelay:
    def __init__(self) -> None:
        self.stats = RelayStats()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every tunnel (a relay that went away)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._tunnel(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            return
        method, _, rest = head.decode("latin-1").partition(" ")
        target = rest.partition(" ")[0]
        host, _, port = target.rpartition(":")
        try:
            ok = method == "CONNECT" and ipaddress.ip_address(host.strip("[]")).is_loopback
            port_no = int(port)
        except ValueError:
            ok, port_no = False, 0
        if not ok:
            self.stats.refused += 1
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), port_no)
        except OSError:
            self.stats.refused += 1
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        self._writers.add(up_writer)
        self.stats.tunnels += 1
        self.stats.open += 1
        self.stats.targets.append(target)
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            done, pending = await asyncio.wait(
                {
                    asyncio.ensure_future(_splice(reader, up_writer)),
                    asyncio.ensure_future(_splice(up_reader, writer)),
                },
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in pending:
                task.cancel()
                with suppress(asyncio.CancelledError, ConnectionError):
                    await task
        finally:
            self.stats.open -= 1
            self._writers.discard(up_writer)
            up_writer.transport.abort()


async def _splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with suppress(ConnectionError):
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()


class RelayHandle:
    def __init__(self, relay: ConnectRelay, loop: asyncio.AbstractEventLoop) -> None:
        self.relay, self.loop = relay, loop

    @property
    def url(self) -> str:
        return self.relay.url

    @property
    def stats(self) -> RelayStats:
        return self.relay.stats

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.relay.stop(), self.loop).result(10)

    def start(self) -> None:
        """Listen again on the same port."""
        port = self.relay.port
        asyncio.run_coroutine_threadsafe(self.relay.start(port), self.loop).result(10)


@contextmanager
def run_relay() -> Iterator[RelayHandle]:
    """A relay on 127.0.0.1 (any free port) in a thread of its own."""
    relay = ConnectRelay()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="raven-test-relay")
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(relay.start(), loop).result(10)
        yield RelayHandle(relay, loop)
    finally:
        asyncio.run_coroutine_threadsafe(relay.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
