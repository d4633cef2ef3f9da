"""``raven bench failover``: how long cross-pool traffic stops when a pool's gateway goes away.

Builds a lab of its own (own prefix and state dir) with agents, then sends a datagram every
10 ms (a UDP echo, each echo stamped with its arrival time) from the pod of a *member* node of
``edge-a`` to a pod of ``edge-b`` and back while the ``edge-a`` gateway is taken away twice:

- crash: the gateway's agent gets SIGKILL and the node is unplugged from its LAN switch (its
  switch port is set down), so neither the lease is released nor does its kernel keep
  forwarding for the pool — a node that died;
- graceful: ``raven lab agents stop <gw>`` (SIGTERM: the agent releases its lease).

For each it reports the longest silence between two replies, the replies lost, which node took
over, and when (from the agents' own logs) the new holder acquired the lease, relative to the
fault. The cut node is plugged back in and its agent restarted between the cases; the lab is
torn down at the end, also on errors.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from raven.lab import agents as lab_agents
from raven.lab import deployment, engine, matrix
from raven.lab.topology import Lab, Node, Pod

KUBECTL = "/usr/bin/kubectl"
POOL = "edge-a"  # the pool whose gateway is taken away
REMOTE_POOL = "edge-b"  # where the ping goes (through the relay)
LEASE_NAMESPACE = deployment.lease_namespace()  # the lab runs agents with deploy/'s settings
INTERVAL_S = 0.01

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class BenchError(Exception):
    """The benchmark could not run or could not measure; the message says what failed."""


# ---- the probe ------------------------------------------------------------------------------
# ``ping -i 0.01`` slows itself down while replies are missing (iputils), so its "transmitted"
# count undercounts the loss of an outage. A tiny UDP echo keeps a strict 10 ms schedule:
# the prober stamps each datagram with a sequence number, the echo sends it straight back,
# and the prober prints every echo's sequence number and arrival time.

ECHO_PORT = 47000

_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""

_PROBE = """
import socket, sys, threading, time
dst, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((dst, port))
stop = threading.Event()
def receive():
    while True:
        try:
            data = s.recv(2048)
        except OSError:
            continue  # ICMP errors (unreachable) surface here; the probe carries on
        print("R", int(data.split(b" ")[0]), repr(time.time()), flush=True)
threading.Thread(target=receive, daemon=True).start()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
seq, start = 0, time.monotonic()
while not stop.is_set():
    try:
        s.send(b"%d %s" % (seq, b"x" * 40))
    except OSError:
        pass  # no route / unreachable right now: the datagram counts as sent and lost
    seq += 1
    delay = start + seq * interval - time.monotonic()  # a fixed schedule, never a drift
    if delay > 0:
        time.sleep(delay)
time.sleep(0.5)  # late echoes still count
print("S", seq, flush=True)
"""


@dataclass
class Reply:
    at: float  # arrival at the prober, epoch seconds
    seq: int


@dataclass
class Pinger:
    """A UDP echo in ``dst``'s namespace and a 10 ms prober in ``src``'s; a thread collects."""

    src: Pod
    dst: Pod
    interval: float = INTERVAL_S
    replies: list[Reply] = field(default_factory=list)
    sent: int = 0
    _echo: subprocess.Popen[str] | None = None
    _proc: subprocess.Popen[str] | None = None
    _reader: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def received(self) -> int:
        return len(self.replies)

    def start(self) -> None:
        self._echo = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.dst.netns,
                sys.executable,
                "-u",
                "-c",
                _ECHO,
                str(ECHO_PORT),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert self._echo.stdout is not None
        if self._echo.stdout.readline().strip() != "ready":
            self._echo.kill()
            err = self._echo.communicate()[1]
            raise BenchError(f"UDP echo in {self.dst.netns} did not start: {err.strip()[-300:]}")
        self._proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.src.netns,
                sys.executable,
                "-u",
                "-c",
                _PROBE,
                str(self.dst.ip),
                str(ECHO_PORT),
                str(self.interval),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="failover-probe", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        seen: set[int] = set()  # a duplicated echo counts once
        for line in self._proc.stdout:
            kind, *rest = line.split()
            if kind == "R" and int(rest[0]) not in seen:
                seen.add(int(rest[0]))
                with self._lock:
                    self.replies.append(Reply(float(rest[1]), int(rest[0])))
            elif kind == "S":
                self.sent = int(rest[0])

    def snapshot(self) -> list[Reply]:
        with self._lock:
            return list(self.replies)

    def stop(self) -> None:
        """Close the prober's stdin (it stops sending, waits for late echoes, prints its
        total), then end both processes, by their PIDs."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                proc.kill()
                proc.wait()
            if self._reader is not None:
                self._reader.join(timeout=5)
            if proc.returncode != 0 and not self.sent:
                raise BenchError(
                    f"the prober in {self.src.netns} failed: "
                    f"{(proc.stderr.read() if proc.stderr else '')[-300:]}"
                )
        echo, self._echo = self._echo, None
        if echo is not None:
            echo.kill()
            echo.wait()


