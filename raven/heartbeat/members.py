"""The node's pool and its members, from a list+watch of the pool's Nodes.

The pool is the value of the node's own pool label (read from its Node object); the members are
the Nodes carrying the same value, watched with a label selector so that only the pool's Nodes
cost anything. The last known members stay while the API server is unreachable (the informer
keeps its cache): a cut node needs them most, to find a relay. A node without the label takes no
part: no members, its relay refuses everyone.

If the node's own label changes, its Node leaves the watched set; the pool is then read again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raven.aio import cancel_and_wait
from raven.heartbeat.admission import normal_ip
from raven.kube import NODES, Informer, KubeClient, KubeError
from raven.kube.informer import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    name: str
    addresses: tuple[str, ...]  # valid InternalIPs, in the Node's order; the first is dialled

    def relay_url(self, port: int) -> str:
        host = self.addresses[0]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def internal_ips(node: Mapping[str, Any]) -> tuple[str, ...]:
    """The Node's InternalIPs that are IP addresses, canonical, in order, without repeats."""
    found: list[str] = []
    addresses = (node.get("status") or {}).get("addresses") or []
    for entry in addresses if isinstance(addresses, list) else []:
        if isinstance(entry, Mapping) and entry.get("type") == "InternalIP":
            ip = normal_ip(str(entry.get("address", "")))
            if ip is not None and ip not in found:
                found.append(ip)
    return tuple(found)


def pool_of(node: Mapping[str, Any], label: str) -> str:
    labels = (node.get("metadata") or {}).get("labels") or {}
    value = labels.get(label, "") if isinstance(labels, Mapping) else ""
    return value if isinstance(value, str) else ""


def members_of(
    nodes: Mapping[str, Mapping[str, Any]], me: str, label: str, pool: str
) -> tuple[Member, ...]:
    """The other Nodes of ``pool`` that have an InternalIP, sorted by name."""
    if not pool:
        return ()
    found = []
    for name, node in sorted(nodes.items()):
        if name == me or pool_of(node, label) != pool:
            continue
        addresses = internal_ips(node)
        if addresses:
            found.append(Member(name, addresses))
    return tuple(found)


class PoolMembers:
    """Finds the node's pool, then keeps a Node informer on it. Read :meth:`members`."""

    def __init__(self, client: KubeClient, node: str, label: str) -> None:
        self.client, self.node, self.label = client, node, label
        self.pool = ""
        self.node_uid = ""  # for Events about this Node
        self.informer: Informer | None = None
        self.known = False  # the pool and its members were read at least once
        self._task: asyncio.Task[None] | None = None

    def members(self) -> tuple[Member, ...]:
        if self.informer is None:
            return ()
        return members_of(self.informer.view(), self.node, self.label, self.pool)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="pool-members")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self.informer is not None:
            await self.informer.stop()

    async def run(self) -> None:
        backoff, failures = Backoff(cap=10.0), 0
        while True:
            try:
                own = await self.client.get(NODES, self.node)
            except KubeError as e:
                delay = backoff.delay(failures)
                failures += 1
                log.warning(
                    "cannot read Node %s for its pool: %s; retry in %.1fs", self.node, e, delay
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            self.node_uid = str((own.get("metadata") or {}).get("uid", ""))
            pool = pool_of(own, self.label)
            if pool != self.pool or self.informer is None:
                await self._follow(pool)
            await self._until_own_node_leaves()
            await asyncio.sleep(1.0)  # the label changed: read the Node again, but not in a spin

    async def _follow(self, pool: str) -> None:
        if self.informer is not None:
            await self.informer.stop()
            self.informer = None
        self.pool = pool
        if not pool:
            log.warning("Node %s has no %s label: it takes no part", self.node, self.label)
            self.known = True
            return
        log.info("node %s is in pool %s", self.node, pool)
        self.informer = Informer(self.client, NODES, label_selector=f"{self.label}={pool}")
        self.informer.start()

    async def _until_own_node_leaves(self) -> None:
        """Return when the node's own Node left the watched pool (its label changed)."""
        informer = self.informer
        if informer is None:
            await asyncio.sleep(30.0)  # no pool: look at the label again now and then
            return
        await informer.wait_synced()
        self.known = True
        seen = informer.generation
        while self.node in informer.view():
            seen = await informer.wait_changed(seen)
