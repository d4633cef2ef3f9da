"""The real ``raven-cache-proxy`` process killed (SIGKILL) in the middle of writing its cache: it
starts again on the same cache directory, drops the torn write and serves every entry it kept,
whole, while the cloud is out of reach."""

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

from raven.cacheproxy.cache import TMP_SUFFIX, Cache
from raven.lab.testing.apiserver import ApiServerHandle, api_client, run_apiserver
from raven.lab.testing.cacheproxy import proxy_argv

PROXY = Path(sys.executable).parent / "raven-cache-proxy"
NODES = 40  # each with a 25 kB annotation: every list is about 1 MB, so a write takes a while


def start_proxy(api: ApiServerHandle, cache: Path, log: Path) -> tuple[subprocess.Popen, str]:
    offset = log.stat().st_size if log.exists() else 0
    argv = [str(PROXY), *proxy_argv(api, cache)]
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


def get(url: str, token: str, ca: Path, selector: str) -> tuple[int, dict, str | None]:
    q = urllib.parse.urlencode({"labelSelector": selector})
    req = urllib.request.Request(f"{url}/api/v1/nodes?{q}")
    req.add_header("Authorization", f"Bearer {token}")
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, json.loads(r.read()), r.headers.get("X-Raven-Cache")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), None


def test_killed_mid_write_restarts_with_a_consistent_cache_and_serves_it(tmp_path: Path) -> None:
    cache, log = tmp_path / "cache", tmp_path / "proxy.log"
    with run_apiserver(tmp_path / "api") as api:
        core = k8s_client.CoreV1Api(api_client(api))
        for i in range(NODES):
            meta = k8s_client.V1ObjectMeta(name=f"n{i}", annotations={"big": "x" * 25_000})
            core.create_node(k8s_client.V1Node(metadata=meta))
        proc, url = start_proxy(api, cache, log)
        asked: list[str] = []  # reads the proxy answered (and so had cached) before the crash
        current: list[str] = []  # the read in flight
        stop = threading.Event()

        def reader() -> None:
            # A distinct selector per read: every answer is a new cache entry, so a new write.
            i = 0
            while not stop.is_set():
                selector = f"k notin (v{i})"  # matches every node
                current[:] = [selector]
                try:
                    if get(url, api.token, api.ca_cert, selector)[0] == 200:
                        asked.append(selector)
                except OSError:
                    return  # the proxy is gone
                i += 1

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while len(asked) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            # Freeze the proxy while a temp file exists, so the kill lands mid-write for sure.
            torn: list[str] = []
            while not torn and time.monotonic() < deadline:
                if any(p.name.endswith(TMP_SUFFIX) for p in cache.glob("*")):
                    os.kill(proc.pid, signal.SIGSTOP)
                    torn = [p.name for p in cache.glob("*") if p.name.endswith(TMP_SUFFIX)]
                    if not torn:
                        os.kill(proc.pid, signal.SIGCONT)  # the rename won the race: again
            assert torn, "never caught the proxy writing"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        thread.join(15)
        assert len(asked) >= 3
        assert [p.name for p in cache.glob("*") if p.name.endswith(TMP_SUFFIX)] == torn
        api.stop()  # the cloud is gone while the proxy comes back

    proc, url = start_proxy(api, cache, log)
    try:
        files = sorted(cache.iterdir())
        assert not [p for p in files if p.name.endswith(TMP_SUFFIX)]  # the torn write is gone
        assert files and all(Cache._read(p) is not None for p in files)  # the rest is whole
        # Offline, every read the proxy answered before the crash comes back whole from disk.
        for selector in asked:
            status, body, source = get(url, api.token, api.ca_cert, selector)
            assert (status, source) == (200, "hit"), body
            assert sorted(i["metadata"]["name"] for i in body["items"]) == sorted(
                f"n{i}" for i in range(NODES)
            )
        # The read that was being written when the proxy died is not served half-written.
        assert current[0] not in asked
        status, body, _ = get(url, api.token, api.ca_cert, current[0])
        assert status == 503 and "not cached" in body["message"], body
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
