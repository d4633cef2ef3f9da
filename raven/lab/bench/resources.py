"""``raven bench resources``: memory and CPU of the DaemonSet's containers, idle and failing over.

What deploy/daemonset.yaml requests and limits is taken from these figures. Each lab node runs
what one Raven pod runs: the ``agent`` container's processes (``raven-agent`` and, on a node
with a tunnel, the ``wireguard-go`` it starts: both count against that container's limit) and
the ``cache-proxy`` container's (``raven-cache-proxy``). The benchmark builds a lab of its own,
waits for the full cross-pool matrix and then measures three windows:

- idle: the quiet lab, the baseline;
- failover: the ``edge-a`` gateway's agent crashes (SIGKILL, as ``raven lab agents kill``) and
  the pool elects another; every remaining process is measured;
- restart: the crashed agent starts again and syncs (the container's start-up).

Per window and container kind it reports CPU (mean over the window, in millicores, the highest
node and the median node) and memory (the highest resident set seen, MiB, and the processes'
own peak ``VmHWM``), and the failover/idle ratios. With a Docker engine at hand it also reports
the size of Raven's image, when it has been built (``make image``).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from raven.lab import agents as lab_agents
from raven.lab import dockerd, engine
from raven.lab.bench.failover import POOL, Bench, BenchError, own_lab
from raven.lab.state import is_same_process

__all__ = ["BenchError", "run"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
SAMPLE_S = 0.5


@dataclass(frozen=True)
class Sample:
    cpu_s: float  # utime + stime, seconds
    rss_kib: int
    hwm_kib: int  # the process's own peak resident set since it started


def read(pid: int) -> Sample | None:
    """CPU time and memory of ``pid`` from /proc; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(stat[21]) * PAGE_KIB  # field 24 (rss, pages), counted after the comm
    hwm = int(fields.get("VmHWM", "0 kB").split()[0])
    return Sample((int(stat[11]) + int(stat[12])) / CLOCK_TICKS, rss, hwm)


def wireguard_go_pid(ifname: str) -> int | None:
    """The ``wireguard-go IFNAME`` serving the lab device ``ifname`` (this lab's only)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            len(argv) >= 2
            and os.path.basename(argv[0]) == b"wireguard-go"
            and (ifname.encode() in argv)
        ):
            return int(entry.name)
    return None


def containers(bench: Bench) -> dict[tuple[str, str], list[int]]:
    """(node, container) -> the PIDs that container would hold, as of now."""
    st, _ = engine.load(bench.settings)
    out: dict[tuple[str, str], list[int]] = {}
    for node in bench.lab.nodes:
        for role, kind in (("agent", "agent"), ("cache-proxy", "cache-proxy")):
            pids = [
                int(r["pid"])
                for r in st.processes(role, node.name)
                if is_same_process(int(r["pid"]), r.get("start_time"))
            ]
            if kind == "agent" and pids:
                wg = wireguard_go_pid(bench.lab.wg_ifname(node.name))
                pids += [wg] if wg is not None else []
            if pids:
                out[(node.name, kind)] = pids
    return out


@dataclass
class Window:
    """What each container used during one measured window."""

    cpu_m: dict[tuple[str, str], float]  # millicores, mean over the window
    rss_mib: dict[tuple[str, str], float]  # highest resident set seen
    hwm_mib: dict[tuple[str, str], float]  # the processes' own peak


def measure(bench: Bench, seconds: float, *, during: Callable[[], None] | None = None) -> Window:
    """Sample every container for ``seconds``; ``during`` runs right after the first sample.
    Processes that appear meanwhile (a new wireguard-go, a restarted agent) count with all the
    CPU time they used since they started."""
    first: dict[int, Sample] = {}
    last: dict[int, Sample] = {}
    owner: dict[int, tuple[str, str]] = {}
    peak_rss: dict[tuple[str, str], int] = {}

    def sample() -> None:
        rss_now: dict[tuple[str, str], int] = {}
        for key, pids in containers(bench).items():
            for pid in pids:
                s = read(pid)
                if s is None:
                    continue
                owner[pid] = key
                first.setdefault(pid, s)
                last[pid] = s
                rss_now[key] = rss_now.get(key, 0) + s.rss_kib
        for key, rss in rss_now.items():
            peak_rss[key] = max(peak_rss.get(key, 0), rss)

    t0 = time.monotonic()
    sample()
    # A process that starts during the window counts from zero: its start-up is part of it.
    zero = Sample(0.0, 0, 0)
    first_round = set(first)
    if during is not None:
        during()
    while time.monotonic() - t0 < seconds:
        time.sleep(SAMPLE_S)
        sample()
    wall = time.monotonic() - t0
    cpu: dict[tuple[str, str], float] = {}
    hwm: dict[tuple[str, str], float] = {}
    for pid, key in owner.items():
        start = first[pid] if pid in first_round else zero
        cpu[key] = cpu.get(key, 0.0) + (last[pid].cpu_s - start.cpu_s) / wall * 1000
        hwm[key] = hwm.get(key, 0.0) + last[pid].hwm_kib / 1024
    return Window(cpu, {k: v / 1024 for k, v in peak_rss.items()}, hwm)


def summarize(name: str, window: Window) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for kind in ("agent", "cache-proxy"):
        tag = f"{name}_{kind.replace('-', '_')}"
        cpu = {n: v for (n, k), v in window.cpu_m.items() if k == kind}
        rss = {n: v for (n, k), v in window.rss_mib.items() if k == kind}
        hwm = [v for (_, k), v in window.hwm_mib.items() if k == kind]
        if not cpu:
            continue
        busiest = max(cpu, key=lambda n: cpu[n])
        figures[f"{tag}_cpu_max_m"] = round(cpu[busiest], 1)
        figures[f"{tag}_cpu_max_node"] = busiest
        figures[f"{tag}_cpu_median_m"] = round(statistics.median(cpu.values()), 1)
        figures[f"{tag}_rss_max_mib"] = round(max(rss.values()), 1)
        figures[f"{tag}_rss_median_mib"] = round(statistics.median(rss.values()), 1)
        figures[f"{tag}_hwm_max_mib"] = round(max(hwm), 1)
    return figures


def image_size_mb() -> float | None:
    """Size of Raven's image in a Docker engine, when there is one and the image is built."""
    try:
        with dockerd.engine() as eng:
            tag = f"raven:{version('raven')}"
            proc = eng.run("image", "inspect", "-f", "{{.Size}}", tag, check=False)
    except dockerd.DockerError:
        return None
    return round(int(proc.stdout) / 1e6, 1) if proc.returncode == 0 else None


