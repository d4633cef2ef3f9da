"""Publish this node's WireGuard public key and tunnel endpoint as Node annotations.

Keys are published before any election so a failover never waits for a key (DESIGN).
"""

from __future__ import annotations

from collections.abc import Mapping

from raven.kube.client import KubeClient
from raven.kube.resources import NODES
from raven.kube.retry import retry_transient
from raven.names import PUBLIC_KEY_ANNOTATION as PUBLIC_KEY
from raven.names import TUNNEL_ENDPOINT_ANNOTATION as TUNNEL_ENDPOINT


async def publish_node_annotations(
    client: KubeClient, node: str, annotations: Mapping[str, str | None]
) -> bool:
    """Make the Node's annotations match ``annotations`` (None removes a key).

    Reads first and writes a JSON merge patch only when something differs, so calling it on
    every reconcile costs one GET and no watch event. Returns True when it wrote. Raises
    :class:`~raven.kube.errors.NotFound` when the Node does not exist.
    """
    for key, value in annotations.items():
        if not key or (value is not None and not isinstance(value, str)):
            raise ValueError(f"bad annotation {key!r}={value!r}: key non-empty, value str or None")

    async def once() -> bool:
        current = (await client.get(NODES, node)).get("metadata", {}).get("annotations") or {}
        delta = {k: v for k, v in annotations.items() if current.get(k) != v}
        if not delta:
            return False
        await client.merge_patch(NODES, node, {"metadata": {"annotations": delta}})
        return True

    return await retry_transient(once)


async def publish_tunnel_identity(
    client: KubeClient, node: str, *, public_key: str, endpoint: str | None
) -> bool:
    """Publish the key and (when this node has one) the tunnel endpoint ``host:port``."""
    if not public_key:
        raise ValueError("public_key must not be empty")
    return await publish_node_annotations(
        client, node, {PUBLIC_KEY: public_key, TUNNEL_ENDPOINT: endpoint}
    )
