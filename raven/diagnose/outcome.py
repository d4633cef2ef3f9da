"""What a diagnosis found: its findings in path order and the verdict they make. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raven.diagnose import checks
from raven.diagnose.checks import Finding, Status
from raven.diagnose.path import Path


@dataclass
class Report:
    src: str
    dst: str
    path: Path | None = None
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    @property
    def verdict(self) -> Finding | None:
        return checks.first_wrong(self.findings)

    @property
    def healthy(self) -> bool:
        return not self.error and self.verdict is None

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.status is Status.WARN]


def stations(path: Path) -> list[Any]:
    """Nodes and tunnels in the order a packet meets them: the source pool's tunnel after its
    gateway, the destination pool's after the relay."""
    legs = {leg.pool: leg for leg in path.legs}
    out: list[Any] = []
    for hop in path.hops:
        out.append(hop)
        if hop.pool == path.src.pool and "gateway" in hop.roles and path.src.pool in legs:
            out.append(legs.pop(path.src.pool))
        if "relay" in hop.roles and path.dst.pool in legs:
            out.append(legs.pop(path.dst.pool))
    return out + list(legs.values())
