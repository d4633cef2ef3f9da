"""``raven bench crosspool``: how fast the lab converges; what Raven costs a cross-pool TCP flow.

Measured in one run:

1. ``up_to_full_matrix_s``: a fresh lab with agents (own prefix and state dir) from the start of
   ``raven lab up`` until every pod pings every other pod.
2. ``raven_mbit_s``: iperf3 from the pod of a non-gateway edge-a node to the pod of a non-gateway
   edge-b node, i.e. member -> edge-a gateway -> relay -> edge-b gateway -> member, all Raven's.
3. ``handbuilt_mbit_s``: the same flow over a chain of throwaway namespaces built here with only
   ``ip``, ``wg``, ``iptables`` and ``wireguard-go`` and no Raven code, with the same hops as the
   lab path (pod, node, LAN switch, gateway, NAT router, Internet switch, relay, and back down),
   the same addresses, MTUs and MSS clamp. ``ratio`` = raven / handbuilt (goal: >= 0.9).

Rounds alternate Raven and hand-built so machine noise hits both alike; figures are medians.
Everything made here is torn down on success, error and Ctrl-C/SIGTERM: the lab by ``lab down``,
the chain's namespaces by name and its wireguard-go processes by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raven.lab import engine, matrix
from raven.lab import netns as lab_netns
from raven.lab.state import LabState
from raven.lab.topology import Lab, Pod, host_if_name
from raven.secretfile import write_secret

KUBECTL = "/usr/bin/kubectl"
WG_RUN_DIR = Path("/var/run/wireguard")
IPERF_PORT = 5201
TUNNEL_MTU = 1440  # what Raven derives from the lab's 1500-byte underlay (raven.mtu)
WG_PORT = 51820


class BenchError(Exception):
    """The benchmark could not measure; the message says what failed."""


# ---- small process helpers ------------------------------------------------------------------


def _sh(*argv: str, ns: str | None = None, timeout: float = 30, input: str | None = None) -> str:
    """Run a command (in namespace ``ns``); BenchError naming the command when it fails."""
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    try:
        res = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(full)}` did not finish within {timeout}s") from None
    if res.returncode != 0:
        raise BenchError(f"`{' '.join(full)}` failed: {(res.stderr or res.stdout).strip()}")
    return res.stdout


def _check_tools() -> None:
    missing = [t for t in ("ip", "wg", "wireguard-go", "iperf3", "iptables") if not shutil.which(t)]
    if not Path(KUBECTL).exists():
        missing.append(KUBECTL)
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)}")
    if os.geteuid() != 0:
        raise BenchError("needs root (network namespaces, iptables, wireguard-go)")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the `finally` blocks tear everything down."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _hold_sigterm() -> None:
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:
        pass  # not the main thread


# ---- iperf3 -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    mbit_s: float
    bytes: int
    retransmits: int


def iperf(client_ns: str, server_ns: str, server_ip: str, duration: float) -> Flow:
    """One TCP flow of ``duration`` seconds from ``client_ns`` to an iperf3 server in
    ``server_ns``; the rate the server received."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 5
        while f":{IPERF_PORT}" not in _sh("ss", "-Hltn", ns=server_ns):
            if server.poll() is not None or time.monotonic() > deadline:
                raise BenchError(
                    f"iperf3 server in {server_ns} did not start: "
                    f"{(server.stderr.read() if server.stderr else '').strip()}"
                )
            time.sleep(0.05)
        res = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                client_ns,
                "iperf3",
                "-c",
                server_ip,
                "-p",
                str(IPERF_PORT),
                "-t",
                f"{duration:g}",
                "-J",
            ],
            capture_output=True,
            text=True,
            timeout=duration + 30,
        )
        try:
            report = json.loads(res.stdout)
        except json.JSONDecodeError:
            report = {"error": (res.stderr or res.stdout).strip()[-300:]}
        if res.returncode != 0 or "error" in report:
            raise BenchError(f"iperf3 {client_ns} -> {server_ip} failed: {report.get('error')}")
        end = report["end"]
        return Flow(
            mbit_s=end["sum_received"]["bits_per_second"] / 1e6,
            bytes=int(end["sum_received"]["bytes"]),
            retransmits=int(end["sum_sent"].get("retransmits", 0)),
        )
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


# ---- the lab (Raven) --------------------------------------------------------------------------


