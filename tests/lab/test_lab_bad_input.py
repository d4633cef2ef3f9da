"""Bad input in a running lab is refused alone, and operators see it where they look.

One lab (the default three pools, with agents) for the module.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from raven.lab import engine, matrix
from raven.lab.topology import Lab

from .labkit import LabEnv, make_env, wait_for
from .steady import SteadyPing

pytestmark = pytest.mark.root


@dataclass
class Running:
    env: LabEnv
    lab: Lab

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        if stdin is None:
            return self.env.kubectl(*args)
        return subprocess.run(
            ["/usr/bin/kubectl", "--kubeconfig", str(self.env.state_dir / "kubeconfig"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def pod(self, pool: str, index: int = 0):
        return [p for p in self.lab.pods if p.pool == pool][index]

    def describe(self, kind: str, name: str) -> str:
        res = self.kubectl("describe", kind, name)
        assert res.returncode == 0, res.stderr
        return res.stdout

    def events(self) -> list[dict]:
        res = self.kubectl("get", "events", "-A", "-o", "json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)["items"]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    env = make_env(tmp_path_factory, "bad")
    try:
        res = env.raven("up", timeout=180)
        assert res.returncode == 0, res.stderr + res.stdout
        _, lab = engine.load(engine.Settings(state_dir=env.state_dir, prefix=env.prefix))
        assert matrix.wait_full_matrix(lab, timeout=60) is not None
        yield Running(env, lab)
    finally:
        env.down()


def test_kubectl_describe_gw_lists_the_events_about_that_gateway(running: Running) -> None:
    def elected() -> bool:
        out = running.describe("gw", "edge-a")
        return "GatewayElected" in out or "GatewayFailover" in out

    wait_for(elected, 30, "the election Event in kubectl describe gw edge-a")
    out = running.describe("gw", "edge-a")
    assert "Events:" in out and "Events:  <none>" not in out
    # Events about other Gateways are not listed here.
    assert "pool edge-b" not in out.split("Events:")[1]


ROGUE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {"name": "rogue-1", "labels": {"apps.openyurt.io/nodepool": "edge-rogue"}},
    "spec": {"podCIDR": "0.0.0.0/0", "podCIDRs": ["0.0.0.0/0"]},
}


def test_a_node_claiming_every_address_is_refused_alone(running: Running) -> None:
    """A Node whose pod CIDR is 0.0.0.0/0 joins, alone in a new pool: the other pools' traffic
    across the relay goes on without a lost packet, and the refusal is shown on the Gateways
    and in Events, naming the Node and the field."""
    src, dst = running.pod("edge-a"), running.pod("edge-b", 1)
    with SteadyPing(src, dst) as ping:
        created = running.kubectl("apply", "-f", "-", stdin=json.dumps(ROGUE))
        assert created.returncode == 0, created.stderr
        try:

            # Its own pool has no gateway to say so: the relay does, on its Gateway.
            def refused() -> bool:
                gws = json.loads(running.kubectl("get", "gw", "-o", "json").stdout)["items"]
                relay = next(g for g in gws if (g.get("spec") or {}).get("relay"))
                conditions = (relay.get("status") or {}).get("conditions", [])
                return any(
                    c["type"] == "InputAccepted"
                    and c["status"] == "False"
                    and "rogue-1" in c.get("message", "")
                    for c in conditions
                )

            wait_for(refused, 30, "a condition on the relay's Gateway naming the refused Node")
            out = running.describe("gw", "cloud")
            assert "rogue-1" in out and "spec.podCIDRs[0]" in out
            wait_for(
                lambda: any("rogue-1" in e.get("message", "") for e in running.events()),
                30,
                "an Event naming the refused Node",
            )
            results = matrix.matrix(running.lab, timeout=2)
            assert [r for r in results if not r.ok] == []
        finally:
            running.kubectl("delete", "node", "rogue-1")
    ping.assert_lossless()
