"""Gateway election: one coordination.k8s.io/v1 Lease per pool, written by us.

Why not the kubernetes client's leaderelection: it keeps acting as leader after losing the lease
and never releases on shutdown. This elector proves leadership with every renew, tells apart what
it *proved* from what it *sees*, and releases on the way out.

Two facts are exposed, because DESIGN invariant 3 needs both:

- :attr:`LeaseElector.is_holder` -- proved: our last successful acquire/renew was sent less than
  ``renew_deadline`` ago. Nobody else can hold the lease before that runs out.
- :attr:`LeaseElector.seen_holder` -- what the lease said the last time we could read it.

The runtime carries the pool while :attr:`seen_holder` names us (proved, or not disproved: an
API outage is no reason to drop traffic) and steps down the moment it names someone else.

Rules: a candidate campaigns only while :attr:`campaign` is true (the agent's round decides and
sets it; the elector never calls back into the agent); it takes the lease when it is free (no
holder) or expired, or when told to :meth:`preempt` a holder whose beacons stopped (the agent's
crash detection, gateway.beacon); every write is an update carrying the observed
resourceVersion, so two candidates racing for it get one success and one 409, and a holder that
was preempted learns it from the watched copy or from its next renewal's 409. A lease counts as
expired only when *both* its renewTime + leaseDurationSeconds lies in the past by our wall
clock *and* we have seen it unchanged for leaseDurationSeconds on our monotonic clock, so a
candidate whose clock runs ahead cannot take a live lease (a fresh candidate therefore waits
one duration before taking over a dead holder it never heard). Expiry never displaces a holder
that renews; only :meth:`preempt` does. A holder that stops campaigning releases the lease.

API cost per pool: the holder makes one PUT per renew (it renews from the object its last write
returned, no GET). The other candidates read the lease from a watch when given one
(``watched``: the agent passes its Lease informer), so they send nothing until they write to
take over; without a watch each sends one GET per retry plus up to 20 % jitter. With the
agent's defaults (duration 24 s, renew 8 s) a pool costs 0.125 writes a second; a crash is
noticed by the beacons, not by expiry, so failover does not wait for the duration. Expiry is
the fallback when no beacon was ever heard from the holder (e.g. every agent of the pool
restarted at once and the old holder is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from raven import names
from raven.aio import cancel_and_wait
from raven.kube.client import JSON, KubeClient
from raven.kube.errors import Conflict, KubeError, NotFound, TransientError
from raven.kube.notify import Generation
from raven.kube.resources import Resource, leases
from raven.names import DEFAULT_LEASE_NAMESPACE

log = logging.getLogger(__name__)
T = TypeVar("T")
#: A renewal this close to due is sent now (timers may fire a little early).
RENEW_SLACK = 0.01


@dataclass(frozen=True)
class LeaseTimings:
    """Election timings, in seconds. Shorter = faster failover, more API calls.

    - ``duration``: leaseDurationSeconds written into the Lease (whole seconds, API type int32).
      Failover after a crash takes about this long.
    - ``renew_interval``: how often the holder renews. Several renews must fit in ``duration`` so
      one lost request does not cost the lease.
    - ``retry_interval``: how often a non-holder re-reads the lease. Failover after a release
      takes up to this long.
    - ``jitter``: fraction of random extra wait added to ``retry_interval`` so candidates do not
      hit the server in lockstep.
    - ``renew_deadline``: the holder stops claiming :attr:`LeaseElector.is_holder` this long after
      its last successful renew was sent; default ``duration - renew_interval``, must be <=
      ``duration`` so we never claim longer than others wait.
    - ``request_timeout``: bound on each Lease request; default ``renew_interval``.
    - ``step_down_backoff``: how long :meth:`LeaseElector.step_down` stays out of the election;
      default ``2 * duration``.
    """

    duration: int = 4
    renew_interval: float = 1.0
    retry_interval: float = 0.5
    jitter: float = 0.2
    renew_deadline: float | None = None
    request_timeout: float | None = None
    step_down_backoff: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.duration, int) or self.duration < 1:
            raise ValueError(f"LeaseTimings.duration must be an int >= 1 s, got {self.duration!r}")
        if not 0 < self.renew_interval < self.duration:
            raise ValueError(
                f"LeaseTimings.renew_interval must be in (0, duration={self.duration}), "
                f"got {self.renew_interval}"
            )
        if self.retry_interval <= 0:
            raise ValueError(f"LeaseTimings.retry_interval must be > 0, got {self.retry_interval}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"LeaseTimings.jitter must be in [0, 1], got {self.jitter}")
        if not self.renew_interval < self.deadline <= self.duration:
            raise ValueError(
                f"LeaseTimings.renew_deadline must be in (renew_interval, duration], "
                f"got {self.deadline}"
            )

    @property
    def deadline(self) -> float:
        if self.renew_deadline is not None:
            return self.renew_deadline
        return max(self.duration - self.renew_interval, (self.duration + self.renew_interval) / 2)

    @property
    def timeout(self) -> float:
        return self.request_timeout if self.request_timeout is not None else self.renew_interval

    @property
    def backoff(self) -> float:
        return self.step_down_backoff if self.step_down_backoff is not None else 2.0 * self.duration


def _now_micro() -> str:
    # MicroTime: RFC 3339 with microseconds, UTC.
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


class LeaseElector:
    """Campaigns for the Lease of one pool. ``start()`` it, read its properties, ``stop()`` it."""

    def __init__(
        self,
        client: KubeClient,
        pool: str,
        identity: str,
        *,
        campaign: bool = True,
        namespace: str = DEFAULT_LEASE_NAMESPACE,
        lease_name: str | None = None,
        timings: LeaseTimings | None = None,
        watched: Callable[[], tuple[bool, JSON | None]] | None = None,
    ) -> None:
        if not pool:
            raise ValueError("pool must not be empty")
        if not identity:
            raise ValueError("identity must not be empty")
        self.client = client
        self.pool = pool
        self.identity = identity
        #: Whether to campaign; the agent sets it each round (healthy candidate, not stepped
        #: down). Turning it off makes a holder release at its next round.
        self.campaign = campaign
        self.resource: Resource = leases(namespace)
        self.lease_name = lease_name or names.lease_name(pool)
        self.timings = timings or LeaseTimings()
        # (known, lease) as a watch of the Lease sees it, e.g. an informer's cache: while it is
        # known, a non-holder reads that instead of asking the API server every retry.
        self.watched = watched
        self.reads = 0  # GETs sent; for metrics and tests
        self.last_error: KubeError | None = None
        self.conflicts = 0  # writes that lost a race (409); for metrics and tests
        self._lease: JSON | None = None  # last lease object we read or wrote
        self._seen_holder: str | None = None
        self._observed_rv: str | None = None
        self._observed_at = 0.0  # monotonic time we first saw the current lease version
        self._renewed_at: float | None = None  # monotonic send time of our last good write
        self._out_until = 0.0
        self._preempt: str | None = None  # a holder we were told is dead (its beacons stopped)
        self.preemptions = 0  # leases taken from a live-looking holder; for metrics and tests
        self._gen = Generation()
        self._state: tuple[bool, str | None] = (False, None)
        self._listeners: list[Callable[[LeaseElector], None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._release_on_exit = True

    # What the runtime reads ---------------------------------------------------------------------

    @property
    def is_holder(self) -> bool:
        """Proved: our last acquire/renew succeeded less than ``renew_deadline`` ago."""
        return (
            self._renewed_at is not None
            and self._seen_holder == self.identity
            and time.monotonic() < self._renewed_at + self.timings.deadline
        )

    @property
    def seen_holder(self) -> str | None:
        """holderIdentity of the lease as last read (None: no lease, or nobody holds it)."""
        return self._seen_holder

    @property
    def out(self) -> bool:
        """Staying out of the election after :meth:`step_down`."""
        return self._out_until > time.monotonic()

    @property
    def generation(self) -> int:
        """Bumped whenever ``is_holder`` or ``seen_holder`` changes."""
        return self._gen.value

    async def wait_changed(self, seen: int, timeout: float | None = None) -> int:
        return await self._gen.wait_newer(seen, timeout)

    def add_listener(self, listener: Callable[[LeaseElector], None]) -> None:
        """Call ``listener(elector)`` after every change of ``is_holder`` or ``seen_holder``."""
        self._listeners.append(listener)

    def wake(self) -> None:
        """Run the next round now (e.g. after health changed) instead of after the interval."""
        self._wake.set()

    def preempt(self, holder: str) -> None:
        """Take the lease from ``holder`` at the next round (now), whatever its renewTime says,
        if the lease still names ``holder`` then and we campaign. The write carries the
        resourceVersion that named ``holder``, so it fails if anything changed meanwhile."""
        if holder and holder != self.identity:
            self._preempt = holder
            self._wake.set()

    # Lifecycle ----------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"election:{self.lease_name}")
        return self._task

    async def stop(self, *, release: bool = True) -> None:
        """Stop campaigning; release the lease if we hold it (``release=False``: as if crashed)."""
        task, self._task = self._task, None
        self._release_on_exit = release
        if task is not None and not task.done():
            await cancel_and_wait(task)  # run()'s finally releases, shielded
        elif release:
            await asyncio.shield(self.release())
        self._release_on_exit = True

    async def run(self) -> None:
        """Campaign until cancelled; on the way out release the lease (shielded from a second
        cancellation), so cancelling the task from a root task shutdown also hands over at once."""
        try:
            while True:
                # Cleared before the round, so a wake that comes while it runs (a campaign
                # change during a renewal) starts the next round at once instead of being lost.
                self._wake.clear()
                await self.step()
                if self.is_holder:
                    # Until the next renewal is due; a failed one is retried an interval later.
                    delay = self._renew_in() or self.timings.renew_interval
                else:
                    delay = self.timings.retry_interval * (
                        1 + self.timings.jitter * random.random()
                    )
                if self._out_until > time.monotonic():
                    delay = min(delay, max(0.0, self._out_until - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            if self._release_on_exit:
                await asyncio.shield(self.release())

    async def step(self) -> None:
        """One round: read or renew the lease and act on it. Never raises KubeError."""
        try:
            await self._round()
        except Conflict as e:
            # Someone wrote the lease between our read and our write: we lost that race.
            self.conflicts += 1
            self.last_error = e
            self._lease = None  # force a fresh read next round
        except KubeError as e:
            # An outage fails every round alike (several a second): say it once, not each time.
            repeated = self.last_error is not None and str(self.last_error) == str(e)
            self.last_error = e
            (log.debug if repeated else log.warning)("election %s: %s", self.lease_name, e)
        else:
            if self.last_error is not None and not isinstance(self.last_error, Conflict):
                log.info("election %s: the API server answers again", self.lease_name)
            self.last_error = None
        await self._publish()

    async def release(self) -> None:
        """Give the lease up at once so another candidate takes it within one retry interval.

        Only writes when the lease (as last seen) names us. Call it through ``asyncio.shield``
        from shutdown paths; :meth:`stop` and :meth:`step_down` already do.
        """
        try:
            for _ in range(2):
                lease = self._lease
                if lease is None or lease.get("spec", {}).get("holderIdentity") != self.identity:
                    lease = await self._call(self.client.get(self.resource, self.lease_name))
                    self._observe(lease)
                if lease.get("spec", {}).get("holderIdentity") != self.identity:
                    return
                body = copy.deepcopy(lease)
                now = _now_micro()
                # holderIdentity empty = free; a 1 s duration also frees it for old clients.
                body["spec"].update(
                    {"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now}
                )
                try:
                    written = await self._call(self.client.replace(self.resource, body))
                except Conflict:
                    self._lease = None
                    continue
                self._renewed_at = None
                self._observe(written)
                log.info("election %s: %s released", self.lease_name, self.identity)
                return
        except NotFound:
            self._observe(None)
        except KubeError as e:
            self.last_error = e
            log.warning("election %s: release failed: %s", self.lease_name, e)
        finally:
            self._renewed_at = None
            await self._publish()

    async def step_down(self, backoff: float | None = None) -> None:
        """Release and stay out of the election for ``backoff`` s (default timings.backoff)."""
        self._out_until = time.monotonic() + (self.timings.backoff if backoff is None else backoff)
        await asyncio.shield(self.release())

    # Internals ----------------------------------------------------------------------------------

    async def _call(self, coro: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timings.timeout):
                return await coro
        except TimeoutError as e:
            raise TransientError(
                f"lease {self.lease_name}: no answer within {self.timings.timeout}s",
                delay=self.timings.retry_interval,
            ) from e

    async def _read(self) -> JSON:
        """The lease: from the watch when it knows (no request), else a GET. A watch that lags
        is safe: every write carries the resourceVersion read, so a stale one gets a 409."""
        if self.watched is not None:
            known, lease = self.watched()
            if known:
                if lease is None:
                    raise NotFound(f"lease {self.lease_name} not found (watch)")
                return lease
        self.reads += 1
        return await self._call(self.client.get(self.resource, self.lease_name))

    def _observe(self, lease: JSON | None) -> None:
        self._lease = lease
        if lease is None:
            self._seen_holder, self._observed_rv = None, None
            return
        self._seen_holder = lease.get("spec", {}).get("holderIdentity") or None
        rv = lease.get("metadata", {}).get("resourceVersion")
        if rv != self._observed_rv:
            self._observed_rv = rv
            self._observed_at = time.monotonic()

    def _renew_in(self) -> float:
        """Seconds until the holder's next renewal is due (0: now, or never renewed)."""
        if self._renewed_at is None:
            return 0.0
        left = self._renewed_at + self.timings.renew_interval - time.monotonic()
        return left if left > RENEW_SLACK else 0.0

    def _expired(self, lease: JSON) -> bool:
        spec = lease.get("spec", {})
        duration = float(spec.get("leaseDurationSeconds") or self.timings.duration)
        renewed = _parse_time(spec.get("renewTime")) or _parse_time(spec.get("acquireTime"))
        wall_expired = renewed is None or renewed + duration < time.time()
        unchanged_long = time.monotonic() - self._observed_at > duration
        return wall_expired and unchanged_long

    def _new_lease(self) -> JSON:
        now = _now_micro()
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.lease_name,
                "namespace": self.resource.namespace,
                "labels": {names.LEASE_POOL_LABEL: self.pool},
            },
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.timings.duration,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }

    async def _write(self, lease: JSON, *, acquire: bool) -> None:
        body = copy.deepcopy(lease)
        spec = body.setdefault("spec", {})
        now = _now_micro()
        if acquire:
            if spec.get("holderIdentity") not in (None, "", self.identity):
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec["acquireTime"] = now
        spec.update(
            {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.timings.duration,
                "renewTime": now,
            }
        )
        sent = time.monotonic()
        written = await self._call(self.client.replace(self.resource, body))
        self._renewed_at = sent
        self._observe(written)

    def _taken_from_us(self) -> JSON | None:
        """The watched Lease, when it shows someone else took it from us since our last write
        (a preemption); None otherwise. A lagging copy that still names us is ignored."""
        if self.watched is None or self._lease is None:
            return None
        known, lease = self.watched()
        if not known or lease is None:
            return None
        holder = lease.get("spec", {}).get("holderIdentity") or None
        ours = self._lease.get("metadata", {}).get("resourceVersion")
        theirs = lease.get("metadata", {}).get("resourceVersion")
        if holder in (None, self.identity) or theirs == ours:
            return None
        return lease

    async def _round(self) -> None:
        preempt, self._preempt = self._preempt, None
        campaigning = self.campaign and time.monotonic() >= self._out_until
        taken = self._taken_from_us() if self.is_holder else None
        if taken is not None:
            self._observe(taken)
            self._renewed_at = None
            log.info(
                "election %s: %s was replaced by %s",
                self.lease_name,
                self.identity,
                self._seen_holder,
            )
            return
        if self.is_holder and self._lease is not None:
            if not campaigning:
                await self.release()
                return
            if self._renew_in() > 0:
                # Woken early (our own renewal's watch event, a campaign or health change):
                # only a renewal that is due is sent, so a wake never costs a write.
                return
            # Renew from the object our last write returned: one request per renew. A 409 means
            # someone else wrote it; step() drops the copy and the next round reads afresh.
            await self._write(self._lease, acquire=False)
            return
        try:
            lease = await self._read()
        except NotFound:
            self._observe(None)
            if campaigning:
                sent = time.monotonic()
                created = await self._call(self.client.create(self.resource, self._new_lease()))
                self._renewed_at = sent
                self._observe(created)
                log.info("election %s: %s created and holds it", self.lease_name, self.identity)
            return
        self._observe(lease)
        holder = self._seen_holder
        if holder == self.identity:
            if campaigning:
                # Ours (e.g. we restarted, or a renew timed out but landed): take it back now.
                await self._write(lease, acquire=False)
            else:
                await self.release()
        elif campaigning and (holder is None or self._expired(lease)):
            await self._write(lease, acquire=True)
            log.info("election %s: %s acquired (was %r)", self.lease_name, self.identity, holder)
        elif campaigning and preempt is not None and holder == preempt:
            await self._write(lease, acquire=True)
            self.preemptions += 1
            log.info(
                "election %s: %s took over from %s, whose beacons stopped",
                self.lease_name,
                self.identity,
                holder,
            )
        else:
            # Someone else holds it (or we are out): whatever we proved before is void now.
            self._renewed_at = None

    async def _publish(self) -> None:
        state = (self.is_holder, self._seen_holder)
        if state == self._state:
            return
        self._state = state
        for listener in self._listeners:
            try:
                listener(self)
            except Exception:
                log.exception("election %s: listener failed", self.lease_name)
        await self._gen.bump()
