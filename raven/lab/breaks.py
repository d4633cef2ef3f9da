"""``raven lab break KIND [TARGET]`` and ``raven lab fix``: faults an agent cannot or must not
repair by itself, to prove ``raven diagnose`` against.

Each kind is planned as a list of actions (pure, :func:`plan_break`, from the lab and a few
facts read beforehand: who holds each pool's Lease, which process serves a WireGuard device);
the executor carries them out one at a time and records, before each, the action that undoes it
with the value it found, in ``lab.json`` (kind ``break``). ``fix`` undoes exactly that, newest
first, and ``down`` needs nothing extra: the namespaces and the API server's objects go with
the lab (paused processes are resumed by ``fix`` and ended by ``down``).

Kinds (TARGET and its default):

- ``nat-udp [POOL]``: the NAT router of an edge pool drops the tunnel's UDP port (51820) both
  ways (chain ``<PREFIX>-BRKUDP`` first in FORWARD). Default: the first pool behind NAT.
- ``rp-filter [NODE]``: strict reverse-path filtering (``rp_filter=1`` on ``all`` and on its
  uplink) on a member of a routed pool that reaches its gateway over VXLAN, so the replies that
  come back by the underlay are dropped. Default: a node of the first routed pool that is not
  its gateway (the lab must have one: ``netns-lab/routed-lan.yaml``).
- ``mtu [POOL]``: a path-MTU black hole between an edge pool and the Internet: the NAT router's
  uplink MTU drops to 1400 and the router drops every ICMP "fragmentation needed" (chain
  ``<PREFIX>-BRKMTU`` first in OUTPUT and FORWARD). Small packets pass, full-size ones vanish.
- ``forwarding [NODE]``: IPv4 forwarding off on a gateway's interfaces (``net.ipv4.conf.IF.
  forwarding=0`` on its uplink, pod link and WireGuard device). Default: the first edge pool's
  gateway. (``net.ipv4.ip_forward=0`` is not used: the lab's agents run as root in their
  node's namespace and switch it back on at their next resync, which a DaemonSet's agent,
  whose ``/proc/sys`` is read-only, cannot do.)
- ``relay-wg``: the relay's wireguard-go stopped (SIGSTOP): its device stays, nothing answers.
  A killed one would be started again by the relay's agent within a second.
- ``bad-key [NODE]``: a wrong (valid) WireGuard key in the node's ``raven.io/public-key``
  annotation. Its own agent would publish the right key again at once, so the lab first pauses
  (SIGSTOP) the agents of the node's pool, whose data path stays as they left it. Default: the
  gateway of the last pool behind NAT.
- ``overlap [POOL]``: a Node joins the pool with a pod CIDR that overlaps another pool's (half
  of the first other non-relay pool's first pod CIDR). It loses the clash (created later), and
  its pool stops routing the CIDR it overlaps. Default: the last pool behind NAT.
- ``api [NODE]``: the node's own packets to the API server are dropped (chain ``<PREFIX>-BRKAPI``
  first in OUTPUT). Default: a member of the first pool behind NAT.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raven.lab.faults import Block, install, uninstall
from raven.lab.netns import in_netns
from raven.lab.state import LabState, is_same_process, proc_start_time
from raven.lab.topology import POD_IF, UPLINK_IF, Lab, Node
from raven.names import POOL_LABEL, PUBLIC_KEY_ANNOTATION

#: The tunnel's UDP port (a Gateway's default spec.tunnelPort, which the lab keeps).
TUNNEL_PORT = 51820
#: The uplink MTU of a NAT router with a black hole: less than a full WireGuard packet (1500).
BLACKHOLE_MTU = 1400

KINDS: dict[str, str] = {
    "nat-udp": "POOL: its NAT router drops the tunnel's UDP port",
    "rp-filter": "NODE: strict rp_filter on a member of a routed pool",
    "mtu": "POOL: a smaller MTU out of its NAT router, ICMP 'fragmentation needed' dropped",
    "forwarding": "NODE: forwarding off on a gateway's interfaces",
    "relay-wg": "the relay's wireguard-go stopped (SIGSTOP)",
    "bad-key": "NODE: a wrong key in its public-key annotation (its pool's agents paused)",
    "overlap": "POOL: a new Node of the pool claims another pool's pod CIDR",
    "api": "NODE: its packets to the API server are dropped",
}


class BreakError(RuntimeError):
    """A break refused (unknown kind or target, already broken) or failed."""


# ---- actions (values) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Iptables:
    """A chain of rules in one namespace's filter table, jumped to first from ``hooks``."""

    netns: str
    chain: str
    hooks: tuple[str, ...]
    rules: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Sysctl:
    netns: str
    key: str  # net.ipv4.conf.eth0.rp_filter
    value: str


