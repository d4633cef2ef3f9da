"""Every node of a lab run as a real DaemonSet pod: the pod's containers from Raven's image, under
Docker, in the node's network namespace, which the lab wires into its pool's LAN like any node.

The lab (netns-lab/small.yaml: pools cloud, the relay, edge-a and edge-b, two nodes each) is
built around the pods' sandboxes (``raven.lab.engine.up(node_netns=...)``) and runs no process of
its own on those nodes: each pod's cache-proxy and agent, started by the kubelet stand-in from
the rendered manifests, do everything. Shown: the full cross-pool ping matrix, green probes, a
container restart that keeps the key and loses no packet, a `docker stop` of the gateway's pod
(as a kubelet deleting it) that fails over, and nothing left behind. Brings up a lab: run it
under the lab lock (`flock /run/raven-lab.lock ...`).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from raven.lab import deployment, engine, matrix
from raven.lab.apiserver.pki import Pki, node_client_name, node_serving_name
from raven.lab.dockerd import Engine
from raven.lab.topology import Lab, load_topology_file, resolve
from tests.lab.labkit import LabEnv, ns_exec
from tests.lab.steady import SteadyPing
from tests.manifests import NAMESPACE, Obj, pod_spec
from tests.waiting import wait_for

from .kubelet import (
    KUBELET_SERVER_PEM,
    LABEL,
    Cluster,
    Pod,
    install_kubelet_certificate,
    remove_labelled,
)

pytestmark = pytest.mark.root
TOPOLOGY = Path(__file__).resolve().parents[2] / "netns-lab" / "small.yaml"


@dataclass
class LabPods:
    docker: Engine
    env: LabEnv
    lab: Lab
    pods: dict[str, Pod] = field(default_factory=dict)
    roots: Path = Path("/nonexistent")
    matrix_seconds: float = 0.0

    @property
    def settings(self) -> engine.Settings:
        return engine.Settings(state_dir=self.env.state_dir, prefix=self.env.prefix)

    def kubectl_json(self, *args: str) -> dict:
        res = self.env.kubectl(*args, "-o", "json")
        assert res.returncode == 0, res.stderr
        doc: dict = json.loads(res.stdout)
        return doc

    def active(self, pool: str) -> str:
        return str(self.kubectl_json("get", "gw", pool).get("status", {}).get("activeNode", ""))

    def holder(self, pool: str) -> str:
        lease = self.kubectl_json("get", "lease", "-n", NAMESPACE, f"raven-gw-{pool}")
        return str(lease.get("spec", {}).get("holderIdentity") or "")

    def public_key(self, node: str) -> str:
        meta = self.kubectl_json("get", "node", node)["metadata"]
        return str(meta.get("annotations", {}).get("raven.io/public-key", ""))

    def lab_pod(self, node: str) -> matrix.Pod:
        return next(n.pod for n in self.lab.nodes if n.name == node)

    def wait_full_matrix(self, timeout: float) -> float:
        seconds = matrix.wait_full_matrix(self.lab, timeout=timeout)
        if seconds is None:
            failing = [r for r in matrix.matrix(self.lab) if not r.ok]
            logs = {n: p.logs("agent")[-1500:] for n, p in self.pods.items()}
            raise AssertionError(
                f"no full ping matrix after {timeout:.0f} s; failing: "
                + ", ".join(f"{r.src}->{r.dst}" for r in failing[:8])
                + "".join(f"\n--- agent of {n} ---\n{log}" for n, log in logs.items())
            )
        return seconds

    def start_pod(self, node: str) -> None:
        pod = self.pods[node]
        pod.run_init()
        for c in pod.spec["containers"]:
            pod.start_container(c["name"])

    def close(self) -> None:
        """Stop every pod as a kubelet would, remove the containers, take the lab down."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.pods))) as pool:
            list(pool.map(lambda p: p.stop(), self.pods.values()))
        remove_labelled(self.docker, None)
        self.pods.clear()
        engine.down(self.settings, log=lambda *_: None)
        shutil.rmtree(self.roots, ignore_errors=True)


def pod_spec_of(lab_pods: LabPods) -> Obj:
    return next(iter(lab_pods.pods.values())).spec


