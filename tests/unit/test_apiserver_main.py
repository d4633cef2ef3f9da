"""``python -m raven.lab.apiserver`` as the lab runs it: a subprocess that stops cleanly on
SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client

from raven.lab.apiserver.pki import make_pki


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen:
    pki = tmp_path / "pki"
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "raven.lab.apiserver",
            "--state-dir",
            str(tmp_path / "state"),
            "--listen",
            f"127.0.0.1:{port}",
            "--cert",
            str(pki / "server.crt"),
            "--key",
            str(pki / "server.key"),
            "--token-file",
            str(pki / "token"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(url: str, ca: Path, proc: subprocess.Popen) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.communicate()[1]}")
        try:
            with urllib.request.urlopen(url + "/readyz", context=ctx, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    pytest.fail("server did not become ready")


def _client(url: str, pki) -> client.ApiClient:
    config = client.Configuration()
    config.host = url
    config.ssl_ca_cert = str(pki.ca_cert)
    config.api_key = {"authorization": pki.token}
    config.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(config)


def test_runs_stops_on_sigterm_and_keeps_state(tmp_path):
    pki = make_pki(tmp_path / "pki", ["127.0.0.1"])
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    proc = _start(tmp_path, port, "--history", "10")
    try:
        _wait_ready(url, pki.ca_cert, proc)
        with _client(url, pki) as api:
            created = client.CoreV1Api(api).create_node({"metadata": {"name": "n1"}})
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert err == ""  # quiet by default: no per-request lines
        proc = _start(tmp_path, port, "--log-level", "debug")
        _wait_ready(url, pki.ca_cert, proc)
        with _client(url, pki) as api:
            v1 = client.CoreV1Api(api)
            assert v1.read_node("n1").metadata.uid == created.metadata.uid
            assert int(
                v1.create_node({"metadata": {"name": "n2"}}).metadata.resource_version
            ) > int(created.metadata.resource_version)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "GET /api/v1/nodes/n1 200" in err  # one debug line per request
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_audit_log_path_records_who_did_what(tmp_path):
    pki = make_pki(tmp_path / "pki", ["127.0.0.1"])
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    audit = tmp_path / "audit.log"
    proc = _start(tmp_path, port, "--audit-log-path", str(audit))
    try:
        _wait_ready(url, pki.ca_cert, proc)
        with _client(url, pki) as api:
            client.CoreV1Api(api).create_node({"metadata": {"name": "n1"}})
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    created = [e for e in events if e["verb"] == "create"]
    assert len(created) == 1
    assert created[0]["user"]["username"] == "raven-lab-admin"
    assert created[0]["objectRef"] == {"resource": "nodes", "name": "n1", "apiVersion": "v1"}
    assert created[0]["responseStatus"]["code"] == 201
    assert created[0]["annotations"]["authorization.k8s.io/decision"] == "allow"
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nonsense"], "--listen must be HOST:PORT"),
        (["--listen", "127.0.0.1:1", "--token-file", "/nonexistent/token"], "--token-file"),
    ],
)
def test_bad_arguments_are_named(tmp_path, args, message):
    pki = make_pki(tmp_path / "pki", ["127.0.0.1"])
    base = {
        "--state-dir": str(tmp_path / "s"),
        "--listen": "127.0.0.1:1",
        "--cert": str(pki.server_cert),
        "--key": str(pki.server_key),
        "--token-file": str(pki.token_file),
    }
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = [x for kv in base.items() for x in kv]
    r = subprocess.run(
        [sys.executable, "-m", "raven.lab.apiserver", *argv],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 2 and message in r.stderr


@pytest.mark.parametrize(
    ("text", "seconds"), [("1h", 3600.0), ("1h0m0s", 3600.0), ("90s", 90.0), ("2.5", 2.5)]
)
def test_event_ttl_takes_go_durations_or_seconds(text, seconds):
    from raven.lab.apiserver.__main__ import _parser

    assert _parser().parse_args([*_REQUIRED, "--event-ttl", text]).event_ttl == seconds


def test_node_monitor_periods_default_to_kube_controller_managers():
    from raven.lab.apiserver.__main__ import _parser

    args = _parser().parse_args(_REQUIRED)
    assert (args.node_monitor_period, args.node_monitor_grace_period) == (5.0, 40.0)
    args = _parser().parse_args(
        [*_REQUIRED, "--node-monitor-period", "500ms", "--node-monitor-grace-period", "1m"]
    )
    assert (args.node_monitor_period, args.node_monitor_grace_period) == (0.5, 60.0)


@pytest.mark.parametrize(
    "flags",
    [
        ["--event-ttl", "soon"],
        ["--event-ttl", "0"],
        ["--watch-queue-events", "0"],
        ["--node-monitor-grace-period", "0s"],
    ],
)
def test_bad_bounds_are_refused_by_name(flags, capsys):
    from raven.lab.apiserver.__main__ import _parser

    with pytest.raises(SystemExit):
        _parser().parse_args([*_REQUIRED, *flags])
    assert flags[0] in capsys.readouterr().err


_REQUIRED = [
    "--state-dir", "s", "--listen", "127.0.0.1:1", "--cert", "c", "--key", "k", "--token-file", "t"
]
