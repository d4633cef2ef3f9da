"""``raven bench heartbeat``: does a node that lost its own uplink keep its heartbeat?

Builds a lab of its own (own prefix and state dir) with agents, kubelet stand-ins and
heartbeats, then cuts one member of ``edge-a`` (not its gateway) from the cloud for
``cut_seconds`` (default 3 minutes) while its LAN keeps working, and heals it. Throughout, the
cloud's side is sampled every ``sample_s`` seconds with the admin's credentials: the cut node's
Lease (``kube-node-lease/<node>``), its Node (Ready condition, taints), and the same for an
undisturbed member of the pool. Figures:

- ``first_delegated_renewal_s``: from the cut to the first renewal the API server stored after
  it (the node's own path is down, so it came through a neighbour's relay);
- ``max_lease_age_s``: the largest age of the cut node's Lease the cloud saw during the cut
  (``now - renewTime``); the node-lifecycle controller marks a node ``Unknown`` at 40 s, so
  ``margin_to_unknown_s`` = 40 - that is how far under it stayed;
- ``went_unknown`` / ``got_unreachable_taint``: whether the cut node was ever marked so;
- ``delegated_via``: the relay named in the Lease's ``raven.io/heartbeat-via``;
- ``back_to_direct_s``: from the heal to the annotations gone from the Lease;
- ``writes_per_min_delegated`` / ``writes_per_min_undisturbed``: the API server's writes (audit
  log: create, update, patch, delete) made with each node's identity during the cut, per
  minute, and their ratio.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raven.lab import engine, faults
from raven.lab.apiserver.audit import read_audit_log
from raven.lab.topology import Lab

KUBECTL = "/usr/bin/kubectl"
POOL = "edge-a"
GRACE_S = 40.0  # kube-controller-manager's node-monitor-grace-period
DELEGATE = "openyurt.io/delegate-heartbeat"
VIA = "raven.io/heartbeat-via"
WRITE_VERBS = {"create", "update", "patch", "delete"}


class BenchError(Exception):
    """The benchmark could not run or could not measure; the message says what failed."""


def parse_time(text: str) -> float:
    """A Kubernetes timestamp (RFC 3339, with or without fraction) as Unix seconds."""
    text = text.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in text else "%Y-%m-%dT%H:%M:%S"
    return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC).timestamp()


@dataclass(frozen=True)
class Sample:
    at: float  # Unix time of the sample
    node: str
    renew: float | None  # the Lease's renewTime, Unix seconds
    annotations: dict[str, str]
    ready: str  # the Node's Ready status: True, False, Unknown or ""
    unreachable: bool  # the node.kubernetes.io/unreachable taint is on


@dataclass
class Sampler:
    """Reads the Leases and Nodes of ``nodes`` every ``interval`` seconds in a thread."""

    kubeconfig: Path
    nodes: tuple[str, ...]
    interval: float
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _get(self, *args: str) -> dict[str, Any]:
        res = subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.kubeconfig), "get", *args, "-o", "json"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if res.returncode != 0:
            raise BenchError(f"kubectl get {' '.join(args)}: {res.stderr.strip()}")
        return dict(json.loads(res.stdout))

    def sample(self) -> None:
        at = time.time()
        leases = self._get("leases", "-n", "kube-node-lease")
        nodes = self._get("nodes")
        by_lease = {i["metadata"]["name"]: i for i in leases.get("items", [])}
        by_node = {i["metadata"]["name"]: i for i in nodes.get("items", [])}
        for name in self.nodes:
            lease, node = by_lease.get(name, {}), by_node.get(name, {})
            renew = (lease.get("spec") or {}).get("renewTime")
            ready = next(
                (
                    c.get("status", "")
                    for c in (node.get("status") or {}).get("conditions") or []
                    if c.get("type") == "Ready"
                ),
                "",
            )
            taints = (node.get("spec") or {}).get("taints") or []
            self.samples.append(
                Sample(
                    at,
                    name,
                    parse_time(renew) if renew else None,
                    dict((lease.get("metadata") or {}).get("annotations") or {}),
                    ready,
                    any(t.get("key") == "node.kubernetes.io/unreachable" for t in taints),
                )
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except (BenchError, subprocess.TimeoutExpired, ValueError):
                self.errors += 1
            self._stop.wait(self.interval)

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="heartbeat-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def of(self, node: str, since: float, until: float) -> list[Sample]:
        return [s for s in self.samples if s.node == node and since <= s.at <= until]


def writes_by(audit_log: Path, user: str, since: float, until: float) -> int:
    """Writes the API server completed for ``user`` between the two Unix times."""
    count = 0
    for event in read_audit_log(audit_log):
        if event.get("stage") != "ResponseComplete" or event.get("verb") not in WRITE_VERBS:
            continue
        if (event.get("user") or {}).get("username") != user:
            continue
        if since <= parse_time(event["requestReceivedTimestamp"]) <= until:
            count += 1
    return count


def wait(what: str, check: Callable[[], bool], timeout: float) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)
    return time.monotonic() - t0


def holder(kubeconfig: Path, pool: str) -> str:
    from raven.lab import deployment

    res = subprocess.run(
        [KUBECTL, "--kubeconfig", str(kubeconfig), "get", "lease", f"raven-gw-{pool}",
         "-n", deployment.lease_namespace(), "-o", "jsonpath={.spec.holderIdentity}"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    return res.stdout.strip() if res.returncode == 0 else ""


def measure(
    lab: Lab,
    settings: engine.Settings,
    *,
    cut_seconds: float,
    sample_s: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    state_dir = settings.state_dir
    kubeconfig = state_dir / "kubeconfig"
    members = sorted(n.name for n in lab.nodes if n.pool == POOL)
    wait(f"a gateway of {POOL}", lambda: bool(holder(kubeconfig, POOL)), 90)
    gw = holder(kubeconfig, POOL)
    victim, reference = [m for m in members if m != gw][:2]
    sampler = Sampler(kubeconfig, (victim, reference), sample_s)
    sampler.sample()

    def leased() -> bool:
        sampler.sample()
        return all(s.renew is not None for s in sampler.samples[-2:])

    wait("both nodes' Leases", leased, 60)
    st, _ = engine.load(settings)
    log(f"gateway {gw}; cutting {victim}; undisturbed {reference}")
    sampler.start()
    try:
        time.sleep(3 * sample_s)
        cut_at = time.time()
        faults.cut(lab, st, faults.Target(faults.NODE, victim))
        time.sleep(cut_seconds)
        healed_at = time.time()
        faults.heal(st, faults.Target(faults.NODE, victim))

        def direct_again() -> bool:
            last = [s for s in sampler.samples if s.node == victim and s.at > healed_at]
            return bool(last) and DELEGATE not in last[-1].annotations

        wait(f"{victim}'s Lease without the delegation annotations", direct_again, 60)
        back_at = next(
            s.at
            for s in sampler.samples
            if s.node == victim and s.at > healed_at and DELEGATE not in s.annotations
        )
    finally:
        sampler.stop()
    during = sampler.of(victim, cut_at, healed_at)
    if not during:
        raise BenchError("no sample of the cut node's Lease during the cut")
    renewals = sorted({s.renew for s in during if s.renew is not None and s.renew > cut_at})
    if not renewals:
        raise BenchError(f"{victim} was never renewed during the cut: its heartbeat was lost")
    ages = [s.at - s.renew for s in during if s.renew is not None]
    vias = sorted({s.annotations[VIA] for s in during if VIA in s.annotations})
    minutes = (healed_at - cut_at) / 60
    delegated = writes_by(state_dir / "audit.log", f"system:node:{victim}", cut_at, healed_at)
    undisturbed = writes_by(state_dir / "audit.log", f"system:node:{reference}", cut_at, healed_at)
    max_age = max(ages)
    return {
        "cut_seconds": round(healed_at - cut_at, 1),
        "cut_node": victim,
        "gateway": gw,
        "delegated_via": ",".join(vias) or "-",
        "first_delegated_renewal_s": round(renewals[0] - cut_at, 2),
        "max_lease_age_s": round(max_age, 2),
        "margin_to_unknown_s": round(GRACE_S - max_age, 2),
        "went_unknown": any(s.ready == "Unknown" for s in during),
        "got_unreachable_taint": any(s.unreachable for s in during),
        "back_to_direct_s": round(back_at - healed_at, 2),
        "writes_per_min_delegated": round(delegated / minutes, 2),
        "writes_per_min_undisturbed": round(undisturbed / minutes, 2),
        "writes_ratio": round(delegated / undisturbed, 2) if undisturbed else None,
        "samples": len(during),
        "sample_errors": sampler.errors,
    }


@contextmanager
def own_lab(prefix: str, state_dir: Path) -> Iterator[tuple[Lab, engine.Settings]]:
    settings = engine.Settings(state_dir=state_dir, prefix=prefix)
    try:
        result = engine.up(None, settings, agents=True, log=lambda *_: None)
    except engine.LabError as e:
        raise BenchError(f"lab up failed: {e}") from e
    try:
        yield result.lab, settings
    finally:
        engine.down(settings, log=lambda *_: None)


def run(
    *,
    cut_seconds: float = 180.0,
    sample_s: float = 0.5,
    prefix: str | None = None,
    state_dir: str | Path | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Build a lab, cut one edge-a member for ``cut_seconds``, heal it; return the figures."""
    if os.geteuid() != 0:
        raise BenchError("the heartbeat benchmark needs root (network namespaces)")
    if cut_seconds <= 0 or sample_s <= 0:
        raise BenchError("cut_seconds and sample_s must be positive seconds")

    def log(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    prefix = prefix or f"hb{os.getpid() % 100000}"
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="raven-bench-heartbeat-") as tmp:
        state = Path(state_dir) if state_dir else Path(tmp) / "lab"
        with own_lab(prefix, state) as (lab, settings):
            figures = measure(lab, settings, cut_seconds=cut_seconds, sample_s=sample_s, log=log)
    figures["seconds_total"] = round(time.monotonic() - t0, 1)
    return figures