@dataclass
class RavenPath:
    lab: Lab
    kubeconfig: Path
    client: Pod
    server: Pod
    gw_a: str  # node names
    relay: str
    gw_b: str

    def describe(self) -> str:
        return " > ".join([self.client.node, self.gw_a, self.relay, self.gw_b, self.server.node])

    def tunnel_tx_bytes(self) -> int:
        """Bytes edge-a's gateway has sent into its WireGuard device (to prove the path)."""
        node = next(n for n in self.lab.nodes if n.name == self.gw_a)
        out = _sh("wg", "show", self.lab.wg_ifname(self.gw_a), "transfer", ns=node.netns)
        return sum(int(line.split()[2]) for line in out.splitlines() if line.strip())


def _raven_cli() -> Path:
    return Path(sys.executable).parent / "raven"


def lab_up_to_full_matrix(settings: engine.Settings, timeout: float) -> tuple[float, Lab]:
    """Run ``raven lab up`` (with agents) and return seconds from its start to a full matrix."""
    env = {
        **os.environ,
        "RAVEN_LAB_PREFIX": settings.prefix,
        "RAVEN_LAB_DIR": str(settings.state_dir),
    }
    start = time.monotonic()
    # `lab up` itself waits for the matrix (up to 60 s) before it returns; we time the command
    # and then confirm the matrix ourselves, so a CLI that gave up does not count as success.
    res = subprocess.run(
        [str(_raven_cli()), "lab", "up"],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout + 120,
    )
    if res.returncode != 0:
        raise BenchError(f"raven lab up failed: {(res.stderr or res.stdout).strip()[-500:]}")
    _, lab = engine.load(settings)
    left = max(1.0, timeout - (time.monotonic() - start))
    if matrix.wait_full_matrix(lab, timeout=left) is None:
        raise BenchError(f"not every pod reached every other pod within {timeout:g}s of lab up")
    return time.monotonic() - start, lab


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def idle_cpu(settings: engine.Settings, seconds: float = 5.0) -> dict[str, float]:
    """CPU the lab's processes use per role while nothing changes, in % of one core (summed
    over all nodes): what running Raven costs a node when the cluster is quiet."""
    st, _ = engine.load(settings)
    roles = {r["role"] for r in st.of_kind("process")}
    pids = {role: [int(r["pid"]) for r in st.processes(role)] for role in roles}
    before = {role: sum(_cpu_ticks(p) for p in ps) for role, ps in pids.items()}
    time.sleep(seconds)
    hz = os.sysconf("SC_CLK_TCK")
    return {
        role: round(100 * (sum(_cpu_ticks(p) for p in ps) - before[role]) / hz / seconds, 1)
        for role, ps in sorted(pids.items())
    }


def _gateways(kubeconfig: Path) -> dict[str, str]:
    out = _sh(KUBECTL, "--kubeconfig", str(kubeconfig), "get", "gw", "-o", "json")
    return {
        g["metadata"]["name"]: g.get("status", {}).get("activeNode", "")
        for g in json.loads(out)["items"]
    }


def raven_path(lab: Lab, kubeconfig: Path, timeout: float = 20) -> RavenPath:
    """Pick the flow's ends: pods of non-gateway nodes of edge-a (client) and edge-b (server)."""
    relay_pool = next((p.name for p in lab.pools if p.relay), None)
    if relay_pool is None:
        raise BenchError("the lab's topology has no relay pool")
    wanted = ("edge-a", "edge-b", relay_pool)
    deadline = time.monotonic() + timeout
    while True:
        active = _gateways(kubeconfig)
        if all(active.get(p) for p in wanted):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"no active gateway for every pool of {wanted}: {active}")
        time.sleep(0.5)

    def member_pod(pool: str) -> Pod:
        for n in lab.nodes:
            if n.pool == pool and n.name != active[pool]:
                return n.pod
        raise BenchError(f"pool {pool} has no node besides its gateway {active[pool]}")

    return RavenPath(
        lab,
        kubeconfig,
        member_pod("edge-a"),
        member_pod("edge-b"),
        active["edge-a"],
        active[relay_pool],
        active["edge-b"],
    )


def measure_raven(path: RavenPath, duration: float) -> Flow:
    before = path.tunnel_tx_bytes()
    flow = iperf(path.client.netns, path.server.netns, str(path.server.ip), duration)
    sent = path.tunnel_tx_bytes() - before
    # A flow that bypassed the tunnel would measure something other than Raven.
    if sent < flow.bytes:
        raise BenchError(
            f"only {sent} bytes went into {path.gw_a}'s tunnel for a flow of "
            f"{flow.bytes} bytes: the traffic did not take the Raven path"
        )
    return flow


