"""`raven diagnose` against the lab: healthy for every pod pair across pools (and fast), then for
each `raven lab break` kind, the diagnosis between two affected pods names the hop and the cause
that were broken, and after `raven lab fix` the path is healthy again.

One lab for the module (the default three pools); strict rp_filter needs a member that reaches
its gateway over VXLAN, so its test, last, swaps the lab for netns-lab/routed-lan.yaml. Every
test waits for what it checks with a deadline.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from raven.diagnose.outcome import Report
from raven.diagnose.run import diagnose, objects_or_error, resolve
from raven.lab import engine
from raven.lab.diagnose import lab_context
from raven.lab.topology import Lab

from .labkit import RAVEN, REPO, LabEnv, make_env, wait_for

pytestmark = pytest.mark.root


@dataclass
class Running:
    env: LabEnv
    lab: Lab

    @property
    def settings(self) -> engine.Settings:
        return engine.Settings(state_dir=self.env.state_dir, prefix=self.env.prefix)

    def diagnose(self, src: str, dst: str) -> Report:
        transport, kubeconfig, namespace = lab_context(self.settings)
        objects = objects_or_error(kubeconfig, namespace)
        src_ip, _ = resolve(src, transport, kubeconfig=kubeconfig, namespace="default")
        dst_ip, _ = resolve(dst, transport, kubeconfig=kubeconfig, namespace="default")
        return diagnose(src, dst, transport, objects=objects, src_ip=src_ip, dst_ip=dst_ip)

    def holder(self, pool: str) -> str:
        return self.env.holder(pool)

    def pod_of(self, node: str) -> str:
        return f"{node}-pod"

    def member_pod(self, pool: str) -> str:
        holder = self.holder(pool)
        node = next(n for n in reversed(self.lab.nodes) if n.pool == pool and n.name != holder)
        return self.pod_of(node.name)

    def broken_target(self, kind: str) -> str:
        st = json.loads((self.env.state_dir / "lab.json").read_text())
        return next(r["target"] for r in st["records"] if r.get("break") == kind)


class Labs:
    """The module's one lab at a time: the default, then (for rp_filter) the routed one."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.factory = tmp_path_factory
        self.current: Running | None = None

    def use(self, topology: str) -> Running:
        if self.current is not None and self.current.lab.name == topology:
            return self.current
        self.close()
        env = make_env(self.factory, "dg")
        res = env.raven(
            "up", "--topology", str(REPO / "netns-lab" / f"{topology}.yaml"), timeout=180
        )
        assert res.returncode == 0, res.stderr + res.stdout
        _, lab = engine.load(engine.Settings(state_dir=env.state_dir, prefix=env.prefix))
        self.current = Running(env, lab)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            current, self.current = self.current, None
            current.env.down()


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Labs]:
    labs = Labs(tmp_path_factory)
    try:
        yield labs
    finally:
        labs.close()


def healthy(running: Running, src: str, dst: str) -> Report:
    report = running.diagnose(src, dst)
    assert report.healthy, f"{src} -> {dst}: {report.verdict}"
    return report


def test_every_pair_across_pools_is_healthy_and_one_diagnosis_is_quick(labs):
    running = labs.use("three-pools")
    pods = running.lab.pods
    pairs = [(a, b) for a in pods for b in pods if a.pool != b.pool]
    first = pairs[0]
    wait_for(lambda: healthy(running, first[0].name, first[1].name), 30, "a healthy path")
    started = time.monotonic()
    for a, b in pairs:
        wait_for(
            lambda a=a, b=b: healthy(running, a.name, b.name), 20, f"{a.name} -> {b.name} healthy"
        )
    took = time.monotonic() - started
    # One diagnosis as an operator runs it: the CLI, JSON out, exit code 0.
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(RAVEN), "diagnose", "--lab", "edge-a-2-pod", "edge-b-3-pod", "-o", "json"],
        capture_output=True,
        text=True,
        env=running.env.env,
        timeout=30,
    )
    cli_seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["healthy"] and out["verdict"] is None
    print(
        f"\n{len(pairs)} pairs diagnosed healthy in {took:.1f}s; one diagnosis took"
        f" {out['seconds']:.2f}s ({cli_seconds:.2f}s for the whole `raven diagnose` command)"
    )
    assert out["seconds"] < 5 and cli_seconds < 5


