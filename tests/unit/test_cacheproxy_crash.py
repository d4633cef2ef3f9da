"""The real ``raven-cache-proxy`` process killed (SIGKILL) while it writes its cache to disk: it
starts again on the same cache directory and, with the cloud out of reach, serves whole every
answer it had committed, and of what it had not, either the whole answer or none (503), never a
part of one."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from kubernetes import client as k8s_client

from raven.lab.testing.apiserver import ApiServerHandle, api_client, run_apiserver
from raven.lab.testing.cacheproxy import proxy_argv

PROXY = Path(sys.executable).parent / "raven-cache-proxy"
NODES = 40  # each with a 25 kB annotation: every list is about 1 MB, so a write takes a while
# pwrite64, fsync and fdatasync: how SQLite writes and syncs its files (x86-64, arm64 numbers).
DISK_WRITES = {"x86_64": {18, 74, 75}, "aarch64": {68, 82, 83}}


def start_proxy(api: ApiServerHandle, cache: Path, log: Path) -> tuple[subprocess.Popen, str]:
    offset = log.stat().st_size if log.exists() else 0
    argv = [str(PROXY), *proxy_argv(api, cache, "--flush-interval", "0.05")]
    with open(log, "ab") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=f, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if "listening on " in text:
            return proc, text.split("listening on ")[1].split()[0]
        assert proc.poll() is None, f"the proxy exited: {text}"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the proxy did not listen within 30 s")


def get(url: str, token: str, ca: Path, path: str) -> tuple[int, dict, str | None]:
    req = urllib.request.Request(url + path, headers={"User-Agent": "crash-test"})
    req.add_header("Authorization", f"Bearer {token}")
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, json.loads(r.read()), r.headers.get("X-Raven-Cache")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), None


def nodes_path(i: int) -> str:
    # A distinct selector per read: every answer is a new cache entry, so a new write.
    return "/api/v1/nodes?" + urllib.parse.urlencode({"labelSelector": f"k notin (v{i})"})


def writing(pid: int) -> bool:
    """Whether a thread of ``pid`` (stopped) is inside a disk write or sync."""
    calls = DISK_WRITES.get(os.uname().machine, set())
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            first = (task / "syscall").read_text().split()[0]
        except (OSError, IndexError):
            continue
        if first.isdigit() and int(first) in calls:
            return True
    return False


def test_killed_mid_write_restarts_with_a_consistent_cache_and_serves_it(tmp_path: Path) -> None:
    cache, log = tmp_path / "cache", tmp_path / "proxy.log"
    with run_apiserver(tmp_path / "api") as api:
        core = k8s_client.CoreV1Api(api_client(api))
        for i in range(NODES):
            meta = k8s_client.V1ObjectMeta(name=f"n{i}", annotations={"big": "x" * 25_000})
            core.create_node(k8s_client.V1Node(metadata=meta))
        proc, url = start_proxy(api, cache, log)

        def metric(name: str) -> float:
            ctx = ssl.create_default_context(cafile=str(api.ca_cert))
            with urllib.request.urlopen(url + "/metrics", timeout=10, context=ctx) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith(name + " "):
                        return float(line.split()[1])
            raise AssertionError(f"no metric {name}")

        # Phase 1: reads the proxy answered and committed (nothing left waiting for the disk).
        committed = [nodes_path(i) for i in range(5)]
        for path in committed:
            assert get(url, api.token, api.ca_cert, path)[0] == 200
        deadline = time.monotonic() + 30
        while metric("raven_cacheproxy_store_backlog_bytes") > 0:
            assert time.monotonic() < deadline, "the cache never caught up with the disk"
            time.sleep(0.02)

        # Phase 2: reads in a loop, new entries all the time; the kill lands mid-write.
        later: list[str] = []
        stop = threading.Event()

        def reader() -> None:
            i = 100
            while not stop.is_set():
                later.append(nodes_path(i))
                try:
                    get(url, api.token, api.ca_cert, later[-1])
                except OSError:
                    return  # the proxy is gone
                i += 1

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            while len(later) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            caught = False
            while not caught and time.monotonic() < deadline:
                os.kill(proc.pid, signal.SIGSTOP)
                caught = writing(proc.pid)
                if not caught:
                    os.kill(proc.pid, signal.SIGCONT)
                    time.sleep(0.001)
            assert caught, "never caught the proxy writing to disk"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        thread.join(15)
        api.stop()  # the cloud is gone while the proxy comes back

    proc, url = start_proxy(api, cache, log)
    try:
        every = sorted(f"n{i}" for i in range(NODES))
        for path in committed:  # committed before the crash: all there, whole
            status, body, source = get(url, api.token, api.ca_cert, path)
            assert (status, source) == (200, "hit"), body
            assert sorted(i["metadata"]["name"] for i in body["items"]) == every
        for path in later:  # in flight or not yet committed: whole, or not at all
            status, body, _ = get(url, api.token, api.ca_cert, path)
            if status == 200:
                assert sorted(i["metadata"]["name"] for i in body["items"]) == every
            else:
                assert status == 503 and "not cached" in body["message"], body
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