# ---- the hand-built chain ---------------------------------------------------------------------


@dataclass
class HandChain:
    """The lab's cross-pool path rebuilt by hand in namespaces ``<prefix>-*``.

    apod - anode - [anat br0] - agw(wg) - anat(NAT) - [inet br0] - relay(wg) - [inet br0] -
    bnat(NAT) - bgw(wg) - [bnat br0] - bnode - bpod, with the lab's addresses.
    """

    prefix: str
    namespaces: list[str] = field(default_factory=list)
    wg_procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    keydir: Path | None = None

    def ns(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    @property
    def client_ns(self) -> str:
        return self.ns("apod")

    @property
    def server_ns(self) -> str:
        return self.ns("bpod")

    server_ip = "10.244.23.2"
    client_ip = "10.244.13.2"

    def wg_name(self, short: str) -> str:
        return f"{self.prefix}w{short}"  # host-unique: wireguard-go's sockets are host-wide

    # -- building blocks (plain ip/wg/iptables) --

    def _netns(self, short: str) -> str:
        name = self.ns(short)
        if Path("/run/netns", name).exists():
            raise BenchError(f"namespace {name} already exists; choose another prefix")
        self.namespaces.append(name)  # recorded first, so teardown finds a half-made one
        _sh("ip", "netns", "add", name)
        _sh("ip", "link", "set", "lo", "up", ns=name)
        return name

    def _veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        _sh("ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
        _sh("ip", "-n", a, "link", "set", a_if, "up")
        _sh("ip", "-n", b, "link", "set", b_if, "up")

    def _bridge(self, ns: str) -> None:
        _sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", ns, "link", "set", "br0", "up")

    def _port(self, switch: str, port: str) -> None:
        _sh("ip", "-n", switch, "link", "set", port, "master", "br0")

    def _forward(self, ns: str) -> None:
        _sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=ns)

    def _wg(self, ns: str, short: str, args: list[str], routes: list[str]) -> str:
        name = self.wg_name(short)
        sock = WG_RUN_DIR / f"{name}.sock"
        if sock.exists():
            raise BenchError(f"WireGuard socket {sock} exists: interface name {name} is in use")
        assert self.keydir is not None
        key = self.keydir / short
        write_secret(key, _sh("wg", "genkey"))
        # -f keeps wireguard-go in the foreground, so the PID we hold is the one to stop. Its
        # own session, like Raven's (each agent's wireguard-go lives in that agent's session):
        # with sched_autogroup the scheduler shares CPU per session, so sharing ours with
        # iperf3 would skew the comparison.
        self.wg_procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", ns, "wireguard-go", "-f", name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not (
            sock.exists()
            and subprocess.run(
                ["ip", "-n", ns, "link", "show", name], capture_output=True
            ).returncode
            == 0
        ):
            if self.wg_procs[name].poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"wireguard-go {name} in {ns} did not come up")
            time.sleep(0.05)
        _sh("wg", "set", name, "private-key", str(key), *args, ns=ns)
        _sh("ip", "link", "set", name, "mtu", str(TUNNEL_MTU), "up", ns=ns)
        for cidr in routes:
            _sh("ip", "route", "add", cidr, "dev", name, "mtu", str(TUNNEL_MTU), ns=ns)
        return _sh("wg", "pubkey", input=key.read_text()).strip()

    def _site(
        self, side: str, lan: str, public_ip: str, local_cidr: str, pod_ip: str, remote_cidr: str
    ) -> dict[str, str]:
        """One edge site: NAT router with a LAN switch, a gateway node and a member node with
        its pod. Returns the namespace names."""
        nat, gw, node, pod = (self._netns(f"{side}{x}") for x in ("nat", "gw", "node", "pod"))
        inet = self.ns("inet")
        self._veth(nat, "eth0", inet, f"nat-{side}")
        self._port(inet, f"nat-{side}")
        _sh("ip", "-n", nat, "addr", "add", f"{public_ip}/24", "dev", "eth0")
        self._bridge(nat)
        _sh("ip", "-n", nat, "addr", "add", f"{lan}.1/24", "dev", "br0")
        self._forward(nat)
        _sh(
            "iptables",
            "-w",
            "5",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            f"{lan}.0/24",
            "-o",
            "eth0",
            "-j",
            "MASQUERADE",
            ns=nat,
        )
        pod_gw = local_cidr.rsplit(".", 1)[0] + ".1"
        for host, ip in ((gw, f"{lan}.10"), (node, f"{lan}.12")):
            port = host.rsplit("-", 1)[1]
            self._veth(host, "eth0", nat, port)
            self._port(nat, port)
            _sh("ip", "-n", host, "addr", "add", f"{ip}/24", "dev", "eth0")
            _sh("ip", "-n", host, "route", "add", "default", "via", f"{lan}.1")
            self._forward(host)
        # the member node and its pod, as the lab's CNI wires them
        self._veth(node, "pod0", pod, "eth0")
        _sh("ip", "-n", node, "addr", "add", f"{pod_gw}/32", "dev", "pod0")
        _sh("ip", "-n", node, "route", "add", f"{pod_ip}/32", "dev", "pod0")
        _sh("ip", "-n", pod, "addr", "add", f"{pod_ip}/32", "dev", "eth0")
        _sh("ip", "-n", pod, "route", "add", f"{pod_gw}/32", "dev", "eth0")
        _sh("ip", "-n", pod, "route", "add", "default", "via", pod_gw, "dev", "eth0")
        # member -> its gateway for the other site's pods (Raven: a rule and its own table)
        _sh(
            "ip",
            "-n",
            node,
            "route",
            "add",
            remote_cidr,
            "via",
            f"{lan}.10",
            "dev",
            "eth0",
            "onlink",
            "mtu",
            str(TUNNEL_MTU),
        )
        _sh("ip", "-n", gw, "route", "add", local_cidr, "via", f"{lan}.12")
        return {"gw": gw}

    def build(self) -> None:
        self.keydir = Path(tempfile.mkdtemp(prefix=f"raven-bench-{self.prefix}-"))
        inet = self._netns("inet")
        self._bridge(inet)
        relay = self._netns("relay")
        self._veth(relay, "eth0", inet, "relay")
        self._port(inet, "relay")
        _sh("ip", "-n", relay, "addr", "add", "198.18.0.10/24", "dev", "eth0")
        self._forward(relay)
        a_cidr, b_cidr = "10.244.13.0/24", "10.244.23.0/24"
        a = self._site("a", "192.168.10", "198.18.0.3", a_cidr, self.client_ip, b_cidr)
        b = self._site("b", "192.168.20", "198.18.0.4", b_cidr, self.server_ip, a_cidr)

        relay_pub = self._wg(relay, "r", ["listen-port", str(WG_PORT)], [a_cidr, b_cidr])
        peers = {}
        for side, site, local, remote in (("a", a, a_cidr, b_cidr), ("b", b, b_cidr, a_cidr)):
            peers[side] = (
                self._wg(
                    site["gw"],
                    side,
                    [
                        "peer",
                        relay_pub,
                        "endpoint",
                        f"198.18.0.10:{WG_PORT}",
                        "allowed-ips",
                        remote,
                        "persistent-keepalive",
                        "5",
                    ],
                    [remote],
                ),
                local,
            )
            # the clamp Raven's gateway installs (mangle FORWARD, SYN out of the tunnel)
            _sh(
                "iptables",
                "-w",
                "5",
                "-t",
                "mangle",
                "-A",
                "FORWARD",
                "-o",
                self.wg_name(side),
                "-p",
                "tcp",
                "--tcp-flags",
                "SYN,RST",
                "SYN",
                "-j",
                "TCPMSS",
                "--clamp-mss-to-pmtu",
                ns=site["gw"],
            )
        relay_args: list[str] = []
        for pub, local in peers.values():
            relay_args += ["peer", pub, "allowed-ips", local]
        _sh("wg", "set", self.wg_name("r"), *relay_args, ns=relay)

        deadline = time.monotonic() + 15
        while (
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.client_ns,
                    "ping",
                    "-n",
                    "-q",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    self.server_ip,
                ],
                capture_output=True,
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise BenchError("the hand-built chain does not pass a ping within 15 s")

    def teardown(self) -> list[str]:
        """Stop our wireguard-go processes by PID, delete our namespaces; returns problems."""
        problems = []
        for name, proc in self.wg_procs.items():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            # the socket is named for our interface and its owner is gone
            (WG_RUN_DIR / f"{name}.sock").unlink(missing_ok=True)
        # Every namespace of the chain's own prefix is ours (making one that already exists is
        # refused), also one an interrupted `ip netns add` left behind unrecorded or half-made.
        ours = set(self.namespaces)
        if Path("/run/netns").is_dir():
            ours |= {n for n in os.listdir("/run/netns") if n.startswith(f"{self.prefix}-")}
        for ns in sorted(ours, key=lambda n: (n not in self.namespaces, n), reverse=True):
            if Path("/run/netns", ns).exists():
                res = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
                if res.returncode != 0 and Path("/run/netns", ns).exists():
                    problems.append(f"ip netns del {ns}: {res.stderr.strip()}")
        if self.keydir is not None:
            shutil.rmtree(self.keydir, ignore_errors=True)
        return problems


