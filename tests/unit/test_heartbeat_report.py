"""What the cloud sees of a delegation (the Lease marks, Events, the optional taint) and who the
heartbeat counts as its pool, against the embedded API server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from raven.heartbeat.decide import DELEGATED, NORMAL, Event
from raven.heartbeat.members import Member, PoolMembers, members_of
from raven.heartbeat.report import EVENTS, Reporter, retaint
from raven.kube import NODES, KubeClient, leases
from raven.lab.apiserver.kubeconfig import write_kubeconfig
from raven.lab.testing.apiserver import ApiServerHandle
from raven.lab.testing.cacheproxy import run_proxy
from raven.lab.testing.kube import client_for_kubeconfig, wait_until
from raven.names import (
    DELEGATE_HEARTBEAT_ANNOTATION,
    HEARTBEAT_VIA_ANNOTATION,
    NODE_LEASE_NAMESPACE,
    POOL_LABEL,
    UNSCHEDULABLE_TAINT_KEY,
)

LEASES = leases(NODE_LEASE_NAMESPACE)


def node(name: str, pool: str | None, *ips: str, kind: str = "InternalIP") -> dict[str, Any]:
    labels = {POOL_LABEL: pool} if pool else {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"addresses": [{"type": kind, "address": ip} for ip in ips]},
    }


async def test_marks_come_and_go_and_leave_the_rest_of_the_lease_alone(kube: KubeClient) -> None:
    await kube.create(
        LEASES,
        {
            "metadata": {"name": "n1", "annotations": {"other": "kept"}},
            "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40},
        },
    )
    reporter = Reporter(kube, "n1")
    reporter.want("n2", (Event(NORMAL, DELEGATED, "delegated through n2"),))
    assert await reporter.flush()
    lease = await kube.get(LEASES, "n1")
    assert lease["metadata"]["annotations"] == {
        "other": "kept",
        DELEGATE_HEARTBEAT_ANNOTATION: "true",
        HEARTBEAT_VIA_ANNOTATION: "n2",
    }
    assert lease["spec"] == {"holderIdentity": "n1", "leaseDurationSeconds": 40}
    events = (await kube.list(EVENTS))["items"]
    assert [
        (e["reason"], e["involvedObject"]["kind"], e["involvedObject"]["name"]) for e in events
    ] == [(DELEGATED, "Node", "n1")]
    assert events[0]["source"]["component"] == "raven-heartbeat"
    writes = reporter.writes
    assert await reporter.flush()
    assert reporter.writes == writes  # nothing more to write: nothing written

    reporter.want("")
    assert await reporter.flush()
    lease = await kube.get(LEASES, "n1")
    assert lease["metadata"]["annotations"] == {"other": "kept"}


async def test_a_heal_removes_the_marks_though_the_proxy_serves_a_stale_lease(
    apiserver: ApiServerHandle, kube: KubeClient, tmp_path: Path
) -> None:
    """Through the node's cache-proxy, as the heartbeat runs: the proxy answers reads from its
    cache while it believes the cloud unreachable (a few seconds after every change of route),
    so a Lease read then can be older than the marks. The removal must not be decided from it."""
    await kube.create(LEASES, {"metadata": {"name": "n1"}, "spec": {}})
    tls = (apiserver.pki.server_cert, apiserver.pki.server_key)
    with run_proxy(apiserver.url, apiserver.ca_cert, tmp_path / "cache", tls=tls) as proxy:
        kubeconfig = write_kubeconfig(
            tmp_path / "proxy.kubeconfig", proxy.url, apiserver.ca_cert, apiserver.token
        )
        through = client_for_kubeconfig(kubeconfig)
        try:
            await through.get(LEASES, "n1")  # the proxy caches the Lease without marks
            reporter = Reporter(through, "n1")
            reporter.want("n2")
            assert await reporter.flush()
            assert (await kube.get(LEASES, "n1"))["metadata"]["annotations"] == {
                DELEGATE_HEARTBEAT_ANNOTATION: "true",
                HEARTBEAT_VIA_ANNOTATION: "n2",
            }
            await asyncio.to_thread(apiserver.stop)
            await asyncio.to_thread(proxy.wait_cloud, False)
            stale = await through.get(LEASES, "n1")  # from the cache: no marks on it
            assert not (stale["metadata"].get("annotations") or {})
            reporter.want("")  # the node's own path is back
            assert not await reporter.flush()  # not written yet: the proxy refuses writes
            await asyncio.to_thread(apiserver.start)
            await asyncio.to_thread(proxy.wait_cloud, True)
            await kube.close()
            assert await reporter.flush()
        finally:
            await through.close()
    lease = await kube.get(LEASES, "n1")
    assert not (lease["metadata"].get("annotations") or {}), "the marks stayed on the Lease"


async def test_wanted_state_waits_while_the_api_server_is_away(
    apiserver: ApiServerHandle, kube: KubeClient
) -> None:
    await kube.create(LEASES, {"metadata": {"name": "n1"}, "spec": {}})
    reporter = Reporter(kube, "n1")
    await asyncio.to_thread(apiserver.stop)
    reporter.want("n2", (Event(NORMAL, DELEGATED, "delegated through n2"),))
    assert not await reporter.flush()
    assert not reporter.done
    await asyncio.to_thread(apiserver.start)
    await kube.close()  # the old connections went with the old server
    assert await reporter.flush()
    lease = await kube.get(LEASES, "n1")
    assert lease["metadata"]["annotations"][HEARTBEAT_VIA_ANNOTATION] == "n2"
    assert len((await kube.list(EVENTS))["items"]) == 1


async def test_optional_taint_while_delegated(kube: KubeClient) -> None:
    await kube.create(NODES, node("n1", "p", "10.0.0.1"))
    await kube.create(LEASES, {"metadata": {"name": "n1"}, "spec": {}})
    reporter = Reporter(kube, "n1", taint=True)
    reporter.want("n2")
    assert await reporter.flush()
    taints = (await kube.get(NODES, "n1"))["spec"]["taints"]
    assert taints == [{"key": UNSCHEDULABLE_TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    reporter.want("")
    assert await reporter.flush()
    assert not (await kube.get(NODES, "n1"))["spec"].get("taints")


def test_retaint_keeps_other_taints() -> None:
    other = {"key": "x", "effect": "NoExecute"}
    ours = {"key": UNSCHEDULABLE_TAINT_KEY, "value": "true", "effect": "NoSchedule"}
    assert retaint([other], True) == [other, ours]
    assert retaint([other, ours], True) is None
    assert retaint([other, ours], False) == [other]
    assert retaint([other], False) is None


# -- members -------------------------------------------------------------------------------


def test_members_are_the_other_nodes_of_the_pool_with_an_internal_ip() -> None:
    nodes = {
        "a1": node("a1", "a", "10.0.0.1"),
        "a2": node("a2", "a", "10.0.0.2", "fd00::2"),
        "a3": node("a3", "a", "not-an-ip"),
        "a4": node("a4", "a", "198.18.0.4", kind="ExternalIP"),
        "a5": node("a5", "a", "fd00:0::5"),
        "b1": node("b1", "b", "10.1.0.1"),
        "x": node("x", None, "10.2.0.1"),
    }
    assert members_of(nodes, "a1", POOL_LABEL, "a") == (
        Member("a2", ("10.0.0.2", "fd00::2")),
        Member("a5", ("fd00::5",)),
    )
    assert members_of(nodes, "x", POOL_LABEL, "") == ()
    assert Member("a5", ("fd00::5",)).relay_url(10263) == "http://[fd00::5]:10263"


async def test_pool_members_follow_the_pool_and_its_changes(kube: KubeClient) -> None:
    await kube.create(NODES, node("a1", "a", "10.0.0.1"))
    await kube.create(NODES, node("a2", "a", "10.0.0.2"))
    await kube.create(NODES, node("b1", "b", "10.1.0.1"))
    pool = PoolMembers(kube, "a1", POOL_LABEL)
    pool.start()
    try:
        await wait_until(lambda: pool.known, 10, what="members")
        assert pool.pool == "a"
        assert [m.name for m in pool.members()] == ["a2"]
        await kube.create(NODES, node("a3", "a", "10.0.0.3"))
        await wait_until(lambda: len(pool.members()) == 2, 10, what="a3 joins")
        # the node moves to pool b: its members follow
        moved = await kube.get(NODES, "a1")
        moved["metadata"]["labels"][POOL_LABEL] = "b"
        await kube.replace(NODES, moved)
        await wait_until(lambda: pool.pool == "b", 10, what="the move")
        await wait_until(lambda: [m.name for m in pool.members()] == ["b1"], 10, what="b")
    finally:
        await pool.stop()
