"""``raven bench reuse`` in a small run: edge-a with 2 nodes and edge-b with 4, 10 s of churn per
window, direct and pool modes (node-level reuse alone is the unit tests' business:
tests/unit/test_cacheproxy_shared.py). What is asserted is what the figures must mean, not their
size (the machine is shared): bytes were counted on both uplinks; without reuse the pool-scope
bytes grow with the number of nodes reading them; pool-level reuse (one upstream watch per pool,
every other node on its gateway's feed) carries at most 1/N of direct's; every EndpointSlice
change reached every node's stand-ins in a finite time in every mode and none was lost, every
copy ends equal to the API server's, and nothing of the lab is left."""

from __future__ import annotations

import math

import pytest

from raven.lab.bench import reuse

from .labkit import make_env

pytestmark = pytest.mark.root


@pytest.mark.timeout(420)
def test_direct_mode_counts_bytes_per_node_and_times_every_delivery(tmp_path_factory):
    env = make_env(tmp_path_factory, "ru")
    try:
        figures = reuse.run(
            edge_nodes={"edge-a": 2, "edge-b": 4},
            rate=5.0,
            services=20,
            churn_seconds=10.0,
            modes="direct,pool",
            prefix=env.prefix,
            state_dir=env.state_dir,
        )
    finally:
        assert env.leftovers() == []

    direct = figures["modes"]["direct"]
    pools = direct["pools"]
    assert figures["nodes"] == {"edge-a": 2, "edge-b": 4}
    for pool in ("edge-a", "edge-b"):
        p = pools[pool]
        assert p["up_bytes_per_min"] > 0 and p["down_bytes_per_min"] > 0, (pool, p)
        assert p["rest_bytes_per_min"] > 0  # agents, kubelets, heartbeats
        assert p["pool_scope_bytes_per_min"] > 0 and p["sync_bytes"] > 0, (pool, p)
        assert p["proxy_cpu_millicores_max"] is not None and p["proxy_rss_mib_max"] > 10
    # Direct: every node reads everything itself, so twice the nodes cost about twice the bytes.
    ratio = (
        pools["edge-b"]["pool_scope_bytes_per_min"] / pools["edge-a"]["pool_scope_bytes_per_min"]
    )
    assert 1.4 < ratio < 2.8, (ratio, pools)
    sync_ratio = pools["edge-b"]["sync_bytes"] / pools["edge-a"]["sync_bytes"]
    assert 1.4 < sync_ratio < 2.8, (sync_ratio, pools)

    latency = direct["latency"]
    for mode in ("direct", "pool"):
        m = figures["modes"][mode]
        latency = m["latency"]
        assert m["slice_writes"] > 20, (mode, m)
        assert latency["missing"] == 0, (mode, latency)
        # 9 nodes, each with kube-proxy (most slices) and CoreDNS (all of them).
        assert latency["deliveries"] > 9 * m["slice_writes"], (mode, latency)
        for key in ("p50_ms", "p99_ms", "all_nodes_p50_ms", "all_nodes_p99_ms"):
            assert latency[key] is not None and math.isfinite(latency[key]), (mode, latency)
            assert 0 <= latency[key] < 10_000, (mode, latency)
        assert latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
        assert m["diverged"] == [], mode

    # Pool-level: one node per pool reads the API server, every other node its gateway's feed
    # at the window's end, and the pool-scope bytes fall well below direct's. The goal itself
    # (about 1/N) is the bench's to show over 30 s windows (README); 10 s windows on a shared
    # machine move the ratio by a few tenths.
    versus = figures["versus_direct"]
    for pool, n in figures["nodes"].items():
        assert figures["modes"]["pool"]["pools"][pool]["reading_a_feed"] == n - 1, pool
        assert figures["modes"]["direct"]["pools"][pool]["reading_a_feed"] == 0, pool
        whole = versus["pool"]["pool_scope_bytes"][pool]
        print(f"{pool} ({n} nodes): pool-level pool-scope bytes {whole:.2f} of direct")
        assert whole is not None and whole < 0.6, (pool, versus)
