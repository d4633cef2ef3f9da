"""The heartbeat process on loopback, against the embedded API server: a node whose uplink is cut
points its cache-proxy at a pool member's relay, marks its Lease and says so in an Event; healed,
it goes direct again and the marks go away; with its kubelet dead it is not kept alive.

Stand-ins, all real sockets on 127.0.0.0/8: the node's uplink is a TCP forwarder to the API server
that the test stops and starts; the other member's relay is a real :class:`Relay` on 127.0.0.2
(the node reaches it from 127.0.0.1, its InternalIP); the kubelet's health check is a tiny HTTP
server. The node writes with the admin kubeconfig here (node identities are the lab's business).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from raven.cloudpath import DIRECT, NONE, VIA, read_path
from raven.heartbeat.admission import RelayView
from raven.heartbeat.relay import Relay
from raven.heartbeat.report import EVENTS
from raven.heartbeat.runtime import Heartbeat
from raven.heartbeat.settings import Settings
from raven.kube import NODES, KubeClient, leases
from raven.lab.testing.apiserver import ApiServerHandle
from raven.lab.testing.kube import client_for_kubeconfig, wait_until
from raven.names import (
    DELEGATE_HEARTBEAT_ANNOTATION,
    HEARTBEAT_VIA_ANNOTATION,
    NODE_LEASE_NAMESPACE,
    POOL_LABEL,
)

ME, NEIGHBOUR = "edge-a-1", "edge-a-2"


class Uplink:
    """A TCP forwarder standing in for the node's own path to the API server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._conns):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._conns |= {writer, up_writer}

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._conns -= {writer, up_writer}


class Kubelet:
    def __init__(self) -> None:
        self.healthy = True
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def healthz(_: web.Request) -> web.Response:
            return web.Response(status=200 if self.healthy else 500, text="ok")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/healthz"


