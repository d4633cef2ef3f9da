"""The node-lifecycle controller: a node whose Lease stops being renewed goes Unknown and is
tainted unreachable, as kube-controller-manager does; renewals plus the kubelet's Ready=True
undo it. Decisions as tables; the controller in the server, seen through kubectl v1.32."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time

import pytest

from raven.lab.apiserver.lifecycle import (
    NOT_READY,
    UNREACHABLE,
    NodeChange,
    decide,
    stamp,
)
from raven.lab.testing.apiserver import run_apiserver

NOW = dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
GRACE = 40.0


def ago(seconds: float) -> str:
    return (NOW - dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease(name: str, renewed_seconds_ago: float, namespace: str = "kube-node-lease") -> dict:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"holderIdentity": name, "renewTime": ago(renewed_seconds_ago)},
    }


def cond(kind: str, status: str, reason: str = "KubeletReady") -> dict:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": "kubelet is posting ready status",
        "lastHeartbeatTime": "2030-01-01T11:00:00Z",
        "lastTransitionTime": "2030-01-01T11:00:00Z",
    }


def node(name: str, *conditions: dict, taints: list | None = None) -> dict:
    out: dict = {
        "metadata": {"name": name, "resourceVersion": "7", "creationTimestamp": ago(3600)},
        "spec": {},
        "status": {"conditions": list(conditions)},
    }
    if taints is not None:
        out["spec"]["taints"] = taints
    return out


UNREACHABLE_TAINTS = [
    {"key": UNREACHABLE, "effect": "NoSchedule"},
    {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": stamp(NOW)},
]
GONE = ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")


def summary(change: NodeChange) -> tuple:
    conditions = (
        None
        if change.conditions is None
        else [(c["type"], c["status"], c["reason"]) for c in change.conditions]
    )
    taints = None if change.taints is None else [(t["key"], t["effect"]) for t in change.taints]
    return change.node, conditions, taints


@pytest.mark.parametrize(
    ("nodes", "leases", "expected"),
    [
        pytest.param([node("a", cond("Ready", "True"))], [lease("a", 10)], [], id="fresh"),
        pytest.param([node("a", cond("Ready", "True"))], [lease("a", 40)], [], id="at-grace"),
        pytest.param([node("a", cond("Ready", "True"))], [], [], id="never-leased"),
        pytest.param(
            [node("a", cond("Ready", "True"))],
            [lease("a", 99, namespace="default")],
            [],
            id="lease-elsewhere-is-no-heartbeat",
        ),
        pytest.param(
            [node("a", cond("Ready", "True"), cond("MemoryPressure", "False", "Ok"))],
            [lease("a", 41)],
            [
                (
                    "a",
                    [("Ready", *GONE[:2]), ("MemoryPressure", *GONE[:2])],
                    [(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")],
                )
            ],
            id="stale-ready-true-goes-unknown",
        ),
        pytest.param(
            [node("a")],
            [lease("a", 41)],
            [
                (
                    "a",
                    [("Ready", "Unknown", "NodeStatusNeverUpdated")],
                    [(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")],
                )
            ],
            id="stale-never-posted",
        ),
        pytest.param(
            [node("a", cond("Ready", *GONE[:2]), taints=UNREACHABLE_TAINTS)],
            [lease("a", 100)],
            [],
            id="already-unknown-no-write",
        ),
        pytest.param(
            [node("a", cond("Ready", *GONE[:2]), taints=UNREACHABLE_TAINTS)],
            [lease("a", 1)],
            [],
            id="renewed-but-kubelet-not-ready-yet-keeps-taints",
        ),
        pytest.param(
            [
                node(
                    "a",
                    cond("Ready", "True"),
                    taints=[{"key": "dedicated", "effect": "NoSchedule"}, *UNREACHABLE_TAINTS],
                )
            ],
            [lease("a", 1)],
            [("a", None, [("dedicated", "NoSchedule")])],
            id="back-ready-untaints-keeps-others",
        ),
        pytest.param(
            [node("a", cond("Ready", "False", "KubeletNotReady"))],
            [lease("a", 1)],
            [("a", None, [(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")])],
            id="ready-false-not-ready-taints",
        ),
        pytest.param(
            [node("a", cond("Ready", "True")), node("b", cond("Ready", "True"))],
            [lease("a", 1), lease("b", 60)],
            [
                (
                    "b",
                    [("Ready", *GONE[:2])],
                    [(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")],
                )
            ],
            id="only-the-stale-one",
        ),
    ],
)
def test_decide(nodes, leases, expected):
    assert [summary(c) for c in decide(nodes, leases, NOW, GRACE)] == expected


def test_an_unknown_condition_keeps_its_heartbeat_and_gets_a_transition_time():
    (change,) = decide([node("a", cond("Ready", "True"))], [lease("a", 41)], NOW, GRACE)
    assert change.resource_version == "7"
    assert change.conditions is not None and change.taints is not None
    ready = change.conditions[0]
    assert ready["message"] == "Kubelet stopped posting node status."
    assert ready["lastTransitionTime"] == "2030-01-01T12:00:00Z"
    assert ready["lastHeartbeatTime"] == "2030-01-01T11:00:00Z"
    assert change.taints[1] == {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": stamp(NOW)}


def test_a_restarted_controller_gives_every_node_a_full_grace():
    nodes, leases = [node("a", cond("Ready", "True"))], [lease("a", 3600)]
    assert decide(nodes, leases, NOW, GRACE, started=NOW - dt.timedelta(seconds=30)) == []
    assert decide(nodes, leases, NOW, GRACE, started=NOW - dt.timedelta(seconds=41))


# -- in the server ---------------------------------------------------------------------------

ME, IDLE = "edge-a-1", "bench-1"
PERIOD, SHORT_GRACE = 0.2, 2.0


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def renew(api, kubeconfig) -> None:
    body = json.dumps({"spec": {"renewTime": now_micro()}})
    ok(
        api.kubectl(
            "patch",
            "lease",
            ME,
            "-n",
            "kube-node-lease",
            "--type=merge",
            "-p",
            body,
            kubeconfig=kubeconfig,
        )
    )


def post_ready(api, kubeconfig) -> None:
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "kubelet is posting ready status",
        "lastHeartbeatTime": stamp(dt.datetime.now(dt.UTC)),
        "lastTransitionTime": stamp(dt.datetime.now(dt.UTC)),
    }
    body = json.dumps({"status": {"conditions": [ready]}})
    ok(
        api.kubectl(
            "patch",
            "node",
            ME,
            "--subresource=status",
            "--type=merge",
            "-p",
            body,
            kubeconfig=kubeconfig,
        )
    )


def get_node(api, name: str) -> dict:
    return json.loads(ok(api.kubectl("get", "node", name, "-o=json")))


def status_column(api, name: str) -> str:
    return ok(api.kubectl("get", "node", name, "--no-headers")).split()[1]


def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_a_silent_node_goes_unknown_and_comes_back_when_its_kubelet_does(tmp_path):
    with run_apiserver(
        tmp_path / "api",
        nodes=[ME],
        node_monitor_period=PERIOD,
        node_monitor_grace_period=SHORT_GRACE,
    ) as api:
        me = api.node_kubeconfig(ME)
        ok(
            api.kubectl(
                "create",
                "-f",
                "-",
                stdin=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": IDLE}}),
            )
        )
        # the kubelet registers, posts Ready and starts its heartbeat, as itself
        ok(
            api.kubectl(
                "create",
                "-f",
                "-",
                kubeconfig=me,
                stdin=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": ME}}),
            )
        )
        post_ready(api, me)
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": ME, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": ME, "leaseDurationSeconds": 40, "renewTime": now_micro()},
        }
        ok(api.kubectl("create", "-f", "-", kubeconfig=me, stdin=json.dumps(lease)))
        assert status_column(api, ME) == "Ready"

        # renewed within the grace: not one write to either Node
        versions = {n: get_node(api, n)["metadata"]["resourceVersion"] for n in (ME, IDLE)}
        for _ in range(4):
            time.sleep(0.5)
            renew(api, me)
        assert {n: get_node(api, n)["metadata"]["resourceVersion"] for n in (ME, IDLE)} == versions

        # silence: Unknown and tainted after the grace
        silent_since = time.monotonic()
        assert wait_for(lambda: status_column(api, ME) == "NotReady")
        assert time.monotonic() - silent_since >= SHORT_GRACE - 0.5
        gone = get_node(api, ME)
        ready = next(c for c in gone["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"], ready["message"]) == (
            "Unknown",
            "NodeStatusUnknown",
            "Kubelet stopped posting node status.",
        )
        taints = {(t["key"], t["effect"]) for t in gone["spec"].get("taints", [])}
        assert taints == {(UNREACHABLE, "NoExecute"), (UNREACHABLE, "NoSchedule")}
        assert all("timeAdded" in t for t in gone["spec"]["taints"] if t["effect"] == "NoExecute")
        # and then it stays so without a write per period
        time.sleep(5 * PERIOD)
        assert (
            get_node(api, ME)["metadata"]["resourceVersion"] == gone["metadata"]["resourceVersion"]
        )
        # the Node nobody ever leased is untouched
        assert get_node(api, IDLE)["metadata"]["resourceVersion"] == versions[IDLE]
        assert status_column(api, IDLE) == "Unknown"  # no Ready condition: kubectl's word

        # renewing alone is not enough: the kubelet must say Ready again
        renew(api, me)
        time.sleep(3 * PERIOD)
        assert {t["key"] for t in get_node(api, ME)["spec"]["taints"]} == {UNREACHABLE}
        renew(api, me)
        post_ready(api, me)
        assert wait_for(lambda: not get_node(api, ME)["spec"].get("taints"))
        assert status_column(api, ME) == "Ready"
