"""The figures of ``raven bench scale``, from raw counter snapshots; their comparison, the
arithmetic to 1,000 pools × 20 nodes, and the text table. Pure.

Where the watch events come from (the model the arithmetic uses, checked against what was
measured at every size): every agent watches every Node; an agent of an edge pool watches
only its own pool's Lease and Gateway and the relay pool's, a node of the relay pool every
pool's. So with w_x the steady writes per pool and second to objects of kind x:

    events/s to a member          = 2·w_lease + 2·w_gateway + P·w_node
    events/s to a relay candidate = P·w_lease + P·w_gateway + P·w_node

Nodes are written in steady state only by kubelets, which the bench does not run; the
arithmetic adds them from kubelet's default (a Node status report every 5 minutes when nothing
changed) and says so.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from raven.lab.apiserver.metrics import READ_VERBS, WRITE_VERBS

ROLES = ("member", "gateway", "relay-candidate", "relay")
#: kubelet's nodeStatusReportFrequency: a Node's status is written at least this often.
KUBELET_REPORT_S = 300.0
#: What a kubelet's own heartbeat costs: one Lease renewal every 10 s.
KUBELET_HEARTBEAT_WRITES = 0.1
TARGET_POOLS, TARGET_NODES = 1000, 20
GOAL_POOL_WRITES = 0.2
GOAL_CRASH_S = 2.5

Samples = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]


def _diff(after: Samples, before: Samples, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for (sample, labels), value in after.items():
        if sample == name:
            out.append((dict(labels), value - before.get((sample, labels), 0.0)))
    return out


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def phase_figures(
    *,
    mode: str,
    pools: int,
    nodes: int,
    workers: int,
    startup_s: float | None,
    unsteady: str | None,
    start_rate: float,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    states: list[dict[str, Any]],
    steady_after_window: str | None,
    crashes: list[dict[str, Any]],
) -> dict[str, Any]:
    """The figures of one phase from the snapshots taken at the start and end of its window."""
    seconds = after["at"] - before["at"]
    agents = pools * nodes
    writes: defaultdict[str, float] = defaultdict(float)
    reads: defaultdict[str, float] = defaultdict(float)
    watches: defaultdict[str, float] = defaultdict(float)
    errors: defaultdict[str, float] = defaultdict(float)
    for labels, n in _diff(after["api"], before["api"], "apiserver_request_total"):
        if not n:
            continue
        what = labels["resource"] + (f"/{labels['subresource']}" if labels["subresource"] else "")
        if labels["verb"] in WRITE_VERBS:
            writes[what] += n
        elif labels["verb"] in READ_VERBS:
            reads[what] += n
        elif labels["verb"] == "watch":
            watches[what] += n
        if int(labels["code"]) >= 400:
            errors[f"{labels['code']} {labels['verb']} {what}"] += n
    events: defaultdict[str, float] = defaultdict(float)
    bookmarks = 0.0
    for labels, n in _diff(after["api"], before["api"], "apiserver_watch_events_total"):
        if not n:
            continue
        if labels["type"] == "BOOKMARK":
            bookmarks += n
        else:
            events[labels["resource"]] += n

    # Client-side, per agent and role (agents present at both ends of the window).
    per_role: dict[str, list[dict[str, float]]] = {}
    cpu = rss_kb = lag = gc_pause = 0.0
    preemptions = conflicts = 0
    for b, a in zip(before["workers"], after["workers"], strict=True):
        cpu += a["cpu_s"] - b["cpu_s"]
        lag = max(lag, a["lag_max_s"])
        gc_pause = max(gc_pause, a["gc_max_s"])
        preemptions += a["preemptions"] - b["preemptions"]
        conflicts += a["conflicts"] - b["conflicts"]
        rss_kb += a["rss_kb"] - a["rss_before_kb"]
        for name, agent in a["agents"].items():
            old = b["agents"].get(name)
            if old is None:
                continue
            ev = {
                k: v - old["events"].get(k, 0)
                for k, v in agent["events"].items()
                if not k.endswith(" BOOKMARK")
            }
            rq = {k: v - old["requests"].get(k, 0) for k, v in agent["requests"].items()}
            per_role.setdefault(agent["role"], []).append(
                {
                    "events": _rate(sum(ev.values()), seconds),
                    "writes": _rate(sum(v for k, v in rq.items() if k in WRITE_VERBS), seconds),
                    "reads": _rate(sum(v for k, v in rq.items() if k in READ_VERBS), seconds),
                }
            )
    roles = {
        role: {
            "nodes": len(rows),
            "events_per_s": statistics.fmean(r["events"] for r in rows),
            "events_per_s_max": max(r["events"] for r in rows),
            "writes_per_s": statistics.fmean(r["writes"] for r in rows),
            "reads_per_s": statistics.fmean(r["reads"] for r in rows),
        }
        for role, rows in sorted(per_role.items())
    }
    done = [c for c in crashes if c.get("new")]
    tried = [c for c in crashes if not c.get("skipped")]
    return {
        "mode": mode,
        "pools": pools,
        "nodes": nodes,
        "agents": agents,
        "workers": workers,
        "startup_s": startup_s,
        "steady": unsteady is None,  # False: the figures are those of a fleet that churned
        "unsteady": unsteady,
        "start_rate": start_rate,
        "window_s": seconds,
        "steady_after_window": steady_after_window or "yes",
        "window_preemptions": preemptions,  # takeovers in the steady window: none expected
        "window_conflicts": conflicts,
        "worker_lag_max_s": lag,
        "worker_gc_max_s": gc_pause,  # the longest full collection: a heap of many agents
        "api": {
            "writes_per_s": _rate(sum(writes.values()), seconds),
            "reads_per_s": _rate(sum(reads.values()), seconds),
            "watches_per_s": _rate(sum(watches.values()), seconds),
            "events_per_s": _rate(sum(events.values()), seconds),
            "bookmarks_per_s": _rate(bookmarks, seconds),
            "writes_by": {k: _rate(v, seconds) for k, v in sorted(writes.items())},
            "reads_by": {k: _rate(v, seconds) for k, v in sorted(reads.items())},
            "events_by": {k: _rate(v, seconds) for k, v in sorted(events.items())},
            "errors": dict(sorted(errors.items())),
            "cpu_percent": 100 * _rate(after["api_cpu_s"] - before["api_cpu_s"], seconds),
            "rss_mb": after["api_rss_mb"],
        },
        "per_pool": {
            "writes_per_s": _rate(sum(writes.values()), seconds) / pools,
            "reads_per_s": _rate(sum(reads.values()), seconds) / pools,
            "watches_per_s": _rate(sum(watches.values()), seconds) / pools,
            "writes_by": {k: _rate(v, seconds) / pools for k, v in sorted(writes.items())},
        },
        "per_node": {
            "events_per_s": _rate(sum(events.values()), seconds) / agents,
            "bookmarks_per_s": _rate(bookmarks, seconds) / agents,
            "cpu_percent": 100 * _rate(cpu, seconds) / agents,
            "rss_mb": rss_kb / 1024 / agents,
            "by_role": roles,
        },
        "crash": {
            "trials": crashes,
            "failed": len(tried) - len(done),
            "members_s_median": _median([c["members_s"] for c in done]),
            "members_s_max": max((c["members_s"] for c in done), default=None),
            "gateway_s_median": _median([c["gateway_s"] for c in done]),
            "relay_s_median": _median([c["relay_s"] for c in done if c.get("relay_s")]),
            "relay_s_max": max((c["relay_s"] for c in done if c.get("relay_s")), default=None),
        },
    }


def crash_line(crash: Mapping[str, Any]) -> str:
    if crash.get("skipped"):
        return f"skipped: {crash['skipped']}"
    if not crash.get("new"):
        return f"{crash['old']} crashed; no new gateway within {crash.get('timeout')}s"
    relay = crash.get("relay_s")
    return (
        f"{crash['old']} -> {crash['new']}: gateway {crash['gateway_s']:.2f}s, members "
        f"{crash['members_s']:.2f}s, relay {'-' if relay is None else f'{relay:.2f}s'}"
    )


# Comparison and arithmetic ----------------------------------------------------------------------


def _per_pool_kind(phase: Mapping[str, Any], kind: str) -> float:
    return sum(v for k, v in phase["per_pool"]["writes_by"].items() if k.split("/")[0] == kind)


def model_events(w: Mapping[str, float], pools: int) -> dict[str, float]:
    """Watch events per second to one node of each role (module docstring)."""
    nodes = pools * w["nodes"]
    edge = 2 * (w["leases"] + w["gateways"]) + nodes  # its own pool's and the relay pool's
    relay = pools * (w["leases"] + w["gateways"]) + nodes  # every pool's
    return {"member": edge, "gateway": edge, "relay-candidate": relay, "relay": relay}


def projection(phase: Mapping[str, Any], fits: Mapping[str, Any]) -> dict[str, Any]:
    """From the per-pool writes measured in ``phase``, the cost at 1,000 pools × 20 nodes."""
    p, n = TARGET_POOLS, TARGET_NODES
    w = {k: _per_pool_kind(phase, k) for k in ("leases", "gateways", "nodes", "events")}
    pool_writes = phase["per_pool"]["writes_per_s"]
    kubelet_node_writes = n / KUBELET_REPORT_S  # per pool
    w_kubelet = dict(w, nodes=w["nodes"] + kubelet_node_writes)
    raven = model_events(w, p)
    with_kubelet = model_events(w_kubelet, p)
    total = (p - 1) * n * raven["member"] + n * raven["relay-candidate"]
    total_k = (p - 1) * n * with_kubelet["member"] + n * with_kubelet["relay-candidate"]
    return {
        "from": f"{phase['mode']} {phase['pools']}x{phase['nodes']}",
        "pools": p,
        "nodes": n,
        "writes_per_pool": w,
        "api_writes_per_s": pool_writes * p,
        "member_events_per_s": raven["member"],
        "relay_candidate_events_per_s": raven["relay-candidate"],
        "events_per_s": total,
        "kubelet_node_writes_per_s": kubelet_node_writes * p,
        "member_events_per_s_with_kubelets": with_kubelet["member"],
        "events_per_s_with_kubelets": total_k,
        "cpu_percent_per_node": fits.get("cpu_at_target"),
        "rss_mb_per_node": fits.get("rss_at_target"),
    }


def _fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares line (intercept, slope) through ``points``; None with fewer than two x."""
    if len({x for x, _ in points}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - slope * mx, slope


def summary(phases: list[dict[str, Any]], *, cores: int, took_s: float) -> dict[str, Any]:
    # Only a fleet that held a steady state says what a steady fleet costs.
    for phase in phases:
        phase["held"] = held(phase)
    beacons = [p for p in phases if p["mode"] == "beacons" and p["held"]]
    base = next((p for p in phases if p["mode"] == "lease-only" and p["held"]), None)
    out: dict[str, Any] = {"cores": cores, "took_s": took_s, "phases": phases}
    for phase in phases:
        w = {k: _per_pool_kind(phase, k) for k in ("leases", "gateways", "nodes")}
        phase["model_events_per_s"] = model_events(w, phase["pools"])
    comparisons: dict[str, Any] = {}
    same = next((p for p in beacons if base and p["pools"] == base["pools"]), None)
    if base is not None and same is not None:
        comparisons["writes_per_pool_ratio"] = _ratio(
            same["per_pool"]["writes_per_s"], base["per_pool"]["writes_per_s"]
        )
        comparisons["crash_members_median_ratio"] = _ratio(
            same["crash"]["members_s_median"], base["crash"]["members_s_median"]
        )
        comparisons["agent_cpu_ratio"] = _ratio(
            same["per_node"]["cpu_percent"], base["per_node"]["cpu_percent"]
        )
    if len(beacons) >= 2:
        small, large = beacons[0], beacons[-1]
        growth = {}
        for role in ROLES:
            a = small["per_node"]["by_role"].get(role)
            b = large["per_node"]["by_role"].get(role)
            if a and b:
                growth[role] = {
                    "small": a["events_per_s"],
                    "large": b["events_per_s"],
                    "per_added_pool": (b["events_per_s"] - a["events_per_s"])
                    / (large["pools"] - small["pools"]),
                }
        comparisons["events_per_node_growth"] = growth
    out["comparisons"] = comparisons
    fits: dict[str, Any] = {}
    cpu = _fit([(p["agents"], p["per_node"]["cpu_percent"]) for p in beacons])
    if cpu is not None and cpu[1] > 0:
        fits["cpu_percent_per_node"] = {"intercept": cpu[0], "per_node_in_cluster": cpu[1]}
        fits["cpu_at_target"] = cpu[0] + cpu[1] * TARGET_POOLS * TARGET_NODES
    rss = _fit([(p["agents"], p["per_node"]["rss_mb"]) for p in beacons])
    if rss is not None and rss[1] > 0:  # no growth measured: nothing to extrapolate
        fits["rss_mb_per_node"] = {"intercept": rss[0], "per_node_in_cluster": rss[1]}
        fits["rss_at_target"] = rss[0] + rss[1] * TARGET_POOLS * TARGET_NODES
    out["fits"] = fits
    if beacons:
        out["projection"] = projection(beacons[-1], fits)
        largest = beacons[-1]
        crash_max = [p["crash"]["members_s_max"] for p in beacons if p["crash"]["members_s_max"]]
        member_growth = comparisons.get("events_per_node_growth", {}).get("member")
        out["goals"] = {
            "pool_writes_per_s": largest["per_pool"]["writes_per_s"],
            "pool_writes_met": largest["per_pool"]["writes_per_s"] <= GOAL_POOL_WRITES,
            "member_events_per_added_pool": member_growth["per_added_pool"]
            if member_growth
            else None,
            "crash_s_max": max(crash_max) if crash_max else None,
            "crash_met": bool(crash_max) and max(crash_max) <= GOAL_CRASH_S,
        }
    return out


def held(phase: Mapping[str, Any]) -> bool:
    """The phase reached a steady state and kept it through the window: no live gateway taken
    over, still steady after. A churning fleet's figures are printed, never compared or
    extrapolated (a fleet too large for the machine measures the machine)."""
    return bool(
        phase["steady"]
        and phase.get("steady_after_window", "yes") == "yes"
        and not phase.get("window_preemptions")
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# Text ---------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(figures: Mapping[str, Any]) -> str:
    phases = figures["phases"]
    heads = [f"{p['mode']} {p['pools']}x{p['nodes']}" for p in phases]
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, values: list[Any], digits: int = 3) -> None:
        rows.append((label, [_num(v, digits) for v in values]))

    def each(path: str, digits: int = 3) -> list[Any]:
        out = []
        for p in phases:
            value: Any = p
            for key in path.split("."):
                value = value.get(key) if isinstance(value, Mapping) else None
            out.append(value)
        return out

    row("agents (nodes)", each("agents"))
    row("reached a steady state", ["yes" if p["steady"] else "NO" for p in phases])
    row("startup to steady state, s", each("startup_s"), 1)
    row("window, s", each("window_s"), 1)
    row("API writes/s per pool", each("per_pool.writes_per_s"))
    kinds = sorted({k for p in phases for k in p["per_pool"]["writes_by"]})
    for kind in kinds:
        row(f"  {kind}", [p["per_pool"]["writes_by"].get(kind, 0.0) for p in phases])
    row("API reads/s per pool", each("per_pool.reads_per_s"))
    row("watches opened/s per pool", each("per_pool.watches_per_s"))
    row("watch events/s per node (server)", each("per_node.events_per_s"))
    for role in ROLES:
        row(
            f"  {role} (client-side; model)",
            [
                f"{_num(r['events_per_s'])}; {_num(p['model_events_per_s'][role])}"
                if (r := p["per_node"]["by_role"].get(role))
                else None
                for p in phases
            ],
        )
    row("bookmarks/s per node", each("per_node.bookmarks_per_s"))
    row("agent CPU per node, % of a core", each("per_node.cpu_percent"), 2)
    row("agent memory per node, MB", each("per_node.rss_mb"), 1)
    row("API server CPU, % of a core", each("api.cpu_percent"), 1)
    row("API server memory, MB", each("api.rss_mb"), 0)
    row("crash: members follow, s (median)", each("crash.members_s_median"), 2)
    row("crash: members follow, s (max)", each("crash.members_s_max"), 2)
    row("crash: new gateway plans, s (median)", each("crash.gateway_s_median"), 2)
    row("crash: relay moves the pool, s (median)", each("crash.relay_s_median"), 2)
    row("crash: trials without a new gateway", each("crash.failed"))
    row(
        "takeovers / 409s in the window",
        [f"{p['window_preemptions']} / {p['window_conflicts']}" for p in phases],
    )
    row("worker loop's worst lateness, s", each("worker_lag_max_s"), 2)
    row("  its longest full garbage collection, s", each("worker_gc_max_s"), 2)
    row("still steady after the window", each("steady_after_window"))
    row("held steady (compared, extrapolated)", ["yes" if held(p) else "NO" for p in phases])

    width = max(len(label) for label, _ in rows)
    cols = [max(len(h), *(len(v[i]) for _, v in rows)) for i, h in enumerate(heads)]
    lines = [
        f"raven bench scale: simulated agents against the lab API server "
        f"({figures['cores']} cores, {figures['took_s']:.0f} s)",
        "",
        " " * width + "  " + "  ".join(h.rjust(c) for h, c in zip(heads, cols, strict=True)),
    ]
    for label, values in rows:
        lines.append(
            label.ljust(width)
            + "  "
            + "  ".join(v.rjust(c) for v, c in zip(values, cols, strict=True))
        )
    for p in phases:
        if not p["steady"]:
            lines.append(
                f"{p['mode']} {p['pools']}x{p['nodes']}: {p['unsteady']}; its column"
                f" shows that churning fleet, and is left out of what follows"
            )
    errors = {f"{p['mode']} {p['pools']}x{p['nodes']}": p["api"]["errors"] for p in phases}
    if any(errors.values()):
        lines.append("")
        lines.append(
            "API errors in the window: "
            + "; ".join(
                f"{k}: " + ", ".join(f"{e} ×{n:.0f}" for e, n in v.items())
                for k, v in errors.items()
                if v
            )
        )
    lines += ["", *_comparison_lines(figures), "", *_projection_lines(figures)]
    return "\n".join(lines)


def _comparison_lines(figures: Mapping[str, Any]) -> list[str]:
    c = figures.get("comparisons") or {}
    lines = ["against the baseline (lease-only, same size) and across sizes:"]
    if "writes_per_pool_ratio" in c:
        lines.append(f"  writes per pool, beacons / lease-only: {_num(c['writes_per_pool_ratio'])}")
        lines.append(
            f"  crash, members follow (median), beacons / lease-only: "
            f"{_num(c['crash_members_median_ratio'], 2)}"
        )
        lines.append(f"  agent CPU per node, beacons / lease-only: {_num(c['agent_cpu_ratio'], 2)}")
    for role, g in (c.get("events_per_node_growth") or {}).items():
        lines.append(
            f"  watch events/s to a {role}: {_num(g['small'])} -> {_num(g['large'])}"
            f" ({_num(g['per_added_pool'], 4)} more per added pool)"
        )
    goals = figures.get("goals")
    if goals:
        lines.append(
            f"  goal, <= {GOAL_POOL_WRITES} writes/s per pool: {_num(goals['pool_writes_per_s'])}"
            f" -> {'met' if goals['pool_writes_met'] else 'NOT met'}"
        )
        growth = goals["member_events_per_added_pool"]
        lines.append(
            "  goal, events per node flat in the number of pools: "
            + (
                "not measured (fewer than two sizes held)"
                if growth is None
                else f"{_num(growth, 4)} events/s more per added pool -> "
                + ("met" if growth < 0.001 else "NOT met")
            )
        )
        lines.append(
            f"  goal, crash <= {GOAL_CRASH_S} s: worst {_num(goals['crash_s_max'], 2)} s -> "
            f"{'met' if goals['crash_met'] else 'NOT met'}"
        )
    return lines


def _projection_lines(figures: Mapping[str, Any]) -> list[str]:
    proj = figures.get("projection")
    if not proj:
        return []
    w = proj["writes_per_pool"]
    p, n = proj["pools"], proj["nodes"]
    fits = figures.get("fits") or {}
    lines = [
        f"arithmetic to {p:,} pools × {n} nodes (from {proj['from']}; per-pool writes/s:"
        f" Lease {w['leases']:.4f}, Gateway {w['gateways']:.4f}, Node {w['nodes']:.4f},"
        f" Event {w['events']:.4f}):",
        f"  API writes: {p:,} × {proj['api_writes_per_s'] / p:.4f} = "
        f"{proj['api_writes_per_s']:,.0f}/s  (their kubelets' heartbeats: "
        f"{p * n:,} × {KUBELET_HEARTBEAT_WRITES} = {p * n * KUBELET_HEARTBEAT_WRITES:,.0f}/s)",
        f"  events to a member: 2 × ({w['leases']:.4f} + {w['gateways']:.4f}) (own and relay"
        f" pool's Lease and Gateway) + {p:,} × {w['nodes']:.4f} (every Node)"
        f" = {proj['member_events_per_s']:.2f}/s",
        f"  events to a relay candidate: {p:,} × ({w['leases']:.4f} + {w['gateways']:.4f} +"
        f" {w['nodes']:.4f}) = {proj['relay_candidate_events_per_s']:.2f}/s",
        f"  events the API server sends: {p - 1:,} × {n} × {proj['member_events_per_s']:.2f}"
        f" + {n} × {proj['relay_candidate_events_per_s']:.2f} = {proj['events_per_s']:,.0f}/s",
        f"  with kubelets' Node status reports (every {KUBELET_REPORT_S:.0f} s, not simulated"
        f" here): {proj['kubelet_node_writes_per_s']:,.0f} Node writes/s, each to all"
        f" {p * n:,} agents: {proj['member_events_per_s_with_kubelets']:.1f} events/s per node,"
        f" {proj['events_per_s_with_kubelets']:,.0f}/s in all",
    ]
    cpu = fits.get("cpu_percent_per_node")
    if cpu:
        lines.append(
            f"  agent CPU per node ≈ {cpu['intercept']:.3f} + {cpu['per_node_in_cluster']:.6f}"
            f" × nodes in the cluster (% of a core, fitted) -> {fits['cpu_at_target']:.1f} % at"
            f" {p * n:,} nodes"
        )
    rss = fits.get("rss_mb_per_node")
    if rss:
        lines.append(
            f"  agent memory per node ≈ {rss['intercept']:.2f} + {rss['per_node_in_cluster']:.4f}"
            f" × nodes in the cluster (MB, fitted) -> {fits['rss_at_target']:.0f} MB at"
            f" {p * n:,} nodes"
        )
    return lines
