"""``raven bench resources`` through the real CLI, with short windows: it measures both of the
pod's containers on every node in each window, the pool fails over to another node, and nothing
of its lab is left. The figures themselves are printed, not asserted (a shared, noisy machine)."""

from __future__ import annotations

import json
import subprocess

import pytest

from .labkit import RAVEN, make_env

pytestmark = pytest.mark.root


@pytest.mark.timeout(150)
def test_resources_bench_measures_both_containers_in_every_window(tmp_path_factory):
    env = make_env(tmp_path_factory, "rs")
    try:
        res = subprocess.run(
            [str(RAVEN), "bench", "resources", "-o", "json", "--prefix", env.prefix,
             "--state-dir", str(env.state_dir), "--idle", "3", "--failover", "4",
             "--restart", "4", "--no-image"],
            capture_output=True, text=True, timeout=140,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:] + res.stdout[-1000:]
        figures = json.loads(res.stdout)
    finally:
        if env.leftovers():
            subprocess.run([str(RAVEN), "lab", "down"], env=env.env, capture_output=True,
                           timeout=60)  # fmt: skip
    assert env.leftovers() == []
    print(json.dumps(figures, indent=1, sort_keys=True))
    old, new = figures["failover_old_gateway"], figures["failover_new_gateway"]
    assert old.startswith("edge-a-") and new.startswith("edge-a-") and new != old
    for window in ("idle", "failover", "restart"):
        for kind in ("agent", "cache_proxy"):
            got = {k.removeprefix(f"{window}_{kind}_"): v for k, v in figures.items()
                   if k.startswith(f"{window}_{kind}_")}  # fmt: skip
            # Every process of the lab was found and read: a python process holds tens of MiB.
            assert 10 < got["rss_median_mib"] <= got["rss_max_mib"], (window, kind, got)
            assert got["rss_max_mib"] <= got["hwm_max_mib"] + 1, (window, kind, got)
            assert got["cpu_max_m"] >= got["cpu_median_m"] >= 0, (window, kind, got)
    # The restarted agent's start-up (imports, first sync) shows in its window.
    assert figures["restart_agent_cpu_max_m"] > figures["idle_agent_cpu_median_m"]
    assert "image_mb" not in figures
