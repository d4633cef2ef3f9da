"""Create-or-get a pool's Gateway object and merge-patch its status subresource.

Both tolerate the races of several agents of one pool starting together (409 AlreadyExists,
404 for an object deleted meanwhile) and retry transient failures.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from raven.kube.client import JSON, KubeClient
from raven.kube.errors import Conflict, NotFound
from raven.kube.resources import GATEWAYS
from raven.kube.retry import retry_transient


async def ensure_gateway(
    client: KubeClient, pool: str, *, spec: Mapping[str, Any] | None = None, attempts: int = 5
) -> JSON:
    """Return the Gateway named ``pool``, creating it (with ``spec``) when missing.

    An existing Gateway is returned unchanged: an operator's spec wins over ours.
    """
    if not pool:
        raise ValueError("pool must not be empty")

    async def once() -> JSON:
        for _ in range(attempts):
            try:
                return await client.get(GATEWAYS, pool)
            except NotFound:
                pass
            body = {
                "apiVersion": GATEWAYS.api_version,
                "kind": GATEWAYS.kind,
                "metadata": {"name": pool},
                "spec": copy.deepcopy(dict(spec or {})),
            }
            try:
                return await client.create(GATEWAYS, body)
            except Conflict:
                continue  # another agent created it between our GET and POST: read theirs
        raise Conflict(f"Gateway {pool}: created and deleted concurrently {attempts} times")

    return await retry_transient(once, attempts=attempts)


async def patch_gateway_status(
    client: KubeClient,
    pool: str,
    status: Mapping[str, Any],
    *,
    create: bool = True,
    attempts: int = 5,
) -> JSON:
    """Merge-patch ``status`` into Gateway ``pool``'s status subresource; return the object.

    Keys set to None are removed (JSON merge patch). When the Gateway is missing and ``create``
    is true it is created first.
    """

    async def once() -> JSON:
        last: Exception | None = None
        for _ in range(attempts):
            try:
                return await client.merge_patch(
                    GATEWAYS, pool, {"status": dict(status)}, subresource="status"
                )
            except NotFound as e:
                if not create:
                    raise
                last = e
                await ensure_gateway(client, pool, attempts=attempts)
            except Conflict as e:  # merge patches carry no resourceVersion; rare, just retry
                last = e
        assert last is not None
        raise last

    return await retry_transient(once, attempts=attempts)
