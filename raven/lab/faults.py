"""``raven lab cut | heal``: take a pool's or a node's path to the cloud away, and give it back.

What a cut does, by target:

- an edge pool (behind a NAT router) is cut at its router: chain ``<PREFIX>-CUT`` in the router's
  filter table, jumped to first from FORWARD, drops everything forwarded to or from its uplink.
  The LAN bridge keeps switching, so the pool's nodes and pods still reach each other.
- a public pool (the cloud) has no router: each of its nodes gets chain ``<PREFIX>-CUTPOOL``
  (as below), so the pool's nodes reach each other and nothing else.
- a node is cut in its own namespace: chain ``<PREFIX>-CUTNODE``, jumped to first from INPUT,
  OUTPUT and FORWARD, drops every packet in or out of its uplink whose other end lies outside
  its pool: its pool's LAN (for a public pool: its nodes' addresses) and its pool's pod CIDRs
  stay reachable, the API server, the relay and every other pool do not.

Each cut is recorded in ``lab.json`` (kind ``cut``) with the chains it added, so ``status``
shows it and ``heal`` removes exactly those chains and their jumps. Both are idempotent; rules
are loaded with one ``iptables-restore --noflush`` per namespace, so a cut is all or nothing.
``down`` needs nothing extra: the chains go with the namespaces.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

from raven.lab.netns import in_netns
from raven.lab.state import LabState
from raven.lab.topology import UPLINK_IF, Lab, Node

POOL, NODE = "pool", "node"


class FaultError(RuntimeError):
    """A cut or heal refused (unknown target) or failed (iptables said no)."""


@dataclass(frozen=True)
class Target:
    scope: str  # POOL or NODE
    name: str

    def __str__(self) -> str:
        return f"{self.scope} {self.name}"


@dataclass(frozen=True)
class Block:
    """One chain of drop rules in one namespace, jumped to first from ``hooks``."""

    netns: str
    chain: str
    hooks: tuple[str, ...]
    rules: tuple[tuple[str, ...], ...]  # arguments after ``-A <chain>``

    def record(self) -> dict[str, object]:
        return {"netns": self.netns, "chain": self.chain, "hooks": list(self.hooks)}


def resolve_target(lab: Lab, text: str) -> Target:
    """``edge-a`` (a pool), ``edge-a-1`` (a node), or ``pool/NAME`` / ``node/NAME`` when a name
    is both. FaultError naming the pools and nodes there are."""
    pools = [p.name for p in lab.pools]
    nodes = [n.name for n in lab.nodes]
    scope, sep, name = text.partition("/")
    if sep:
        if scope not in (POOL, NODE):
            raise FaultError(f"{text!r}: expected pool/NAME or node/NAME")
        if name not in (pools if scope == POOL else nodes):
            known = pools if scope == POOL else nodes
            raise FaultError(f"no such lab {scope}: {name!r} ({scope}s: {', '.join(known)})")
        return Target(scope, name)
    if text in pools and text in nodes:
        raise FaultError(f"{text!r} is both a pool and a node: say pool/{text} or node/{text}")
    if text in pools:
        return Target(POOL, text)
    if text in nodes:
        return Target(NODE, text)
    raise FaultError(
        f"no such lab pool or node: {text!r} (pools: {', '.join(pools)}; nodes: {', '.join(nodes)})"
    )


def _chain(lab: Lab, what: str) -> str:
    return f"{lab.prefix.upper()}-{what}"


def _pool_nets(lab: Lab, pool: str) -> list[str]:
    """What "inside the pool" means for a cut: its LAN and the site's other subnets (for a
    public pool: its nodes' addresses), and its pods."""
    members = [n for n in lab.nodes if n.pool == pool]
    router = next((r for r in lab.routers if r.pool == pool), None)
    if router is None:
        nets = [f"{n.ip}/32" for n in members]
    else:
        spec = next(p for p in lab.pools if p.name == pool)
        nets = [str(router.lan), *(str(s) for s in getattr(spec, "subnets", ()))]
    return nets + [str(n.pod_cidr) for n in members]


def _isolate(lab: Lab, node: Node, chain: str) -> Block:
    rules: list[tuple[str, ...]] = []
    for net in _pool_nets(lab, node.pool):
        ipaddress.ip_network(net)  # never hand iptables anything but a network
        rules.append(("-o", UPLINK_IF, "-d", net, "-j", "RETURN"))
        rules.append(("-i", UPLINK_IF, "-s", net, "-j", "RETURN"))
    rules += [("-o", UPLINK_IF, "-j", "DROP"), ("-i", UPLINK_IF, "-j", "DROP")]
    return Block(node.netns, chain, ("INPUT", "OUTPUT", "FORWARD"), tuple(rules))