@dataclass(frozen=True)
class Mtu:
    netns: str
    dev: str
    mtu: int


@dataclass(frozen=True)
class Signal:
    """Pause (STOP) or resume (CONT) a process, only while it is the one found (start time)."""

    pid: int
    start_time: int | None
    sig: str  # "STOP" or "CONT"
    what: str = ""


@dataclass(frozen=True)
class Annotate:
    node: str
    key: str
    value: str | None  # None removes it


@dataclass(frozen=True)
class CreateNode:
    body: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class DeleteNode:
    name: str


Action = Iptables | Sysctl | Mtu | Signal | Annotate | CreateNode | DeleteNode
_ACTIONS: dict[str, type] = {
    c.__name__: c for c in (Iptables, Sysctl, Mtu, Signal, Annotate, CreateNode, DeleteNode)
}


def to_record(action: Action) -> dict[str, Any]:
    return {"op": type(action).__name__, **asdict(action)}


def from_record(rec: Mapping[str, Any]) -> Action:
    fields = {k: v for k, v in rec.items() if k != "op"}
    if rec["op"] == "Iptables":
        fields["hooks"] = tuple(fields["hooks"])
        fields["rules"] = tuple(tuple(r) for r in fields["rules"])
    action: Action = _ACTIONS[rec["op"]](**fields)
    return action


# ---- planning (pure) --------------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What a plan needs to know of the running lab, read beforehand."""

    holders: Mapping[str, str] = field(default_factory=dict)  # pool -> Lease holder
    relay: str | None = None  # the relay pool
    wireguard_go: Mapping[str, tuple[int, int | None]] = field(default_factory=dict)  # node ->
    agents: Mapping[str, tuple[int, int | None]] = field(default_factory=dict)  # node -> pid
    new_key: str = ""  # a fresh public key no node has (bad-key)


@dataclass(frozen=True)
class Plan:
    kind: str
    target: str
    actions: tuple[Action, ...]
    summary: str


def _chain(lab: Lab, what: str) -> str:
    return f"{lab.prefix.upper()}-{what}"


def _nat_pools(lab: Lab) -> list[str]:
    return [r.pool for r in lab.routers]


def _node(lab: Lab, name: str) -> Node:
    node = next((n for n in lab.nodes if n.name == name), None)
    if node is None:
        known = ", ".join(n.name for n in lab.nodes)
        raise BreakError(f"no such lab node: {name!r} (nodes: {known})")
    return node


def _nat_pool(lab: Lab, target: str | None, *, last: bool = False) -> str:
    pools = _nat_pools(lab)
    if not pools:
        raise BreakError("the lab has no pool behind a NAT router")
    if target is None:
        return pools[-1] if last else pools[0]
    if target not in pools:
        raise BreakError(
            f"{target!r} is not a pool behind a NAT router (those: {', '.join(pools)})"
        )
    return target


def _gateway_of(lab: Lab, facts: Facts, pool: str) -> Node:
    holder = facts.holders.get(pool)
    if holder is None:
        raise BreakError(f"pool {pool} has no gateway right now (nobody holds its Lease)")
    return _node(lab, holder)


def _routed_pools(lab: Lab) -> list[str]:
    return [lr.pool for lr in lab.lan_routers]


