"""Pod-to-pod reachability in the lab: one ping per ordered pair, all pairs at once.

Used by ``raven lab up`` (time until every pod reaches every other pod), by the tests and by
the benchmarks. Pings only go to pod addresses inside the lab's own namespaces.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from raven.lab.topology import Lab, Pod

#: ICMP payload for a 1400-byte IP packet (20 IP + 8 ICMP header bytes).
PAYLOAD_1400 = 1372


@dataclass(frozen=True)
class PingResult:
    src: str
    dst: str
    ok: bool


def ping(
    src: Pod,
    dst: Pod,
    *,
    size: int = 56,
    timeout: float = 1.0,
    dont_fragment: bool = True,
    count: int = 1,
) -> bool:
    """One ping from ``src``'s namespace to ``dst``'s address."""
    argv = [
        "ip",
        "netns",
        "exec",
        src.netns,
        "ping",
        "-n",
        "-q",
        "-c",
        str(count),
        "-W",
        str(max(1, round(timeout))),
        "-s",
        str(size),
    ]
    if dont_fragment:
        argv += ["-M", "do"]
    if count > 1:
        argv += ["-i", "0.2"]
    argv.append(str(dst.ip))
    return subprocess.run(argv, capture_output=True, timeout=timeout * count + 5).returncode == 0


def pairs(lab: Lab, *, cross_pool: bool | None = None) -> list[tuple[Pod, Pod]]:
    """Ordered pod pairs; ``cross_pool`` True/False narrows to other-pool/same-pool pairs."""
    return [
        (a, b)
        for a in lab.pods
        for b in lab.pods
        if a is not b and (cross_pool is None or (a.pool != b.pool) == cross_pool)
    ]


def matrix(
    lab: Lab, *, size: int = 56, timeout: float = 1.0, which: list[tuple[Pod, Pod]] | None = None
) -> list[PingResult]:
    """Ping every pair in ``which`` (default: all ordered pairs) in parallel."""
    todo = which if which is not None else pairs(lab)
    with ThreadPoolExecutor(max_workers=min(32, max(1, len(todo)))) as pool:
        oks = list(pool.map(lambda ab: ping(ab[0], ab[1], size=size, timeout=timeout), todo))
    return [PingResult(a.name, b.name, ok) for (a, b), ok in zip(todo, oks, strict=True)]


def wait_full_matrix(lab: Lab, *, timeout: float = 60.0, size: int = 56) -> float | None:
    """Seconds until every pod reaches every other pod, or None if not within ``timeout``.

    Pairs that answered once are not asked again, so each round only retries what failed.
    """
    start = time.monotonic()
    todo = pairs(lab)
    while time.monotonic() - start < timeout:
        results = matrix(lab, size=size, which=todo)
        todo = [(a, b) for (a, b), r in zip(todo, results, strict=True) if not r.ok]
        if not todo:
            return time.monotonic() - start
        time.sleep(0.2)
    return None
