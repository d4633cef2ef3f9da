"""What the lab takes from ``deploy/``, so its agents run as the DaemonSet's would on a cluster.

The lab applies the deployment's Namespace, ServiceAccount and RBAC (``deploy/namespace.yaml``,
``deploy/rbac.yaml``) to its API server, which authorizes every request with them; it issues
the ServiceAccount a token through the TokenRequest API, as the kubelet does for the pod's
projected token; and it runs every agent with that token (``STATE/agent.kubeconfig``, through
the node's cache proxy) and with the Lease namespace of ``deploy/config.yaml``. So a request
the code makes that the ClusterRole or a Role does not grant is refused in the lab (403), as it
would be on a cluster, and shows in the audit log (``STATE/audit.log``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from raven.lab.apiserver.pki import Pki
from raven.lab.apiserver.serviceaccounts import request_token, write_service_account_kubeconfig

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
RBAC_FILES = ("namespace.yaml", "rbac.yaml")  # in this order: the namespace holds the rest
CONFIG_FILE = "config.yaml"
AGENT_KUBECONFIG = "agent.kubeconfig"  # the agents' credentials: the ServiceAccount's token
# The kubelet rotates a pod's projected token; the lab issues one for as long as a lab may run.
TOKEN_SECONDS = 365 * 24 * 3600

Obj = dict[str, Any]


class DeploymentError(RuntimeError):
    """deploy/ does not hold what the lab needs, or the API server refused an object of it."""


def _documents(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def rbac_objects(deploy_dir: Path = DEPLOY_DIR) -> list[Obj]:
    """The Namespace, ServiceAccount, Roles, ClusterRoles and bindings of ``deploy/``."""
    return [doc for name in RBAC_FILES for doc in _documents(deploy_dir / name)]


@functools.cache  # read once: tests ask for it while they poll
def service_account(deploy_dir: Path = DEPLOY_DIR) -> tuple[str, str]:
    """(namespace, name) of the one ServiceAccount the DaemonSet runs as."""
    found = [o for o in rbac_objects(deploy_dir) if o.get("kind") == "ServiceAccount"]
    if len(found) != 1:
        raise DeploymentError(f"{deploy_dir}: expected one ServiceAccount, found {len(found)}")
    meta = found[0]["metadata"]
    return meta["namespace"], meta["name"]


def service_account_user(deploy_dir: Path = DEPLOY_DIR) -> str:
    """The user name the API server gives the ServiceAccount's requests (in its audit log)."""
    namespace, name = service_account(deploy_dir)
    return f"system:serviceaccount:{namespace}:{name}"


def settings(deploy_dir: Path = DEPLOY_DIR) -> dict[str, str]:
    """The ``raven-config`` ConfigMap's data: the agents' RAVEN_* settings."""
    for doc in _documents(deploy_dir / CONFIG_FILE):
        if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "raven-config":
            return {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
    raise DeploymentError(f"{deploy_dir / CONFIG_FILE}: no ConfigMap raven-config")


@functools.cache  # read once: tests ask for it while they poll
def lease_namespace(deploy_dir: Path = DEPLOY_DIR) -> str:
    """Where the per-pool Leases live on a cluster, and so in the lab."""
    return settings(deploy_dir)["RAVEN_LEASE_NAMESPACE"]


def agent_environment(deploy_dir: Path = DEPLOY_DIR) -> dict[str, str]:
    """What the lab's agents take from raven-config: the settings every node must share. Per-node
    or lab-specific ones (interface names, health port, log format) stay the lab's own."""
    return {"RAVEN_LEASE_NAMESPACE": lease_namespace(deploy_dir)}


def apply(kubeconfig: Path, objects: Iterable[Obj]) -> list[str]:
    """Create ``objects`` with the lab's admin credentials; one already there is left as it is.
    Returns ``kind/name`` of each. The first refusal stops it, naming the object."""
    from kubernetes import config, utils

    made = []
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        for obj in objects:
            what = f"{obj['kind']}/{obj['metadata']['name']}"
            try:
                utils.create_from_dict(api_client, obj)
            except utils.FailToCreateError as e:
                errors = [x for x in e.api_exceptions if getattr(x, "status", None) != 409]
                if errors:
                    first = errors[0]
                    raise DeploymentError(
                        f"creating {what}: HTTP {first.status} {first.reason}: {first.body}"
                    ) from e
            made.append(what)
    finally:
        api_client.close()
    return made


def issue_agent_kubeconfig(state_dir: Path, pki: Pki, api_url: str, proxy_url: str) -> Path:
    """A token for the DaemonSet's ServiceAccount (TokenRequest, asked at ``api_url`` as the
    lab's admin) in ``STATE/agent.kubeconfig`` (0600), which points at the node's cache proxy."""
    namespace, name = service_account()
    token = request_token(api_url, pki.ca_cert, pki.token, namespace, name, seconds=TOKEN_SECONDS)
    return write_service_account_kubeconfig(
        state_dir / AGENT_KUBECONFIG, proxy_url, pki.ca_cert, token, namespace=namespace, name=name
    )


def agent_token(state_dir: Path) -> str:
    """The ServiceAccount token the lab issued (for a pod's projected token volume)."""
    config = yaml.safe_load((state_dir / AGENT_KUBECONFIG).read_text())
    return str(config["users"][0]["user"]["token"])