def run(
    *,
    prefix: str | None = None,
    state_dir: str | Path | None = None,
    idle: float = 30.0,
    failover: float = 15.0,
    restart: float = 15.0,
    image: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    """Build a lab, measure the idle, failover and restart windows (seconds), return figures."""
    if os.geteuid() != 0:
        raise BenchError("the resources benchmark needs root (network namespaces)")
    if min(idle, failover, restart) <= 0:
        raise BenchError("every window must be a positive number of seconds")
    prefix = prefix or f"rs{os.getpid() % 100000}"

    def log(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="raven-bench-resources-") as tmp:
        state = Path(state_dir) if state_dir else Path(tmp) / "lab"
        with own_lab(prefix, state, log) as bench:
            bench.wait_cross_pool(60)
            gw = bench.wait_gateway(POOL, 30)
            time.sleep(5)  # past the start-up: what follows is the lab at rest
            log(f"idle: {idle:.0f} s")
            windows = {"idle": measure(bench, idle)}

            def crash() -> None:
                st, _ = engine.load(bench.settings)
                if not lab_agents.kill(st, gw):
                    raise BenchError(f"the agent of {gw} was not running")

            log(f"failover: crash the agent of {gw}, {failover:.0f} s")
            windows["failover"] = measure(bench, failover, during=crash)
            figures["failover_new_gateway"] = bench.wait_gateway(POOL, 30)
            log(f"restart: start the agent of {gw} again, {restart:.0f} s")
            windows["restart"] = measure(
                bench, restart, during=lambda: bench.raven_lab("agents", "start", gw)
            )
            figures["failover_old_gateway"] = gw
            figures["nodes"] = len(bench.lab.nodes)
    for name, window in windows.items():
        figures.update(summarize(name, window))
    for kind in ("agent", "cache_proxy"):
        base = figures.get(f"idle_{kind}_cpu_max_m") or 0.0
        if base > 0:
            figures[f"failover_vs_idle_{kind}_cpu"] = round(
                figures[f"failover_{kind}_cpu_max_m"] / base, 2
            )
    if image:
        figures["image_mb"] = image_size_mb()
    return figures
