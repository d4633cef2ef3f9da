"""The arithmetic of ``raven bench reuse`` (pure): its topology, uplink counters, delivery
latencies and the figures they make.

- :func:`topology` writes the lab for a number of nodes per edge pool (the default lab at 3);
- :func:`parse_counters` reads the bytes of the two rules the bench puts on a NAT router (to
  and from the API server) out of ``iptables -nvxL``;
- :func:`deliveries` matches every EndpointSlice write of the churn with its arrival at every
  stand-in whose selector takes it: the delay of each delivery, the delay until the last node
  had it, and what never arrived;
- :func:`percentile` interpolates linearly between ranks (numpy's default).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raven.lab.churn import Write
from raven.selectors import parse_label_selector

# The Internet, LANs and pod CIDRs of netns-lab/three-pools.yaml.
EDGE_POOLS = (("edge-a", "192.168.10.0/24"), ("edge-b", "192.168.20.0/24"))
CLOUD_NODES = 3
UP, DOWN = "raven-api-up", "raven-api-down"  # comments of the two counting rules


def topology(edge_nodes: Mapping[str, int], *, cloud_nodes: int = CLOUD_NODES) -> dict[str, Any]:
    """The default lab's shape with ``edge_nodes[pool]`` nodes in each edge pool (the relay pool
    ``cloud`` keeps ``cloud_nodes``: its nodes have no NAT uplink to count). At 3, 3 and 3 it
    is ``netns-lab/three-pools.yaml``."""
    unknown = set(edge_nodes) - {p for p, _ in EDGE_POOLS}
    if unknown:
        raise ValueError(f"no such edge pool: {', '.join(sorted(unknown))}")
    counts = {"cloud": cloud_nodes, **{p: edge_nodes.get(p, 3) for p, _ in EDGE_POOLS}}
    if not all(1 <= c <= 49 for c in counts.values()):
        raise ValueError("a pool holds 1 to 49 nodes here")
    width = 10 if max(counts.values()) <= 9 else 50  # pod CIDRs 10.244.<pool*width + i>.0/24
    pools: list[dict[str, Any]] = [{"name": "cloud", "public": True, "relay": True}]
    pools += [{"name": p, "lan": lan} for p, lan in EDGE_POOLS]
    nodes = [
        {"name": f"{pool}-{i}", "pool": pool, "podCIDR": f"10.244.{k * width + i}.0/24"}
        for k, pool in enumerate(counts)
        for i in range(1, counts[pool] + 1)
    ]
    return {
        "name": "reuse-bench",
        "internet": "198.18.0.0/24",
        "apiserver": {"port": 6443},
        "pools": pools,
        "nodes": nodes,
    }


def parse_counters(listing: str) -> dict[str, int]:
    """Bytes counted by each commented rule of ``iptables -nvxL CHAIN`` output."""
    out: dict[str, int] = {}
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[0].isdigit() or "/*" not in line:
            continue
        comment = line.split("/*", 1)[1].split("*/", 1)[0].strip()
        out[comment] = int(parts[1])
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN without values."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError("a percentile lies between 0 and 100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Reader:
    """One stand-in's view: who it is, what it selects, and when each version reached it."""

    name: str  # component@node
    selector: str
    arrivals: Mapping[tuple[str, str], float]  # (key, rv) -> Unix time


@dataclass
class Deliveries:
    delays: list[float] = field(default_factory=list)  # seconds, one per (write, reader)
    to_all: list[float] = field(default_factory=list)  # seconds, one per write: the last reader
    missing: list[tuple[str, str, str]] = field(default_factory=list)  # (reader, key, rv)

    def summary(self) -> dict[str, Any]:
        ms = [d * 1000 for d in self.delays]
        all_ms = [d * 1000 for d in self.to_all]
        return {
            "deliveries": len(ms),
            "missing": len(self.missing),
            "p50_ms": _round(percentile(ms, 50)),
            "p99_ms": _round(percentile(ms, 99)),
            "max_ms": _round(max(ms) if ms else math.nan),
            "all_nodes_p50_ms": _round(percentile(all_ms, 50)),
            "all_nodes_p99_ms": _round(percentile(all_ms, 99)),
        }


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 1)


def deliveries(writes: Iterable[Write], readers: Sequence[Reader]) -> Deliveries:
    """Match EndpointSlice writes with their arrivals at every reader that selects them."""
    out = Deliveries()
    selectors = {r.name: parse_label_selector(r.selector) for r in readers}
    for w in writes:
        if w.resource != "endpointslices":
            continue
        labels = dict(w.labels)
        last: float | None = None
        complete = True
        for reader in readers:
            if not selectors[reader.name].matches(labels):
                continue
            at = reader.arrivals.get((w.key, w.rv))
            if at is None:
                out.missing.append((reader.name, w.key, w.rv))
                complete = False
                continue
            delay = max(0.0, at - w.sent)
            out.delays.append(delay)
            last = delay if last is None else max(last, delay)
        if complete and last is not None:
            out.to_all.append(last)
    return out


def per_minute(count: float, seconds: float) -> float:
    return round(count * 60 / seconds, 1) if seconds > 0 else math.nan


def uplink(
    before: Mapping[str, int], after: Mapping[str, int], seconds: float, nodes: int
) -> dict[str, float]:
    """Bytes per minute through one NAT uplink between two readings of its counters."""
    up = after.get(UP, 0) - before.get(UP, 0)
    down = after.get(DOWN, 0) - before.get(DOWN, 0)
    return {
        "bytes_per_min": per_minute(up + down, seconds),
        "up_bytes_per_min": per_minute(up, seconds),
        "down_bytes_per_min": per_minute(down, seconds),
        "bytes_per_node_per_min": per_minute((up + down) / max(nodes, 1), seconds),
    }
