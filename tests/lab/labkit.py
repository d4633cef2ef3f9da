"""Helpers for whole-lab tests: run the real CLI with a private prefix and state dir, wait for
what a test checks (with a deadline, naming what was seen last), and check that nothing of a lab
is left on the host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from raven.lab import apiserver_proc, deployment, matrix
from raven.lab.apiserver import audit
from raven.lab.topology import Lab, Pod

from ..waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
RAVEN = Path(sys.executable).parent / "raven"
KUBECTL = "/usr/bin/kubectl"

pytestmark = pytest.mark.root


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network namespaces, iptables)")


@dataclass
class LabEnv:
    prefix: str
    state_dir: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "RAVEN_LAB_PREFIX": self.prefix, "RAVEN_LAB_DIR": str(self.state_dir)}

    def raven(
        self, *args: str, timeout: float = 60, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RAVEN), "lab", *args],
            capture_output=True,
            text=True,
            env={**self.env, **(extra_env or {})},
            timeout=timeout,
        )

    def kubectl(
        self, *args: str, timeout: float = 30, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """kubectl on the host, straight to the lab's API server."""
        return subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.state_dir / "kubeconfig"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    def holder(self, pool: str) -> str:
        """The node holding ``pool``'s gateway Lease; empty when none does or it cannot say."""
        res = self.kubectl(
            "get", "lease", f"raven-gw-{pool}", "-n", deployment.lease_namespace(),
            "-o", "jsonpath={.spec.holderIdentity}",
        )  # fmt: skip
        return res.stdout.strip() if res.returncode == 0 else ""

    def refused(self) -> list[str]:
        """Every request of the agents' ServiceAccount that the API server refused (403), per
        the lab's audit log: RBAC in deploy/ lacks a rule some code path needs."""
        path = self.state_dir / "audit.log"
        if not path.exists():
            return []
        events = audit.refused(audit.read_audit_log(path), deployment.service_account_user())
        why = audit.REASON
        return [
            f"{e.get('verb')} {e.get('requestURI')}: {(e.get('annotations') or {}).get(why)}"
            for e in events
        ]

    def down(self, *, timeout: float = 60) -> None:
        """Take the lab down, then fail the test naming what is wrong: a request of the agents
        refused by RBAC while the lab ran, a failed ``down``, or anything left on the host."""
        refused = self.refused()
        res = self.raven("down", timeout=timeout)
        assert res.returncode == 0, res.stderr
        assert self.leftovers() == []
        assert refused == [], f"requests of the agents refused by RBAC: {refused}"

    def netns(self) -> list[str]:
        try:
            names = os.listdir("/run/netns")
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(self.prefix + "-"))

    def leftovers(self) -> list[str]:
        """Everything of this lab still on the host (empty when the lab is fully gone)."""
        left = [f"netns {n}" for n in self.netns()]
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        left += [
            f"host link {line.split(':')[1].strip()}"
            for line in links.splitlines()
            if f" {self.prefix}-" in line or f" {self.prefix}wg" in line
        ]
        mounts = Path("/proc/mounts").read_text()
        left += [
            f"mount {line.split()[1]}"
            for line in mounts.splitlines()
            if f"/netns/{self.prefix}-" in line
        ]
        wg = Path("/var/run/wireguard")
        if wg.is_dir():
            left += [f"socket {s}" for s in wg.glob(f"{self.prefix}wg*")]
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        left += [
            f"host iptables: {line}"
            for line in rules.splitlines()
            if f"{self.prefix.upper()}-" in line
        ]
        addrs = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
        left += [
            f"host address: {line}" for line in addrs.splitlines() if f"{self.prefix}-" in line
        ]
        if self.state_dir.exists():
            left.append(f"state dir {self.state_dir}: {sorted(os.listdir(self.state_dir))}")
        return left


#: What an agent logs once it has applied its first plan (and again whenever the plan changes).
AGENT_APPLIED = "applied role="


def agent_log(env: LabEnv, node: str) -> Path:
    return env.state_dir / "agents" / node / "agent.log"


def log_size(env: LabEnv, node: str) -> int:
    """Where the agent log of ``node`` ends now: pass it to :func:`wait_applied` as ``since``."""
    path = agent_log(env, node)
    return path.stat().st_size if path.exists() else 0


def wait_applied(env: LabEnv, node: str, *, since: int, deadline: float = 60) -> float:
    """Wait until the agent of ``node`` has applied a plan after byte ``since`` of its log (a
    restarted agent: it has read the cluster, published its key and programmed the kernel)."""

    def applied() -> bool:
        return AGENT_APPLIED in agent_log(env, node).read_bytes()[since:].decode(errors="replace")

    return wait_for(applied, deadline, f"the agent of {node} to apply a plan")