def longest_gap(replies: list[Reply], *, start: float, end: float) -> tuple[float, float, float]:
    """(length, start, end) of the longest time in [start, end] with no echo arriving; the
    window's edges count as arrivals, so an outage still running at ``end`` counts too."""
    times = [start] + sorted(r.at for r in replies if start <= r.at <= end) + [end]
    return max((b - a, a, b) for a, b in itertools.pairwise(times))


def steady_since(replies: list[Reply], now: float, *, seconds: float, interval: float) -> bool:
    """Replies flowed for the last ``seconds`` with no hole longer than 10 intervals."""
    recent = [r.at for r in replies if r.at >= now - seconds]
    if len(recent) < 0.5 * seconds / interval:
        return False
    times = [now - seconds] + recent + [now]
    return max(b - a for a, b in itertools.pairwise(times)) <= max(0.1, 10 * interval)


# ---- the lab --------------------------------------------------------------------------------


@dataclass
class Bench:
    settings: engine.Settings
    lab: Lab
    log: Callable[[str], None]

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RAVEN_LAB_PREFIX": self.settings.prefix,
            "RAVEN_LAB_DIR": str(self.settings.state_dir),
        }

    def raven_lab(self, *args: str, timeout: float = 60) -> None:
        exe = Path(sys.executable).parent / "raven"  # the CLI of this very installation
        res = subprocess.run(
            [str(exe), "lab", *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if res.returncode != 0:
            why = (res.stderr or res.stdout).strip()[-500:]
            raise BenchError(f"raven lab {' '.join(args)} failed: {why}")

    def kubectl(self, *args: str) -> str:
        res = subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.settings.state_dir / "kubeconfig"), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if res.returncode != 0:
            raise BenchError(f"kubectl {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout

    def holder(self, pool: str) -> str:
        out = self.kubectl(
            "get",
            "lease",
            "-n",
            LEASE_NAMESPACE,
            f"raven-gw-{pool}",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        )
        return out.strip()

    def lease_expiry(self, pool: str) -> float | None:
        """renewTime + leaseDurationSeconds of the pool's Lease, epoch seconds."""
        spec = json.loads(
            self.kubectl("get", "lease", "-n", LEASE_NAMESPACE, f"raven-gw-{pool}", "-o", "json")
        ).get("spec", {})
        renewed = spec.get("renewTime")
        if not renewed:
            return None
        at = datetime.strptime(renewed.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
        return at.timestamp() + float(spec.get("leaseDurationSeconds") or 0)

    def latest_handshake(self, node: str) -> float | None:
        """Epoch time of the newest WireGuard handshake on ``node``'s device, to the
        nanosecond: read from wireguard-go's control socket (``wg show`` rounds to seconds).
        Only this lab's own device is asked (its name carries the lab prefix)."""
        path = Path("/var/run/wireguard") / f"{self.lab.wg_ifname(node)}.sock"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(path))
                sock.sendall(b"get=1\n\n")
                data = b""
                while not data.endswith(b"\n\n") and (chunk := sock.recv(65536)):
                    data += chunk
        except OSError:
            return None  # the kernel module, or no device: no figure
        fields = [line.partition("=") for line in data.decode(errors="replace").splitlines()]
        secs = [int(v) for k, _, v in fields if k == "last_handshake_time_sec"]
        nsecs = [int(v) for k, _, v in fields if k == "last_handshake_time_nsec"]
        stamps = [s + n / 1e9 for s, n in zip(secs, nsecs, strict=True) if s > 0]
        return max(stamps) if stamps else None

    def relay(self) -> str:
        relays = [p.name for p in self.lab.pools if p.relay]
        return self.active_node(relays[0]) if relays else ""

    def active_node(self, pool: str) -> str:
        gw = json.loads(self.kubectl("get", "gw", pool, "-o", "json"))
        return str(gw.get("status", {}).get("activeNode") or "")

    def node(self, name: str) -> Node:
        return next(n for n in self.lab.nodes if n.name == name)

    def agent_log(self, node: str) -> Path:
        return self.settings.state_dir / "agents" / node / "agent.log"

    def wait_gateway(self, pool: str, timeout: float) -> str:
        """The pool's gateway once its Lease holder and Gateway status agree."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            holder = self.holder(pool)
            if holder and holder == self.active_node(pool):
                return holder
            time.sleep(0.3)
        raise BenchError(f"pool {pool} has no settled gateway after {timeout:.0f} s")

    def wait_cross_pool(self, timeout: float) -> None:
        """Every pod of POOL reaches every pod of REMOTE_POOL and back."""
        todo = [
            (a, b)
            for a, b in matrix.pairs(self.lab, cross_pool=True)
            if {a.pool, b.pool} == {POOL, REMOTE_POOL}
        ]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            results = matrix.matrix(self.lab, which=todo)
            todo = [(a, b) for (a, b), r in zip(todo, results, strict=True) if not r.ok]
            if not todo:
                return
            time.sleep(0.3)
        raise BenchError(
            f"{POOL} <-> {REMOTE_POOL} not reachable after {timeout:.0f} s: "
            + ", ".join(f"{a.name}->{b.name}" for a, b in todo[:4])
        )


# ---- where the time goes: the agents' own logs -------------------------------------------


def log_lines(log_file: Path, *, after: float) -> list[tuple[float, str]]:
    """(epoch time, message) of every timestamped line of an agent log from ``after`` on."""
    if not log_file.exists():
        return []
    lines = []
    for line in log_file.read_text(errors="replace").splitlines():
        m = _LOG_TIME.match(line)
        if m is None:
            continue
        # logging writes local time; datetime.timestamp() reads a naive value as local time.
        # Log stamps have 1 ms resolution, hence the small allowance.
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at >= after - 0.002:
            lines.append((at, line[m.end() :]))
    return lines


def first(lines: list[tuple[float, str]], *needles: str, after: float = 0.0) -> float | None:
    """Time of the first line from ``after`` on that contains every needle."""
    return next(
        (at for at, msg in lines if at >= after - 0.002 and all(n in msg for n in needles)), None
    )


_COUNTS = re.compile(r"routes=(\d+) peers=(\d+)")


def restored(
    lines: list[tuple[float, str]], role: str, *, before: float, after: float
) -> float | None:
    """When a node applied ``role`` with the routes/peers counts it had before the fault again
    (a relay first drops the pool's peer while no one holds the lease, then adds the new one)."""
    applied = [(at, msg) for at, msg in lines if f"applied role={role}" in msg]
    steady = [_COUNTS.search(msg) for at, msg in applied if at < before]
    want = steady[-1].groups() if steady and steady[-1] else None
    for at, msg in applied:
        if (
            at >= after - 0.002
            and (m := _COUNTS.search(msg))
            and (want is None or m.groups() == want)
        ):
            return at
    return None


def timeline(
    bench: Bench, *, t_fault: float, old_gw: str, new_gw: str, member: str, relay: str
) -> dict[str, float]:
    """Milestones after the fault, in ms, from the agents' logs (absent ones are left out)."""
    election = f"election raven-gw-{POOL}: "
    since = t_fault - 60  # enough history to know each node's steady state before the fault
    marks: dict[str, float | None] = {}
    old = log_lines(bench.agent_log(old_gw), after=t_fault)
    marks["lease_released"] = first(old, election, f"{old_gw} released")
    if new_gw:
        new = log_lines(bench.agent_log(new_gw), after=t_fault)
        acquired = (
            first(new, election, new_gw, "acquired")
            or first(new, election, new_gw, "took over")  # preempted a silent holder
            or first(new, election, "holds it")
        )
        marks["lease_acquired"] = acquired
        after = acquired or t_fault
        marks["gateway_applied"] = first(new, "applied role=gateway", after=after)
        marks["relay_applied"] = restored(
            log_lines(bench.agent_log(relay), after=since), "relay", before=t_fault, after=after
        )
        if member != new_gw:
            marks["member_applied"] = restored(
                log_lines(bench.agent_log(member), after=since),
                "member",
                before=t_fault,
                after=after,
            )
    return {f"{k}_ms": round((v - t_fault) * 1000, 1) for k, v in marks.items() if v is not None}


@dataclass
class Outcome:
    gap_ms: float
    lost: int
    sent: int
    old_gateway: str
    new_gateway: str
    recovered: bool
    marks: dict[str, float]  # milestone -> ms after the fault


def measure(
    bench: Bench,
    src: Pod,
    dst: Pod,
    old_gw: str,
    fault: Callable[[], float | None],
    *,
    name: str,
    recover_timeout: float,
    warmup: float = 1.0,
    steady: float = 1.5,
) -> Outcome:
    """Probe through ``fault()``; stop once another node holds the lease and echoes flowed
    steadily for ``steady`` seconds, or after ``recover_timeout``. ``fault()`` may return when
    the old holder's lease runs out (epoch seconds)."""
    pinger = Pinger(src, dst)
    pinger.start()
    try:
        # The probe's interpreter takes a moment to start; then echoes must flow steadily.
        deadline = time.monotonic() + 10
        while not steady_since(pinger.snapshot(), time.time(), seconds=warmup, interval=INTERVAL_S):
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{name}: {src.name} -> {dst.name} did not flow steadily "
                    f"before the fault ({pinger.received} echoes in 10 s)"
                )
            time.sleep(0.1)
        bench.log(f"{name}: taking gateway {old_gw} away")
        t_fault = time.time()
        expires = fault()
        new_gw, recovered = "", False
        deadline = time.monotonic() + recover_timeout
        while time.monotonic() < deadline:
            if not new_gw:
                holder = bench.holder(POOL)
                new_gw = holder if holder and holder != old_gw else ""
            now = time.time()
            if (
                new_gw
                and now - t_fault > steady
                and steady_since(pinger.snapshot(), now, seconds=steady, interval=INTERVAL_S)
            ):
                recovered = True
                break
            time.sleep(0.2)
        t_end = time.time()
    finally:
        pinger.stop()
    gap, gap_start, gap_end = longest_gap(pinger.replies, start=t_fault, end=t_end)
    marks = timeline(
        bench, t_fault=t_fault, old_gw=old_gw, new_gw=new_gw, member=src.node, relay=bench.relay()
    )
    marks["traffic_stopped_ms"] = round((gap_start - t_fault) * 1000, 1)
    marks["traffic_back_ms"] = round((gap_end - t_fault) * 1000, 1)
    if expires is not None:
        marks["lease_expired_ms"] = round((expires - t_fault) * 1000, 1)
    if (
        new_gw
        and (handshake := bench.latest_handshake(new_gw)) is not None
        and handshake >= t_fault
    ):
        marks["wg_handshake_ms"] = round((handshake - t_fault) * 1000, 1)
    return Outcome(
        gap_ms=round(gap * 1000, 1),
        lost=pinger.sent - pinger.received,
        sent=pinger.sent,
        old_gateway=old_gw,
        new_gateway=new_gw,
        recovered=recovered,
        marks=marks,
    )


def _pick_pods(bench: Bench, gw: str) -> tuple[Pod, Pod]:
    members = sorted(n.name for n in bench.lab.nodes if n.pool == POOL and n.name != gw)
    remote = sorted(n.name for n in bench.lab.nodes if n.pool == REMOTE_POOL)
    if not members or not remote:
        raise BenchError(f"the lab needs a member node in {POOL} and a node in {REMOTE_POOL}")
    # The last member: the first one is the likelier next gateway (name order), and a
    # source that stays a member shows what the pool's members see.
    return bench.node(members[-1]).pod, bench.node(remote[0]).pod


def crash(bench: Bench, gw: str) -> Callable[[], float | None]:
    node = bench.node(gw)

    def fault() -> float | None:
        # Unplug the node first (its switch port goes down: the data path dies at once, and the
        # node's own routes stay untouched, so plugging it back in restores it exactly), then
        # SIGKILL its agent: no lease release, no cleanup. The switch port is named after it.
        _ip(node.switch_netns, "link", "set", node.name, "down")
        st, _ = engine.load(bench.settings)
        if not lab_agents.kill(st, gw):
            raise BenchError(f"the agent of {gw} was not running")
        # Cut off, it renewed for the last time before the unplug: this is when others may
        # take over at the earliest.
        return bench.lease_expiry(POOL)

    return fault


def graceful(bench: Bench, gw: str) -> Callable[[], float | None]:
    def fault() -> None:
        # What `raven lab agents stop` runs (in-process, so the CLI's start-up time is not
        # counted as failover): SIGTERM, the agent releases its lease and exits.
        st, _ = engine.load(bench.settings)
        if not lab_agents.stop(st, gw):
            raise BenchError(f"the agent of {gw} was not running")

    return fault


def restore(bench: Bench, gw: str) -> None:
    """Plug the node back in and start its agent again (each only if needed)."""
    node = bench.node(gw)
    _ip(node.switch_netns, "link", "set", node.name, "up")
    st, _ = engine.load(bench.settings)
    if not lab_agents.running(st, gw):
        bench.raven_lab("agents", "start", gw)


def _ip(ns: str, *args: str) -> None:
    res = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise BenchError(f"ip -n {ns} {' '.join(args)}: {res.stderr.strip()}")


def run_cases(bench: Bench, *, recover_timeout: float) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    sent = 0
    for case in ("crash", "graceful"):
        gw = bench.wait_gateway(POOL, 30)
        bench.wait_gateway(REMOTE_POOL, 30)
        bench.wait_cross_pool(30)
        src, dst = _pick_pods(bench, gw)
        fault = crash(bench, gw) if case == "crash" else graceful(bench, gw)
        try:
            out = measure(bench, src, dst, gw, fault, name=case, recover_timeout=recover_timeout)
        finally:
            # Bring the node back whatever happened, so the next case and `down` see a whole lab.
            restore(bench, gw)
        bench.log(
            f"{case}: gap {out.gap_ms} ms, lost {out.lost}/{out.sent}, "
            f"{out.old_gateway} -> {out.new_gateway or '(nobody)'}"
        )
        sent += out.sent
        figures[f"{case}_gap_ms"] = out.gap_ms
        figures[f"{case}_lost"] = out.lost
        figures[f"{case}_sent"] = out.sent
        figures[f"{case}_old_gateway"] = out.old_gateway
        figures[f"{case}_new_gateway"] = out.new_gateway
        figures[f"{case}_recovered"] = int(out.recovered)
        figures.update({f"{case}_{k}": v for k, v in sorted(out.marks.items())})
        figures[f"{case}_ping_from"] = src.name
        figures[f"{case}_ping_to"] = dst.name
    figures["sent"] = sent
    figures["interval_ms"] = INTERVAL_S * 1000
    # After the restore, the lab must heal: this is what an operator would check next.
    bench.wait_cross_pool(30)
    return figures


@contextmanager
def own_lab(prefix: str, state_dir: Path, log: Callable[[str], None]) -> Iterator[Bench]:
    settings = engine.Settings(state_dir=state_dir, prefix=prefix)
    try:
        result = engine.up(None, settings, agents=True, log=lambda *_: None)
    except engine.LabError as e:
        raise BenchError(f"lab up failed: {e}") from e
    try:
        yield Bench(settings=settings, lab=result.lab, log=log)
    finally:
        for warning in engine.down(settings, log=lambda *_: None):
            log(f"warning: {warning}")


@contextmanager
def agent_environment(overrides: dict[str, str]) -> Iterator[None]:
    """Agents inherit the environment of whoever starts them (the lab engine, the lab CLI):
    set the agents' RAVEN_* timing overrides for the run, then put the old values back."""
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(
    *,
    prefix: str | None = None,
    state_dir: str | Path | None = None,
    recover_timeout: float = 30.0,
    lease_duration: float | None = None,
    lease_renew: float | None = None,
    lease_retry: float | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Build a lab, crash and then gracefully stop the ``edge-a`` gateway, return the figures.

    ``lease_duration``/``lease_renew``/``lease_retry`` (seconds) override the agents' election
    timings (their RAVEN_LEASE_* settings) to see what other settings would give; None keeps
    the agents' defaults.
    """
    if os.geteuid() != 0:
        raise BenchError("the failover benchmark needs root (network namespaces)")
    if recover_timeout <= 0:
        raise BenchError(f"recover_timeout must be positive seconds, got {recover_timeout}")
    overrides: dict[str, str] = {}
    for name, value in (
        ("lease_duration", lease_duration),
        ("lease_renew", lease_renew),
        ("lease_retry", lease_retry),
    ):
        if value is not None:
            if value <= 0:
                raise BenchError(f"{name} must be positive seconds, got {value}")
            overrides[f"RAVEN_{name.upper()}"] = str(value)
    prefix = prefix or f"fo{os.getpid() % 100000}"

    def log(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    with (
        tempfile.TemporaryDirectory(prefix="raven-bench-failover-") as tmp,
        agent_environment(overrides),
    ):
        state = Path(state_dir) if state_dir else Path(tmp) / "lab"
        t0 = time.monotonic()
        with own_lab(prefix, state, log) as bench:
            bench.wait_cross_pool(60)
            log(f"lab ready after {time.monotonic() - t0:.1f} s")
            figures = run_cases(bench, recover_timeout=recover_timeout)
        figures["seconds_total"] = round(time.monotonic() - t0, 1)
    figures.update(
        {f"agent_{k.lower()[len('RAVEN_') :]}_s": float(v) for k, v in overrides.items()}
    )
    return figures
