"""``raven bench reuse``'s arithmetic: percentiles, the uplink counters, matching writes with
arrivals, the bench's topology, and the modes it refuses while they do not exist."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from raven.lab.bench.reuse import BenchError, check_modes
from raven.lab.bench.reusefigures import (
    DOWN,
    UP,
    Reader,
    deliveries,
    parse_counters,
    percentile,
    topology,
    uplink,
)
from raven.lab.churn import Write
from raven.lab.topology import load_topology_file, parse_topology, resolve

REPO = Path(__file__).resolve().parents[2]
PROXY = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        (list(map(float, range(1, 101))), 99, 99.01),
        ([3.0, 1.0, 2.0], 50, 2.0),  # order of arrival does not matter
    ],
)
def test_percentile_interpolates_between_ranks(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_not_a_number():
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


LISTING = """Chain RU-APIBYTES (1 references)
    pkts      bytes target     prot opt in     out     source               destination
    1200   345678 RETURN     6    --  *      *       0.0.0.0/0            198.18.0.2           tcp dpt:6443 /* raven-api-up */
    2100  9876543 RETURN     6    --  *      *       198.18.0.2           0.0.0.0/0            tcp spt:6443 /* raven-api-down */
"""  # noqa: E501


def test_counters_are_read_by_their_rule_and_turned_into_bytes_per_minute():
    after = parse_counters(LISTING)
    assert after == {UP: 345678, DOWN: 9876543}
    before = {UP: 45678, DOWN: 876543}
    figures = uplink(before, after, seconds=30.0, nodes=3)
    assert figures == {
        "bytes_per_min": 18_600_000.0,  # (300,000 + 9,000,000) bytes in half a minute
        "up_bytes_per_min": 600_000.0,
        "down_bytes_per_min": 18_000_000.0,
        "bytes_per_node_per_min": 6_200_000.0,
    }


def _write(key: str, rv: str, sent: float, headless: bool = False) -> Write:
    labels = [("kubernetes.io/service-name", key.split("/")[1])]
    if headless:
        labels.append(("service.kubernetes.io/headless", ""))
    return Write("endpointslices", "MODIFIED", key, rv, sent, sent + 0.01, tuple(labels))


def test_every_write_is_matched_at_every_reader_that_selects_it():
    writes = [
        _write("churn/a", "10", 100.0),
        _write("churn/h", "11", 101.0, headless=True),  # kube-proxy does not watch it
        Write("services", "ADDED", "churn/a", "12", 102.0, 102.0),  # not a slice: not timed
        _write("churn/b", "13", 103.0),
    ]
    readers = [
        Reader("kube-proxy@n1", PROXY, {("churn/a", "10"): 100.02, ("churn/b", "13"): 103.5}),
        Reader("kube-proxy@n2", PROXY, {("churn/a", "10"): 100.04}),  # never got b
        Reader(
            "coredns@n1",
            "",
            {("churn/a", "10"): 100.03, ("churn/h", "11"): 101.01, ("churn/b", "13"): 103.1},
        ),  # fmt: skip
    ]
    got = deliveries(writes, readers)
    assert got.delays == pytest.approx([0.02, 0.04, 0.03, 0.01, 0.5, 0.1])
    assert got.to_all == pytest.approx([0.04, 0.01])  # b is not complete: not in to_all
    assert got.missing == [("kube-proxy@n2", "churn/b", "13")]
    summary = got.summary()
    assert summary["deliveries"] == 6 and summary["missing"] == 1
    assert summary["p50_ms"] == pytest.approx(35.0) and summary["max_ms"] == 500.0


def test_the_bench_topology_is_the_default_lab_at_three_and_grows_edge_pools():
    default = load_topology_file(REPO / "netns-lab" / "three-pools.yaml")
    assert parse_topology(topology({"edge-a": 3, "edge-b": 3})).nodes == default.nodes
    lab = resolve(parse_topology(topology({"edge-a": 10, "edge-b": 2})), "zz")
    by_pool = {p: sum(1 for n in lab.nodes if n.pool == p) for p in ("cloud", "edge-a", "edge-b")}
    assert by_pool == {"cloud": 3, "edge-a": 10, "edge-b": 2}
    with pytest.raises(ValueError):
        topology({"edge-c": 3})


def test_the_modes_are_named_and_checked():
    assert check_modes("direct") == ("direct",)
    assert check_modes("direct,node,pool") == ("direct", "node", "pool")
    for modes, words in (
        ("fast", "unknown mode 'fast'"),
        ("", "name at least one"),
    ):
        with pytest.raises(BenchError, match=words):
            check_modes(modes)
