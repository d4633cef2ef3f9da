"""Edge autonomy, part 3, in the default lab: one copy per pool of what every node reads.

Every node runs kube-proxy and CoreDNS stand-ins through its cache-proxy; in each edge pool only
the gateway's proxy reads Services and EndpointSlices from the API server, the others read its
pool feed. One lab for the module, the cases in order:

1. every member of an edge pool reads its gateway's feed, the gateway the API server;
2. the edge-a gateway's agent is killed while Services and EndpointSlices churn: the members
   follow the new gateway's feed, and every node's kube-proxy stand-in ends with exactly the
   API server's EndpointSlices (object by object, by version), none of them having seen a
   change twice or out of order;
3. edge-b cut from the cloud while the churn goes on in the cloud: its members keep answering
   their clients with the last pool-scope data (a list through a member's proxy equals what its
   kube-proxy held at the cut); after the heal every stand-in converges to the API server.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from raven.kube.client import KubeClient, load_config
from raven.lab import engine
from raven.lab.bench.reuse import compare
from raven.lab.churn import Churn, ChurnPlan
from raven.lab.standins import control
from raven.lab.standins.components import COMPONENTS
from raven.lab.state import LabState
from raven.lab.topology import Lab

from .labkit import LabEnv, make_env, ns_exec, wait_for

pytestmark = pytest.mark.root

SLICES = "endpointslices.discovery.k8s.io"
EDGE = ("edge-a", "edge-b")


@dataclass
class Running:
    env: LabEnv
    lab: Lab

    @property
    def st(self) -> LabState:
        st, _ = engine.load(engine.Settings(state_dir=self.env.state_dir, prefix=self.env.prefix))
        return st

    def members(self, pool: str) -> list[str]:
        return sorted(n.name for n in self.lab.nodes if n.pool == pool)

    def netns(self, node: str) -> str:
        return next(n.netns for n in self.lab.nodes if n.name == node)

    def ok(self, *args: str, timeout: float = 60) -> str:
        res = self.env.raven(*args, timeout=timeout)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
        return res.stdout

    def proxy_get(self, node: str, path: str, token: str = "") -> tuple[int, str]:
        """GET ``path`` from ``node``'s cache-proxy, inside its namespace."""
        auth = ["-H", f"Authorization: Bearer {token}"] if token else []
        res = ns_exec(
            self.netns(node), "curl", "-sk", "--max-time", "10", "-w", "\n%{http_code}",
            *auth, f"https://127.0.0.1:10261{path}",
        )  # fmt: skip
        body, _, code = res.stdout.rpartition("\n")
        return int(code or 0), body

    def sources(self, node: str) -> dict[str, str]:
        """Per shared resource, the gateway whose feed ``node``'s proxy reads ("": the cloud)."""
        code, text = self.proxy_get(node, "/metrics")
        assert code == 200, (node, code)
        out = {}
        for line in text.splitlines():
            if line.startswith("raven_cacheproxy_shared_source{") and line.endswith(" 1.0"):
                labels = dict(
                    part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")]
                    .split(",")
                )  # fmt: skip
                out[labels["resource"].strip('"')] = labels["gateway"].strip('"')
        return out

    def reading(self, pool: str) -> bool:
        """Every member of ``pool`` reads its gateway's feed; the gateway the API server."""
        gw = self.env.holder(pool)
        if not gw:
            return False
        for node in self.members(pool):
            want = "" if node == gw else gw
            got = self.sources(node)
            assert set(got.values()) == {want}, (pool, node, got, "gateway", gw)
        return True

    def dumps(self, component: str = "kube-proxy") -> dict[str, dict]:
        st = self.st
        return {
            f"{component}@{n.name}": control.dump(st, self.env.state_dir, component, n.name)
            for n in self.lab.nodes
        }

    def token(self, node: str, component: str) -> str:
        path = control.kubeconfig_path(self.env.state_dir, node, component)
        return str(yaml.safe_load(path.read_text())["users"][0]["user"]["token"])


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    env = make_env(tmp_path_factory, "pr")
    res = env.raven("up", timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    try:
        _, lab = engine.load(engine.Settings(state_dir=env.state_dir, prefix=env.prefix))
        run = Running(env, lab)
        control.start_all(run.st, env.state_dir, list(lab.nodes), timeout=120)
        yield run
    finally:
        env.down()


class Churning:
    """Services and EndpointSlices rewritten in the cloud from a thread, while the test acts;
    one churn for the module, seeded the first time."""

    churn: Churn | None = None
    plan = ChurnPlan(services=15, seed=5)

    def __init__(self, state_dir: Path, *, rate: float, seconds: float) -> None:
        self.state_dir, self.rate, self.seconds = state_dir, rate, seconds
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.operations = 0
        self.error: BaseException | None = None

    def _run(self) -> None:
        async def go() -> int:
            kube = KubeClient(load_config(str(self.state_dir / "kubeconfig")), user_agent="churn")
            try:
                if Churning.churn is None:
                    Churning.churn = Churn(kube)
                    await Churning.churn.seed(self.plan)
                Churning.churn.kube = kube
                return await Churning.churn.run(self.plan, rate=self.rate, seconds=self.seconds)
            finally:
                await kube.close()

        try:
            self.operations = asyncio.run(go())
        except BaseException as e:  # reported by join()
            self.error = e

    def __enter__(self) -> Churning:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(self.seconds + 120)
        assert not self.thread.is_alive(), "the churn did not end"
        if self.error is not None:
            raise self.error
        assert self.operations > 0


def ordered(dumps: dict[str, dict]) -> list[str]:
    """The stand-ins that saw a watch event twice or out of order."""
    wrong = []
    for name, dump in dumps.items():
        for resource, held in dump["resources"].items():
            rvs = [int(a[2]) for a in held["arrivals"] if a[0] != "LIST"]
            if rvs != sorted(set(rvs)):
                wrong.append(f"{name}/{resource}")
    return wrong


def test_1_members_read_their_gateways_feed(running: Running) -> None:
    for pool in EDGE:
        wait_for(lambda pool=pool: running.reading(pool), 60, f"{pool} reading its gateway")


def test_2_a_gateway_failover_during_churn_loses_and_repeats_nothing(running: Running) -> None:
    old = running.env.holder("edge-a")
    with Churning(running.env.state_dir, rate=8.0, seconds=15.0):
        wait_for(lambda: running.env.holder("edge-a") == old, 10, "edge-a's gateway steady")
        running.ok("kill", old, "--component", "agent")
        try:
            wait_for(
                lambda: running.env.holder("edge-a") not in ("", old), 30, "a new edge-a gateway"
            )
            new = running.env.holder("edge-a")
            wait_for(
                lambda: all(
                    set(running.sources(n).values()) == {new}
                    for n in running.members("edge-a") if n not in (new, old)
                ),
                30,
                f"the edge-a members reading {new}'s feed",
            )  # fmt: skip
        finally:
            running.ok("restart", old, "--component", "agent")
    wait_for(lambda: compare(running.env.state_dir, running.dumps()) == [], 30,
             "every kube-proxy stand-in equal to the API server")  # fmt: skip
    dumps = running.dumps() | running.dumps("coredns")
    assert compare(running.env.state_dir, dumps) == []
    assert ordered(dumps) == []
    wait_for(lambda: running.reading("edge-a"), 30, "edge-a reading its gateway again")


def test_3_a_cut_pool_keeps_serving_its_last_data_and_converges_after_the_heal(
    running: Running,
) -> None:
    member = next(n for n in running.members("edge-b") if n != running.env.holder("edge-b"))
    token = running.token(member, "kube-proxy")
    selector = next(
        w.label_selector for w in COMPONENTS["kube-proxy"].watches
        if w.resource.plural == "endpointslices"
    )  # fmt: skip
    path = "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=" + selector.replace(
        "!", "%21"
    ).replace("/", "%2F").replace(",", "%2C")
    running.ok("cut", "edge-b")
    try:
        # The member's proxy notices the cloud is gone (its probe), then answers from its copy.
        wait_for(
            lambda: (
                "raven_cacheproxy_cloud_healthy 0.0" in running.proxy_get(member, "/metrics")[1]
            ),
            30,
            f"{member}'s proxy offline",
        )
        held = running.dumps()[f"kube-proxy@{member}"]["resources"]["endpointslices"]["objects"]
        with Churning(running.env.state_dir, rate=8.0, seconds=5.0):
            pass
        code, body = running.proxy_get(member, path, token)
        assert code == 200, (code, body[:300])
        served = {
            f"{o['metadata']['namespace']}/{o['metadata']['name']}": o["metadata"][
                "resourceVersion"
            ]
            for o in json.loads(body)["items"]
        }
        assert served and served == {k: o["metadata"]["resourceVersion"] for k, o in held.items()}
        # ... which is no longer the cloud's: the churn went on there.
        server = running.env.kubectl("get", SLICES, "-A", "-l", selector, "-o", "json")
        now = {
            f"{o['metadata']['namespace']}/{o['metadata']['name']}": o["metadata"][
                "resourceVersion"
            ]
            for o in json.loads(server.stdout)["items"]
        }
        assert now != served
    finally:
        running.ok("heal", "edge-b")
    wait_for(lambda: compare(running.env.state_dir, running.dumps()) == [], 60,
             "every kube-proxy stand-in equal to the API server after the heal")  # fmt: skip
    assert ordered(running.dumps()) == []
    wait_for(lambda: running.reading("edge-b"), 60, "edge-b reading its gateway again")
