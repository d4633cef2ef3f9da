"""``raven diagnose --lab`` and ``raven lab diagnose``: the lab's way to reach a node.

:class:`LabTransport` runs the collector script in a node's network namespace (``ip netns
exec``) and the probes in a thread of this process that has joined that namespace (``setns``),
so a probe costs no process start and no scapy import per node. Pod names are the lab's
(``edge-a-1-pod``); the objects come from the lab's API server.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from raven.diagnose import probes
from raven.diagnose.facts import COLLECT_SCRIPT
from raven.diagnose.transport import TransportError
from raven.lab import deployment, engine
from raven.lab.netns import NETNS_DIR
from raven.lab.topology import Lab

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _join_netns(name: str) -> None:
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class LabTransport:
    """The nodes of a running lab, by their namespaces."""

    def __init__(self, lab: Lab, *, timeout: float = 10.0) -> None:
        self.lab = lab
        self.timeout = timeout
        self._netns = {n.name: n.netns for n in lab.nodes}

    def _ns(self, node: str) -> str:
        ns = self._netns.get(node)
        if ns is None:
            raise TransportError(f"{node} is not a node of this lab")
        return ns

    def wg_dev(self, node: str) -> str:
        return self.lab.wg_ifname(node)

    def vxlan_dev(self, node: str) -> str | None:
        return None

    def collect(self, node: str, *, table: int) -> str:
        argv = [
            "ip",
            "netns",
            "exec",
            self._ns(node),
            "env",
            f"WG={self.wg_dev(node)}",
            f"TABLE={table}",
            "sh",
            "-c",
            COLLECT_SCRIPT,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        if "@@ end" not in proc.stdout:
            raise TransportError(f"collecting on {node}: {proc.stderr.strip()[-300:]}")
        return proc.stdout

    def probe(self, node: str, request: probes.Request, *, ready: Callable[[], None]) -> Any:
        ns = self._ns(node)
        box: dict[str, Any] = {}

        def body() -> None:  # a thread of its own: setns changes only the calling thread
            try:
                _join_netns(ns)
                box["result"] = probes.run(request, ready=ready)
            except BaseException as e:  # noqa: BLE001 -- handed to the caller
                box["error"] = e
                ready()

        thread = threading.Thread(target=body, name=f"probe-{node}", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if "error" in box:
            raise TransportError(f"probe on {node}: {box['error']}")
        if "result" not in box:
            raise TransportError(f"probe on {node} did not finish")
        return box["result"]

    def pod_ip(self, name: str) -> str | None:
        pod = next((p for p in self.lab.pods if p.name == name), None)
        return str(pod.ip) if pod is not None else None


def lab_context(settings: engine.Settings) -> tuple[LabTransport, str, str]:
    """The running lab's transport, admin kubeconfig and Lease namespace."""
    st, lab = engine.load(settings)
    namespace = deployment.agent_environment()["RAVEN_LEASE_NAMESPACE"]
    return LabTransport(lab), str(st.info["kubeconfig"]), namespace
