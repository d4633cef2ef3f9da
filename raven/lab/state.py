"""The lab's record of what it created, kept in the state dir and written as it goes.

``up`` appends a record *before* or right after each side effect, so ``down`` can undo a lab that
crashed half-way. Processes are recorded with their start time, so a recycled PID is never killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "lab.json"


@dataclass
class LabState:
    """The contents of ``<state-dir>/lab.json``."""

    path: Path
    prefix: str
    phase: str = "building"  # building -> up
    topology: str = ""
    started_at: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # kubeconfig, api url, host link, ...

    def save(self) -> None:
        data = {
            "prefix": self.prefix,
            "phase": self.phase,
            "topology": self.topology,
            "started_at": self.started_at,
            "records": self.records,
            "info": self.info,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)  # atomic: a crash never leaves half a record file

    def add(self, kind: str, **fields: Any) -> None:
        self.records.append({"kind": kind, **fields})
        self.save()

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == kind]

    def processes(self, role: str, name: str | None = None) -> list[dict[str, Any]]:
        """Process records of ``role`` (``agent``, ``cache-proxy``, ``apiserver``), optionally
        only the one(s) named ``name`` (the node, for agents and proxies)."""
        return [
            r
            for r in self.of_kind("process")
            if r["role"] == role and (name is None or r["name"] == name)
        ]

    def running(self, role: str, name: str) -> bool:
        """Whether a recorded process of ``role`` for ``name`` is still the one we started."""
        return any(
            is_same_process(int(r["pid"]), r.get("start_time")) for r in self.processes(role, name)
        )

    def forget(self, records: list[dict[str, Any]]) -> None:
        """Drop these records (after their process ended) and save."""
        self.records = [r for r in self.records if not any(r is x for x in records)]
        self.save()

    def spawn(
        self,
        role: str,
        name: str,
        argv: list[str],
        log_file: Path,
        *,
        env: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> int:
        """Start ``argv`` detached (its own session), its output appended to ``log_file``, with
        ``env`` added to this process's environment, and record it as the ``role`` process of
        ``name`` in place of older records; its PID."""
        with open(log_file, "ab") as logf:
            proc = subprocess.Popen(
                argv,
                stdout=logf,
                stderr=logf,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **env} if env else None,
            )
        self.forget(self.processes(role, name))
        self.add(
            "process",
            role=role,
            name=name,
            pid=proc.pid,
            start_time=proc_start_time(proc.pid),
            **extra,
        )
        return proc.pid

    def stop(self, role: str, name: str, *, grace: float = 5.0) -> bool:
        """SIGTERM the recorded ``role`` process of ``name``, SIGKILL after ``grace``; forget
        it. True when one was running."""
        records = self.processes(role, name)
        stopped = False
        for record in records:
            stopped |= stop_process(int(record["pid"]), record.get("start_time"), grace=grace)
        self.forget(records)
        return stopped

    def kill(self, role: str, name: str) -> bool:
        """SIGKILL the recorded ``role`` process of ``name`` (a crash: no clean-up of its own)
        and forget it. True when one was running."""
        killed = False
        records = self.processes(role, name)
        for record in records:
            pid = int(record["pid"])
            if is_same_process(pid, record.get("start_time")):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed = True
                stop_process(pid, record.get("start_time"), grace=1.0)  # reap it
        self.forget(records)
        return killed

    @classmethod
    def load(cls, state_dir: Path) -> LabState | None:
        path = state_dir / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise RuntimeError(f"{path}: unreadable lab state ({e}); remove it by hand") from e
        return cls(
            path=path,
            prefix=data["prefix"],
            phase=data.get("phase", "building"),
            topology=data.get("topology", ""),
            started_at=data.get("started_at", 0.0),
            records=data.get("records", []),
            info=data.get("info", {}),
        )


def log_since(record: dict[str, Any]) -> bytes:
    """What a recorded process wrote to its log since it started (its record's ``log`` and
    ``log_offset``); empty when the log cannot be read."""
    try:
        with open(record["log"], "rb") as f:
            f.seek(int(record.get("log_offset", 0)))
            return f.read()
    except OSError:
        return b""


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_same_process(pid: int, start_time: int | None) -> bool:
    now = proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def stop_process(pid: int, start_time: int | None, *, grace: float = 3.0) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only if it is still the process we started."""
    if not is_same_process(pid, start_time):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not is_same_process(pid, start_time) or _is_zombie(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    for _ in range(40):
        _reap(pid)
        if not is_same_process(pid, start_time) or _is_zombie(pid):
            break
        time.sleep(0.05)
    return True


def stop_processes(procs: list[tuple[int, int | None]], *, grace: float = 3.0) -> list[int]:
    """Like :func:`stop_process` for several ``(pid, start_time)`` at once: SIGTERM them all,
    wait up to ``grace`` seconds for all of them together, SIGKILL whoever is left. Returns the
    PIDs that were running and have now ended."""
    live = [(pid, t) for pid, t in procs if is_same_process(pid, t)]
    for pid, _ in live:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def ended(pid: int, t: int | None) -> bool:
        _reap(pid)
        return not is_same_process(pid, t) or _is_zombie(pid)

    deadline = time.monotonic() + grace
    left = list(live)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [(pid, t) for pid, t in left if not ended(pid, t)]
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(40):
        left = [(pid, t) for pid, t in left if not ended(pid, t)]
        if not left:
            break
        time.sleep(0.05)
    return [pid for pid, _ in live]


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (started by an earlier `raven lab up`): init reaps it


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
