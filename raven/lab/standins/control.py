"""The lab's side of the stand-ins: their identities, and starting, dumping and stopping them.

:func:`prepare` applies the components' ServiceAccounts and RBAC (:mod:`.components`) and
issues each node one token per component (TokenRequest, as the kubelet does for a pod), in
``STATE/nodes/<node>/<component>.kubeconfig`` (0600), pointed at the node's cache-proxy.
:func:`start` runs ``python -m raven.lab.standins <component>`` inside the node's namespace,
recorded in the lab state under the component's name as role (so ``raven lab down`` stops
it), logging to ``STATE/nodes/<node>/<component>.log``. :func:`dump` asks a running stand-in
for its copy (``SIGUSR1``) and reads ``STATE/nodes/<node>/<component>.dump.json``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from raven.lab import deployment, netns
from raven.lab.apiserver.pki import Pki
from raven.lab.apiserver.serviceaccounts import request_token, write_service_account_kubeconfig
from raven.lab.proxies import PROXY_URL
from raven.lab.sidecars import node_dir
from raven.lab.standins.components import COMPONENTS, rbac_objects
from raven.lab.standins.process import READY_LINE
from raven.lab.state import LabState, is_same_process, log_since
from raven.lab.topology import Node

ROLES = tuple(sorted(COMPONENTS))
HOST_KUBECONFIG = "kubeconfig"


class StandInError(RuntimeError):
    """A stand-in could not be prepared, started or read; the message says which and why."""


def kubeconfig_path(state_dir: Path, node: str, component: str) -> Path:
    return node_dir(state_dir, node) / f"{component}.kubeconfig"


def dump_path(state_dir: Path, node: str, component: str) -> Path:
    return node_dir(state_dir, node) / f"{component}.dump.json"


def log_path(state_dir: Path, node: str, component: str) -> Path:
    return node_dir(state_dir, node) / f"{component}.log"


def prepare(st: LabState, state_dir: Path, nodes: list[str]) -> None:
    """RBAC once, then a token per node and component (kept when it is already there)."""
    pki = Pki.at(state_dir / "pki")
    try:
        deployment.apply(state_dir / HOST_KUBECONFIG, rbac_objects())
    except deployment.DeploymentError as e:
        raise StandInError(f"the stand-ins' RBAC: {e}") from e
    for node in nodes:
        node_dir(state_dir, node).mkdir(parents=True, exist_ok=True)
        for component in COMPONENTS.values():
            path = kubeconfig_path(state_dir, node, component.name)
            if path.exists():
                continue
            namespace, name = component.service_account
            token = request_token(
                st.info["api_url"], pki.ca_cert, pki.token, namespace, name,
                seconds=deployment.TOKEN_SECONDS,
            )  # fmt: skip
            write_service_account_kubeconfig(
                path, PROXY_URL, pki.ca_cert, token, namespace=namespace, name=name
            )


def running(st: LabState, component: str, node: str) -> bool:
    return st.running(component, node)


def start(st: LabState, state_dir: Path, component: str, node: Node) -> int:
    """Start ``component``'s stand-in on ``node`` (after :func:`prepare`); its PID."""
    if component not in COMPONENTS:
        raise StandInError(f"no such stand-in {component!r}: expected one of {ROLES}")
    if running(st, component, node.name):
        raise StandInError(f"the {component} stand-in of {node.name} is already running")
    kubeconfig = kubeconfig_path(state_dir, node.name, component)
    if not kubeconfig.exists():
        raise StandInError(f"{kubeconfig} is missing: prepare the stand-ins first")
    log_file = log_path(state_dir, node.name, component)
    offset = log_file.stat().st_size if log_file.exists() else 0
    argv = [sys.executable, "-m", "raven.lab.standins", component, "--node", node.name,
            "--kubeconfig", str(kubeconfig),
            "--dump-file", str(dump_path(state_dir, node.name, component))]  # fmt: skip
    return st.spawn(
        component,
        node.name,
        netns.in_netns(node.netns, argv),
        log_file,
        netns=node.netns,
        log=str(log_file),
        log_offset=offset,
    )


def wait_ready(
    st: LabState, components: list[str], nodes: list[str], *, timeout: float = 60.0
) -> None:
    """Wait until every stand-in named has listed everything it reads (its ready line)."""
    waiting = {(c, n) for c in components for n in nodes}
    deadline = time.monotonic() + timeout
    while waiting:
        for component, node in sorted(waiting):
            recs = st.processes(component, node)
            if not recs:
                raise StandInError(f"no {component} stand-in of {node} was started")
            rec = recs[-1]
            text = log_since(rec)
            if READY_LINE.encode() in text:
                waiting.discard((component, node))
            elif not st.running(component, node):
                raise StandInError(
                    f"the {component} stand-in of {node} exited; log {rec['log']}:\n"
                    + text[-2000:].decode(errors="replace")
                )
        if waiting and time.monotonic() > deadline:
            names = ", ".join(f"{c}@{n}" for c, n in sorted(waiting))
            raise StandInError(f"stand-ins not synced after {timeout:.0f} s: {names}")
        time.sleep(0.1)


def dump(
    st: LabState, state_dir: Path, component: str, node: str, *, timeout: float = 10.0
) -> dict[str, Any]:
    """What the running stand-in holds now: objects by resource, counters, arrivals."""
    recs = [r for r in st.processes(component, node)
            if is_same_process(int(r["pid"]), r.get("start_time"))]  # fmt: skip
    if not recs:
        raise StandInError(f"the {component} stand-in of {node} is not running")
    path = dump_path(state_dir, node, component)
    asked = time.time()
    os.kill(int(recs[-1]["pid"]), signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and float(data.get("at", 0)) >= asked:
            return data
        time.sleep(0.05)
    raise StandInError(f"the {component} stand-in of {node} wrote no dump within {timeout:.0f} s")


def stop(st: LabState, component: str, node: str, *, grace: float = 5.0) -> bool:
    return st.stop(component, node, grace=grace)


def start_all(
    st: LabState,
    state_dir: Path,
    nodes: list[Node],
    components: tuple[str, ...] = ROLES,
    *,
    timeout: float = 60.0,
) -> None:
    """Prepare, start the stand-ins not running yet on ``nodes``, and wait until all synced
    (their cache-proxies must be up)."""
    prepare(st, state_dir, [n.name for n in nodes])
    for component in components:
        for node in nodes:
            if not running(st, component, node.name):
                start(st, state_dir, component, node)
    wait_ready(st, list(components), [n.name for n in nodes], timeout=timeout)


def stop_all(st: LabState, nodes: list[str], components: tuple[str, ...] = ROLES) -> list[str]:
    """Stop the stand-ins of ``nodes``; ``component@node`` of each one that ran."""
    return [f"{c}@{n}" for c in components for n in nodes if stop(st, c, n)]
