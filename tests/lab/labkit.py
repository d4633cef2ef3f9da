"""Helpers for whole-lab tests: run the real CLI with a private prefix and state dir, and
check that nothing of a lab is left on the host."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from raven.lab import apiserver_proc

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
            "get", "lease", f"raven-gw-{pool}", "-n", "kube-system",
            "-o", "jsonpath={.spec.holderIdentity}",
        )  # fmt: skip
        return res.stdout.strip() if res.returncode == 0 else ""

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


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.3
) -> float:
    """Poll until ``predicate()`` is true; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
