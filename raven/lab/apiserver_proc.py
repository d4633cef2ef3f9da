"""The lab's embedded API server: PKI, the subprocess in its namespace, readiness, Node objects.

The server itself is ``python -m raven.lab.apiserver`` (built separately); this module only runs it,
waits for ``/readyz`` and registers one Node per lab node with the official ``kubernetes`` client.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raven.lab.apiserver.pki import Pki, make_pki
from raven.lab.netns import in_netns
from raven.lab.topology import Lab, Node

POOL_LABEL = "apps.openyurt.io/nodepool"


class ApiServerError(RuntimeError):
    """The lab API server did not start or did not accept the lab's Nodes."""


def _command() -> list[str]:
    # RAVEN_LAB_APISERVER_CMD replaces `python -m raven.lab.apiserver` (to try another build of it);
    # the contract's arguments are appended either way.
    override = os.environ.get("RAVEN_LAB_APISERVER_CMD")
    return shlex.split(override) if override else [sys.executable, "-m", "raven.lab.apiserver"]


def apiserver_available() -> bool:
    if os.environ.get("RAVEN_LAB_APISERVER_CMD"):
        return True
    return importlib.util.find_spec("raven.lab.apiserver.__main__") is not None


def make_lab_pki(
    directory: Path, hosts: list[str], *, extra: Mapping[str, Sequence[str]] | None = None
) -> Pki:
    """The lab CA, the API server's certificate for ``hosts`` and the token; ``extra`` names
    further serving certificates from the same CA (the cache proxies' one for 127.0.0.1)."""
    return make_pki(directory, hosts, extra=extra)


def start(
    lab: Lab, pki: Pki, *, state_dir: Path, log_file: Path, audit_log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start the API server inside the lab's API namespace, listening on all its addresses;
    with ``audit_log``, every request is recorded there (``--audit-log-path``)."""
    argv = [
        *_command(),
        "--state-dir",
        str(state_dir),
        "--listen",
        f"0.0.0.0:{lab.api_port}",
        "--cert",
        str(pki.server_cert),
        "--key",
        str(pki.server_key),
        "--token-file",
        str(pki.token_file),
        # node identities (kubelet-style client certificates) come from the lab CA
        "--client-ca-file",
        str(pki.ca_cert),
    ]
    if audit_log is not None:
        argv += ["--audit-log-path", str(audit_log)]
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        # own session: a Ctrl-C on `raven lab up` must not kill the server of a lab left running
        return subprocess.Popen(
            in_netns(lab.api_netns, argv),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_ready(
    url: str, ca_cert: Path, proc: subprocess.Popen[bytes], *, timeout: float, log_file: Path
) -> None:
    ctx = ssl.create_default_context(cafile=str(ca_cert))
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise ApiServerError(
                f"API server exited with code {proc.returncode}; log {log_file}:\n{tail}"
            )
        try:
            with urllib.request.urlopen(f"{url}/readyz", context=ctx, timeout=1) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.1)
    raise ApiServerError(
        f"API server at {url} not ready after {timeout:.0f}s ({last}); log {log_file}"
    )


def register_nodes(lab: Lab, kubeconfig: Path) -> None:
    """Create a Node per lab node and mark it Ready through the nodes/status subresource."""
    from kubernetes import client, config  # imported late: a slow import, only needed here

    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        core = client.CoreV1Api(api_client)
        for node in lab.nodes:
            body: Any = _node_body(node)  # the client takes plain dicts as well as models
            core.create_node(body)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            core.patch_node_status(
                node.name,
                {
                    "status": {
                        "addresses": [
                            {"type": "InternalIP", "address": str(node.ip)},
                            {"type": "Hostname", "address": node.name},
                        ],
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True",
                                "reason": "RavenLab",
                                "message": "lab node namespace is up",
                                "lastHeartbeatTime": now,
                                "lastTransitionTime": now,
                            }
                        ],
                    }
                },
            )
    except client.ApiException as e:
        raise ApiServerError(
            f"registering lab Nodes failed: HTTP {e.status} {e.reason}: {e.body}"
        ) from e
    finally:
        api_client.close()


def install_crds(kubeconfig: Path, crd_dir: Path, *, timeout: float = 10.0) -> list[str]:
    """Create Raven's CustomResourceDefinitions (``deploy/crds/*.yaml``) and wait until each
    group/version is served, so agents started next find their kinds. Returns the CRD names."""
    import yaml
    from kubernetes import client, config

    docs = [
        d
        for f in sorted(crd_dir.glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d and d.get("kind") == "CustomResourceDefinition"
    ]
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        ext = client.ApiextensionsV1Api(api_client)
        for doc in docs:
            ext.create_custom_resource_definition(doc)
        objects = client.CustomObjectsApi(api_client)
        deadline = time.monotonic() + timeout
        for doc in docs:
            group, plural = doc["spec"]["group"], doc["spec"]["names"]["plural"]
            for version in (v["name"] for v in doc["spec"]["versions"] if v.get("served", True)):
                while True:  # served once a list of the new kind answers
                    try:
                        if doc["spec"].get("scope") == "Namespaced":
                            objects.list_custom_object_for_all_namespaces(group, version, plural)
                        else:
                            objects.list_cluster_custom_object(group, version, plural)
                        break
                    except client.ApiException as e:
                        if time.monotonic() > deadline:
                            raise ApiServerError(
                                f"CRD {doc['metadata']['name']}: {group}/{version} {plural} not "
                                f"served after {timeout:.0f}s (HTTP {e.status})"
                            ) from e
                        time.sleep(0.1)
    except client.ApiException as e:
        raise ApiServerError(f"installing CRDs failed: HTTP {e.status} {e.reason}: {e.body}") from e
    finally:
        api_client.close()
    return [d["metadata"]["name"] for d in docs]


def create_gateways(lab: Lab, kubeconfig: Path) -> list[str]:
    """Pre-create the Gateway of each pool marked ``relay`` (as an operator would), so the
    agents know which pool's gateway is the relay. Other pools' Gateways the agents create."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    made = []
    try:
        objects = client.CustomObjectsApi(api_client)
        for pool in lab.pools:
            if not pool.relay:
                continue
            body = {
                "apiVersion": "raven.io/v1alpha1",
                "kind": "Gateway",
                "metadata": {"name": pool.name},
                "spec": {"relay": True},
            }
            objects.create_cluster_custom_object("raven.io", "v1alpha1", "gateways", body)
            made.append(pool.name)
    except client.ApiException as e:
        raise ApiServerError(
            f"creating the relay Gateway failed: HTTP {e.status} {e.reason}: {e.body}"
        ) from e
    finally:
        api_client.close()
    return made


def _node_body(node: Node) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                POOL_LABEL: node.pool,
                "kubernetes.io/hostname": node.name,
            },
        },
        "spec": {"podCIDR": str(node.pod_cidr), "podCIDRs": [str(node.pod_cidr)]},
    }
