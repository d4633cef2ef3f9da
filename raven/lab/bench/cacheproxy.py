"""``raven bench cache-proxy``: what the cache proxy costs and what it gives, against talking to
the API server directly in the same run.

A throwaway API server (loopback, temp state dir) gets ``objects`` nodes. A real
``python -m raven.cacheproxy`` subprocess (HTTPS on loopback, temp cache dir) sits in front.
Figures:

- ``get_p50_direct_ms`` / ``get_p50_proxy_ms`` / ``get_added_p50_ms``: ``gets`` sequential GETs
  of one node over a kept-alive connection, direct and through the proxy (goal: added ≤ 1 ms).
- ``offline_list_ms``: with the API server stopped and the proxy reporting the outage, the median
  of 5 lists of all nodes served from the cache, body fully read (goal ≤ 200 ms).
- ``rss_mb``: the proxy process's resident memory after caching the list (goal ≤ 60 MB).
Everything started is stopped at the end, also on errors.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import urllib3

from raven.lab.testing.apiserver import ApiServerHandle, run_apiserver
from raven.lab.testing.cacheproxy import proxy_argv


class BenchError(Exception):
    pass


def _pool(url: str, api: ApiServerHandle) -> urllib3.HTTPSConnectionPool:
    host, port = url.removeprefix("https://").split(":")
    ctx = ssl.create_default_context(cafile=str(api.ca_cert))
    return urllib3.HTTPSConnectionPool(host, int(port), ssl_context=ctx, maxsize=1)


def _get(pool: urllib3.HTTPSConnectionPool, path: str, token: str) -> tuple[int, bytes, float]:
    t = time.perf_counter()
    r = pool.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    return r.status, r.data, (time.perf_counter() - t) * 1000


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def _populate(api: ApiServerHandle, pool: urllib3.HTTPSConnectionPool, objects: int) -> None:
    for i in range(objects):
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": f"n{i}", "labels": {"pool": f"p{i % 10}"}},
        }
        r = pool.request(
            "POST",
            "/api/v1/nodes",
            body=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {api.token}", "Content-Type": "application/json"},
        )
        if r.status != 201:
            raise BenchError(f"creating node n{i}: HTTP {r.status} {r.data[:200]!r}")


def run(objects: int = 5000, gets: int = 300) -> dict[str, Any]:
    if not 1 <= objects <= 100_000:
        raise BenchError(f"--objects {objects}: expected 1..100000")
    if not 10 <= gets <= 100_000:
        raise BenchError(f"--gets {gets}: expected 10..100000")
    with tempfile.TemporaryDirectory(prefix="raven-bench-cp-") as tmp:
        with run_apiserver(Path(tmp) / "api") as api:
            direct = _pool(api.url, api)
            _populate(api, direct, objects)
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "raven.cacheproxy",
                    *proxy_argv(api, Path(tmp) / "cache", "--healthy-after", "2"),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if "listening on" not in line:
                    raise BenchError(f"the proxy did not start: {line!r}")
                proxy = _pool(line.split()[-1], api)
                return _measure(api, direct, proxy, proc.pid, objects, gets)
            finally:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()


def _measure(
    api: ApiServerHandle,
    direct: urllib3.HTTPSConnectionPool,
    proxy: urllib3.HTTPSConnectionPool,
    pid: int,
    objects: int,
    gets: int,
) -> dict[str, Any]:
    path = "/api/v1/nodes/n0"
    for pool in (direct, proxy):  # warm connections and caches
        for _ in range(10):
            _get(pool, path, api.token)
    d_times: list[float] = []
    p_times: list[float] = []
    for _ in range(gets):  # interleaved, so drift hits both sides alike
        d_times.append(_get(direct, path, api.token)[2])
        p_times.append(_get(proxy, path, api.token)[2])
    status, body, _ = _get(proxy, "/api/v1/nodes", api.token)
    if status != 200 or len(json.loads(body)["items"]) != objects:
        raise BenchError(f"list through the proxy: HTTP {status}")
    api.stop()
    deadline = time.monotonic() + 10
    while _get(proxy, "/readyz", api.token)[0] == 200:
        if time.monotonic() > deadline:
            raise BenchError("the proxy did not notice the API server was stopped")
        time.sleep(0.05)
    lists: list[float] = []
    for _ in range(5):
        status, body, ms = _get(proxy, "/api/v1/nodes", api.token)
        if status != 200 or len(json.loads(body)["items"]) != objects:
            raise BenchError(f"offline list: HTTP {status}, expected {objects} items")
        lists.append(ms)
    d50, p50 = statistics.median(d_times), statistics.median(p_times)
    return {
        "objects": objects,
        "gets": gets,
        "get_p50_direct_ms": d50,
        "get_p50_proxy_ms": p50,
        "get_added_p50_ms": p50 - d50,
        "get_added_goal_ms": 1.0,
        "offline_list_ms": statistics.median(lists),
        "offline_list_goal_ms": 200.0,
        "offline_list_bytes": len(body),
        "rss_mb": _rss_mb(pid),
        "rss_goal_mb": 60.0,
    }
