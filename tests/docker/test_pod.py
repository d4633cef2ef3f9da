"""The DaemonSet's pod under Docker, run from the rendered manifests by the kubelet stand-in.

Here the pod's "node" is this host (hostNetwork), so only what is harmless on the host runs: the
prepare step and the cache-proxy, in front of the lab API server run in-process on loopback. The
agent's data path is shown with the lab (tests/docker/test_lab_pods.py); the uninstall DaemonSet
runs in a namespace of its own.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import stat
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from raven.lab.dockerd import Engine
from raven.lab.testing.apiserver import ApiServerHandle, run_apiserver
from tests.manifests import DEPLOY, NAMESPACE, Obj, from_files, one, pod_spec

from .kubelet import Cluster, Pod, install_kubelet_certificate

pytestmark = pytest.mark.root
OLD_PROXY_UID = 65532  # the proxy's user before it held the node's identity


def node_name(node_root: Path) -> str:
    """A Node name (a DNS label) unique to the test, from its temporary folder's name."""
    return "dock-" + re.sub(r"[^a-z0-9]+", "-", node_root.parent.name[-6:].lower()).strip("-")


@pytest.fixture
def api(tmp_path: Path, node_root: Path) -> Iterator[ApiServerHandle]:
    with run_apiserver(tmp_path / "api", nodes=[node_name(node_root)]) as handle:
        install_kubelet_certificate(node_root, *handle.node_client_pair(node_name(node_root)))
        yield handle


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def pod(
    docker: Engine, image: str, manifests: list[Obj], api: ApiServerHandle, node_root: Path
) -> Iterator[Pod]:
    spec = pod_spec(manifests)
    cluster = Cluster(manifests, api.host, api.port, api.ca_cert, api.token)
    the_pod = Pod(docker, cluster, NAMESPACE, spec, node_name(node_root), node_root)
    try:
        yield the_pod
    finally:
        the_pod.stop()
        the_pod.remove()


def mode_owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid


def test_prepare_makes_the_state_folders_and_a_loopback_certificate_once(pod: Pod) -> None:
    pod.start_sandbox(network="host")
    pod.run_init()
    state = pod.root / "var/lib/raven"
    assert mode_owner(state / "agent") == (0o700, 0)
    assert mode_owner(state / "cache-proxy") == (0o700, 0)
    assert mode_owner(state / "tls/tls.key") == (0o600, 0)
    assert mode_owner(state / "tls/tls.crt") == (0o644, 0)
    cert = (state / "tls/tls.crt").read_bytes()
    san = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName"],
        input=cert,
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert "IP Address:127.0.0.1" in san
    # A restarted pod keeps the node's certificate: the kubelet's kubeconfig may trust it.
    pod.run_init()
    assert (state / "tls/tls.crt").read_bytes() == cert
    # A node upgraded from a proxy that ran as its own user: its cache and key are taken back.
    os.chown(state / "tls/tls.key", OLD_PROXY_UID, OLD_PROXY_UID)
    (state / "cache-proxy/cache.sqlite").write_bytes(b"")
    for path in (state / "cache-proxy", state / "cache-proxy/cache.sqlite"):
        os.chown(path, OLD_PROXY_UID, OLD_PROXY_UID)
    pod.run_init()
    assert mode_owner(state / "tls/tls.key") == (0o600, 0)
    assert mode_owner(state / "cache-proxy")[1] == 0
    assert (state / "cache-proxy/cache.sqlite").stat().st_uid == 0
    assert (state / "tls/tls.crt").read_bytes() == cert


def test_cache_proxy_runs_without_capabilities_and_its_probes_turn_green(
    pod: Pod, api: ApiServerHandle
) -> None:
    port = pod.container_spec("cache-proxy")["livenessProbe"]["httpGet"]["port"]
    if not port_free(port):
        pytest.fail(f"127.0.0.1:{port} is taken on this host; the pod's proxy needs it")
    pod.start_sandbox(network="host")
    pod.run_init()
    pod.start_container("cache-proxy")
    pod.wait_probe("cache-proxy", "livenessProbe", timeout=30)
    pod.wait_probe("cache-proxy", "readinessProbe", timeout=30)
    # Root, to read the kubelet's client key (root's, 0600), and not one capability.
    uid = pod.exec("cache-proxy", "id", "-u").stdout.strip()
    assert uid == "0"
    status = pod.exec("cache-proxy", "sh", "-c", "grep -E '^(Uid|CapEff)' /proc/1/status").stdout
    assert "CapEff:\t0000000000000000" in status, status


