"""Lease election against a live loopback API server: one holder, sticky, fast hand-over on
release, take-over after expiry or by preemption, campaign gating, 409 races, stepping down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from raven.kube import KubeClient, leases
from raven.kube.election import LeaseElector, LeaseTimings
from raven.kube.errors import NotFound
from raven.kube.informer import Informer
from raven.lab.testing.kube import client_for_kubeconfig, wait_until

# A hung server must fail one test fast, not stall the suite.
pytestmark = pytest.mark.timeout(60)

NS = "kube-system"
LEASES = leases(NS)
# Lease 2 s (long enough to tell "took over after a release" from "after expiry"), renew every
# 0.25 s, candidates look every 0.1 s (+20 %). Requests may take up to 1 s on a loaded machine.
QUICK = LeaseTimings(
    duration=2, renew_interval=0.25, retry_interval=0.1, jitter=0.2, request_timeout=1.0
)
SLOW_EXPIRY = QUICK


@contextlib.asynccontextmanager
async def candidates(
    apiserver: Any,
    names: list[str],
    *,
    timings: LeaseTimings = QUICK,
    start: bool = True,
    **kw: Any,
) -> AsyncIterator[list[LeaseElector]]:
    """One elector per name, each with its own client (separate processes in real life)."""
    clients = [client_for_kubeconfig(apiserver.kubeconfig) for _ in names]
    electors = [
        LeaseElector(c, "edge-a", n, namespace=NS, timings=timings, **kw)
        for c, n in zip(clients, names, strict=True)
    ]
    if start:
        for e in electors:
            e.start()
    try:
        yield electors
    finally:
        for e in electors:
            await e.stop(release=False)
        for c in clients:
            await c.close()


def holders(electors: list[LeaseElector]) -> list[str]:
    return [e.identity for e in electors if e.is_holder]


async def lease_holder(kube: KubeClient) -> str:
    lease = await kube.get(LEASES, "raven-gw-edge-a")
    return str(lease["spec"].get("holderIdentity") or "")


async def test_one_of_three_candidates_wins(apiserver: Any, kube: KubeClient) -> None:
    async with candidates(apiserver, ["n1", "n2", "n3"]) as els:
        await wait_until(lambda: len(holders(els)) == 1, what="a single holder")
        winner = holders(els)[0]
        await wait_until(lambda: all(e.seen_holder == winner for e in els), what="all agree")
        # It stays that way over several lease durations: the holder keeps renewing.
        for _ in range(10):
            await asyncio.sleep(0.25)
            assert holders(els) == [winner]
        assert await lease_holder(kube) == winner
        assert [e.seen_holder == e.identity for e in els].count(True) == 1


async def test_holder_is_sticky_when_a_new_candidate_joins(
    apiserver: Any, kube: KubeClient
) -> None:
    async with candidates(apiserver, ["n1"]) as (first,):
        await wait_until(lambda: first.is_holder, what="n1 holds")
        before = await kube.get(LEASES, "raven-gw-edge-a")
        async with candidates(apiserver, ["n2"]) as (late,):
            await wait_until(lambda: late.seen_holder == "n1", what="n2 sees n1")
            for _ in range(12):  # 3 s = 3 lease durations
                await asyncio.sleep(0.25)
                assert first.is_holder and not late.is_holder
        after = await kube.get(LEASES, "raven-gw-edge-a")
        assert after["spec"]["holderIdentity"] == "n1"
        assert after["spec"]["leaseTransitions"] == before["spec"]["leaseTransitions"]
        assert after["spec"]["renewTime"] != before["spec"]["renewTime"], "holder renews"


async def test_release_hands_over_within_a_retry_interval(apiserver: Any) -> None:
    async with candidates(apiserver, ["n1", "n2"], timings=SLOW_EXPIRY) as els:
        await wait_until(lambda: len(holders(els)) == 1, what="a holder")
        old = next(e for e in els if e.is_holder)
        new = next(e for e in els if not e.is_holder)
        released = time.monotonic()
        await old.stop()  # releases on the way out
        assert not old.is_holder
        await wait_until(lambda: new.is_holder, timeout=3, what="hand-over")
        took = time.monotonic() - released
        # Expiry would take >= 2 s; a release is seen on the next look (0.1-0.12 s + requests).
        assert took < 0.8, f"hand-over after release took {took:.2f}s"


async def test_killed_holder_is_replaced_after_lease_expiry(apiserver: Any) -> None:
    async with candidates(apiserver, ["n1", "n2"], timings=SLOW_EXPIRY) as els:
        await wait_until(lambda: len(holders(els)) == 1, what="a holder")
        old = next(e for e in els if e.is_holder)
        new = next(e for e in els if not e.is_holder)
        killed = time.monotonic()
        await old.stop(release=False)  # a crash: nothing written
        await wait_until(lambda: new.is_holder, timeout=5, what="take-over")
        took = time.monotonic() - killed
        assert 1.5 <= took <= 3.5, f"take-over {took:.2f}s after kill; lease is 2 s"


async def test_candidate_that_does_not_campaign_never_writes(
    apiserver: Any, kube: KubeClient
) -> None:
    async with candidates(apiserver, ["n1"], campaign=False) as (el,):
        await asyncio.sleep(1.5)
        assert not el.is_holder and el.seen_holder is None
        with pytest.raises(NotFound):  # it did not even create the lease
            await kube.get(LEASES, "raven-gw-edge-a")
        el.campaign = True
        el.wake()
        await wait_until(lambda: el.is_holder, what="campaigns once healthy")
        assert await lease_holder(kube) == "n1"


async def test_holder_that_stops_campaigning_releases(apiserver: Any, kube: KubeClient) -> None:
    clients = [client_for_kubeconfig(apiserver.kubeconfig) for _ in range(2)]
    els = [
        LeaseElector(c, "edge-a", n, namespace=NS, timings=SLOW_EXPIRY)
        for c, n in zip(clients, ["n1", "n2"], strict=True)
    ]
    try:
        els[0].start()
        await wait_until(lambda: els[0].is_holder, what="n1 holds")
        els[1].start()
        els[0].campaign = False
        els[0].wake()
        await wait_until(lambda: els[1].is_holder, timeout=3, what="n2 takes over")
        # Released, not expired: the Lease shows n1 gave it up (an empty holder in between).
        assert not els[0].is_holder
        assert els[1].seen_holder == "n2" and els[0].last_error is None
    finally:
        for e in els:
            await e.stop(release=False)
        for c in clients:
            await c.close()


async def test_race_for_a_free_lease_leaves_exactly_one_holder(
    apiserver: Any, kube: KubeClient
) -> None:
    await kube.create(
        LEASES,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "raven-gw-edge-a", "namespace": NS},
            "spec": {"holderIdentity": "", "leaseDurationSeconds": 1},
        },
    )
    async with candidates(apiserver, ["n1", "n2"], start=False) as (a, b):
        for _ in range(8):
            # Both read the free lease, then both write with the same resourceVersion.
            await asyncio.gather(a.step(), b.step())
            assert len(holders([a, b])) == 1
            winner = holders([a, b])[0]
            assert await lease_holder(kube) == winner
            assert a.seen_holder == b.seen_holder == winner or (a.conflicts + b.conflicts) > 0
            await (a if a.is_holder else b).release()
            assert await lease_holder(kube) == ""
        assert a.conflicts + b.conflicts >= 1, "the race never happened; the test proves nothing"


async def test_holder_that_sees_another_holder_steps_down(apiserver: Any, kube: KubeClient) -> None:
    async with candidates(apiserver, ["n1"]) as (el,):
        changes: list[tuple[bool, str | None]] = []
        el.add_listener(lambda e: changes.append((e.is_holder, e.seen_holder)))
        await wait_until(lambda: el.is_holder, what="n1 holds")
        # Someone else writes itself into the lease (e.g. a candidate with a clock far ahead).
        lease = await kube.get(LEASES, "raven-gw-edge-a")
        lease["spec"]["holderIdentity"] = "intruder"
        await kube.replace(LEASES, lease)
        took = await wait_until(lambda: el.seen_holder == "intruder", what="sees intruder")
        assert took < 0.6
        assert not el.is_holder and el.seen_holder != el.identity
        assert changes[-1] == (False, "intruder")
        # It does not fight a live holder.
        await asyncio.sleep(0.3)
        assert await lease_holder(kube) == "intruder"


async def test_step_down_releases_and_stays_out_for_the_backoff(
    apiserver: Any, kube: KubeClient
) -> None:
    async with candidates(apiserver, ["n1"]) as (el,):
        await wait_until(lambda: el.is_holder, what="n1 holds")
        await el.step_down(backoff=1.5)
        assert await lease_holder(kube) == ""
        assert not el.is_holder and el.seen_holder != el.identity
        await asyncio.sleep(1.0)
        assert await lease_holder(kube) == "", "stays out during the back-off"
        await wait_until(lambda: el.is_holder, timeout=2, what="back after the back-off")


async def test_api_outage_holder_keeps_forwarding_but_not_proved(
    apiserver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with candidates(apiserver, ["n1"]) as (el,):
        await wait_until(lambda: el.is_holder, what="n1 holds")
        caplog.set_level(logging.INFO, logger="raven.kube.election")
        await asyncio.to_thread(apiserver.stop)
        await wait_until(lambda: not el.is_holder, timeout=3, what="proof runs out")
        # Nobody else can hold the lease either: keep carrying traffic (invariant 3).
        assert el.seen_holder == "n1"
        assert el.last_error is not None
        await asyncio.sleep(1.0)  # many more failed rounds (renew every 0.25 s)
        await asyncio.to_thread(apiserver.restart)
        await wait_until(lambda: el.is_holder, timeout=5, what="renews after the outage")
        await wait_until(lambda: el.last_error is None, timeout=2, what="error cleared")
    # The outage is logged when it starts (a refusal and a timeout may read differently), not
    # at every failed round, and its end is logged once.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 <= len(warnings) <= 3, [r.getMessage() for r in warnings]
    assert sum("answers again" in r.getMessage() for r in caplog.records) == 1


def test_timings_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="duration"):
        LeaseTimings(duration=0)
    with pytest.raises(ValueError, match="renew_interval"):
        LeaseTimings(duration=2, renew_interval=3)
    with pytest.raises(ValueError, match="renew_deadline"):
        LeaseTimings(duration=2, renew_interval=0.5, renew_deadline=5)
    t = LeaseTimings()
    assert (t.duration, t.renew_interval, t.retry_interval) == (4, 1.0, 0.5)
    assert t.renew_interval < t.deadline <= t.duration


async def test_cancelling_the_task_still_releases(apiserver: Any, kube: KubeClient) -> None:
    async with candidates(apiserver, ["n1"], start=False) as (el,):
        task = el.start()
        await wait_until(lambda: el.is_holder, what="n1 holds")
        task.cancel()  # a root-task shutdown, not a polite stop()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await lease_holder(kube) == ""
        assert not el.is_holder and el.seen_holder != el.identity


async def test_candidates_fed_by_a_watch_send_no_reads_and_still_take_over(
    apiserver: Any,
) -> None:
    # Each candidate gets the lease from a real watch (an Informer) instead of GETting it.
    clients = [client_for_kubeconfig(apiserver.kubeconfig) for _ in range(2)]
    informers = [Informer(c, LEASES) for c in clients]
    for inf in informers:
        inf.start()
    els = [
        LeaseElector(
            c,
            "edge-a",
            n,
            namespace=NS,
            timings=QUICK,
            watched=lambda inf=inf: (inf.synced, inf.get("raven-gw-edge-a")),
        )
        for c, n, inf in zip(clients, ["n1", "n2"], informers, strict=True)
    ]
    try:
        for inf in informers:
            await inf.wait_synced(5)
        for e in els:
            e.start()
        await wait_until(lambda: len(holders(els)) == 1, what="a holder")
        old = next(e for e in els if e.is_holder)
        new = next(e for e in els if not e.is_holder)
        reads = new.reads
        await asyncio.sleep(2.0)  # 8 renewals by the holder, ~16 looks by the other
        assert holders(els) == [old.identity]
        assert new.reads == reads, "a candidate with a watch sent GETs"
        killed = time.monotonic()
        await old.stop(release=False)  # a crash: the watch shows the lease going stale
        await wait_until(lambda: new.is_holder, timeout=5, what="take-over")
        assert 1.5 <= time.monotonic() - killed <= 3.5
        assert new.reads == reads
    finally:
        for e in els:
            await e.stop(release=False)
        for inf in informers:
            await inf.stop()
        for c in clients:
            await c.close()


async def test_preempt_takes_the_lease_from_a_live_holder_that_then_learns_it(
    apiserver: Any, kube: KubeClient
) -> None:
    informer = Informer(client_for_kubeconfig(apiserver.kubeconfig), LEASES)
    informer.start()
    await informer.wait_synced(5)
    watched = lambda: (informer.synced, informer.get("raven-gw-edge-a"))  # noqa: E731
    try:
        async with candidates(apiserver, ["n1", "n2"], watched=watched) as (n1, n2):
            await wait_until(lambda: len(holders([n1, n2])) == 1, what="a holder")
            old, new = (n1, n2) if n1.is_holder else (n2, n1)
            transitions = (await kube.get(LEASES, "raven-gw-edge-a"))["spec"]["leaseTransitions"]
            new.preempt(old.identity)  # as the agent does when old's beacons stop
            await wait_until(lambda: new.is_holder, timeout=3, what="the takeover")
            assert new.preemptions == 1
            lease = await kube.get(LEASES, "raven-gw-edge-a")
            assert lease["spec"]["holderIdentity"] == new.identity
            assert lease["spec"]["leaseTransitions"] == transitions + 1
            # The old holder, still renewing, sees it was replaced and stops claiming it.
            old.wake()
            await wait_until(lambda: old.seen_holder == new.identity, timeout=3, what="noticed")
            assert not old.is_holder
            await asyncio.sleep(0.6)  # a few of its renewal intervals
            assert await lease_holder(kube) == new.identity
    finally:
        await informer.stop()
        await informer.client.close()


async def test_preempt_of_a_holder_that_is_not_the_current_one_changes_nothing(
    apiserver: Any, kube: KubeClient
) -> None:
    async with candidates(apiserver, ["n1", "n2"]) as (n1, n2):
        await wait_until(lambda: len(holders([n1, n2])) == 1, what="a holder")
        old, new = (n1, n2) if n1.is_holder else (n2, n1)
        new.preempt("someone-else")  # stale news: that node no longer holds it
        await asyncio.sleep(0.5)
        assert await lease_holder(kube) == old.identity and new.preemptions == 0
        new.campaign = False
        new.preempt(old.identity)  # a node that does not campaign never takes over
        await asyncio.sleep(0.5)
        assert await lease_holder(kube) == old.identity and new.preemptions == 0


async def test_holder_woken_by_its_own_renewals_still_renews_once_per_interval(
    apiserver: Any,
) -> None:
    # The agent wakes the elector on every event of its pool's Lease, the holder's own renewals
    # included. A wake must not cost a write: else every renewal's event starts the next one
    # and a pool costs the API server as many writes as it can answer.
    client = client_for_kubeconfig(apiserver.kubeconfig)
    informer = Informer(client, LEASES)
    writes: list[str] = []
    timings = LeaseTimings(duration=4, renew_interval=1.0, retry_interval=0.1)
    el = LeaseElector(
        client,
        "edge-a",
        "n1",
        namespace=NS,
        timings=timings,
        watched=lambda: (informer.synced, informer.get("raven-gw-edge-a")),
    )

    def on_event(kind: str, lease: dict[str, Any]) -> None:
        writes.append(lease["metadata"]["resourceVersion"])
        el.wake()

    informer.add_listener(on_event)
    informer.start()
    try:
        await informer.wait_synced(5)
        el.start()
        await wait_until(lambda: el.is_holder and writes, what="n1 holds")
        before = len(writes)
        await asyncio.sleep(3.0)
        # Three renewals are due in 3 s (one more if a timer straddles the edges).
        assert len(writes) - before <= 4, f"{len(writes) - before} writes in 3 s"
        assert el.is_holder
    finally:
        await el.stop(release=False)
        await informer.stop()
        await client.close()


class _ToldDuringWrite(KubeClient):
    """Runs ``during`` when the Lease is created, before the request goes out (a campaign
    change that arrives while the elector's write is on the wire)."""

    during: Any = None

    async def create(self, resource: Any, obj: dict[str, Any], **kw: Any) -> dict[str, Any]:
        if self.during is not None:
            self.during()
        return await super().create(resource, obj, **kw)


async def test_campaign_change_during_a_write_is_acted_on_at_once(
    apiserver: Any, kube: KubeClient
) -> None:
    client = _ToldDuringWrite(client_for_kubeconfig(apiserver.kubeconfig).config)
    slow = LeaseTimings(duration=60, renew_interval=20, retry_interval=0.1)
    el = LeaseElector(client, "edge-a", "n1", namespace=NS, timings=slow)

    def stop_campaigning() -> None:
        el.campaign = False
        el.wake()

    client.during = stop_campaigning
    el.start()
    try:
        # Created naming n1, then released at once, not at the next renewal 20 s later.
        deadline = time.monotonic() + 5
        holder = None
        while holder != "" and time.monotonic() < deadline:
            with contextlib.suppress(NotFound):
                holder = await lease_holder(kube)
            await asyncio.sleep(0.05)
        assert holder == "", f"the Lease still names {holder!r}"
        assert not el.is_holder
    finally:
        await el.stop(release=False)
        await client.close()
