"""``raven bench cache-proxy``: what the cache proxy costs and what it gives, against talking to
the API server directly in the same run, on a quiet cache and under churn.

A throwaway API server (its own process, loopback, temp state dir) gets ``objects`` Nodes shaped
like a kubelet's (labels, addresses, conditions, capacity, nodeInfo: about 1.8 kB each, so 5,000
make a 9 MB list). A real ``python -m raven.cacheproxy`` process (HTTPS on loopback, temp cache
dir) sits in front. Figures, each beside the same measurement made directly:

Quiet (nothing changes):

- ``get_p50_direct_ms`` / ``get_p50_proxy_ms`` / ``get_added_p50_ms``: ``gets`` sequential GETs
  of one node over a kept-alive connection, direct and through the proxy (goal: added ≤ 1 ms).

Churn (``churn_rate`` Node writes a second for ``churn_seconds``, the whole node list cached in
the proxy and a watch through the proxy folding every event into it; a second watch direct):

- ``churn_get_*``: GETs of one node, direct and through the proxy, paced at 25 a second each
  (goals: added p50 ≤ 1 ms, added p99 ≤ 5 ms; "added" is proxy minus direct, per percentile).
- ``churn_healthz_*``: ``/healthz`` of the API server and of the proxy, paced alike.
- ``churn_event_delay_*``: from the write (its time is in the object) to the event's arrival at
  the watcher, direct and through the proxy (goal: p99 through the proxy ≤ 50 ms). Events that
  had not arrived 5 s after the churn ended count in ``churn_events_missed`` (goal 0).
- ``churn_proxy_cpu_pct``: the proxy process's CPU over the churn, % of one core (goal ≤ 20 %).

Offline and memory:

- ``offline_list_ms``: with the API server stopped and the proxy reporting the outage, the median
  of 5 lists of all nodes served from the cache, body fully read (goal ≤ 200 ms).
- ``rss_mb``: the proxy process's resident memory at the end (goal ≤ 60 MB).

Everything started is stopped at the end, also on errors.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

from raven.lab.apiserver.pki import Pki, make_pki
from raven.lab.testing.cacheproxy import proxy_argv_for

SENT = "bench.raven.io/sent"  # annotation holding the monotonic time a churn write was sent
UA = "raven-bench"
PROBE_INTERVAL = 0.04  # s between churn probes of each kind (25 a second)
STRAGGLER_WAIT = 5.0  # s to wait after the churn for events still on their way
PROBE_TIMEOUT = 10.0  # s a churn probe may take before it counts as failed


class BenchError(Exception):
    pass


@dataclass
class Api:
    """The API server process and how to reach it."""

    proc: subprocess.Popen[str]
    url: str
    pki: Pki

    @property
    def token(self) -> str:
        return self.pki.token


def _ctx(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def _pool(url: str, ca: Path) -> urllib3.HTTPSConnectionPool:
    host, port = url.removeprefix("https://").split(":")
    return urllib3.HTTPSConnectionPool(
        host, int(port), ssl_context=_ctx(ca), maxsize=1, timeout=urllib3.Timeout(30)
    )


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "User-Agent": UA, "Accept": "application/json"}


def _get(pool: urllib3.HTTPSConnectionPool, path: str, token: str) -> tuple[int, bytes, float]:
    t = time.perf_counter()
    r = pool.request("GET", path, headers=_headers(token))
    return r.status, r.data, (time.perf_counter() - t) * 1000


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def node(i: int) -> dict[str, Any]:
    """A Node as a kubelet reports it (about 1.8 kB of JSON)."""
    name = f"n{i}"
    ip = f"10.{(i >> 8) & 255}.{i & 255}.10"
    stamp = "2025-01-01T00:00:00Z"
    resources = {
        "cpu": "4",
        "ephemeral-storage": "61255492Ki",
        "hugepages-2Mi": "0",
        "memory": "8049136Ki",
        "pods": "110",
    }
    conditions = [
        {
            "type": kind,
            "status": "True" if kind == "Ready" else "False",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
            "reason": reason,
            "message": message,
        }
        for kind, reason, message in (
            ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
            ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ("Ready", "KubeletReady", "kubelet is posting ready status"),
        )
    ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "edge-small",
                "topology.kubernetes.io/zone": f"zone-{i % 3}",
                "apps.openyurt.io/nodepool": f"pool-{i % 10}",
                "pool": f"p{i % 10}",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {"podCIDR": f"10.{128 + (i >> 8) % 128}.{i & 255}.0/24"},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": f"{i:032x}",
                "systemUUID": f"{i:08x}-0000-4000-8000-000000000000",
                "bootID": f"{i:08x}-1111-4000-8000-000000000000",
                "kernelVersion": "6.1.0-18-amd64",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.13",
                "kubeletVersion": "v1.29.2",
                "kubeProxyVersion": "v1.29.2",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


@contextmanager
def run_api(tmp: Path) -> Iterator[Api]:
    """The lab API server as a process of its own, so its work does not share the bench's GIL."""
    pki = make_pki(tmp / "pki", ["127.0.0.1"])
    argv = [
        sys.executable, "-m", "raven.lab.apiserver",
        "--state-dir", str(tmp / "state"),
        "--listen", "127.0.0.1:0",
        "--cert", str(pki.server_cert),
        "--key", str(pki.server_key),
        "--token-file", str(pki.token_file),
        "--log-level", "info",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        url = ""
        deadline = time.monotonic() + 30
        while not url and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            if "listening on " in line:
                url = line.split("listening on ")[1].split()[0]
        if not url:
            raise BenchError("the API server did not start")
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
        yield Api(proc, url, pki)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _populate(api: Api, pool: urllib3.HTTPSConnectionPool, objects: int) -> None:
    headers = {**_headers(api.token), "Content-Type": "application/json"}
    for i in range(objects):
        r = pool.request(
            "POST", "/api/v1/nodes", body=json.dumps(node(i)).encode(), headers=headers
        )
        if r.status != 201:
            raise BenchError(f"creating node n{i}: HTTP {r.status} {r.data[:200]!r}")


def run(
    objects: int = 5000, gets: int = 300, churn_rate: float = 20.0, churn_seconds: float = 20.0
) -> dict[str, Any]:
    if not 1 <= objects <= 100_000:
        raise BenchError(f"--objects {objects}: expected 1..100000")
    if not 10 <= gets <= 100_000:
        raise BenchError(f"--gets {gets}: expected 10..100000")
    if not 0 < churn_rate <= 1000:
        raise BenchError(f"--churn-rate {churn_rate}: expected more than 0 and at most 1000")
    if not 1 <= churn_seconds <= 3600:
        raise BenchError(f"--churn-seconds {churn_seconds}: expected 1..3600")
    with tempfile.TemporaryDirectory(prefix="raven-bench-cp-") as tmp, run_api(Path(tmp)) as api:
        direct = _pool(api.url, api.pki.ca_cert)
        _populate(api, direct, objects)
        argv = proxy_argv_for(api.url, api.pki, Path(tmp) / "cache", "--healthy-after", "2")
        proc = subprocess.Popen(
            [sys.executable, "-m", "raven.cacheproxy", *argv], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "listening on" not in line:
                raise BenchError(f"the proxy did not start: {line!r}")
            proxy_url = line.split()[-1]
            proxy = _pool(proxy_url, api.pki.ca_cert)
            figures: dict[str, Any] = {"objects": objects, "gets": gets}
            figures |= _quiet(api, direct, proxy, gets)
            figures |= _churn(api, direct, proxy, proxy_url, proc.pid, churn_rate, churn_seconds)
            figures |= _offline(api, proxy, objects)
            figures |= {"rss_mb": _rss_mb(proc.pid), "rss_goal_mb": 60.0}
            return figures
        finally:
            _stop(proc)  # type: ignore[arg-type]


def _quiet(
    api: Api, direct: urllib3.HTTPSConnectionPool, proxy: urllib3.HTTPSConnectionPool, gets: int
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
    d50, p50 = statistics.median(d_times), statistics.median(p_times)
    return {
        "get_p50_direct_ms": d50,
        "get_p50_proxy_ms": p50,
        "get_added_p50_ms": p50 - d50,
        "get_added_goal_ms": 1.0,
    }


@dataclass
class Watcher:
    """A watch of all nodes from a list's resourceVersion, timing every churn event."""

    url: str
    ca: Path
    token: str
    rv: str
    delays: list[float] = field(default_factory=list)
    error: str | None = None
    _conn: http.client.HTTPSConnection | None = None
    _stopping: bool = False

    def start(self) -> threading.Thread:
        host, port = self.url.removeprefix("https://").split(":")
        self._conn = http.client.HTTPSConnection(host, int(port), context=_ctx(self.ca))
        path = f"/api/v1/nodes?watch=true&resourceVersion={self.rv}&timeoutSeconds=3600"
        self._conn.request("GET", path, headers=_headers(self.token))
        resp = self._conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"watch through {self.url}: HTTP {resp.status}")
        thread = threading.Thread(target=self._read, args=(resp,), daemon=True)
        thread.start()
        return thread

    def _read(self, resp: http.client.HTTPResponse) -> None:
        try:
            for line in resp:
                now = time.monotonic()
                event = json.loads(line)
                annotations = event["object"].get("metadata", {}).get("annotations") or {}
                if event["type"] == "MODIFIED" and SENT in annotations:
                    self.delays.append((now - float(annotations[SENT])) * 1000)
        except Exception as e:  # noqa: BLE001 -- whatever ends the stream, unless we did
            if not self._stopping:
                self.error = f"{type(e).__name__}: {e}"

    def stop(self) -> None:
        self._stopping = True
        conn, self._conn = self._conn, None
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


def _churn(
    api: Api,
    direct: urllib3.HTTPSConnectionPool,
    proxy: urllib3.HTTPSConnectionPool,
    proxy_url: str,
    pid: int,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    status, body, list_ms = _get(proxy, "/api/v1/nodes", api.token)  # cached by the proxy
    if status != 200:
        raise BenchError(f"list through the proxy: HTTP {status}")
    rv = json.loads(body)["metadata"]["resourceVersion"]
    watchers = [Watcher(u, api.pki.ca_cert, api.token, rv) for u in (api.url, proxy_url)]
    threads = [w.start() for w in watchers]
    count = len(json.loads(body)["items"])
    stop = threading.Event()
    sent: list[float] = []
    writer_errors: list[str] = []

    def writer() -> None:
        pool = _pool(api.url, api.pki.ca_cert)
        headers = {**_headers(api.token), "Content-Type": "application/merge-patch+json"}
        start = time.monotonic()
        i = 0
        while not stop.is_set():
            wait = start + i / rate - time.monotonic()
            if wait > 0 and stop.wait(wait):
                return
            now = time.monotonic()
            patch = {"metadata": {"annotations": {SENT: repr(now)}}}
            try:
                r = pool.request(
                    "PATCH",
                    f"/api/v1/nodes/n{i % count}",
                    body=json.dumps(patch).encode(),
                    headers=headers,
                )
            except urllib3.exceptions.HTTPError as e:
                writer_errors.append(f"{type(e).__name__}: {e}")
                return
            if r.status != 200:
                writer_errors.append(f"HTTP {r.status}")
                return
            sent.append(now)
            i += 1

    probes: dict[str, list[float]] = {"get_d": [], "get_p": [], "hz_d": [], "hz_p": []}
    failed: list[str] = []

    def probe(name: str, pool: urllib3.HTTPSConnectionPool, path: str) -> None:
        t = time.perf_counter()
        try:
            r = pool.request(
                "GET", path, headers=_headers(api.token), timeout=PROBE_TIMEOUT, retries=False
            )
            if r.status != 200:
                failed.append(f"{name}: HTTP {r.status}")
        except urllib3.exceptions.HTTPError as e:
            failed.append(f"{name}: {type(e).__name__}")
        # A probe that failed counts with the time it took (up to its timeout): it was that late.
        probes[name].append((time.perf_counter() - t) * 1000)

    cpu0, t0 = _cpu_seconds(pid), time.monotonic()
    churn = threading.Thread(target=writer, daemon=True)
    churn.start()
    end = t0 + seconds
    next_probe = t0
    while time.monotonic() < end:  # interleaved, paced probes
        probe("get_d", direct, "/api/v1/nodes/n0")
        probe("get_p", proxy, "/api/v1/nodes/n0")
        probe("hz_d", direct, "/healthz")
        probe("hz_p", proxy, "/healthz")
        next_probe += PROBE_INTERVAL
        time.sleep(max(0.0, next_probe - time.monotonic()))
    stop.set()
    churn.join(30)
    cpu = (_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
    deadline = time.monotonic() + STRAGGLER_WAIT
    while time.monotonic() < deadline and any(len(w.delays) < len(sent) for w in watchers):
        time.sleep(0.05)
    for w in watchers:
        w.stop()
    for t in threads:
        t.join(5)
    if writer_errors:
        raise BenchError(f"churn writes failed: {writer_errors[0]}")
    d, p = (w.delays for w in watchers)
    out: dict[str, Any] = {
        "churn_list_proxy_ms": list_ms,
        "churn_events_per_s": len(sent) / seconds,
        "churn_events_sent": len(sent),
        "churn_events_missed": max(0, len(sent) - len(p)),
        "churn_events_missed_direct": max(0, len(sent) - len(d)),
        "churn_probes_failed": len(failed),
    }
    for name, direct_ms, proxy_ms in (
        ("get", probes["get_d"], probes["get_p"]),
        ("healthz", probes["hz_d"], probes["hz_p"]),
        ("event_delay", d, p),
    ):
        for q in (50, 99):
            dq, pq = _pct(direct_ms, q), _pct(proxy_ms, q)
            out[f"churn_{name}_p{q}_direct_ms"] = dq
            out[f"churn_{name}_p{q}_proxy_ms"] = pq
            out[f"churn_{name}_added_p{q}_ms"] = pq - dq
    out |= {
        "churn_get_added_p50_goal_ms": 1.0,
        "churn_get_added_p99_goal_ms": 5.0,
        "churn_event_delay_p99_goal_ms": 50.0,
        "churn_proxy_cpu_pct": cpu,
        "churn_proxy_cpu_goal_pct": 20.0,
    }
    errors = [w.error for w in watchers if w.error] + failed[:3]
    if errors:
        out["churn_errors"] = "; ".join(errors)
    return out


def _offline(api: Api, proxy: urllib3.HTTPSConnectionPool, objects: int) -> dict[str, Any]:
    _stop(api.proc)
    deadline = time.monotonic() + 10
    while _get(proxy, "/readyz", api.token)[0] == 200:
        if time.monotonic() > deadline:
            raise BenchError("the proxy did not notice the API server was stopped")
        time.sleep(0.05)
    lists: list[float] = []
    body = b""
    for _ in range(5):
        status, body, ms = _get(proxy, "/api/v1/nodes", api.token)
        if status != 200 or len(json.loads(body)["items"]) != objects:
            raise BenchError(f"offline list: HTTP {status}, expected {objects} items")
        lists.append(ms)
    return {
        "offline_list_ms": statistics.median(lists),
        "offline_list_goal_ms": 200.0,
        "offline_list_bytes": len(body),
    }