def test_the_agent_kubeconfig_reaches_the_api_server_through_the_pod_proxy(
    pod: Pod, api: ApiServerHandle, manifests: list[Obj]
) -> None:
    """What the agent's client does with the rendered kubeconfig: trust the certificate the pod
    made, send the token, get an answer from the API server through the proxy."""
    pod.start_sandbox(network="host")
    pod.run_init()
    pod.start_container("cache-proxy")
    pod.wait_probe("cache-proxy", "readinessProbe", timeout=30)
    kubeconfig = yaml.safe_load(
        one(manifests, "ConfigMap", "raven-agent-kubeconfig", NAMESPACE)["data"]["agent.kubeconfig"]
    )
    cluster = kubeconfig["clusters"][0]["cluster"]
    ctx = ssl.create_default_context(cafile=str(pod.root / "var/lib/raven/tls/tls.crt"))
    request = urllib.request.Request(
        cluster["server"] + "/api/v1/nodes", headers={"Authorization": f"Bearer {api.token}"}
    )
    with urllib.request.urlopen(request, context=ctx, timeout=10) as answer:
        assert answer.status == 200
        assert b'"kind":"NodeList"' in answer.read().replace(b" ", b"")


def sh_in(pid: int, *argv: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", *argv], capture_output=True, text=True, timeout=30
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {proc.stderr}")
    return proc.stdout


def test_uninstall_daemonset_removes_raven_state_and_nothing_else(
    docker: Engine, image: str, manifests: list[Obj], api: ApiServerHandle, node_root: Path
) -> None:
    """The cleanup pod, with the settings the agents ran with, on a node that has Raven's route,
    rule and state folder next to routes and rules of its own."""
    spec = pod_spec(from_files(DEPLOY / "uninstall"), "raven-cleanup")
    cluster = Cluster(manifests, api.host, api.port, api.ca_cert, api.token)
    node = Pod(docker, cluster, NAMESPACE, spec, "cleanup-node", node_root)
    try:
        pid = node.start_sandbox(network="none")
        table = one(manifests, "ConfigMap", "raven-config", NAMESPACE)["data"]["RAVEN_TABLE"]
        sh_in(pid, "ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p")
        sh_in(pid, "ip", "link", "set", "eth9", "up")
        sh_in(pid, "ip", "link", "set", "eth9p", "up")
        sh_in(pid, "ip", "addr", "add", "192.0.2.1/24", "dev", "eth9")
        # Raven's, stamped with its rtproto (149) as the agent writes them:
        sh_in(pid, "ip", "route", "add", "10.99.0.0/24", "via", "192.0.2.9", "table", table,
              "proto", "149")  # fmt: skip
        sh_in(pid, "ip", "rule", "add", "pref", "9027", "lookup", table, "proto", "149")
        # Someone else's:
        sh_in(pid, "ip", "route", "add", "10.98.0.0/24", "via", "192.0.2.8")
        sh_in(pid, "ip", "rule", "add", "pref", "9100", "lookup", "100")
        state = node_root / "var/lib/raven"
        (state / "agent").mkdir(parents=True)
        (state / "agent/private.key").write_text("secret\n")
        (state / "cache-proxy").mkdir(mode=0o700)
        (state / "cache-proxy/object").write_text("{}")
        os.chown(state / "cache-proxy", OLD_PROXY_UID, OLD_PROXY_UID)
        main_before = sh_in(pid, "ip", "route", "show", "table", "main")

        node.start()
        assert node.running("done")
        assert sh_in(pid, "ip", "route", "show", "table", table) == ""
        rules = sh_in(pid, "ip", "rule", "show")
        assert "9027:" not in rules and "9100:" in rules
        assert sh_in(pid, "ip", "route", "show", "table", "main") == main_before
        assert not state.exists(), "the node's state folder is gone"
        assert (node_root / "var/lib").is_dir()
    finally:
        node.stop()
        node.remove()
