"""Start, stop and restart the lab's ``raven-agent`` processes, one per node namespace.

Every agent is recorded in the lab state (PID and start time) as it starts, so ``down`` and
``stop`` end exactly the processes the lab started and nothing else. An agent talks to the API
server through its node's cache proxy (see :mod:`raven.lab.proxies`), so it keeps working from the
proxy's cache while its node or pool is cut from the cloud. It runs as the DaemonSet's
ServiceAccount (``STATE/agent.kubeconfig``) with the shared settings of ``deploy/config.yaml``
(see :mod:`raven.lab.deployment`).
"""

from __future__ import annotations

from pathlib import Path

from raven.lab import deployment, netns
from raven.lab.state import LabState
from raven.lab.topology import Lab, Node

# For processes inside node namespaces that talk to the API server directly (over the Internet
# segment). Agents use deployment.AGENT_KUBECONFIG instead: their node's cache proxy.
NODE_KUBECONFIG = "nodes.kubeconfig"
ROLE = "agent"


def agent_dir(state_dir: Path, node: str) -> Path:
    return state_dir / "agents" / node


def _records(st: LabState, node: str) -> list[dict]:
    return st.processes(ROLE, node)


def running(st: LabState, node: str) -> bool:
    return st.running(ROLE, node)


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
        str(state_dir / deployment.AGENT_KUBECONFIG),
        "--state-dir",
        str(home),
        "--wg-interface",
        ifname,
    ]
    pid = st.spawn(
        ROLE,
        node.name,
        netns.in_netns(node.netns, argv),
        home / "agent.log",
        env=deployment.agent_environment(),
        netns=node.netns,
        wg_interface=ifname,
    )
    (home / "agent.pid").write_text(f"{pid}\n")
    return pid


def stop(st: LabState, node: str, *, grace: float = 5.0) -> bool:
    """SIGTERM the recorded agent of ``node`` (it releases its lease), SIGKILL after ``grace``."""
    return st.stop(ROLE, node, grace=grace)


def kill(st: LabState, node: str) -> bool:
    """SIGKILL the recorded agent of ``node``: a crash, so no lease release and no cleanup."""
    return st.kill(ROLE, node)
