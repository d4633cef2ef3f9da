"""Node annotation publishing and the Gateway create-or-get / status helpers, against a live
loopback API server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from raven.kube import GATEWAYS, NODES, KubeClient
from raven.kube.errors import NotFound
from raven.kube.gateways import ensure_gateway, patch_gateway_status
from raven.kube.nodes import PUBLIC_KEY, TUNNEL_ENDPOINT, publish_tunnel_identity
from raven.lab.testing.kube import client_for_kubeconfig, install_crds

# A hung server must fail one test fast, not stall the suite.
pytestmark = pytest.mark.timeout(60)

KEY = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="


@pytest.fixture
async def kube(apiserver: Any) -> AsyncIterator[KubeClient]:
    client = client_for_kubeconfig(apiserver.kubeconfig)
    await install_crds(client)
    yield client
    await client.close()


async def test_publish_sets_annotations_once_and_keeps_others(kube: KubeClient) -> None:
    await kube.create(
        NODES,
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n1", "annotations": {"other.io/x": "keep"}},
        },
    )
    wrote = await publish_tunnel_identity(kube, "n1", public_key=KEY, endpoint="10.0.0.1:51820")
    assert wrote
    first = await kube.get(NODES, "n1")
    assert first["metadata"]["annotations"] == {
        "other.io/x": "keep",
        PUBLIC_KEY: KEY,
        TUNNEL_ENDPOINT: "10.0.0.1:51820",
    }
    # Idempotent: nothing to change means no write and no new resourceVersion.
    assert not await publish_tunnel_identity(kube, "n1", public_key=KEY, endpoint="10.0.0.1:51820")
    again = await kube.get(NODES, "n1")
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    # A node that lost its endpoint drops the annotation.
    assert await publish_tunnel_identity(kube, "n1", public_key=KEY, endpoint=None)
    last = await kube.get(NODES, "n1")
    assert TUNNEL_ENDPOINT not in last["metadata"]["annotations"]
    assert last["metadata"]["annotations"][PUBLIC_KEY] == KEY


async def test_publish_to_missing_node_raises_not_found(kube: KubeClient) -> None:
    with pytest.raises(NotFound):
        await publish_tunnel_identity(kube, "ghost", public_key=KEY, endpoint=None)
    with pytest.raises(ValueError, match="public_key"):
        await publish_tunnel_identity(kube, "ghost", public_key="", endpoint=None)


async def test_ensure_gateway_creates_once_under_concurrency(kube: KubeClient) -> None:
    results = await asyncio.gather(
        *(ensure_gateway(kube, "edge-a", spec={"tunnelPort": 51820}) for _ in range(5))
    )
    uids = {r["metadata"]["uid"] for r in results}
    assert len(uids) == 1
    listed = await kube.list(GATEWAYS)
    assert [g["metadata"]["name"] for g in listed["items"]] == ["edge-a"]


async def test_ensure_gateway_keeps_an_operators_spec(kube: KubeClient) -> None:
    await kube.create(
        GATEWAYS,
        {
            "apiVersion": "raven.io/v1alpha1",
            "kind": "Gateway",
            "metadata": {"name": "cloud"},
            "spec": {"relay": True, "endpoint": "198.18.0.10:51820"},
        },
    )
    gw = await ensure_gateway(kube, "cloud", spec={"relay": False})
    assert gw["spec"] == {"relay": True, "endpoint": "198.18.0.10:51820"}


async def test_patch_status_creates_missing_gateway_and_merges(kube: KubeClient) -> None:
    gw = await patch_gateway_status(kube, "edge-b", {"activeNode": "n1", "endpoint": "a:1"})
    assert gw["status"]["activeNode"] == "n1"
    await patch_gateway_status(kube, "edge-b", {"publicKey": KEY})
    got = await kube.get(GATEWAYS, "edge-b")
    assert got["status"] == {"activeNode": "n1", "endpoint": "a:1", "publicKey": KEY}
    # None removes a key (merge patch), and the spec is never touched by a status patch.
    await patch_gateway_status(kube, "edge-b", {"endpoint": None})
    got = await kube.get(GATEWAYS, "edge-b")
    assert got["status"] == {"activeNode": "n1", "publicKey": KEY}
    assert got["spec"] == {}
    with pytest.raises(NotFound):
        await patch_gateway_status(kube, "nope", {"activeNode": "x"}, create=False)
