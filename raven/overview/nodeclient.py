"""Reach one agent's ``/status`` (``raven status --node``): two ways to the same document.

* ``http``: the agent's health server on the node's InternalIP (the DaemonSet runs on the
  host's network, port 10262), from wherever the operator is;
* ``exec``: ``kubectl exec`` into the node's Raven pod, container ``agent``, which asks its own
  loopback (for when the nodes' addresses are not reachable from the operator's machine).

The lab reaches it inside the node's network namespace (``raven lab node-status``). The
endpoint is plain HTTP and carries nothing secret; no credential is sent to it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from raven.overview.cluster import internal_ip

HEALTH_PORT = 10262
NAMESPACE = "raven-system"
POD_SELECTOR = "app.kubernetes.io/name=raven"
CONTAINER = "agent"
#: Run inside the agent's container: the image has Python, not necessarily curl.
FETCH_SCRIPT = (
    "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
    "'http://127.0.0.1:{port}/status', timeout=5).read().decode())"
)


class NodeStatusError(Exception):
    """The node's agent could not be reached or did not answer a document."""


def status_url(node: Mapping[str, Any], port: int = HEALTH_PORT) -> str:
    """``http://<InternalIP>:<port>/status`` of a Node object."""
    address = internal_ip(node)
    if not address:
        name = (node.get("metadata") or {}).get("name", "?")
        raise NodeStatusError(f"Node {name} has no InternalIP")
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/status"


def parse(text: str, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as error:
        raise NodeStatusError(f"{where} did not answer JSON: {error}") from error
    if not isinstance(doc, dict) or "node" not in doc:
        raise NodeStatusError(f"{where} did not answer an agent's status document")
    return doc


async def fetch_http(url: str, *, timeout: float = 10.0) -> dict[str, Any]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(url) as resp,
        ):
            text = await resp.text()
            if resp.status != 200:
                raise NodeStatusError(f"{url}: HTTP {resp.status}: {text.strip()[:200]}")
    except (aiohttp.ClientError, TimeoutError) as error:
        raise NodeStatusError(f"cannot reach {url}: {error or type(error).__name__}") from error
    return parse(text, url)


def kubectl_argv(
    node: str, *, kubeconfig: Path | None, namespace: str = NAMESPACE, port: int = HEALTH_PORT
) -> tuple[list[str], list[str]]:
    """(find the node's Raven pod, exec into it) — the second needs the pod name appended
    where ``{pod}`` stands."""
    base = ["kubectl"] + (["--kubeconfig", str(kubeconfig)] if kubeconfig else [])
    find = base + [
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        POD_SELECTOR,
        "--field-selector",
        f"spec.nodeName={node}",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]
    script = FETCH_SCRIPT.format(port=port)
    run = base + ["exec", "-n", namespace, "{pod}", "-c", CONTAINER, "--", "python3", "-c", script]
    return find, run


def _run(argv: Sequence[str], timeout: float) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise NodeStatusError(f"{' '.join(argv[:4])} …: {done.stderr.strip()[:300]}")
    return done.stdout


def fetch_exec(
    node: str,
    *,
    kubeconfig: Path | None,
    namespace: str = NAMESPACE,
    port: int = HEALTH_PORT,
    timeout: float = 20.0,
) -> dict[str, Any]:
    """The document through ``kubectl exec`` into the node's Raven pod."""
    if shutil.which("kubectl") is None:
        raise NodeStatusError("--via exec needs kubectl on PATH")
    find, run = kubectl_argv(node, kubeconfig=kubeconfig, namespace=namespace, port=port)
    pod = _run(find, timeout).strip()
    if not pod:
        raise NodeStatusError(f"no Raven pod on node {node} in namespace {namespace}")
    argv = [pod if a == "{pod}" else a for a in run]
    return parse(_run(argv, timeout), f"pod {namespace}/{pod}")
