"""Start, stop and restart the lab's ``raven-agent`` processes, one per node namespace.

Every agent is recorded in the lab state (PID and start time) as it starts, so ``down`` and
``stop`` end exactly the processes the lab started and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from raven.lab import netns
from raven.lab.state import LabState, is_same_process, proc_start_time, stop_process
from raven.lab.topology import Lab, Node

NODE_KUBECONFIG = "nodes.kubeconfig"  # agents reach the API server over the Internet segment


def agent_dir(state_dir: Path, node: str) -> Path:
    return state_dir / "agents" / node


def _records(st: LabState, node: str) -> list[dict]:
    return [r for r in st.of_kind("process") if r["role"] == "agent" and r["name"] == node]


def running(st: LabState, node: str) -> bool:
    return any(is_same_process(int(r["pid"]), r.get("start_time")) for r in _records(st, node))


def start(lab: Lab, st: LabState, state_dir: Path, node: Node, executable: Path) -> int:
    """Start the agent of ``node`` inside its namespace; returns its PID."""
    if running(st, node.name):
        raise RuntimeError(f"the agent of {node.name} is already running")
    home = agent_dir(state_dir, node.name)
    home.mkdir(parents=True, exist_ok=True)
    ifname = lab.wg_ifname(node.name)
    argv = [
        str(executable),
        "--node-name",
        node.name,
        "--kubeconfig",
        str(state_dir / NODE_KUBECONFIG),
        "--state-dir",
        str(home),
        "--wg-interface",
        ifname,
    ]
    with open(home / "agent.log", "ab") as logf:
        proc = subprocess.Popen(
            netns.in_netns(node.netns, argv),
            stdout=logf,
            stderr=logf,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    st.records = [r for r in st.records if r not in _records(st, node.name)]
    st.add(
        "process",
        role="agent",
        name=node.name,
        pid=proc.pid,
        start_time=proc_start_time(proc.pid),
        netns=node.netns,
        wg_interface=ifname,
    )
    (home / "agent.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def stop(st: LabState, node: str, *, grace: float = 5.0) -> bool:
    """SIGTERM the recorded agent of ``node`` (it releases its lease), SIGKILL after ``grace``."""
    stopped = False
    for record in _records(st, node):
        stopped |= stop_process(int(record["pid"]), record.get("start_time"), grace=grace)
    st.records = [r for r in st.records if r not in _records(st, node)]
    st.save()
    return stopped


def kill(st: LabState, node: str) -> bool:
    """SIGKILL the recorded agent of ``node``: a crash, so no lease release and no cleanup."""
    killed = False
    for record in _records(st, node):
        pid = int(record["pid"])
        if is_same_process(pid, record.get("start_time")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed = True
            stop_process(pid, record.get("start_time"), grace=1.0)  # reap it
    st.records = [r for r in st.records if r not in _records(st, node)]
    st.save()
    return killed
