"""RBAC, service-account tokens, the audit log and the deployment kinds, through kubectl v1.32.

The admin's kubeconfig is system:masters; everything else is authorized by RBAC from the objects
applied, with kube-apiserver's refusals word for word."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from raven.lab.testing.apiserver import run_apiserver

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")

NS = "raven-system"
SA = "raven-agent"
SA_USER = f"system:serviceaccount:{NS}:{SA}"
CRD_FILE = Path(__file__).resolve().parents[2] / "deploy" / "crds" / "gateways.raven.io.yaml"

CLUSTER_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "raven-agent"},
    "rules": [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["raven.io"], "resources": ["gateways/status"], "verbs": ["patch"]},
    ],
}
CLUSTER_ROLE_BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "raven-agent"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": SA},
    "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": NS}],
}


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def api(tmp_path):
    with run_apiserver(tmp_path / "api") as handle:
        ok(handle.kubectl("create", "namespace", NS))
        ok(handle.kubectl("create", "serviceaccount", SA, "-n", NS))
        ok(
            handle.kubectl(
                "create",
                "-f",
                "-",
                stdin=yaml.safe_dump(
                    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
                ),
            )
        )
        yield handle


@pytest.fixture
def agent(api, tmp_path):
    """A kubeconfig acting as the ServiceAccount, with a token from `kubectl create token`."""
    token = ok(api.kubectl("create", "token", SA, "-n", NS, "--duration", "20m")).strip()
    path = tmp_path / "agent.kubeconfig"
    from raven.lab.apiserver.serviceaccounts import write_service_account_kubeconfig

    return write_service_account_kubeconfig(
        path, api.url, api.ca_cert, token, namespace=NS, name=SA
    )


def grant(api):
    ok(
        api.kubectl(
            "apply", "-f", "-", stdin=yaml.safe_dump_all([CLUSTER_ROLE, CLUSTER_ROLE_BINDING])
        )
    )


def test_a_token_from_kubectl_create_token_acts_as_the_service_account(api, agent):
    who = ok(api.kubectl("auth", "whoami", "-o", "json", kubeconfig=agent))
    info = yaml.safe_load(who)["status"]["userInfo"]
    assert info["username"] == SA_USER
    assert info["groups"] == [
        "system:serviceaccounts",
        f"system:serviceaccounts:{NS}",
        "system:authenticated",
    ]


def test_anything_not_granted_is_refused_with_kube_apiservers_message(api, agent):
    refused = api.kubectl("get", "nodes", kubeconfig=agent)
    assert refused.returncode != 0
    assert refused.stderr.strip() == (
        f'Error from server (Forbidden): nodes is forbidden: User "{SA_USER}" cannot list '
        'resource "nodes" in API group "" at the cluster scope'
    )
    grant(api)
    assert "n1" in ok(api.kubectl("get", "nodes", kubeconfig=agent))
    ok(
        api.kubectl(
            "patch", "node", "n1", "-p", '{"metadata":{"labels":{"a":"b"}}}', kubeconfig=agent
        )
    )
    refused = api.kubectl("delete", "node", "n1", kubeconfig=agent)
    assert refused.stderr.strip() == (
        f'Error from server (Forbidden): nodes "n1" is forbidden: User "{SA_USER}" cannot delete '
        'resource "nodes" in API group "" at the cluster scope'
    )
    refused = api.kubectl("get", "leases", "-n", "kube-system", kubeconfig=agent)
    assert (
        f'leases.coordination.k8s.io is forbidden: User "{SA_USER}" cannot list resource '
        '"leases" in API group "coordination.k8s.io" in the namespace "kube-system"'
    ) in refused.stderr


def test_kubectl_auth_can_i_as_the_account_and_for_it(api, agent):
    def can_i(*args, kubeconfig=None):
        r = api.kubectl("auth", "can-i", *args, kubeconfig=kubeconfig)
        return r.stdout.strip()

    assert can_i("patch", "nodes", kubeconfig=agent) == "no"
    grant(api)
    ok(api.kubectl("apply", "-f", str(CRD_FILE)))
    assert can_i("patch", "nodes", kubeconfig=agent) == "yes"
    assert can_i("delete", "nodes", kubeconfig=agent) == "no"
    assert can_i("patch", "gateways.raven.io", "--subresource", "status", kubeconfig=agent) == "yes"
    assert can_i("patch", "gateways.raven.io", kubeconfig=agent) == "no"
    # the admin asks on the account's behalf (impersonation, as on a cluster)
    assert can_i("watch", "nodes", "--as", SA_USER) == "yes"
    assert can_i("create", "nodes", "--as", SA_USER) == "no"
    listing = ok(api.kubectl("auth", "can-i", "--list", "--as", SA_USER))
    assert any(
        line.split()[0] == "nodes" and "[get list watch patch]" in line
        for line in listing.splitlines()
    )


def test_a_service_account_may_not_impersonate(api, agent):
    refused = api.kubectl("get", "nodes", "--as", "alice", kubeconfig=agent)
    assert (
        f'users "alice" is forbidden: User "{SA_USER}" cannot impersonate resource "users" in '
        'API group "" at the cluster scope'
    ) in refused.stderr


def test_deleting_the_service_account_revokes_its_tokens(api, agent):
    grant(api)
    ok(api.kubectl("get", "nodes", kubeconfig=agent))
    ok(api.kubectl("delete", "serviceaccount", SA, "-n", NS))
    ok(api.kubectl("create", "serviceaccount", SA, "-n", NS))  # same name, new uid
    refused = api.kubectl("get", "nodes", kubeconfig=agent)
    assert refused.returncode != 0 and "Unauthorized" in refused.stderr


def test_tokens_are_refused_for_missing_accounts_and_short_lifetimes(api):
    missing = api.kubectl("create", "token", "ghost", "-n", NS)
    assert 'serviceaccounts "ghost" not found' in missing.stderr
    short = api.kubectl("create", "token", SA, "-n", NS, "--duration", "5m")
    assert "may not specify a duration less than 10 minutes" in short.stderr


def test_tokens_are_kept_nowhere(api, agent):
    grant(api)
    ok(api.kubectl("get", "nodes", kubeconfig=agent))
    token = yaml.safe_load(agent.read_text())["users"][0]["user"]["token"]
    for path in api.state_dir.rglob("*"):
        if path.is_file() and path != agent and path.name != "kubeconfig":
            assert token.encode() not in path.read_bytes(), path


def test_the_audit_log_shows_what_an_identity_did_against_its_role(api, agent):
    grant(api)
    ok(api.kubectl("get", "nodes", kubeconfig=agent))
    ok(api.kubectl("get", "node", "n1", kubeconfig=agent))
    api.kubectl("delete", "node", "n1", kubeconfig=agent)  # refused
    events = [e for e in api.audit_events() if e["user"].get("username") == SA_USER]
    done = {
        (e["verb"], e.get("objectRef", {}).get("resource"), e["responseStatus"]["code"])
        for e in events
        if e["stage"] == "ResponseComplete"
    }
    assert {("list", "nodes", 200), ("get", "nodes", 200), ("delete", "nodes", 403)} <= done
    usage = api.rule_usage(CLUSTER_ROLE, SA_USER)
    assert sorted(str(p) for p in usage.unused) == [
        "patch gateways/status.raven.io",
        "patch nodes",
        "watch nodes",
    ]
    assert usage.refused_summary() == ["delete /api/v1/nodes/n1 -> 403"]
