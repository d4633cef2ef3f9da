"""``raven bench crosspool`` through the real CLI: a fresh lab with agents, iperf3 through Raven
and through a hand-built WireGuard chain, every figure present and consistent, nothing left.

Never asserts a speed goal (the machine is shared and noisy), only that the figures are sane.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .labkit import RAVEN, LabEnv, make_env

pytestmark = pytest.mark.root


def bench(env: LabEnv, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAVEN), "bench", "crosspool", "--prefix", env.prefix, "--state-dir",
         str(env.state_dir), *args],
        capture_output=True, text=True, timeout=timeout,
    )


def chain_leftovers(env: LabEnv) -> list[str]:
    """Namespaces, sockets and processes of the bench's hand-built chain (``<prefix>h``)."""
    chain = f"{env.prefix}h"
    left = [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(chain + "-")]
    wg = Path("/var/run/wireguard")
    if wg.is_dir():
        left += [f"socket {s.name}" for s in wg.glob(f"{chain}w*.sock")]
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    left += [line.strip() for line in ps.splitlines() if f"wireguard-go -f {chain}w" in line]
    return left


def test_crosspool_bench_prints_consistent_figures_and_leaves_nothing(tmp_path_factory):
    env = make_env(tmp_path_factory, "bc")
    started = time.monotonic()
    res = bench(env, "--duration", "2", "--rounds", "1", "-o", "json")
    took = time.monotonic() - started
    assert res.returncode == 0, res.stderr[-2000:]
    fig = json.loads(res.stdout)

    assert fig["pairs"] == 72  # 9 pods, every ordered pair
    # The lab cannot be faster than the 2 s it takes to elect and handshake, nor slower than
    # the whole command.
    assert 1.0 < fig["up_to_full_matrix_s"] < took
    assert fig["raven_mbit_s"] > 0 and fig["handbuilt_mbit_s"] > 0
    assert fig["ratio"] == pytest.approx(fig["raven_mbit_s"] / fig["handbuilt_mbit_s"], rel=0.01)
    # Retransmits and the machine's load say how far to trust the figures: they must be there.
    assert {"raven_retransmits", "handbuilt_retransmits", "load_1m"} <= fig.keys(), fig
    assert fig["duration_s"] == 2 and fig["rounds"] == 1
    # What the quiet lab's processes cost, per role, summed over the nodes (% of one core).
    for role in ("agent", "cache_proxy", "apiserver"):
        assert 0 <= fig[f"idle_cpu_{role}_percent"] < 200, (role, fig)
    # The flow went member -> edge-a gateway -> relay -> edge-b gateway -> member (the bench
    # also checks the edge-a gateway's tunnel carried at least the flow's bytes).
    hops = fig["raven_path"].split(" > ")
    assert len(hops) == 5 and len(set(hops)) == 5, hops
    assert hops[0].startswith("edge-a-") and hops[1].startswith("edge-a-")
    assert hops[2].startswith("cloud-")
    assert hops[3].startswith("edge-b-") and hops[4].startswith("edge-b-")

    assert env.leftovers() == []
    assert chain_leftovers(env) == []


def test_crosspool_bench_refuses_a_bad_duration_without_building_anything(tmp_path_factory):
    env = make_env(tmp_path_factory, "bd")
    res = bench(env, "--duration", "0", timeout=30)
    assert res.returncode == 1
    assert "duration" in res.stderr and "0.5..600" in res.stderr
    assert env.leftovers() == [] and chain_leftovers(env) == []


def test_crosspool_bench_refuses_a_prefix_in_use_and_leaves_that_lab_alone(tmp_path_factory):
    env = make_env(tmp_path_factory, "bu")
    # Something of "another lab" under the bench's prefix: the bench must not touch it.
    squatter = f"{env.prefix}-inet"
    subprocess.run(["ip", "netns", "add", squatter], check=True)
    try:
        res = bench(env, "--duration", "1", timeout=30)
        assert res.returncode == 1
        assert "in use" in res.stderr and squatter in res.stderr
        assert squatter in os.listdir("/run/netns")
    finally:
        subprocess.run(["ip", "netns", "del", squatter], check=True)
    assert env.leftovers() == [] and chain_leftovers(env) == []


def test_sigterm_mid_run_tears_down_the_lab_and_the_chain(tmp_path_factory):
    env = make_env(tmp_path_factory, "bt")
    proc = subprocess.Popen(
        [str(RAVEN), "bench", "crosspool", "--prefix", env.prefix, "--state-dir",
         str(env.state_dir), "--duration", "30", "--rounds", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Wait until the hand-built chain exists: by then the lab is up too.
        deadline = time.monotonic() + 120
        while not any(n.startswith(f"{env.prefix}h-") for n in os.listdir("/run/netns")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the bench never built its chain"
            time.sleep(0.2)
        assert env.netns(), "the bench's lab is up while the chain is built"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert env.leftovers() == []
    assert chain_leftovers(env) == []