def plan_break(lab: Lab, kind: str, target: str | None, facts: Facts) -> Plan:
    """The actions that break ``kind`` at ``target`` (or its default). BreakError naming the
    kinds or targets there are."""
    if kind not in KINDS:
        raise BreakError(f"no such fault kind: {kind!r} (kinds: {', '.join(KINDS)})")
    if kind == "nat-udp":
        pool = _nat_pool(lab, target)
        router = next(r for r in lab.routers if r.pool == pool)
        rules = tuple(
            ("-p", "udp", flag, str(TUNNEL_PORT), "-j", "DROP") for flag in ("--dport", "--sport")
        )
        block = Iptables(router.netns, _chain(lab, "BRKUDP"), ("FORWARD",), rules)
        return Plan(kind, pool, (block,), f"{router.netns} drops UDP port {TUNNEL_PORT}")
    if kind == "mtu":
        pool = _nat_pool(lab, target)
        router = next(r for r in lab.routers if r.pool == pool)
        rules = (("-p", "icmp", "--icmp-type", "fragmentation-needed", "-j", "DROP"),)
        block = Iptables(router.netns, _chain(lab, "BRKMTU"), ("OUTPUT", "FORWARD"), rules)
        actions: tuple[Action, ...] = (block, Mtu(router.netns, UPLINK_IF, BLACKHOLE_MTU))
        summary = (
            f"{router.netns} {UPLINK_IF} MTU {BLACKHOLE_MTU}, ICMP fragmentation-needed dropped"
        )
        return Plan(kind, pool, actions, summary)
    if kind == "rp-filter":
        routed = _routed_pools(lab)
        if target is None:
            if not routed:
                raise BreakError(
                    "strict rp_filter bites a member that reaches its gateway over VXLAN, and this"
                    " lab has no routed pool: use netns-lab/routed-lan.yaml"
                )
            holder = facts.holders.get(routed[0])
            members = [n for n in lab.nodes if n.pool == routed[0] and n.name != holder]
            gw = next((n for n in lab.nodes if n.name == holder), None)
            off_link = [
                n
                for n in members
                if gw is None or n.switch_netns != gw.switch_netns or n.bridge != gw.bridge
            ]
            node = (off_link or members)[-1]
        else:
            node = _node(lab, target)
        rp = tuple(
            Sysctl(node.netns, f"net.ipv4.conf.{dev}.rp_filter", "1") for dev in ("all", UPLINK_IF)
        )
        return Plan(kind, node.name, rp, f"{node.netns}: rp_filter=1 on all and {UPLINK_IF}")
    if kind == "forwarding":
        node = _node(lab, target) if target else _gateway_of(lab, facts, _nat_pool(lab, None))
        devs = (UPLINK_IF, POD_IF, lab.wg_ifname(node.name))
        off = tuple(Sysctl(node.netns, f"net.ipv4.conf.{d}.forwarding", "0") for d in devs)
        return Plan(kind, node.name, off, f"{node.netns}: forwarding=0 on {', '.join(devs)}")
    if kind == "relay-wg":
        if facts.relay is None:
            raise BreakError("the lab has no relay pool")
        node = _node(lab, target) if target else _gateway_of(lab, facts, facts.relay)
        found = facts.wireguard_go.get(node.name)
        if found is None:
            raise BreakError(f"no wireguard-go serves {lab.wg_ifname(node.name)} on {node.name}")
        pid, start = found
        what = f"wireguard-go {lab.wg_ifname(node.name)}"
        return Plan(
            kind,
            node.name,
            (Signal(pid, start, "STOP", what),),
            f"{what} (pid {pid}) on {node.name} stopped",
        )
    if kind == "bad-key":
        node = (
            _node(lab, target)
            if target
            else _gateway_of(lab, facts, _nat_pool(lab, None, last=True))
        )
        if not facts.new_key:
            raise BreakError("no fresh key to publish")
        paused = [
            Signal(*facts.agents[n.name], "STOP", f"agent of {n.name}")
            for n in lab.nodes
            if n.pool == node.pool and n.name in facts.agents
        ]
        summary = (
            f"{node.name}'s {PUBLIC_KEY_ANNOTATION} is {facts.new_key}; the agents of pool"
            f" {node.pool} are paused"
        )
        bad = Annotate(node.name, PUBLIC_KEY_ANNOTATION, facts.new_key)
        return Plan(kind, node.name, (*paused, bad), summary)
    if kind == "overlap":
        pool = _nat_pool(lab, target, last=True) if target is None else target
        if pool not in {p.name for p in lab.pools}:
            raise BreakError(f"no such lab pool: {pool!r}")
        victim = next(
            (n for n in lab.nodes if n.pool not in (pool, facts.relay)),
            next((n for n in lab.nodes if n.pool != pool), None),
        )
        if victim is None:
            raise BreakError("an overlap needs another pool")
        cidr = next(victim.pod_cidr.subnets(prefixlen_diff=1))
        name = f"{pool}-overlap"
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {POOL_LABEL: pool}},
            "spec": {"podCIDR": str(cidr), "podCIDRs": [str(cidr)]},
        }
        summary = (
            f"Node {name} (pool {pool}) claims {cidr}, inside {victim.name}'s {victim.pod_cidr}"
        )
        return Plan(kind, pool, (CreateNode(body),), summary)
    # api
    if target is None:
        pool = _nat_pool(lab, None)
        holder = facts.holders.get(pool)
        node = next(n for n in reversed(lab.nodes) if n.pool == pool and n.name != holder)
    else:
        node = _node(lab, target)
    rule = ("-d", str(lab.api_ip), "-p", "tcp", "--dport", str(lab.api_port), "-j", "DROP")
    block = Iptables(node.netns, _chain(lab, "BRKAPI"), ("OUTPUT",), (rule,))
    return Plan(kind, node.name, (block,), f"{node.netns} drops its packets to {lab.api_ip}")


