"""The list+watch cache against a live loopback API server: it follows changes, survives restarts
and outages without forgetting state, and recovers from 410 Gone by listing again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from raven.kube import GATEWAYS, NODES, KubeClient, leases
from raven.kube.errors import TransientError
from raven.kube.gateways import ensure_gateway, patch_gateway_status
from raven.kube.informer import Backoff, Informer
from raven.lab.testing.apiserver import run_apiserver
from raven.lab.testing.kube import client_for_kubeconfig, install_crds, wait_until

# A hung server must fail one test fast, not stall the suite.
pytestmark = pytest.mark.timeout(60)

FAST = Backoff(initial=0.05, cap=0.3, jitter=0.5)


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


@contextlib.asynccontextmanager
async def informing(kube: KubeClient, **kw: Any) -> AsyncIterator[Informer]:
    inf = Informer(kube, NODES, backoff=FAST, **kw)
    inf.start()
    try:
        await inf.wait_synced(5)
        yield inf
    finally:
        await inf.stop()


@pytest.fixture
async def nodes(kube: KubeClient) -> AsyncIterator[Informer]:
    async with informing(kube) as inf:
        yield inf


async def test_initial_list_then_add_modify_delete_are_seen(kube: KubeClient) -> None:
    await kube.create(NODES, node("n1", pool="a"))
    await kube.create(NODES, node("n2", pool="a"))
    async with informing(kube) as inf:
        assert inf.synced
        assert sorted(inf.snapshot()) == ["n1", "n2"]
        assert inf.snapshot()["n1"]["metadata"]["labels"] == {"pool": "a"}

        seen = inf.generation
        await kube.create(NODES, node("n3"))
        await inf.wait_changed(seen, 5)
        await wait_until(lambda: "n3" in inf.snapshot(), what="n3 added")

        await kube.merge_patch(NODES, "n1", {"metadata": {"labels": {"pool": "b"}}})
        await wait_until(
            lambda: inf.snapshot()["n1"]["metadata"]["labels"].get("pool") == "b",
            what="n1 relabelled",
        )
        await kube.delete(NODES, "n2")
        await wait_until(lambda: "n2" not in inf.snapshot(), what="n2 deleted")
        assert sorted(inf.snapshot()) == ["n1", "n3"]
        assert inf.last_error is None


async def test_label_selector_limits_the_cache(kube: KubeClient) -> None:
    await kube.create(NODES, node("in", pool="a"))
    await kube.create(NODES, node("out", pool="b"))
    async with informing(kube, label_selector="pool=a") as inf:
        assert sorted(inf.snapshot()) == ["in"]
        await kube.create(NODES, node("in2", pool="a"))
        await kube.create(NODES, node("out2", pool="b"))
        await wait_until(lambda: "in2" in inf.snapshot(), what="in2")
        assert sorted(inf.snapshot()) == ["in", "in2"]


async def test_server_restart_resumes_watch_and_keeps_cache(
    apiserver: Any, kube: KubeClient
) -> None:
    for name in ("keep", "change", "drop"):
        await kube.create(NODES, node(name))
    async with informing(kube) as inf:
        events: list[tuple[str, str]] = []
        inf.add_listener(lambda kind, obj: events.append((kind, obj["metadata"]["name"])))
        before = inf.snapshot()

        await asyncio.to_thread(apiserver.stop)
        await wait_until(lambda: inf.last_error is not None, what="informer notices outage")
        assert inf.snapshot() == before, "an API outage must not change the cache"
        assert inf.synced

        await asyncio.to_thread(apiserver.restart)
        # Changes made while the informer is still reconnecting: it must catch up on them.
        await kube.merge_patch(NODES, "change", {"metadata": {"labels": {"v": "2"}}})
        await kube.delete(NODES, "drop")
        await kube.create(NODES, node("new"))

        await wait_until(lambda: sorted(inf.snapshot()) == ["change", "keep", "new"], what="gap")
        assert inf.snapshot()["change"]["metadata"]["labels"] == {"v": "2"}
        assert inf.snapshot()["keep"] == before["keep"]
        assert ("DELETED", "keep") not in events and ("DELETED", "change") not in events
        await wait_until(lambda: inf.last_error is None, what="error cleared")
        assert inf.relists == 0, "resumed from its resourceVersion, no re-list needed"


async def test_server_stopped_keeps_last_state_and_reports_error(
    apiserver: Any, kube: KubeClient
) -> None:
    await kube.create(NODES, node("n1"))
    async with informing(kube) as inf:
        before = inf.snapshot()
        rv = inf.resource_version
        await asyncio.to_thread(apiserver.stop)
        await wait_until(lambda: inf.last_error is not None, what="last_error set")
        assert isinstance(inf.last_error, TransientError)
        # Several reconnect attempts later the state is still the last known one.
        await asyncio.sleep(1.0)
        assert inf.snapshot() == before
        assert inf.resource_version == rv
        assert inf.synced


async def test_expired_resource_version_relists_to_the_right_state(tmp_path: Path) -> None:
    with run_apiserver(tmp_path / "api", history=5) as handle:
        async with client_for_kubeconfig(handle.kubeconfig) as kube:
            for i in range(3):
                await kube.create(NODES, node(f"n{i}"))
            inf = Informer(kube, NODES, backoff=FAST)
            inf.start()
            await inf.wait_synced(5)
            await inf.stop()  # keeps cache and resourceVersion, like a long disconnect
            old_rv = inf.resource_version

            # Far more writes than the server keeps history for.
            for i in range(3, 20):
                await kube.create(NODES, node(f"n{i}"))
            for i in range(0, 20, 2):
                await kube.delete(NODES, f"n{i}")
            await kube.merge_patch(NODES, "n1", {"metadata": {"labels": {"late": "yes"}}})

            inf.start()
            try:
                want = sorted(f"n{i}" for i in range(1, 20, 2))
                await wait_until(lambda: sorted(inf.snapshot()) == want, what="relisted state")
                assert inf.relists >= 1
                assert inf.resource_version != old_rv
                assert inf.snapshot()["n1"]["metadata"]["labels"] == {"late": "yes"}
                # And it watches again after the re-list.
                await kube.create(NODES, node("after"))
                await wait_until(lambda: "after" in inf.snapshot(), what="watch after relist")
            finally:
                await inf.stop()


async def test_bookmarks_advance_resource_version(kube: KubeClient) -> None:
    await kube.create(NODES, node("n1"))
    async with informing(kube, watch_timeout=30) as inf:
        start_rv = inf.resource_version
        seen = inf.generation
        # Writes to another kind move the store's resourceVersion but give no Node event.
        lease_api = leases("default")
        for i in range(3):
            await kube.create(
                lease_api,
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": f"l{i}", "namespace": "default"},
                    "spec": {},
                },
            )
        await wait_until(
            lambda: int(inf.resource_version) > int(start_rv), timeout=5, what="bookmark"
        )
        assert inf.generation == seen, "a bookmark is not a change of the cache"
        assert sorted(inf.snapshot()) == ["n1"]


async def test_gateways_and_namespaced_leases_with_selector(kube: KubeClient) -> None:
    await install_crds(kube)
    await ensure_gateway(kube, "edge-a")
    lease_api = leases("kube-system")

    def lease(name: str, pool: str) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": "kube-system",
                "labels": {"raven.io/pool": pool},
            },
            "spec": {"holderIdentity": "n1"},
        }

    await kube.create(lease_api, lease("raven-gw-edge-a", "edge-a"))
    await kube.create(lease_api, lease("raven-gw-edge-b", "edge-b"))
    # Same name in another namespace: not ours to see.
    other = lease("raven-gw-edge-a", "edge-a")
    other["metadata"]["namespace"] = "default"
    await kube.create(leases("default"), other)

    gws = Informer(kube, GATEWAYS, backoff=FAST)
    ls = Informer(kube, lease_api, label_selector="raven.io/pool=edge-a", backoff=FAST)
    gws.start()
    ls.start()
    try:
        await gws.wait_synced(5)
        await ls.wait_synced(5)
        assert sorted(gws.snapshot()) == ["edge-a"]
        assert sorted(ls.snapshot()) == ["raven-gw-edge-a"]
        assert ls.snapshot()["raven-gw-edge-a"]["metadata"]["namespace"] == "kube-system"

        await patch_gateway_status(kube, "edge-a", {"activeNode": "n2"})
        await wait_until(
            lambda: gws.snapshot()["edge-a"].get("status", {}).get("activeNode") == "n2",
            what="status change seen",
        )
        await kube.merge_patch(lease_api, "raven-gw-edge-a", {"spec": {"holderIdentity": "n3"}})
        await wait_until(
            lambda: ls.snapshot()["raven-gw-edge-a"]["spec"]["holderIdentity"] == "n3",
            what="lease change seen",
        )
    finally:
        await gws.stop()
        await ls.stop()