# kind -> (source pod, destination pod, expected check, the node at fault) given the target
# that was broken. ``None`` as the check: the path works, with a warning about the node.
def _case(running: Running, kind: str, target: str) -> tuple[str, str, str, str]:
    if kind in ("nat-udp", "mtu"):
        gw = running.holder(target)
        check = "tunnel-udp" if kind == "nat-udp" else "path-mtu"
        return running.member_pod(target), "edge-b-3-pod", check, gw
    if kind == "forwarding":
        pool = next(n.pool for n in running.lab.nodes if n.name == target)
        return running.member_pod(pool), "edge-b-3-pod", "forwarding", target
    if kind == "relay-wg":
        return "edge-a-3-pod", "edge-b-3-pod", "wireguard-go", target
    if kind == "bad-key":
        return "edge-a-3-pod", running.pod_of(target), "public-key", target
    if kind == "overlap":
        return "edge-b-2-pod", "edge-a-1-pod", "pod-cidr", "edge-b-2"
    if kind == "api":
        return running.pod_of(target), "edge-b-3-pod", "api-server", target
    assert kind == "rp-filter"
    return running.pod_of(target), "edge-b-1-pod", "rp_filter", target


def named(running: Running, src: str, dst: str, check: str, node: str) -> Report:
    report = running.diagnose(src, dst)
    if check == "api-server":
        assert report.verdict is None, report.verdict
        warned = [(f.check, f.node) for f in report.warnings]
        assert (check, node) in warned, warned
        return report
    verdict = report.verdict
    assert verdict is not None, "healthy"
    assert (verdict.check, verdict.node) == (check, node), verdict
    return report


def break_and_fix(running: Running, kind: str, *, fixed_within: float) -> None:
    res = running.env.raven("break", kind)
    assert res.returncode == 0, res.stderr + res.stdout
    target = running.broken_target(kind)
    case = _case(running, kind, target)

    def diagnosed() -> Report:
        # The gateways may move while a tunnel is dead: what is expected follows them.
        nonlocal case
        case = _case(running, kind, target)
        return named(running, *case)

    try:
        took = wait_for(diagnosed, 40, f"{kind} at {target} named by diagnose")
        src, dst, check, _ = case
        report = running.diagnose(src, dst)
        shown = report.verdict or next(f for f in report.warnings if f.check == check)
        print(
            f"\n{kind} at {target}: {src} -> {dst} named after {took:.1f}s:"
            f" {shown.where} ({shown.check}): {shown.evidence} [{report.seconds:.2f}s]"
        )
    finally:
        res = running.env.raven("fix")
        assert res.returncode == 0, res.stderr + res.stdout
    src, dst = case[0], case[1]

    def fixed() -> bool:
        report = healthy(running, src, dst)
        assert not report.warnings, report.warnings
        return True

    took = wait_for(fixed, fixed_within, f"{src} -> {dst} healthy after fixing {kind}")
    print(f"{kind}: healthy {took:.1f}s after the fix")


@pytest.mark.parametrize(
    "kind, fixed_within",
    [
        ("forwarding", 20),
        ("mtu", 20),
        ("overlap", 20),
        ("bad-key", 40),
        ("api", 40),
        ("nat-udp", 90),
        ("relay-wg", 90),
    ],
)
def test_a_break_is_named_by_diagnose_and_fix_makes_it_healthy(labs, kind, fixed_within):
    break_and_fix(labs.use("three-pools"), kind, fixed_within=fixed_within)


def test_zz_strict_rp_filter_on_a_member_behind_vxlan_is_named(labs):
    running = labs.use("routed-lan")
    wait_for(lambda: healthy(running, "edge-a-3-pod", "edge-b-1-pod"), 60, "a healthy path")
    break_and_fix(running, "rp-filter", fixed_within=20)
