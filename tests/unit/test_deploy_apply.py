"""deploy/ against the lab API server with kubectl, as the README's deploy section has it:
`kubectl apply -k deploy/ --dry-run=server` accepts every object, the real apply makes them, and
the ServiceAccount then holds exactly the rights deploy/rbac.yaml names, no more."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from raven.lab import deployment
from raven.lab.apiserver.serviceaccounts import write_service_account_kubeconfig
from raven.lab.testing.apiserver import ApiServerHandle, run_apiserver
from tests.manifests import DEPLOY, from_kubectl

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")

NS, SA = deployment.service_account()
USER = deployment.service_account_user()


def ok(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServerHandle]:
    with run_apiserver(tmp_path / "api") as handle:
        yield handle


def test_server_dry_run_accepts_every_object_and_creates_none(api: ApiServerHandle) -> None:
    # As on a cluster, a server-side dry run of namespaced objects needs their namespace.
    ok(api.kubectl("create", "namespace", NS))
    rendered = from_kubectl(DEPLOY)
    dry = ok(api.kubectl("apply", "-k", str(DEPLOY), "--dry-run=server")).splitlines()
    assert len(dry) == len(rendered), dry
    assert all(line.endswith("(server dry run)") for line in dry), dry
    assert "No resources found" in api.kubectl("get", "daemonsets", "-n", NS).stderr
    assert api.kubectl("get", "clusterrole", "raven-agent").returncode != 0


def test_apply_makes_every_object_and_the_account_gets_exactly_the_rbac_rules(
    api: ApiServerHandle, tmp_path: Path
) -> None:
    ok(api.kubectl("apply", "-k", str(DEPLOY)))
    for kind, name, namespace in (
        ("daemonset", "raven", NS),
        ("configmap", "raven-config", NS),
        ("serviceaccount", SA, NS),
        ("clusterrole", "raven-agent", None),
        ("role", "raven-agent-leases", NS),
        ("role", "raven-agent-events", "default"),
        ("crd", "gateways.raven.io", None),
    ):
        ok(api.kubectl("get", kind, name, *(["-n", namespace] if namespace else [])))
    token = ok(api.kubectl("create", "token", SA, "-n", NS, "--duration", "20m")).strip()
    agent = write_service_account_kubeconfig(
        tmp_path / "agent.kubeconfig", api.url, api.ca_cert, token, namespace=NS, name=SA
    )

    def can_i(*args: str) -> str:
        return api.kubectl("auth", "can-i", *args, kubeconfig=agent).stdout.strip()

    leases_ns = deployment.lease_namespace()
    for granted in (
        ("patch", "nodes"),
        ("watch", "nodes"),
        ("create", "gateways.raven.io"),
        ("patch", "gateways.raven.io", "--subresource=status"),
        ("update", "leases.coordination.k8s.io", "-n", leases_ns),
        ("create", "events", "-n", "default"),
    ):
        assert can_i(*granted) == "yes", granted
    for refused in (
        ("delete", "nodes"),
        ("update", "nodes"),
        ("delete", "gateways.raven.io"),
        ("update", "gateways.raven.io", "--subresource=status"),
        ("update", "leases.coordination.k8s.io", "-n", "kube-system"),
        ("delete", "leases.coordination.k8s.io", "-n", leases_ns),
        ("create", "events", "-n", NS),
        ("list", "secrets", "-n", NS),
        ("get", "pods", "-n", NS),
    ):
        assert can_i(*refused) == "no", refused
    # What is not granted is refused with kube-apiserver's own message.
    refused_run = api.kubectl("delete", "lease", "anything", "-n", leases_ns, kubeconfig=agent)
    assert refused_run.stderr.strip() == (
        f'Error from server (Forbidden): leases.coordination.k8s.io "anything" is forbidden: '
        f'User "{USER}" cannot delete resource "leases" in API group "coordination.k8s.io" in '
        f'the namespace "{leases_ns}"'
    )
