"""The proxy behind a link that silently drops packets (a cut, not a refused connection).

A cut link gives no error: connections made before it just go quiet. An agent's informer that
watches through the proxy must still follow changes made during the outage within seconds of
the cloud returning, even when the connections from before the cut never come back.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes import client as k8s_client

from raven.kube import NODES
from raven.kube.informer import Informer
from raven.lab.apiserver.kubeconfig import write_kubeconfig
from raven.lab.testing.apiserver import api_client, run_apiserver
from raven.lab.testing.cacheproxy import run_proxy
from raven.lab.testing.kube import client_for_kubeconfig, wait_until


class BlackHoleRelay:
    """A TCP relay to 127.0.0.1:``target`` that can drop everything, as a cut link does.

    ``cut()`` drops every byte of every connection (old and new) without closing anything;
    ``heal()`` lets new connections through, while those made before stay dead, as flows whose
    NAT mapping was lost do.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.epoch = 0
        self.blocked = False
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def alive(self, epoch: int) -> bool:
        return not self.blocked and epoch == self.epoch

    def cut(self) -> None:
        self.blocked = True

    def heal(self) -> None:
        self.epoch += 1
        self.blocked = False

    def close(self) -> None:
        self.closed = True
        for s in [self.server, *self.sockets]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            epoch = self.epoch
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, epoch), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, epoch: int) -> None:
        try:
            while data := src.recv(65536):
                if self.alive(epoch):
                    dst.sendall(data)
                # else: dropped on the floor, like packets on a cut link
            if self.alive(epoch):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@contextmanager
def relay_to(port: int) -> Iterator[BlackHoleRelay]:
    relay = BlackHoleRelay(port)
    try:
        yield relay
    finally:
        relay.close()


def make_node(api, name: str) -> None:  # noqa: ANN001 -- ApiServerHandle
    k8s_client.CoreV1Api(api_client(api)).create_node(
        k8s_client.V1Node(metadata=k8s_client.V1ObjectMeta(name=name))
    )


async def test_informer_through_the_proxy_follows_changes_made_while_the_link_was_cut(
    tmp_path: Path,
) -> None:
    with run_apiserver(tmp_path / "api") as api, relay_to(api.port) as relay:
        tls = (api.pki.server_cert, api.pki.server_key)  # a 127.0.0.1 cert from the same CA
        upstream = f"https://127.0.0.1:{relay.port}"
        with run_proxy(upstream, api.ca_cert, tmp_path / "cache", tls=tls) as proxy:
            kubeconfig = write_kubeconfig(tmp_path / "kc", proxy.url, api.ca_cert, api.token)
            client = client_for_kubeconfig(kubeconfig)
            informer = Informer(client, NODES, watch_timeout=120)
            informer.start()
            try:
                await informer.wait_synced(10)
                await asyncio.to_thread(make_node, api, "before")
                await wait_until(lambda: "before" in informer.snapshot(), 10, what="a watch")

                relay.cut()
                await wait_until(lambda: not proxy.proxy.health.healthy, 10, what="the outage")
                await asyncio.to_thread(make_node, api, "during")
                await asyncio.sleep(1.0)
                assert "during" not in informer.snapshot()  # the cloud really is out of reach
                assert informer.synced and "before" in informer.snapshot()  # nothing lost

                relay.heal()
                await wait_until(lambda: proxy.proxy.health.healthy, 10, what="the cloud back")
                await wait_until(
                    lambda: "during" in informer.snapshot(), 10, what="the change made offline"
                )
                await asyncio.to_thread(make_node, api, "after")
                await wait_until(lambda: "after" in informer.snapshot(), 5, what="a new change")
            finally:
                await informer.stop()
                await client.close()
