"""deploy/: what `kubectl apply -k deploy/` would create, checked against the code it runs.

Each test reads the manifests twice, as `kubectl kustomize deploy/` renders them (when kubectl
is installed) and straight from the files the kustomization lists, and compares them with the
names, ports, settings and API calls the code uses, so a rename on either side fails here.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import AgentSettings
from raven.cacheproxy.server import DEFAULT_PORT as PROXY_PORT
from raven.kube.events import EVENTS
from raven.kube.resources import GATEWAYS, NODES, leases
from raven.lab.engine import CRD_DIR
from raven.names import POOL_LABEL
from tests.manifests import DEPLOY, NAMESPACE, Obj, from_files, from_kubectl, one, pod_spec

# The settings deploy/config.yaml sets to other than the agent's default, and why. Every other
# value it writes out is the default, so an overlay sees what it would change.
NOT_DEFAULT = {
    "RAVEN_LEASE_NAMESPACE": NAMESPACE,  # Raven's own namespace, where the Role grants Leases
    "RAVEN_LOG_FORMAT": "json",  # for the node's log collector
}


RENDERERS = [
    pytest.param(from_files, id="files"),
    pytest.param(
        from_kubectl,
        id="kubectl",
        marks=pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed"),
    ),
]


@pytest.fixture(params=RENDERERS)
def render(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture
def objs(render: Any) -> list[Obj]:
    return render(DEPLOY)


def container(spec: Obj, name: str) -> Obj:
    by_name = {c["name"]: c for c in spec["containers"]}
    return by_name[name]


def settings(objs: list[Obj]) -> dict[str, str]:
    data: dict[str, str] = one(objs, "ConfigMap", "raven-config", NAMESPACE)["data"]
    return data


def arg(c: Obj, flag: str) -> str:
    values = [a.split("=", 1)[1] for a in c.get("args", []) if a.startswith(f"--{flag}=")]
    assert len(values) == 1, f"{c['name']}: --{flag} given {len(values)} times"
    return values[0]


def test_renders_exactly_the_objects_of_an_install(objs: list[Obj]) -> None:
    got = sorted(
        (o["kind"], o["metadata"].get("namespace") or "", o["metadata"]["name"]) for o in objs
    )
    assert got == sorted(
        [
            ("Namespace", "", NAMESPACE),
            ("CustomResourceDefinition", "", "gateways.raven.io"),
            ("ServiceAccount", NAMESPACE, "raven-agent"),
            ("ClusterRole", "", "raven-agent"),
            ("ClusterRoleBinding", "", "raven-agent"),
            ("ClusterRole", "", "raven-node-shared-reads"),
            ("ClusterRoleBinding", "", "raven-node-shared-reads"),
            ("Role", NAMESPACE, "raven-agent-leases"),
            ("RoleBinding", NAMESPACE, "raven-agent-leases"),
            ("Role", EVENTS.namespace, "raven-agent-events"),
            ("RoleBinding", EVENTS.namespace, "raven-agent-events"),
            ("ConfigMap", NAMESPACE, "raven-config"),
            ("ConfigMap", NAMESPACE, "raven-agent-kubeconfig"),
            ("ConfigMap", NAMESPACE, "raven-node-kubeconfig"),
            ("DaemonSet", NAMESPACE, "raven"),
        ]
    )


def test_the_crd_is_the_one_the_lab_installs(objs: list[Obj]) -> None:
    crd = one(objs, "CustomResourceDefinition", "gateways.raven.io")
    lab = yaml.safe_load((CRD_DIR / "gateways.raven.io.yaml").read_text())
    assert crd["spec"] == lab["spec"]
    assert crd["spec"]["group"] == GATEWAYS.group
    assert crd["spec"]["names"]["plural"] == GATEWAYS.plural


def rules_of(obj: Obj) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in obj["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_rbac_grants_exactly_what_the_agent_calls(objs: list[Obj]) -> None:
    cluster = rules_of(one(objs, "ClusterRole", "raven-agent"))
    assert cluster == {
        (NODES.group, NODES.plural): {"get", "list", "watch", "patch"},
        (GATEWAYS.group, GATEWAYS.plural): {"get", "list", "watch", "create", "patch"},
        (GATEWAYS.group, f"{GATEWAYS.plural}/status"): {"patch"},
    }
    lease_ns = settings(objs)["RAVEN_LEASE_NAMESPACE"]
    lease = leases(lease_ns)
    assert rules_of(one(objs, "Role", "raven-agent-leases", lease_ns)) == {
        (lease.group, lease.plural): {"get", "list", "watch", "create", "update"}
    }
    assert rules_of(one(objs, "Role", "raven-agent-events", EVENTS.namespace)) == {
        (EVENTS.group, EVENTS.plural): {"create"}
    }
    for kind, name, namespace in (
        ("ClusterRoleBinding", "raven-agent", None),
        ("RoleBinding", "raven-agent-leases", lease_ns),
        ("RoleBinding", "raven-agent-events", EVENTS.namespace),
    ):
        binding = one(objs, kind, name, namespace)
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "raven-agent", "namespace": NAMESPACE}
        ]


def test_every_setting_is_one_the_agent_reads_and_parses(objs: list[Obj]) -> None:
    data = settings(objs)
    fields = {f"RAVEN_{name.upper()}": name for name in AgentSettings.model_fields}
    unknown = set(data) - set(fields)
    assert not unknown, f"raven-config has settings the agent does not know: {sorted(unknown)}"
    parsed = AgentSettings(node_name="n1", **{fields[k]: v for k, v in data.items() if k in fields})
    assert parsed.pool_label == POOL_LABEL
    assert parsed.lease_namespace == NAMESPACE


def test_the_settings_written_out_are_the_agents_defaults(objs: list[Obj]) -> None:
    """A value in raven-config that differs from the default without a reason is a stale copy
    (the Lease timings once were): the DaemonSet would run other timings than documented."""
    data = settings(objs)
    for key, value in data.items():
        name = key.removeprefix("RAVEN_").lower()
        if key in NOT_DEFAULT:
            assert value == NOT_DEFAULT[key], key
            continue
        default = AgentSettings.model_fields[name].default
        parsed = AgentSettings(node_name="n1", **{name: value})
        assert getattr(parsed, name) == default, f"{key}: {value!r}, default {default!r}"


def test_daemonset_pod_runs_agent_proxy_and_heartbeat_on_the_host_network(objs: list[Obj]) -> None:
    ds = one(objs, "DaemonSet", "raven", NAMESPACE)
    spec = pod_spec(objs)
    assert [c["name"] for c in spec["containers"]] == ["agent", "cache-proxy", "heartbeat"]
    assert [c["name"] for c in spec["initContainers"]] == ["prepare"]
    assert spec["hostNetwork"] is True
    assert spec["serviceAccountName"] == "raven-agent"
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    strategy = ds["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    images = {c["image"] for c in spec["containers"] + spec["initContainers"]}
    assert len(images) == 1, "one image for every entry point"
    for c in spec["containers"] + spec["initContainers"]:
        assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]


def test_agent_is_root_with_net_admin_and_net_raw_only(objs: list[Obj]) -> None:
    spec = pod_spec(objs)
    agent = container(spec, "agent")
    sc = agent["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert sc.get("privileged", False) is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    # The proxy and the heartbeat read the kubelet's client key (root's, 0600): root, but with
    # no capability at all.
    for name in ("cache-proxy", "heartbeat"):
        sc = container(spec, name)["securityContext"]
        assert sc["runAsUser"] == 0 and sc["capabilities"] == {"drop": ["ALL"]}, name
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    prepare = spec["initContainers"][0]["securityContext"]
    assert prepare["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}


def mounts(c: Obj) -> dict[str, Obj]:
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


def test_agent_gets_tun_xtables_lock_and_its_state_folder(objs: list[Obj]) -> None:
    spec = pod_spec(objs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    agent = container(spec, "agent")
    env = {e["name"]: e for e in agent["env"]}
    m = mounts(agent)
    assert volumes[m["/dev/net/tun"]["name"]]["hostPath"] == {
        "path": "/dev/net/tun",
        "type": "CharDevice",
    }
    assert volumes[m["/run/xtables.lock"]["name"]]["hostPath"] == {
        "path": "/run/xtables.lock",
        "type": "FileOrCreate",
    }
    state_dir = env["RAVEN_STATE_DIR"]["value"]
    assert volumes[m[state_dir]["name"]]["hostPath"]["path"] == "/var/lib/raven"
    assert m[state_dir]["subPath"] == "agent"
    assert env["RAVEN_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # The proxy's cache and the agent's key: separate folders of the node's state.
    proxy = mounts(container(spec, "cache-proxy"))
    cache = proxy[arg(container(spec, "cache-proxy"), "cache-dir")]
    assert cache["name"] == "state" and cache["subPath"] == "cache-proxy"
    assert not any(mt.get("subPath") == "agent" for mt in proxy.values())


def test_agent_reaches_the_api_through_its_node_proxy(objs: list[Obj]) -> None:
    spec = pod_spec(objs)
    agent, proxy = container(spec, "agent"), container(spec, "cache-proxy")
    env = {e["name"]: e for e in agent["env"]}
    kc_path = Path(env["RAVEN_KUBECONFIG"]["value"])
    m = mounts(agent)
    cm_name = {v["name"]: v for v in spec["volumes"]}[m[str(kc_path.parent)]["name"]]
    kubeconfig = yaml.safe_load(
        one(objs, "ConfigMap", cm_name["configMap"]["name"], NAMESPACE)["data"][kc_path.name]
    )
    cluster = kubeconfig["clusters"][0]["cluster"]
    assert int(arg(proxy, "port")) == PROXY_PORT
    assert arg(proxy, "host") == "127.0.0.1"
    assert cluster["server"] == f"https://127.0.0.1:{PROXY_PORT}"
    # The agent trusts the certificate the proxy serves, and reads its own token.
    ca = Path(cluster["certificate-authority"])
    assert m[str(ca.parent)]["subPath"] == "tls"
    assert mounts(proxy)[str(Path(arg(proxy, "tls-cert")).parent)]["subPath"] == "tls"
    token = Path(kubeconfig["users"][0]["user"]["tokenFile"])
    token_volume = {v["name"]: v for v in spec["volumes"]}[m[str(token.parent)]["name"]]
    assert token_volume["projected"]["sources"][0]["serviceAccountToken"]["path"] == token.name
    assert spec["automountServiceAccountToken"] is False
    assert not any("secrets" in p for p in mounts(proxy)), "the proxy holds no token"


def test_every_container_is_probed_on_its_own_health_port(objs: list[Obj]) -> None:
    spec = pod_spec(objs)
    agent, proxy = container(spec, "agent"), container(spec, "cache-proxy")
    health_port = int(settings(objs)["RAVEN_HEALTH_PORT"])
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert ports["health"] == health_port
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert agent[probe]["httpGet"] == {"path": path, "port": "health"}
        assert proxy[probe]["httpGet"] == {
            "host": "127.0.0.1",
            "scheme": "HTTPS",
            "path": path,
            "port": PROXY_PORT,
        }
    annotations = one(objs, "DaemonSet", "raven", NAMESPACE)["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/port"] == str(health_port)


def test_heartbeat_and_proxy_share_the_node_identity_and_the_cloud_path(objs: list[Obj]) -> None:
    spec = pod_spec(objs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    proxy, heartbeat = container(spec, "cache-proxy"), container(spec, "heartbeat")
    # One cloud path file: the heartbeat writes it, the proxy only reads it.
    path = arg(heartbeat, "path-file")
    assert arg(proxy, "path-file") == path
    hb_mount, proxy_mount = mounts(heartbeat)[str(Path(path).parent)], mounts(proxy)[
        str(Path(path).parent)
    ]
    assert hb_mount["name"] == proxy_mount["name"]
    assert not hb_mount.get("readOnly") and proxy_mount["readOnly"] is True
    assert "emptyDir" in volumes[hb_mount["name"]]
    # The heartbeat acts as the node: the kubelet's certificate, through the node's proxy, which
    # presents that same certificate upstream.
    kc_path = Path(arg(heartbeat, "kubeconfig"))
    cm = volumes[mounts(heartbeat)[str(kc_path.parent)]["name"]]["configMap"]["name"]
    kubeconfig = yaml.safe_load(one(objs, "ConfigMap", cm, NAMESPACE)["data"][kc_path.name])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == f"https://127.0.0.1:{PROXY_PORT}"
    user = kubeconfig["users"][0]["user"]
    assert set(user) == {"client-certificate", "client-key"}
    assert user["client-certificate"] == arg(proxy, "node-cert")
    assert user["client-key"] == arg(proxy, "node-key")
    pki = str(Path(user["client-certificate"]).parent)
    for c in (proxy, heartbeat):
        m = mounts(c)[pki]
        assert m["readOnly"] is True and volumes[m["name"]]["hostPath"]["path"] == pki
    assert not any("secrets" in p for p in mounts(heartbeat)), "the heartbeat holds no token"
    # It probes the address the proxy forwards to, and relays to that one only.
    assert arg(heartbeat, "upstream") == arg(proxy, "upstream")
    assert arg(heartbeat, "ca-cert") == arg(proxy, "ca-cert")
    ports = {p["name"]: p["containerPort"] for p in heartbeat["ports"]}
    assert ports["relay"] == int(arg(heartbeat, "relay-port"))
    assert ports["hb-health"] == int(arg(heartbeat, "health-port"))
    beacon = int(settings(objs)["RAVEN_BEACON_PORT"])
    health = int(settings(objs)["RAVEN_HEALTH_PORT"])
    assert len({ports["relay"], ports["hb-health"], beacon, health, PROXY_PORT}) == 5
    for probe, p in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert heartbeat[probe]["httpGet"] == {"path": p, "port": "hb-health"}
    env = {e["name"]: e for e in heartbeat["env"]}
    assert env["RAVEN_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_the_proxy_outlives_the_agent_lease_release(objs: list[Obj]) -> None:
    spec = pod_spec(objs)
    pre_stop = container(spec, "cache-proxy")["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert int(pre_stop[1]) < spec["terminationGracePeriodSeconds"]


def test_uninstall_cleans_every_node_with_the_agents_settings(render: Any) -> None:
    objs = render(DEPLOY / "uninstall")
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [("DaemonSet", "raven-cleanup")]
    spec = objs[0]["spec"]["template"]["spec"]
    assert spec["tolerations"] == pod_spec(render(DEPLOY))["tolerations"]
    cleanup = spec["initContainers"][0]
    assert "raven-agent --cleanup" in cleanup["command"][-1]
    assert cleanup["envFrom"] == [{"configMapRef": {"name": "raven-config"}}]
    assert spec["automountServiceAccountToken"] is False
