"""How ``raven diagnose`` reaches a node: one interface, two ways.

A :class:`Transport` runs the collector script (:data:`raven.diagnose.facts.COLLECT_SCRIPT`) and
the probes (:mod:`raven.diagnose.probes`) on a node. :class:`KubectlTransport` does it on a
cluster with ``kubectl exec`` into the ``agent`` container of the node's Raven pod (namespace
``raven-system``, label ``app.kubernetes.io/name=raven``), which runs on the node's network with
``ip``, ``wg``, ``iptables`` and Raven's own Python; the lab's transport (``raven.lab.diagnose``)
runs the same in the node's network namespace.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any, Protocol

from raven.diagnose.facts import COLLECT_SCRIPT
from raven.diagnose.probes import Capture, Request, to_json


class TransportError(RuntimeError):
    """A node could not be reached or did not answer; says which and why."""


class Transport(Protocol):
    def wg_dev(self, node: str) -> str:
        """The node's WireGuard device name."""
        ...

    def vxlan_dev(self, node: str) -> str | None:
        """The node's VXLAN device name (None: derived from the WireGuard one)."""
        ...

    def collect(self, node: str, *, table: int) -> str:
        """The collector script's output on ``node``."""
        ...

    def probe(self, node: str, request: Request, *, ready: Callable[[], None]) -> Any:
        """Run one probe on ``node``; its JSON-able result. A capture calls ``ready`` once it
        listens."""
        ...

    def pod_ip(self, name: str) -> str | None:
        """The IP of the pod called ``name`` when this transport knows pods (None: ask the API)."""
        ...


class KubectlTransport:
    """Nodes of a cluster, through ``kubectl exec`` into their Raven pod's agent container."""

    def __init__(
        self,
        *,
        kubectl: str = "kubectl",
        kubeconfig: str | None = None,
        namespace: str = "raven-system",
        selector: str = "app.kubernetes.io/name=raven",
        container: str = "agent",
        wg_interface: str = "raven0",
        timeout: float = 20.0,
    ) -> None:
        self.base = [kubectl, *(["--kubeconfig", kubeconfig] if kubeconfig else [])]
        self.namespace = namespace
        self.selector = selector
        self.container = container
        self.wg_interface = wg_interface
        self.timeout = timeout
        self._pods: dict[str, str] | None = None

    def _pod(self, node: str) -> str:
        if self._pods is None:
            argv = [
                *self.base,
                "-n",
                self.namespace,
                "get",
                "pods",
                "-l",
                self.selector,
                "-o",
                "json",
            ]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
            if proc.returncode != 0:
                raise TransportError(f"{' '.join(argv)}: {proc.stderr.strip()}")
            items = json.loads(proc.stdout).get("items", [])
            self._pods = {
                p["spec"].get("nodeName", ""): p["metadata"]["name"]
                for p in items
                if p.get("status", {}).get("phase") == "Running"
            }
        pod = self._pods.get(node)
        if pod is None:
            raise TransportError(
                f"no running Raven pod on node {node} (namespace {self.namespace},"
                f" label {self.selector})"
            )
        return pod

    def _exec(self, node: str, argv: list[str]) -> list[str]:
        return [
            *self.base,
            "-n",
            self.namespace,
            "exec",
            self._pod(node),
            "-c",
            self.container,
            "--",
            *argv,
        ]

    def wg_dev(self, node: str) -> str:
        return self.wg_interface

    def vxlan_dev(self, node: str) -> str | None:
        return None

    def collect(self, node: str, *, table: int) -> str:
        argv = self._exec(
            node, ["env", f"WG={self.wg_interface}", f"TABLE={table}", "sh", "-c", COLLECT_SCRIPT]
        )
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        if proc.returncode != 0 and "@@ end" not in proc.stdout:
            raise TransportError(f"collecting on {node}: {proc.stderr.strip()[-300:]}")
        return proc.stdout

    def probe(self, node: str, request: Request, *, ready: Callable[[], None]) -> Any:
        argv = self._exec(node, ["python", "-m", "raven.diagnose.probes", to_json(request)])
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
            assert p.stdout is not None and p.stderr is not None
            line = p.stdout.readline()
            if isinstance(request, Capture):
                ready()
                line = p.stdout.readline() if line.strip() == "ready" else line
            try:
                p.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                raise TransportError(f"probe on {node} did not finish") from None
            if p.returncode != 0:
                raise TransportError(f"probe on {node}: {p.stderr.read().strip()[-300:]}")
        return json.loads(line)

    def pod_ip(self, name: str) -> str | None:
        return None
