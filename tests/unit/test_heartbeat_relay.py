"""The relay on loopback, with real sockets: members get a content-blind tunnel to the API
server's address and nothing else; strangers, other destinations and a node without a cloud
path are refused; the bounds hold.

A plain TCP echo server stands in for the API server (the relay never looks at what it carries).
Members are other loopback addresses (127.0.0.2, ...): the client binds its socket to one, since
the relay decides by source address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from raven.heartbeat.admission import (
    Head,
    Limits,
    Refusal,
    RelayStatus,
    RelayView,
    Tunnel,
    admit,
    parse_authority,
    parse_head,
)
from raven.heartbeat.relay import Relay

MEMBER, OTHER_MEMBER, STRANGER = "127.0.0.2", "127.0.0.3", "127.0.0.9"


@dataclass
class Setup:
    relay: Relay
    api_port: int
    refusals: list[str]

    def target(self) -> str:
        return f"127.0.0.1:{self.api_port}"


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    api = await asyncio.start_server(_echo, "127.0.0.1", 0)
    api_port = api.sockets[0].getsockname()[1]
    refusals: list[str] = []
    view = RelayView(
        node="edge-a-1",
        pool="edge-a",
        members=frozenset({MEMBER, OTHER_MEMBER}),
        targets=frozenset({("127.0.0.1", api_port)}),
        reaches_cloud=True,
        gateway=True,
    )
    relay = Relay(
        view,
        host="127.0.0.1",
        port=0,
        limits=Limits(max_head=1024, head_timeout=0.5, max_tunnels=4, max_per_source=2),
        on_refusal=refusals.append,
    )
    await relay.start()
    yield Setup(relay, api_port, refusals)
    await relay.stop()
    api.close()
    await api.wait_closed()


async def connect_from(
    source: str, relay: Relay
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", relay.port, local_addr=(source, 0))


async def request(source: str, relay: Relay, head: str) -> tuple[int, bytes]:
    """Send ``head``, read the whole answer (the relay closes after a refusal or status)."""
    reader, writer = await connect_from(source, relay)
    writer.write(head.encode())
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


async def open_tunnel(
    source: str, setup: Setup
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await connect_from(source, setup.relay)
    writer.write(f"CONNECT {setup.target()} HTTP/1.1\r\nHost: {setup.target()}\r\n\r\n".encode())
    async with asyncio.timeout(5):
        line = await reader.readuntil(b"\r\n\r\n")
    assert line == b"HTTP/1.1 200 Connection Established\r\n\r\n"
    return reader, writer


async def test_a_member_gets_a_tunnel_and_bytes_flow_both_ways(setup: Setup) -> None:
    reader, writer = await open_tunnel(MEMBER, setup)
    payload = bytes(range(256)) * 1000  # binary, larger than one read
    writer.write(payload)
    await writer.drain()
    async with asyncio.timeout(5):
        assert await reader.readexactly(len(payload)) == payload
    assert setup.relay.open_tunnels == 1
    writer.close()
    async with asyncio.timeout(5):
        while setup.relay.open_tunnels:
            await asyncio.sleep(0.01)


async def test_bytes_sent_with_the_head_reach_the_api_server(setup: Setup) -> None:
    """A client that sends its TLS hello right behind the CONNECT loses nothing."""
    reader, writer = await connect_from(MEMBER, setup.relay)
    writer.write(f"CONNECT {setup.target()} HTTP/1.1\r\n\r\nhello".encode())
    async with asyncio.timeout(5):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 Connection Established\r\n\r\n"
        assert await reader.readexactly(5) == b"hello"
    writer.close()


async def test_a_stranger_is_refused_whatever_it_asks(setup: Setup) -> None:
    status, body = await request(
        STRANGER, setup.relay, f"CONNECT {setup.target()} HTTP/1.1\r\n\r\n"
    )
    assert (status, body) == (403, b"127.0.0.9 is not a member of pool edge-a\n")
    status, _ = await request(STRANGER, setup.relay, "GET /relay HTTP/1.1\r\n\r\n")
    assert status == 403
    assert setup.refusals == ["not-member", "not-member"]


async def test_the_node_itself_is_not_a_member_of_its_own_relay(setup: Setup) -> None:
    status, _ = await request(
        "127.0.0.1", setup.relay, f"CONNECT {setup.target()} HTTP/1.1\r\n\r\n"
    )
    assert status == 403


async def test_any_destination_but_the_api_server_is_refused(setup: Setup) -> None:
    for target in (
        f"127.0.0.1:{setup.api_port + 1}",
        "10.0.0.1:443",
        f"localhost:{setup.api_port}",
    ):
        status, body = await request(MEMBER, setup.relay, f"CONNECT {target} HTTP/1.1\r\n\r\n")
        assert (status, body) == (403, f"{target} is not the API server\n".encode())


async def test_without_its_own_cloud_path_it_answers_503_and_says_so(setup: Setup) -> None:
    reader, writer = await open_tunnel(MEMBER, setup)
    setup.relay.view = replace(setup.relay.view, reaches_cloud=False)
    await setup.relay.close_tunnels()
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # the open tunnel was ended
    writer.close()
    status, body = await request(MEMBER, setup.relay, f"CONNECT {setup.target()} HTTP/1.1\r\n\r\n")
    assert (status, body) == (503, b"edge-a-1 does not reach the cloud\n")
    status, body = await request(MEMBER, setup.relay, "GET /relay HTTP/1.1\r\n\r\n")
    assert status == 503
    assert json.loads(body) == {
        "node": "edge-a-1",
        "pool": "edge-a",
        "reachesCloud": False,
        "gateway": True,
    }


async def test_relay_status_for_members(setup: Setup) -> None:
    status, body = await request(OTHER_MEMBER, setup.relay, "GET /relay HTTP/1.1\r\n\r\n")
    assert status == 200
    assert json.loads(body)["reachesCloud"] is True


async def test_an_oversized_head_gets_431(setup: Setup) -> None:
    head = f"CONNECT {setup.target()} HTTP/1.1\r\nX-Pad: {'a' * 2000}\r\n\r\n"
    status, _ = await request(MEMBER, setup.relay, head)
    assert status == 431


async def test_a_slow_head_is_dropped(setup: Setup) -> None:
    reader, writer = await connect_from(MEMBER, setup.relay)
    writer.write(b"CONNECT ")  # and nothing more
    async with asyncio.timeout(5):
        answer = await reader.read()
    assert answer.startswith(b"HTTP/1.1 408 ")
    writer.close()


async def test_garbage_gets_400(setup: Setup) -> None:
    status, _ = await request(MEMBER, setup.relay, "\x16\x03\x01 hello\r\n\r\n")
    assert status == 400


async def test_tunnels_are_bounded_per_source_and_in_all(setup: Setup) -> None:
    held = [await open_tunnel(MEMBER, setup), await open_tunnel(MEMBER, setup)]
    status, body = await request(MEMBER, setup.relay, f"CONNECT {setup.target()} HTTP/1.1\r\n\r\n")
    assert (status, body) == (429, b"too many tunnels open\n")
    held += [await open_tunnel(OTHER_MEMBER, setup), await open_tunnel(OTHER_MEMBER, setup)]
    setup.relay.view = replace(setup.relay.view, members=setup.relay.view.members | {"127.0.0.4"})
    status, _ = await request(
        "127.0.0.4", setup.relay, f"CONNECT {setup.target()} HTTP/1.1\r\n\r\n"
    )
    assert status == 429  # 4 in all
    for _, writer in held:
        writer.close()


async def test_an_unreachable_api_server_gets_502(setup: Setup) -> None:
    # a port nothing listens on, declared as the API server's
    probe = await asyncio.start_server(_echo, "127.0.0.1", 0)
    dead_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    setup.relay.view = replace(setup.relay.view, targets=frozenset({("127.0.0.1", dead_port)}))
    status, _ = await request(
        MEMBER, setup.relay, f"CONNECT 127.0.0.1:{dead_port} HTTP/1.1\r\n\r\n"
    )
    assert status == 502
    assert setup.relay.open_tunnels == 0


# -- the admission rules alone --------------------------------------------------------------

VIEW = RelayView(
    node="n1",
    pool="p",
    members=frozenset({"10.0.0.2", "fd00::2"}),
    targets=frozenset({("api.example", 6443), ("198.18.0.1", 6443), ("fd00::1", 6443)}),
    reaches_cloud=True,
)


def _admit(source: str, head: str, view: RelayView = VIEW, total: int = 0, mine: int = 0) -> object:
    parsed = parse_head(head.encode())
    assert isinstance(parsed, Head)
    return admit(source, parsed, view, open_total=total, open_from_source=mine, limits=Limits())


@pytest.mark.parametrize(
    ("source", "head", "expected"),
    [
        ("10.0.0.2", "CONNECT 198.18.0.1:6443 HTTP/1.1", Tunnel("198.18.0.1", 6443)),
        ("::ffff:10.0.0.2", "CONNECT api.example:6443 HTTP/1.1", Tunnel("api.example", 6443)),
        ("10.0.0.2", "CONNECT API.Example:6443 HTTP/1.1", Tunnel("api.example", 6443)),
        ("fd00::2", "CONNECT [fd00:0::1]:6443 HTTP/1.1", Tunnel("fd00::1", 6443)),
        ("10.0.0.3", "CONNECT 198.18.0.1:6443 HTTP/1.1", 403),
        ("10.0.0.2", "CONNECT 198.18.0.1:22 HTTP/1.1", 403),
        ("10.0.0.2", "CONNECT 198.18.0.2:6443 HTTP/1.1", 403),
        ("10.0.0.2", "CONNECT 198.18.0.1 HTTP/1.1", 400),
        ("10.0.0.2", "CONNECT fd00::1:6443 HTTP/1.1", 400),
        ("10.0.0.2", "CONNECT 198.18.0.1:99999 HTTP/1.1", 400),
        ("10.0.0.2", "POST /relay HTTP/1.1", 405),
        ("10.0.0.2", "GET /other HTTP/1.1", 404),
    ],
)
def test_admission(source: str, head: str, expected: object) -> None:
    got = _admit(source, head + "\r\n\r\n")
    if isinstance(expected, int):
        assert isinstance(got, Refusal) and got.status == expected, got
    else:
        assert got == expected


def test_admission_order_hides_everything_from_strangers() -> None:
    down = replace(VIEW, reaches_cloud=False)
    got = _admit("10.0.0.9", "CONNECT 198.18.0.1:6443 HTTP/1.1\r\n\r\n", down)
    assert isinstance(got, Refusal) and got.status == 403
    got = _admit("10.0.0.2", "CONNECT 198.18.0.1:6443 HTTP/1.1\r\n\r\n", down)
    assert isinstance(got, Refusal) and got.status == 503
    got = _admit("10.0.0.2", "GET /relay HTTP/1.1\r\n\r\n", down)
    assert isinstance(got, RelayStatus) and got.status == 503


def test_admission_bounds() -> None:
    head = "CONNECT 198.18.0.1:6443 HTTP/1.1\r\n\r\n"
    limits = Limits()
    for total, mine in ((0, limits.max_per_source), (limits.max_tunnels, 0)):
        got = _admit("10.0.0.2", head, total=total, mine=mine)
        assert isinstance(got, Refusal) and got.status == 429
    assert _admit("10.0.0.2", head, total=limits.max_tunnels - 1, mine=0) == Tunnel(
        "198.18.0.1", 6443
    )


def test_authorities() -> None:
    assert parse_authority("[::1]:443") == ("::1", 443)
    assert parse_authority("Host:443") == ("host", 443)
    assert parse_authority(":443") is None
    assert parse_authority("[::1]") is None
