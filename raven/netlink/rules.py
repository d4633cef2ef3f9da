"""Rule reconciler: keeps Raven's policy rule(s) (priority -> table) exactly as desired.

Raven stamps its rules with ``FRA_PROTOCOL =`` :data:`raven.model.RAVEN_RTPROTO`; only rules
carrying that stamp are ever considered ours, so other rules (the kernel's defaults, a CNI's)
are never deleted or rewritten. Nothing to change means zero writes; ``writes`` counts them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError as PyNetlinkError  # type: ignore[import-untyped]

from raven.model import RAVEN_RTPROTO, RuleSpec
from raven.netlink.errors import ApplyError, BadSpec

FR_ACT_TO_TBL = 1
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


@dataclass
class RuleChanges:
    added: list[RuleSpec] = field(default_factory=list)
    deleted: list[RuleSpec] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return len(self.added) + len(self.deleted)


def _check(spec: RuleSpec) -> RuleSpec:
    if spec.family not in _FAMILIES:
        raise BadSpec(f"rule family {spec.family!r} is not 4 or 6")
    if not 0 < spec.priority < 32766:
        raise BadSpec(f"rule priority {spec.priority} must be in 1..32765 (before main)")
    if not 0 < spec.table < 2**32 or spec.table in (253, 254, 255):
        raise BadSpec(f"rule table {spec.table} is reserved or invalid")
    return spec


class RuleReconciler:
    """Keeps the rules stamped with our protocol equal to the desired set."""

    def __init__(self, ipr: Any) -> None:
        self.ipr = ipr
        self.writes = 0

    def current(self) -> dict[tuple[int, int, int], RuleSpec]:
        """Our rules now in the kernel, by key (reads only)."""
        have: dict[tuple[int, int, int], RuleSpec] = {}
        for fam, af in _FAMILIES.items():
            for msg in self.ipr.get_rules(family=af):
                if msg.get("FRA_PROTOCOL") != RAVEN_RTPROTO:
                    continue
                table = msg.get("FRA_TABLE") or msg["table"]
                spec = RuleSpec(priority=msg.get("FRA_PRIORITY") or 0, table=table, family=fam)
                # A rule with a selector (from, fwmark, iif...) is not the plain rule we make;
                # still ours by stamp, so it is compared as different and gets replaced.
                plain = (
                    msg["src_len"] == 0
                    and msg["dst_len"] == 0
                    and msg["action"] == FR_ACT_TO_TBL
                    and msg.get("FRA_FWMARK") is None
                    and msg.get("FRA_IIFNAME") is None
                    and msg.get("FRA_OIFNAME") is None
                )
                have[spec.key if plain else (fam, -spec.priority - 1, table)] = spec
        return have

    def reconcile(self, desired: Iterable[RuleSpec]) -> RuleChanges:
        want = {s.key: s for s in map(_check, desired)}
        have = self.current()
        changes = RuleChanges()
        failures: dict[str, str] = {}
        for key in sorted(have.keys() - want.keys()):
            self._write("del", have[key], changes.deleted, failures)
        for key in sorted(want.keys() - have.keys()):
            self._write("add", want[key], changes.added, failures)
        if failures:
            raise ApplyError("rule reconcile", failures)
        return changes

    def remove_all(self) -> RuleChanges:
        """Delete every rule stamped with our protocol (uninstall)."""
        return self.reconcile(())

    def _write(
        self, op: str, spec: RuleSpec, done: list[RuleSpec], failures: dict[str, str]
    ) -> None:
        self.writes += 1
        try:
            self.ipr.rule(
                op,
                priority=spec.priority,
                table=spec.table,
                family=_FAMILIES[spec.family],
                protocol=RAVEN_RTPROTO,
                action="FR_ACT_TO_TBL",
            )
        except PyNetlinkError as e:
            failures[f"{op} rule pref {spec.priority} table {spec.table} v{spec.family}"] = (
                f"{e.args[-1]} (errno {e.code})"
            )
            return
        done.append(spec)
