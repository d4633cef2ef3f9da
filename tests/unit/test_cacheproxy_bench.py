"""The bench runs the real proxy subprocess end to end and reports every figure."""

import subprocess
import sys

import pytest

from raven.lab.bench.cacheproxy import BenchError, run


def test_bench_small_run_reports_figures() -> None:
    r = run(objects=50, gets=20)
    assert r["objects"] == 50
    assert 0 < r["get_p50_direct_ms"] < 100 and 0 < r["get_p50_proxy_ms"] < 100
    assert 0 < r["offline_list_ms"] < 1000 and r["offline_list_bytes"] > 50 * 100
    assert 5 < r["rss_mb"] < 500


def test_bench_rejects_bad_options() -> None:
    with pytest.raises(BenchError, match="--objects 0"):
        run(objects=0)


def test_cli_refuses_non_loopback_listen(tmp_path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "raven.cacheproxy",
            "--upstream",
            "https://127.0.0.1:1",
            "--ca-cert",
            str(tmp_path / "ca"),
            "--cache-dir",
            str(tmp_path / "c"),
            "--host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "loopback only" in out.stderr