# ---- the edge: carry out and undo ------------------------------------------------------------


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise BreakError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


class Kube:
    """The few API calls a break makes, with the lab's admin kubeconfig."""

    def __init__(self, kubeconfig: Path, lease_namespace: str) -> None:
        from kubernetes import client, config  # a slow import, only needed here

        # Any: the generated client's optional fields would need a check at every step.
        self._client: Any = config.new_client_from_config(config_file=str(kubeconfig))
        self.core: Any = client.CoreV1Api(self._client)
        self.coord: Any = client.CoordinationV1Api(self._client)
        self.objects: Any = client.CustomObjectsApi(self._client)
        self.lease_namespace = lease_namespace

    def close(self) -> None:
        self._client.close()

    def holders(self) -> dict[str, str]:
        out = {}
        for lease in self.coord.list_namespaced_lease(self.lease_namespace).items:
            name, holder = lease.metadata.name, lease.spec.holder_identity
            if name.startswith("raven-gw-") and holder:
                out[name[len("raven-gw-") :]] = holder
        return out

    def relay(self) -> str | None:
        gws = self.objects.list_cluster_custom_object("raven.io", "v1alpha1", "gateways")
        return next(
            (g["metadata"]["name"] for g in gws["items"] if (g.get("spec") or {}).get("relay")),
            None,
        )

    def annotation(self, node: str, key: str) -> str | None:
        meta = self.core.read_node(node).metadata
        return (meta.annotations or {}).get(key)

    def annotate(self, node: str, key: str, value: str | None) -> None:
        self.core.patch_node(node, {"metadata": {"annotations": {key: value}}})

    def create_node(self, body: dict[str, Any]) -> None:
        self.core.create_node(body)

    def delete_node(self, name: str) -> bool:
        from kubernetes.client import ApiException

        try:
            self.core.delete_node(name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True


def fresh_public_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    raw = (
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return base64.b64encode(raw).decode()


def read_facts(lab: Lab, st: LabState, kube: Kube) -> Facts:
    from gateway.wireguard import find_wireguard_go

    wg = {}
    for n in lab.nodes:
        pid = find_wireguard_go(lab.wg_ifname(n.name))
        if pid is not None:
            wg[n.name] = (pid, proc_start_time(pid))
    agents = {
        r["name"]: (int(r["pid"]), r.get("start_time"))
        for r in st.processes("agent")
        if is_same_process(int(r["pid"]), r.get("start_time"))
    }
    return Facts(kube.holders(), kube.relay(), wg, agents, fresh_public_key())


def _sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def _apply(action: Action, kube: Callable[[], Kube]) -> Action | None:
    """Carry out one action; the action that undoes it (None: nothing to undo)."""
    match action:
        case Iptables(netns=ns, chain=chain, hooks=hooks, rules=rules):
            install(Block(ns, chain, hooks, rules))
            return Iptables(ns, chain, hooks, ())
        case Sysctl(netns=ns, key=key, value=value):
            try:
                old = _run(in_netns(ns, ["cat", _sysctl_path(key)])).strip()
            except BreakError:
                return None  # no such interface here (a member has no WireGuard device)
            _run(in_netns(ns, ["sysctl", "-qw", f"{key}={value}"]))
            return Sysctl(ns, key, old)
        case Mtu(netns=ns, dev=dev, mtu=mtu):
            link = json.loads(_run(["ip", "-n", ns, "-j", "link", "show", "dev", dev]))[0]
            _run(["ip", "-n", ns, "link", "set", "dev", dev, "mtu", str(mtu)])
            return Mtu(ns, dev, int(link["mtu"]))
        case Signal(pid=pid, start_time=start, sig=sig, what=what):
            if not is_same_process(pid, start):
                raise BreakError(f"{what or 'process'} (pid {pid}) is not running")
            os.kill(pid, getattr(signal, f"SIG{sig}"))
            return Signal(pid, start, "CONT" if sig == "STOP" else "STOP", what)
        case Annotate(node=node, key=key, value=wanted):
            k = kube()
            before = k.annotation(node, key)
            k.annotate(node, key, wanted)
            return Annotate(node, key, before)
        case CreateNode(body=body):
            kube().create_node(body)
            return DeleteNode(body["metadata"]["name"])
        case DeleteNode(name=name):
            kube().delete_node(name)
            return None
    raise BreakError(f"unknown action {action!r}")


def _undo(action: Action, kube: Callable[[], Kube]) -> None:
    match action:
        case Iptables(netns=ns, chain=chain, hooks=hooks):
            if ns in _present_netns():
                uninstall(ns, chain, list(hooks))
        case Signal(pid=pid, start_time=start, sig=sig):
            if is_same_process(pid, start):
                os.kill(pid, getattr(signal, f"SIG{sig}"))
        case Sysctl(netns=ns) | Mtu(netns=ns):
            if ns in _present_netns():
                _apply(action, kube)
        case _:
            _apply(action, kube)


def _present_netns() -> set[str]:
    from raven.lab.netns import list_netns

    return set(list_netns())


def records(st: LabState, kind: str | None = None) -> list[dict[str, Any]]:
    return [r for r in st.of_kind("break") if kind is None or r["break"] == kind]


def breaks(st: LabState) -> list[dict[str, str]]:
    """What is broken now: ``[{"kind": "mtu", "target": "edge-a", "summary": ...}]``."""
    return [
        {"kind": r["break"], "target": r["target"], "summary": r["summary"]}
        for r in st.of_kind("break")
    ]


def apply_break(lab: Lab, st: LabState, plan: Plan, kube: Callable[[], Kube]) -> None:
    """Carry ``plan`` out, recording each undo before the next step; on a failure, undo what
    was done and re-raise."""
    if records(st, plan.kind):
        raise BreakError(f"{plan.kind} is broken already; `raven lab fix {plan.kind}` first")
    st.add("break", **{"break": plan.kind}, target=plan.target, summary=plan.summary, undo=[])
    rec = st.of_kind("break")[-1]
    try:
        for action in plan.actions:
            undo = _apply(action, kube)
            if undo is not None:
                rec["undo"].append(to_record(undo))
                st.save()
    except Exception:  # whatever failed, leave nothing half-broken behind
        fix(st, plan.kind, kube)
        raise


def fix(st: LabState, kind: str | None, kube: Callable[[], Kube]) -> list[str]:
    """Undo the breaks of ``kind`` (every one when None), newest first; their kinds."""
    done = []
    for rec in reversed(records(st, kind)):
        for undo in reversed(rec["undo"]):
            _undo(from_record(undo), kube)
        st.forget([rec])
        done.append(str(rec["break"]))
    return done


def resume_paused(st: LabState) -> None:
    """Resume every process a break paused (for ``down``, which then ends them all)."""
    for rec in records(st):
        for undo in rec["undo"]:
            action = from_record(undo)
            if isinstance(action, Signal) and action.sig == "CONT":
                _undo(action, lambda: None)  # type: ignore[arg-type,return-value]


def describe_kinds() -> str:
    return "; ".join(f"{k} ({v})" for k, v in KINDS.items())


__all__ = [
    "KINDS",
    "BreakError",
    "Facts",
    "Kube",
    "Plan",
    "apply_break",
    "breaks",
    "fix",
    "plan_break",
    "read_facts",
]
