"""The bench runs the real proxy subprocess end to end and reports every figure."""

import subprocess
import sys

import pytest

from raven.lab.bench.cacheproxy import BenchError, run


def test_bench_small_run_reports_figures() -> None:
    r = run(objects=50, gets=20, churn_rate=20, churn_seconds=1)
    assert r["objects"] == 50
    assert 0 < r["get_p50_direct_ms"] < 100 and 0 < r["get_p50_proxy_ms"] < 100
    assert 0 < r["offline_list_ms"] < 1000 and r["offline_list_bytes"] > 50 * 1500
    assert 5 < r["rss_mb"] < 500
    # Under churn: every figure measured, both ways; every event seen by both watchers.
    assert r["churn_events_sent"] >= 10 and r["churn_events_missed"] == 0
    for name in ("get", "healthz", "event_delay"):
        for q in (50, 99):
            assert r[f"churn_{name}_p{q}_direct_ms"] > 0 and r[f"churn_{name}_p{q}_proxy_ms"] > 0
    assert 0 <= r["churn_proxy_cpu_pct"] < 200


def test_bench_rejects_bad_options() -> None:
    with pytest.raises(BenchError, match="--objects 0"):
        run(objects=0)
    with pytest.raises(BenchError, match="--churn-rate 0"):
        run(churn_rate=0)


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


@pytest.mark.parametrize(
    "option,message",
    [
        (("--flush-interval", "-1"), "flush interval must be 0..60 s, got -1.0"),
        (("--entry-ttl", "0"), "entry TTL must be positive, got 0.0"),
        (("--max-entries", "0"), "max entries must be at least 1, got 0"),
    ],
)
def test_cli_refuses_bad_cache_settings_by_name(tmp_path, option, message) -> None:
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
            *option,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (tmp_path / "c").exists()  # nothing else changed
