"""A diagnosis for people (a table of findings in path order, then the verdict) and for
programs (``-o json``). Pure."""

from __future__ import annotations

from typing import Any

from raven.diagnose.checks import Status
from raven.diagnose.outcome import Report, stations
from raven.diagnose.path import Leg


def as_json(report: Report) -> dict[str, Any]:
    verdict = report.verdict
    path = report.path
    return {
        "src": report.src,
        "dst": report.dst,
        "healthy": report.healthy,
        "seconds": round(report.seconds, 3),
        "error": report.error,
        "path": [
            {"tunnel": str(s), "a": s.a, "b": s.b}
            if isinstance(s, Leg)
            else {"node": s.node, "pool": s.pool, "roles": list(s.roles)}
            for s in (stations(path) if path is not None else [])
        ],
        "findings": [f.as_json() for f in report.findings],
        "verdict": verdict.as_json() if verdict is not None else None,
        "warnings": [f.as_json() for f in report.warnings],
    }


_MARK = {Status.OK: "ok", Status.WARN: "WARN", Status.WRONG: "WRONG"}


def as_text(report: Report, *, verbose: bool = True) -> str:
    lines = []
    path = report.path
    if path is not None:
        lines.append(f"{path.src} -> {path.dst}")
        lines.append("path: " + " -> ".join(str(s) for s in stations(path)))
    else:
        lines.append(f"{report.src} -> {report.dst}")
    width = max((len(f.where) for f in report.findings), default=0)
    cwidth = max((len(f.check) for f in report.findings), default=0)
    for f in report.findings:
        if f.status is Status.OK and not verbose:
            continue
        lines.append(f"  {_MARK[f.status]:5} {f.where:{width}}  {f.check:{cwidth}}  {f.evidence}")
    verdict = report.verdict
    if verdict is None and not report.error:
        warn = f", {len(report.warnings)} warning(s)" if report.warnings else ""
        lines.append(f"healthy: the path works{warn} ({report.seconds:.2f} s)")
    else:
        assert verdict is not None
        lines.append(f"first wrong hop: {verdict.where} ({verdict.check})")
        lines.append(f"  evidence:   {verdict.evidence}")
        if verdict.fix:
            lines.append(f"  what to do: {verdict.fix}")
        lines.append(f"({report.seconds:.2f} s)")
    return "\n".join(lines)