@pytest.fixture(scope="module")
def lab_pods(
    docker: Engine, image: str, manifests: list[Obj], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabPods]:
    prefix = f"tdk{os.getpid() % 10000:04d}"
    env = LabEnv(prefix=prefix, state_dir=tmp_path_factory.mktemp("lab-pods") / "state")
    lab = resolve(load_topology_file(TOPOLOGY), prefix)
    spec = pod_spec(manifests)
    roots = tmp_path_factory.mktemp("nodes")
    placeholder = Cluster(manifests, "", 0, Path("/nonexistent"), "")
    lp = LabPods(docker=docker, env=env, lab=lab, roots=roots)
    try:
        for node in lab.nodes:
            root = roots / node.name
            root.mkdir()
            pod = Pod(
                docker, placeholder, NAMESPACE, spec, node.name, root,
                name=f"{prefix}-{node.name}", pod_ip=str(node.ip),
            )  # fmt: skip
            lp.pods[node.name] = pod
            pod.start_sandbox(network="none")
        engine.up(
            TOPOLOGY,
            lp.settings,
            agents=False,
            node_netns={name: pod.netns_pid for name, pod in lp.pods.items()},
            log=lambda *_: None,
        )
        # The lab applied deploy/'s Namespace and RBAC and issued the ServiceAccount a token:
        # the pods' agents send it (their projected token), so RBAC authorizes them.
        st, _ = engine.load(lp.settings)
        upstream = urlsplit(st.info["api_node_url"])
        pki = Pki.at(env.state_dir / "pki")
        cluster = Cluster(
            manifests,
            str(upstream.hostname),
            int(upstream.port or 443),
            pki.ca_cert,
            deployment.agent_token(env.state_dir),
        )
        # Each node's kubelet client certificate, where the pod's proxy and heartbeat read it,
        # and its serving certificate, which the proxy's pool feed presents.
        for name in lp.pods:
            install_kubelet_certificate(roots / name, *pki.extra_pair(node_client_name(name)))
            install_kubelet_certificate(
                roots / name,
                *pki.extra_pair(node_serving_name(name)),
                where=KUBELET_SERVER_PEM,
            )
        start = time.monotonic()
        for pod in lp.pods.values():
            pod.cluster = cluster
        with ThreadPoolExecutor(max_workers=len(lp.pods)) as pool:
            list(pool.map(lp.start_pod, lp.pods))
        lp.matrix_seconds = time.monotonic() - start + lp.wait_full_matrix(120)
        yield lp
    finally:
        lp.close()


def test_every_pod_reaches_every_other_pod_through_the_daemonset_pods(lab_pods: LabPods) -> None:
    print(f"\n{len(lab_pods.pods)} Raven pods started to full ping matrix: "
          f"{lab_pods.matrix_seconds:.1f} s")  # fmt: skip
    results = matrix.matrix(lab_pods.lab)
    assert all(r.ok for r in results), [f"{r.src}->{r.dst}" for r in results if not r.ok]
    assert len(results) == 30  # 6 pods, every ordered pair, 24 of them across pools
    # Nothing of the lab's own runs on these nodes: the pods do it all.
    st, _ = engine.load(lab_pods.settings)
    assert st.processes("agent") == [] and st.processes("cache-proxy") == []
    for pool in ("cloud", "edge-a", "edge-b"):
        assert lab_pods.active(pool) in lab_pods.pods


def test_cache_proxy_probes_are_green_in_every_pod(lab_pods: LabPods) -> None:
    for node, pod in lab_pods.pods.items():
        for kind in ("livenessProbe", "readinessProbe"):
            got = pod.wait_probe("cache-proxy", kind, timeout=20)
            assert got.startswith("200"), (node, kind, got)


def test_agent_probes_are_green_in_every_pod(lab_pods: LabPods) -> None:
    for pod in lab_pods.pods.values():
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            pod.wait_probe("agent", kind, timeout=10)


def test_heartbeat_runs_as_the_node_and_relays_for_its_pool(lab_pods: LabPods) -> None:
    """Each pod's heartbeat is ready (it knows its pool's members: it listed Nodes as the node,
    with the kubelet's certificate, through the pod's proxy), and a member's relay answers
    another member with what the pool's agent says of the gateway."""
    for pod in lab_pods.pods.values():
        for kind in ("livenessProbe", "readinessProbe"):
            pod.wait_probe("heartbeat", kind, timeout=30)
    port = next(
        p["containerPort"]
        for p in pod_spec_of(lab_pods)["containers"][2]["ports"]
        if p["name"] == "relay"
    )
    for pool in ("edge-a", "edge-b"):
        a, b = sorted(n.name for n in lab_pods.lab.nodes if n.pool == pool)
        node_a = next(n for n in lab_pods.lab.nodes if n.name == a)
        node_b = next(n for n in lab_pods.lab.nodes if n.name == b)

        url = f"http://{node_b.ip}:{port}/relay"
        holder = lab_pods.holder(pool)
        want = {"node": b, "pool": pool, "reachesCloud": True, "gateway": holder == b}

        def answers(ns: str = node_a.netns, url: str = url, want: dict = want) -> bool:
            res = ns_exec(ns, "curl", "-s", "--max-time", "5", url)
            return res.returncode == 0 and bool(res.stdout) and json.loads(res.stdout) == want

        wait_for(answers, 30, f"{b}'s relay answering {a}: {want}")


def test_members_read_their_gateways_pool_feed(lab_pods: LabPods) -> None:
    """Pool-level reuse in the pods: each pool's gateway's cache-proxy reads Services and
    EndpointSlices from the API server, the pool's other nodes read them from its pool feed
    (their kubelet client certificates, its kubelet serving certificate)."""

    def reading(pool: str) -> bool:
        gw = lab_pods.holder(pool)
        if not gw:
            return False
        for node in (n for n in lab_pods.lab.nodes if n.pool == pool):
            res = ns_exec(
                node.netns, "curl", "-sk", "--max-time", "5", "https://127.0.0.1:10261/metrics"
            )
            lines = [
                line for line in res.stdout.splitlines()
                if line.startswith("raven_cacheproxy_shared_source{") and line.endswith(" 1.0")
            ]  # fmt: skip
            want = "" if node.name == gw else gw
            assert len(lines) == 2 and all(f'gateway="{want}"' in x for x in lines), (
                pool, node.name, lines,
            )  # fmt: skip
        return True

    for pool in ("edge-a", "edge-b"):
        wait_for(lambda pool=pool: reading(pool), 60, f"{pool}'s nodes reading its gateway")