@dataclass
class World:
    api: ApiServerHandle
    kube: KubeClient
    uplink: Uplink
    kubelet: Kubelet
    neighbour: Relay
    heartbeat: Heartbeat
    path_file: Path

    async def lease_annotations(self) -> dict[str, str]:
        lease = await self.kube.get(leases(NODE_LEASE_NAMESPACE), ME)
        return dict(lease["metadata"].get("annotations") or {})

    async def event_reasons(self) -> list[str]:
        events = (await self.kube.list(EVENTS))["items"]
        mine = [e for e in events if e["involvedObject"]["name"] == ME]
        return [
            e["reason"] for e in sorted(mine, key=lambda e: int(e["metadata"]["resourceVersion"]))
        ]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def node(name: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {POOL_LABEL: "edge-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


@pytest.fixture
async def world(
    apiserver: ApiServerHandle, kube: KubeClient, tmp_path: Path
) -> AsyncIterator[World]:
    await kube.create(NODES, node(ME, "127.0.0.1"))
    await kube.create(NODES, node(NEIGHBOUR, "127.0.0.2"))
    await kube.create(
        leases(NODE_LEASE_NAMESPACE),
        {
            "metadata": {"name": ME, "namespace": NODE_LEASE_NAMESPACE},
            "spec": {"holderIdentity": ME, "leaseDurationSeconds": 40},
        },
    )
    uplink = Uplink(apiserver.port)
    await uplink.up()
    kubelet = Kubelet()
    await kubelet.start()
    relay_port = free_port("127.0.0.2")
    neighbour = Relay(
        RelayView(
            node=NEIGHBOUR,
            pool="edge-a",
            members=frozenset({"127.0.0.1"}),
            targets=frozenset({("127.0.0.1", apiserver.port)}),
            reaches_cloud=True,
            gateway=True,
        ),
        host="127.0.0.2",
        port=relay_port,
    )
    await neighbour.start()
    path_file = tmp_path / "cloudpath.json"
    settings = Settings(
        node=ME,
        kubeconfig=apiserver.kubeconfig,
        upstream=f"https://127.0.0.1:{uplink.port}",
        ca_cert=apiserver.ca_cert,
        path_file=path_file,
        probe_interval=0.2,
        probe_timeout=0.2,
        fail_after=2,
        recover_after=2,
        kubelet_healthz=kubelet.url,
        agent_role=f"http://127.0.0.1:{free_port('127.0.0.1')}/role",  # no agent
        relay_host="127.0.0.1",
        relay_port=relay_port,
        relay_timeout=0.2,
        health_port=0,
        health_host="127.0.0.1",
    )
    heartbeat = Heartbeat(settings, client=client_for_kubeconfig(apiserver.kubeconfig))
    task = asyncio.create_task(heartbeat.run(handle_signals=False))
    w = World(apiserver, kube, uplink, kubelet, neighbour, heartbeat, path_file)
    await wait_until(lambda: heartbeat.ticks > 0 and heartbeat.members.known, 10, what="start")
    yield w
    heartbeat.stop()
    await asyncio.wait_for(task, 10)
    await neighbour.stop()
    assert kubelet.runner is not None
    await kubelet.runner.cleanup()


def mode(w: World) -> str:
    return read_path(w.path_file).mode


async def test_cut_delegates_through_the_neighbour_and_heal_goes_direct(world: World) -> None:
    w = world
    assert w.heartbeat.state.path.mode == DIRECT
    assert await w.lease_annotations() == {}

    await w.uplink.cut()
    await wait_until(lambda: mode(w) == VIA, 10, what="delegation")
    path = read_path(w.path_file)
    assert (path.via, path.proxy) == (NEIGHBOUR, f"http://127.0.0.2:{w.neighbour.port}")
    await wait_until_async(
        lambda: w.lease_annotations(),
        {DELEGATE_HEARTBEAT_ANNOTATION: "true", HEARTBEAT_VIA_ANNOTATION: NEIGHBOUR},
    )
    await wait_until_async(lambda: w.event_reasons(), ["HeartbeatDelegated"])
    # The relay carries TLS end to end to the real API server: the node's own client could
    # verify the server and present its credential through it.
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{w.api.url}/healthz", proxy=path.proxy, ssl=_tls(w.api.ca_cert)
        ) as resp:
            assert resp.status < 500
    lease = await w.kube.get(leases(NODE_LEASE_NAMESPACE), ME)
    assert lease["spec"]["holderIdentity"] == ME  # the spec is the kubelet's

    await w.uplink.up()
    await wait_until(lambda: mode(w) == DIRECT, 10, what="back to direct")
    await wait_until_async(lambda: w.lease_annotations(), {})
    await wait_until_async(lambda: w.event_reasons(), ["HeartbeatDelegated", "HeartbeatDirect"])


async def test_a_dead_kubelet_is_not_kept_alive(world: World) -> None:
    w = world
    w.kubelet.healthy = False
    await w.uplink.cut()
    await wait_until(lambda: w.heartbeat.direct.up is False, 10, what="cut noticed")
    await asyncio.sleep(1.0)
    assert mode(w) == NONE
    assert w.heartbeat.state.path.mode == NONE
    assert await w.lease_annotations() == {}


async def test_relay_gone_means_none_then_back_to_a_relay(world: World) -> None:
    w = world
    await w.uplink.cut()
    await wait_until(lambda: mode(w) == VIA, 10, what="delegation")
    w.neighbour.view = RelayView(**{**w.neighbour.view.__dict__, "reaches_cloud": False})
    await wait_until(lambda: mode(w) == NONE, 10, what="relay gone")
    w.neighbour.view = RelayView(**{**w.neighbour.view.__dict__, "reaches_cloud": True})
    await wait_until(lambda: mode(w) == VIA, 10, what="relay back")


async def test_health_endpoints(world: World) -> None:
    w = world
    assert w.heartbeat.health is not None
    base = f"http://127.0.0.1:{w.heartbeat.health.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/readyz") as resp:
            assert resp.status == 200
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{base}/metrics") as resp:
            text = await resp.text()
    assert 'raven_heartbeat_path_mode{mode="direct"} 1.0' in text
    assert "raven_heartbeat_relay_tunnels_open 0.0" in text


def _tls(ca: Path) -> Any:
    import ssl

    return ssl.create_default_context(cafile=str(ca))


async def wait_until_async(get: Any, expected: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await get()) != expected:
        if loop.time() > deadline:
            raise AssertionError(f"still {got!r}, expected {expected!r}")
        await asyncio.sleep(0.05)