def plan_cut(lab: Lab, target: Target) -> list[Block]:
    """The chains a cut of ``target`` adds (pure: no I/O)."""
    if target.scope == NODE:
        node = next(n for n in lab.nodes if n.name == target.name)
        return [_isolate(lab, node, _chain(lab, "CUTNODE"))]
    router = next((r for r in lab.routers if r.pool == target.name), None)
    if router is not None:
        rules = (("-i", UPLINK_IF, "-j", "DROP"), ("-o", UPLINK_IF, "-j", "DROP"))
        return [Block(router.netns, _chain(lab, "CUT"), ("FORWARD",), rules)]
    chain = _chain(lab, "CUTPOOL")
    return [_isolate(lab, n, chain) for n in lab.nodes if n.pool == target.name]


# ---- iptables ---------------------------------------------------------------------------------


def _iptables(ns: str, argv: list[str], stdin: str | None = None) -> str:
    proc = subprocess.run(in_netns(ns, argv), input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FaultError(f"in {ns}: {' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _filter_table(ns: str) -> list[str]:
    return _iptables(ns, ["iptables-save", "-t", "filter"]).splitlines()


def _jumps(lines: list[str], hook: str, chain: str) -> int:
    return sum(1 for line in lines if line.split() == ["-A", hook, "-j", chain])


def install(block: Block) -> None:
    """Create (or refill) the chain and add each missing jump, in one atomic batch."""
    lines = _filter_table(block.netns)
    batch = ["*filter", f":{block.chain} - [0:0]"]  # with --noflush: create, or flush if there
    batch += [" ".join(("-A", block.chain, *rule)) for rule in block.rules]
    batch += [
        f"-I {hook} 1 -j {block.chain}"
        for hook in block.hooks
        if not _jumps(lines, hook, block.chain)
    ]
    batch.append("COMMIT")
    _iptables(block.netns, ["iptables-restore", "-w", "--noflush"], "\n".join(batch) + "\n")


def uninstall(netns: str, chain: str, hooks: list[str]) -> None:
    """Remove the chain's jumps and the chain, whatever of them is there, in one batch."""
    lines = _filter_table(netns)
    batch = ["*filter"]
    for hook in hooks:
        batch += [f"-D {hook} -j {chain}"] * _jumps(lines, hook, chain)
    if f":{chain}" in (line.split(" ", 1)[0] for line in lines):
        batch += [f"-F {chain}", f"-X {chain}"]
    if len(batch) == 1:
        return
    batch.append("COMMIT")
    _iptables(netns, ["iptables-restore", "-w", "--noflush"], "\n".join(batch) + "\n")


# ---- lab operations ---------------------------------------------------------------------------


def _records(st: LabState, target: Target | None = None) -> list[dict]:
    return [
        r
        for r in st.of_kind("cut")
        if target is None or (r["scope"], r["target"]) == (target.scope, target.name)
    ]


def cut(lab: Lab, st: LabState, target: Target) -> bool:
    """Cut ``target`` from the cloud. False when it already was (its rules are re-asserted)."""
    already = bool(_records(st, target))
    blocks = plan_cut(lab, target)
    if not already:
        # recorded first: a crash half-way still leaves heal (and down) knowing what to remove
        st.add("cut", scope=target.scope, target=target.name, blocks=[b.record() for b in blocks])
    done: list[Block] = []
    try:
        for block in blocks:
            install(block)
            done.append(block)
    except FaultError:
        for block in done:
            uninstall(block.netns, block.chain, list(block.hooks))
        if not already:
            st.forget(_records(st, target))
        raise
    return not already


def heal(st: LabState, target: Target) -> bool:
    """Give ``target`` its path back. False when it was not cut."""
    recs = _records(st, target)
    for rec in recs:
        for block in rec["blocks"]:
            uninstall(block["netns"], block["chain"], block["hooks"])
    st.forget(recs)
    return bool(recs)


def cuts(st: LabState) -> list[dict[str, str]]:
    """What is cut now: ``[{"scope": "pool", "target": "edge-a"}, ...]`` in the order cut."""
    return [{"scope": r["scope"], "target": r["target"]} for r in st.of_kind("cut")]


def cut_nodes(lab: Lab, st: LabState) -> set[str]:
    """Nodes whose path to the cloud is cut, by a cut of the node or of its pool."""
    out: set[str] = set()
    for r in st.of_kind("cut"):
        if r["scope"] == NODE:
            out.add(r["target"])
        else:
            out |= {n.name for n in lab.nodes if n.pool == r["target"]}
    return out


def describe(lab: Lab, target: Target) -> str:
    """Where a cut of ``target`` takes effect, for the CLI."""
    if target.scope == NODE:
        return f"in its namespace {next(n.netns for n in lab.nodes if n.name == target.name)}"
    router = next((r for r in lab.routers if r.pool == target.name), None)
    if router is not None:
        return f"at its NAT router {router.netns}"
    return "in the namespace of each of its nodes"