def test_agent_container_restart_keeps_its_key_and_the_data_path(lab_pods: LabPods) -> None:
    """A member's agent container crashes and the kubelet starts it anew: the same key (from
    the node's state folder) and not one packet lost across pools meanwhile."""
    gateway = lab_pods.active("edge-b")
    member = next(n for n in lab_pods.pods if n.startswith("edge-b-") and n != gateway)
    pod = lab_pods.pods[member]
    key_file = pod.root / "var/lib/raven/agent"
    keys_before = {p.name: p.read_bytes() for p in key_file.iterdir()}
    published = lab_pods.public_key(member)
    assert keys_before and published
    src = lab_pods.lab_pod(member)
    dst = lab_pods.lab_pod(next(n for n in lab_pods.pods if n.startswith("edge-a-")))
    with SteadyPing(src, dst) as ping:
        lab_pods.docker.run("kill", pod.containers["agent"])
        pod.start_container("agent")
        # Until its plan is applied again: its readiness probe says so, or (without a health
        # server) its log.
        deadline = time.monotonic() + 30
        while not (pod.probe("agent", "readinessProbe")[0] or "applied" in pod.logs("agent")):
            assert time.monotonic() < deadline, f"no plan applied: {pod.logs('agent')[-2000:]}"
            time.sleep(0.5)
        time.sleep(2)
    ping.assert_lossless()
    assert pod.running("agent"), pod.logs("agent")[-2000:]
    assert {p.name: p.read_bytes() for p in key_file.iterdir()} == keys_before
    assert lab_pods.public_key(member) == published


def test_docker_stop_of_the_gateway_pod_fails_over(lab_pods: LabPods) -> None:
    """The edge-a gateway's pod is stopped as a kubelet deletes it (the proxy's preStop, SIGTERM,
    the grace period): its agent releases the Lease, the other edge-a node takes over, and
    traffic from edge-b into edge-a comes back through it."""
    old = lab_pods.active("edge-a")
    new = next(n for n in lab_pods.pods if n.startswith("edge-a-") and n != old)
    src = lab_pods.lab_pod(next(n for n in lab_pods.pods if n.startswith("edge-b-")))
    dst = lab_pods.lab_pod(new)
    pod = lab_pods.pods[old]
    ping = SteadyPing(src, dst).start()
    try:
        # The kubelet's deletion runs on (the proxy's preStop alone takes 5 s) while the Lease
        # is watched.
        stopping = threading.Thread(target=pod.stop)
        stopped_at = time.monotonic()
        stopping.start()
        deadline = stopped_at + 30
        while lab_pods.holder("edge-a") != new and time.monotonic() < deadline:
            time.sleep(0.1)
        took_over = time.monotonic() - stopped_at
        stopping.join()
        assert lab_pods.holder("edge-a") == new, "the other edge-a node did not take the Lease"
        deadline = time.monotonic() + 30
        while not matrix.ping(src, dst) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
    finally:
        ping.stop()
    gap = max(_runs(ping.lost), default=0) * ping.interval
    print(f"\ndocker stop of gateway pod {old}: {new} took the Lease after {took_over:.1f} s; "
          f"longest gap edge-b -> {new}'s pod {gap:.2f} s, {len(ping.lost)} of "
          f"{ping.transmitted} lost")  # fmt: skip
    # Traffic came back and stayed: the last 2 s of the ping were all answered.
    assert ping.transmitted - max(ping.lost, default=0) > 2 / ping.interval, "no steady traffic"
    assert lab_pods.active("edge-a") == new
    # The stopped pod comes back (a kubelet would recreate it) and the lab is whole again.
    lab_pods.start_pod(old)
    lab_pods.wait_full_matrix(60)


def _runs(lost: list[int]) -> list[int]:
    """Lengths of the runs of consecutive lost sequence numbers."""
    runs: list[int] = []
    for i, seq in enumerate(lost):
        if i and seq == lost[i - 1] + 1:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def test_rbac_refused_the_pods_nothing_and_nothing_is_left_behind(lab_pods: LabPods) -> None:
    refused = lab_pods.env.refused()  # read before `down` removes the audit log
    lab_pods.close()
    assert refused == [], f"requests of the pods' agents refused by RBAC: {refused}"
    left = lab_pods.docker.run("ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
    assert left == []
    assert lab_pods.env.leftovers() == []
    assert not lab_pods.roots.exists()
    mounts = Path("/proc/mounts").read_text()
    assert f"/netns/{lab_pods.env.prefix}-" not in mounts