# ---- the benchmark ----------------------------------------------------------------------------


def run(
    *,
    duration: float = 5.0,
    rounds: int = 3,
    skip_handbuilt: bool = False,
    prefix: str | None = None,
    state_dir: Path | str | None = None,
    matrix_timeout: float = 60.0,
) -> dict[str, Any]:
    """Bring up a fresh lab, time it to a full ping matrix, then compare Raven's cross-pool TCP
    throughput with the hand-built chain's. Figures are medians over ``rounds``."""
    if not 0.5 <= duration <= 600:
        raise BenchError(f"duration {duration!r}: expected 0.5..600 seconds")
    if not 1 <= rounds <= 50:
        raise BenchError(f"rounds {rounds!r}: expected 1..50")
    _check_tools()
    tag = f"{os.getpid() % 100000}"
    lab_prefix = prefix or f"bx{tag}"
    try:
        settings = engine.settings_from_env(None, lab_prefix)
    except ValueError as e:
        raise BenchError(f"prefix {lab_prefix!r}: {e}") from None
    # Refuse before creating anything: the teardown below removes everything named with these
    # prefixes, so it must never run over somebody else's lab or chain.
    if state_dir is not None and LabState.load(Path(state_dir)) is not None:
        raise BenchError(f"a lab already uses state dir {state_dir}")
    in_use = [
        n
        for n in lab_netns.list_netns()
        if n.startswith(f"{lab_prefix}-") or n.startswith(f"{lab_prefix}h-")
    ]
    if host_if_name(lab_prefix) in lab_netns.link_names(None):
        in_use.append(host_if_name(lab_prefix))
    if in_use:
        raise BenchError(
            f"prefix {lab_prefix!r} is in use ({', '.join(in_use[:5])}); choose another --prefix"
        )
    scratch = None
    if state_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="raven-bench-crosspool-"))
        state_dir = scratch / "lab"
    settings.state_dir = Path(state_dir)
    chain = HandChain(prefix=f"{lab_prefix}h")

    figures: dict[str, Any] = {}
    with _sigterm_as_interrupt():
        try:
            seconds, lab = lab_up_to_full_matrix(settings, matrix_timeout)
            figures["up_to_full_matrix_s"] = round(seconds, 2)
            figures["pairs"] = len(matrix.pairs(lab))
            for role, percent in idle_cpu(settings).items():
                figures[f"idle_cpu_{role.replace('-', '_')}_percent"] = percent
            path = raven_path(lab, settings.state_dir / engine.HOST_KUBECONFIG)
            figures["raven_path"] = path.describe()
            if not skip_handbuilt:
                chain.build()
            raven: list[Flow] = []
            hand: list[Flow] = []
            for _ in range(rounds):  # alternate, so noise hits both alike
                raven.append(measure_raven(path, duration))
                if not skip_handbuilt:
                    hand.append(iperf(chain.client_ns, chain.server_ns, chain.server_ip, duration))
            figures["raven_mbit_s"] = round(statistics.median(f.mbit_s for f in raven), 1)
            figures["raven_retransmits"] = int(statistics.median(f.retransmits for f in raven))
            if hand:
                figures["handbuilt_mbit_s"] = round(statistics.median(f.mbit_s for f in hand), 1)
                figures["handbuilt_retransmits"] = int(
                    statistics.median(f.retransmits for f in hand)
                )
                figures["ratio"] = round(figures["raven_mbit_s"] / figures["handbuilt_mbit_s"], 3)
            figures["duration_s"] = duration
            figures["rounds"] = rounds
            # the machine's load says how far to trust the figures (other labs, other tests)
            figures["load_1m"] = round(os.getloadavg()[0], 2)
        except engine.LabError as e:
            raise BenchError(str(e)) from e
        finally:
            _hold_sigterm()  # a second SIGTERM must not cut the teardown short
            problems = chain.teardown()
            problems += engine.down(settings, log=lambda _m: None)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            if problems:
                print("warning: " + "; ".join(problems), file=sys.stderr)
    return figures
