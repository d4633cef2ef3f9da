"""Pool-level reuse, decided: where a node's shared copies read from, and whom the pool feed
serves. Pure: the agent's ``/role`` and a peer's certificate in, a decision out.

One node per pool keeps the upstream list+watch of the shared resources for the whole pool: the
pool's gateway, as the agent's election names it (``/role``: ``holder``, ``holderAddress``,
``members``). Its cache-proxy serves the copies over the LAN, on the *pool feed* (HTTPS on the
node's InternalIP, port 10266 by default): the same list and watch API as the API server's, for
the shared resources only, to the cache-proxies of its pool's other nodes. They read their
copies from it instead of the cloud while it says it is in sync, and from the cloud when it does
not, when it fails, or when there is no gateway.

- **Who is served.** A client that shows a certificate from the cluster CA naming a node of the
  pool (``CN=system:node:<name>``, ``O=system:nodes``, ``<name>`` in ``members``), other than the
  gateway itself. Anything else is refused (403), and nothing is served while this node is not
  the pool's gateway or its copies are not fed by the cloud in sync (503, a member then reads
  the cloud).
- **Readiness.** ``GET /readyz`` on the feed: 200 while this node is the gateway and every
  shared copy is in sync with the API server directly, else 503 naming why. A member reads
  the feed only after a 200 and leaves it at the first failure of its watch or a change of
  gateway; its copy keeps its version, so it resumes from where it was on the other source (a
  410 there lists again, and its clients' next watch from an older version gets 410 too).
- A feed never reads from another feed: a node that is not the gateway, or whose copies are
  fed by a feed, is not ready.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raven.cacheproxy.identity import Subject

DEFAULT_FEED_PORT = 10266
NODE_PREFIX = "system:node:"
NODE_GROUP = "system:nodes"


class RoleError(ValueError):
    """An answer of the agent's /role that cannot be used."""


@dataclass(frozen=True)
class PoolView:
    """What the agent said of this node's pool."""

    node: str
    pool: str | None = None
    holder: str | None = None  # the pool's gateway
    holder_address: str | None = None  # its InternalIP
    members: frozenset[str] = frozenset()

    @property
    def gateway(self) -> bool:
        return self.holder is not None and self.holder == self.node


def parse_role(doc: Any, node: str) -> PoolView:
    """The agent's ``/role`` document for node ``node``; RoleError naming what is wrong."""
    if not isinstance(doc, Mapping):
        raise RoleError("the agent's /role is not a JSON object")
    if doc.get("node") != node:
        raise RoleError(f"the agent's /role speaks of node {doc.get('node')!r}, not {node!r}")
    pool, holder, address = doc.get("pool"), doc.get("holder"), doc.get("holderAddress")
    members = doc.get("members") or []
    if pool is not None and not isinstance(pool, str):
        raise RoleError("/role: pool must be a string or null")
    if holder is not None and not isinstance(holder, str):
        raise RoleError("/role: holder must be a string or null")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise RoleError("/role: members must be a list of node names")
    if address is not None:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError as e:
            raise RoleError(f"/role: holderAddress {address!r} is not an IP address") from e
    return PoolView(node, pool or None, holder or None, address, frozenset(members))


@dataclass(frozen=True)
class Source:
    """Where the shared copies read from: the cloud (``feed`` None), or a gateway's feed."""

    feed: str | None = None  # https://IP:PORT of the gateway's pool feed
    gateway: str | None = None  # its node name

    def describe(self) -> str:
        return f"pool feed of {self.gateway}" if self.feed else "the API server"


CLOUD = Source()


def feed_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:{port}"


def source(view: PoolView | None, *, port: int, feed_failed: bool) -> Source:
    """Where this node's copies read from now. ``feed_failed``: the gateway's feed was not
    ready or failed since this gateway took over (the node reads the cloud until the gateway
    changes or the feed says ready again)."""
    if view is None or view.gateway or view.holder is None or view.holder_address is None:
        return CLOUD
    if view.node not in view.members or feed_failed:
        return CLOUD
    return Source(feed_url(view.holder_address, port), view.holder)


def member_of(subject: Subject | None) -> str | None:
    """The node a verified client certificate names, if it is a node identity."""
    if subject is None or NODE_GROUP not in subject.organizations:
        return None
    if not subject.common_name.startswith(NODE_PREFIX):
        return None
    name = subject.common_name[len(NODE_PREFIX) :]
    return name or None


def admit(subject: Subject | None, view: PoolView | None) -> tuple[bool, str]:
    """Whether the feed serves a client with this certificate subject, and why not."""
    node = member_of(subject)
    if node is None:
        who = subject.describe() if subject is not None else "a client without a certificate"
        return False, f"the pool feed serves only node identities of its pool, not {who}"
    if view is None or view.pool is None:
        return False, "this node does not know its pool yet"
    if node == view.node:
        return False, f"{node} is this node: it reads the API server itself"
    if node not in view.members:
        return False, f"node {node} is not a member of pool {view.pool}"
    return True, ""


def ready(view: PoolView | None, synced: Mapping[str, bool], fed_by_feed: bool) -> tuple[bool, str]:
    """Whether this node's feed may serve (see the module doc), and why not."""
    if view is None or not view.gateway:
        holder = view.holder if view is not None else None
        return False, f"not the pool's gateway (the gateway is {holder or 'unknown'})"
    if fed_by_feed:
        return False, "its copies are read from another feed"
    behind = sorted(name for name, ok in synced.items() if not ok)
    if behind:
        return False, f"not in sync with the API server: {', '.join(behind)}"
    return True, "in sync"