def make_env(tmp_path_factory: pytest.TempPathFactory, tag: str) -> LabEnv:
    require_root()
    prefix = f"t{tag}{os.getpid() % 10000:04d}"[:8]
    return LabEnv(prefix=prefix, state_dir=tmp_path_factory.mktemp(f"lab-{tag}") / "state")


def up_args() -> list[str]:
    """Arguments for a lab without agents; network only while the API server is not built yet."""
    args = ["up", "--no-agents"]
    if not apiserver_proc.apiserver_available():
        args.append("--no-apiserver")
    return args


def ns_exec(ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
    )


def must(ns: str, *argv: str) -> str:
    """Run ``argv`` in ``ns``; its output, or the test fails naming the command."""
    res = ns_exec(ns, *argv)
    assert res.returncode == 0, f"{' '.join(argv)} in {ns}: {res.stderr}"
    return res.stdout


def main_table(ns: str) -> str:
    return ns_exec(ns, "ip", "route", "show", "table", "main").stdout


def wait_reachable(
    lab: Lab,
    pairs: Iterable[tuple[Pod, Pod]] | None = None,
    *,
    deadline: float,
    size: int = 56,
    ping_timeout: float = 1.0,
) -> float:
    """Wait until every pair (default: every ordered pod pair) answers one ping of ``size``
    bytes, not fragmented; the seconds that took. A pair that answered once is not asked again;
    on timeout the pairs that never answered are named."""
    todo = list(matrix.pairs(lab) if pairs is None else pairs)

    def all_answered() -> bool:
        nonlocal todo
        results = matrix.matrix(lab, size=size, timeout=ping_timeout, which=todo)
        todo = [ab for ab, r in zip(todo, results, strict=True) if not r.ok]
        assert not todo, "no answer: " + ", ".join(f"{a.name} -> {b.name}" for a, b in todo)
        return True

    return wait_for(all_answered, deadline, f"{len(todo)} pod pairs to answer {size}-byte pings")


def wait_listening(ns: str, port: int, *, deadline: float = 30) -> None:
    """Wait until something in ``ns`` listens on TCP ``port``."""

    def listening() -> bool:
        out = ns_exec(ns, "ss", "-Hltn", f"sport = :{port}").stdout
        return bool(out.strip())

    wait_for(listening, deadline, f"a TCP listener on port {port} in {ns}", interval=0.1)


def read_output(f: IO[str]) -> str:
    """All a child process has written to ``f`` so far. Read with pread: the child shares the
    file offset, so seeking it while the child writes would make the child overwrite itself."""
    fd = f.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")


class Capture:
    """tcpdump in a namespace, running from ``start()`` (which returns once it is listening,
    so nothing sent afterwards can slip past it) until ``stop()`` (which returns what it
    printed, one packet a line; so does every later call). Packets reach it as they arrive,
    in order: once :meth:`wait_seen` saw a packet, every packet that arrived before it is in
    the output too. As a context manager it captures for the duration of the block."""

    def __init__(self, ns: str, *args: str) -> None:
        self.argv = ["ip", "netns", "exec", ns, "tcpdump", "-n", "-l", "--immediate-mode", *args]
        self.ns = ns
        self.output: str | None = None

    def start(self, *, deadline: float = 30) -> Capture:
        self.out = tempfile.TemporaryFile("w+")
        self.err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(self.argv, stdout=self.out, stderr=self.err, text=True)

        def listening() -> bool:
            assert self.proc.poll() is None, f"tcpdump exited: {self._read(self.err)}"
            return "listening on" in self._read(self.err)

        try:
            wait_for(listening, deadline, f"tcpdump to listen in {self.ns}", interval=0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_seen(self, text: str, *, count: int = 1, deadline: float = 30) -> str:
        """Wait until ``text`` is in ``count`` lines of the output so far; that output."""

        def seen() -> bool:
            return self._read(self.out).count(text) >= count

        wait_for(seen, deadline, f"{count} x {text!r} in the capture in {self.ns}", interval=0.05)
        return self._read(self.out)

    def stop(self) -> str:
        if self.output is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # tcpdump flushes what it has, then exits
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.output = self._read(self.out)
            self.out.close()
            self.err.close()
        return self.output

    @staticmethod
    def _read(f: IO[str]) -> str:
        return read_output(f)

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
