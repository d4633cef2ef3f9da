"""`kubectl kustomize` and `kubectl apply -k` (with --dry-run=server) of a deployment like Raven's:
Namespace-scoped ServiceAccount, RBAC, ConfigMap, DaemonSet and Service, kubectl v1.32."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from raven.lab.testing.apiserver import run_apiserver

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")

NS = "raven-system"
SA = "raven-agent"

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
        # As on a cluster, a server-side dry run needs the namespace to exist already.
        ok(handle.kubectl("create", "namespace", NS))
        ok(handle.kubectl("create", "serviceaccount", SA, "-n", NS))
        yield handle


def grant(api):
    ok(
        api.kubectl(
            "apply", "-f", "-", stdin=yaml.safe_dump_all([CLUSTER_ROLE, CLUSTER_ROLE_BINDING])
        )
    )


KUSTOMIZATION = {
    "apiVersion": "kustomize.config.k8s.io/v1beta1",
    "kind": "Kustomization",
    "resources": ["rbac.yaml", "daemonset.yaml"],
    "labels": [{"pairs": {"app.kubernetes.io/part-of": "raven"}}],
    "configMapGenerator": [
        {"name": "raven-config", "namespace": NS, "literals": ["RAVEN_TABLE=9027"]}
    ],
}
DAEMONSET = {
    "apiVersion": "apps/v1",
    "kind": "DaemonSet",
    "metadata": {"name": "raven", "namespace": NS},
    "spec": {
        "selector": {"matchLabels": {"app": "raven"}},
        "template": {
            "metadata": {"labels": {"app": "raven"}},
            "spec": {
                "serviceAccountName": SA,
                "priorityClassName": "system-node-critical",
                "hostNetwork": True,
                "containers": [
                    {
                        "name": "agent",
                        "image": "raven:0.1.0",
                        "ports": [{"containerPort": 10262, "name": "metrics"}],
                    },
                    {"name": "cache-proxy", "image": "raven:0.1.0"},
                ],
            },
        },
    },
}
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "raven-metrics", "namespace": NS},
    "spec": {"selector": {"app": "raven"}, "ports": [{"name": "metrics", "port": 10262}]},
}


def write_kustomization(directory: Path, daemonset=DAEMONSET) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(KUSTOMIZATION))
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "leases", "namespace": NS},
        "rules": [
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "verbs": ["get", "list", "watch", "create", "update"],
            }
        ],
    }
    role_binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "leases", "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leases"},
        "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": NS}],
    }
    (directory / "rbac.yaml").write_text(
        yaml.safe_dump_all([CLUSTER_ROLE, CLUSTER_ROLE_BINDING, role, role_binding])
    )
    (directory / "daemonset.yaml").write_text(yaml.safe_dump_all([daemonset, SERVICE]))
    return directory


def test_apply_k_with_server_dry_run_then_for_real(api, tmp_path):
    kdir = write_kustomization(tmp_path / "deploy")
    rendered = list(yaml.safe_load_all(ok(api.kubectl("kustomize", str(kdir)))))
    assert len(rendered) == 7
    dry = ok(api.kubectl("apply", "-k", str(kdir), "--dry-run=server")).splitlines()
    assert len(dry) == 7 and all(line.endswith("created (server dry run)") for line in dry), dry
    assert "No resources found" in api.kubectl("get", "ds,svc,cm", "-n", NS).stderr
    ok(api.kubectl("apply", "-k", str(kdir)))
    again = ok(api.kubectl("apply", "-k", str(kdir), "--dry-run=server")).splitlines()
    assert all(line.endswith("unchanged (server dry run)") for line in again), again
    assert all(
        line.endswith("unchanged")
        for line in ok(api.kubectl("apply", "-k", str(kdir))).splitlines()
    )
    ds = ok(api.kubectl("get", "ds", "-n", NS, "-o", "wide")).splitlines()
    assert ds[0].split()[:6] == ["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE"]
    assert ds[1].split()[:6] == ["raven", "0", "0", "0", "0", "0"]
    assert "agent,cache-proxy" in ds[1] and "app=raven" in ds[1]
    svc = ok(api.kubectl("get", "svc", "raven-metrics", "-n", NS)).splitlines()
    assert svc[1].split()[1:5] == ["ClusterIP", "10.96.0.2", "<none>", "10262/TCP"]
    binding = ok(api.kubectl("get", "rolebinding", "leases", "-n", NS, "-o", "wide"))
    assert "Role/leases" in binding and f"{NS}/{SA}" in binding
    pcs = ok(api.kubectl("get", "priorityclass", "-o", "name")).split()
    assert pcs == [
        "priorityclass.scheduling.k8s.io/system-cluster-critical",
        "priorityclass.scheduling.k8s.io/system-node-critical",
    ]


def test_server_dry_run_refuses_a_broken_daemonset_by_field(api, tmp_path):
    broken = yaml.safe_load(yaml.safe_dump(DAEMONSET))
    broken["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    del broken["spec"]["template"]["spec"]["containers"][1]["image"]
    kdir = write_kustomization(tmp_path / "deploy", broken)
    refused = api.kubectl("apply", "-k", str(kdir), "--dry-run=server")
    assert refused.returncode != 0
    assert 'The DaemonSet "raven" is invalid' in refused.stderr
    assert (
        "spec.template.metadata.labels: Invalid value: `selector` does not match template "
        "`labels`" in refused.stderr
    )
    assert "spec.template.spec.containers[1].image: Required value" in refused.stderr


def test_a_binding_may_not_change_its_role(api):
    grant(api)
    changed = yaml.safe_load(yaml.safe_dump(CLUSTER_ROLE_BINDING))
    changed["roleRef"]["name"] = "cluster-admin"
    refused = api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(changed))
    assert "cannot change roleRef" in refused.stderr


def test_reapplying_a_changed_daemonset_merges_by_the_keys_kube_uses(api, tmp_path):
    kdir = write_kustomization(tmp_path / "deploy")
    ok(api.kubectl("apply", "-k", str(kdir)))
    changed = yaml.safe_load(yaml.safe_dump(DAEMONSET))
    agent, proxy = changed["spec"]["template"]["spec"]["containers"]
    agent["image"] = "raven:0.2.0"
    agent["ports"] = [
        {"containerPort": 10263, "name": "metrics"},
        {"containerPort": 10264, "name": "debug"},
    ]
    proxy["volumeMounts"] = [{"name": "cache", "mountPath": "/var/cache"}]
    changed["spec"]["template"]["spec"]["volumes"] = [{"name": "cache", "emptyDir": {}}]
    write_kustomization(kdir, changed)
    out = ok(api.kubectl("apply", "-k", str(kdir)))
    assert "daemonset.apps/raven configured" in out
    live = yaml.safe_load(ok(api.kubectl("get", "ds", "raven", "-n", NS, "-o", "yaml")))
    agent_live, proxy_live = live["spec"]["template"]["spec"]["containers"]
    assert agent_live["image"] == "raven:0.2.0"
    assert sorted(p["containerPort"] for p in agent_live["ports"]) == [10263, 10264]
    assert proxy_live["volumeMounts"] == [{"name": "cache", "mountPath": "/var/cache"}]
    assert live["metadata"]["generation"] == 2
    # and back: the port and the mount go again
    write_kustomization(kdir)
    ok(api.kubectl("apply", "-k", str(kdir)))
    live = yaml.safe_load(ok(api.kubectl("get", "ds", "raven", "-n", NS, "-o", "yaml")))
    agent_live, proxy_live = live["spec"]["template"]["spec"]["containers"]
    assert [p["containerPort"] for p in agent_live["ports"]] == [10262]
    assert "volumeMounts" not in proxy_live and "volumes" not in live["spec"]["template"]["spec"]
