"""The default three-pool lab, brought up once with the real CLI: pods, NAT, API server, status."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from raven.lab import apiserver_proc

from .labkit import LabEnv, make_env, up_args, wait_for

pytestmark = pytest.mark.root


class Up(NamedTuple):
    env: LabEnv
    out: str  # what `up` printed
    status: dict  # `status -o json` right after
    took: float  # seconds `up` ran, as this test saw it


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    env = make_env(tmp_path_factory, "3p")
    try:
        start = time.monotonic()
        res = env.raven(*up_args(), timeout=180)
        took = time.monotonic() - start
        assert res.returncode == 0, res.stderr + res.stdout
        status = env.raven("status", "-o", "json")
        assert status.returncode == 0, status.stderr
        yield Up(env, res.stdout, json.loads(status.stdout), took)
    finally:
        env.down()


def _pings(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
    """Ping all pairs (netns, address) concurrently; True where the ping got an answer."""
    procs = {
        pair: subprocess.Popen(
            ["ip", "netns", "exec", pair[0], "ping", "-n", "-c", "1", "-W", "1", pair[1]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pair in pairs
    }
    return {pair: p.wait() == 0 for pair, p in procs.items()}


def _wait_answered(pairs: list[tuple[str, str]], *, deadline: float = 30) -> None:
    """Wait until every pair (netns, address) has answered a ping; a pair that answered once is
    not asked again. For what must work: a lost ping on a busy machine is no failure."""
    todo = list(pairs)

    def answered() -> bool:
        nonlocal todo
        todo = [pair for pair, ok in _pings(todo).items() if not ok]
        assert todo == [], f"no answer: {todo}"
        return True

    wait_for(answered, deadline, f"{len(todo)} pings to be answered")


def test_up_prints_kubeconfig_status_teardown_and_duration(lab):
    env, out, took = lab.env, lab.out, lab.took
    assert "raven lab status" in out and "raven lab down" in out
    assert "up took" in out
    seconds = float(out.split("up took ")[1].split("s")[0])
    # How long `up` takes is a figure for the benchmarks; here it must be the command's own.
    assert 0 < seconds <= took
    if apiserver_proc.apiserver_available():
        assert f"kubeconfig: {env.state_dir / 'kubeconfig'}" in out


def test_status_json_lists_nodes_and_pods_with_pool_netns_and_addresses(lab):
    env, st = lab.env, lab.status
    nodes = {n["name"]: n for n in st["nodes"]}
    pods = {p["name"]: p for p in st["pods"]}
    assert sorted(nodes) == sorted(
        f"{p}-{i}" for p in ("cloud", "edge-a", "edge-b") for i in (1, 2, 3)
    )
    assert nodes["edge-b-2"]["pool"] == "edge-b"
    assert nodes["edge-b-2"]["netns"] == f"{env.prefix}-edge-b-2"
    assert nodes["edge-b-2"]["addresses"] == ["192.168.20.11"]
    assert all(
        ipaddress.ip_address(n["addresses"][0]) in ipaddress.ip_network("198.18.0.0/15")
        for n in st["nodes"]
        if n["pool"] == "cloud"
    )
    assert len(pods) == 9
    assert pods["edge-a-3-pod"] == {
        "name": "edge-a-3-pod",
        "pool": "edge-a",
        "node": "edge-a-3",
        "netns": f"{env.prefix}-edge-a-3-pod",
        "addresses": ["10.244.13.2"],
        "present": True,
    }
    assert set(env.netns()) >= {n["netns"] for n in st["nodes"]} | {p["netns"] for p in st["pods"]}


def test_status_table_is_human_readable(lab):
    env = lab.env
    res = env.raven("status")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert any(
        line.split()[:5] == ["pod", "cloud-2-pod", "cloud", "cloud-2", f"{env.prefix}-cloud-2-pod"]
        for line in lines
        if line.strip()
    )


def test_every_pod_reaches_every_pod_of_its_pool(lab):
    st = lab.status
    pairs = [
        (a["netns"], b["addresses"][0])
        for a in st["pods"]
        for b in st["pods"]
        if a["pool"] == b["pool"] and a["name"] != b["name"]
    ]
    assert len(pairs) == 18
    _wait_answered(pairs)


def test_no_pod_reaches_a_pod_of_another_pool(lab):
    st = lab.status
    pairs = [
        (a["netns"], b["addresses"][0])
        for a in st["pods"]
        for b in st["pods"]
        if a["pool"] != b["pool"]
    ]
    assert len(pairs) == 54
    results = _pings(pairs)
    assert [p for p, ok in results.items() if ok] == []


def test_edge_nodes_reach_the_internet_through_their_nat_router(lab):
    env, st = lab.env, lab.status
    cloud = next(n for n in st["nodes"] if n["pool"] == "cloud")
    edge = [n for n in st["nodes"] if n["pool"] != "cloud"]
    _wait_answered([(n["netns"], cloud["addresses"][0]) for n in edge])
    # the replies came back through MASQUERADE: the routers' NAT chains counted the packets
    for pool in ("edge-a", "edge-b"):
        out = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                f"{env.prefix}-{pool}-nat",
                "iptables",
                "-w",
                "-t",
                "nat",
                "-L",
                f"{env.prefix.upper()}-MASQ",
                "-v",
                "-x",
                "-n",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rule = next(line for line in out.splitlines() if "MASQUERADE" in line)
        assert int(rule.split()[0]) > 0, out
    # and a cloud node cannot address an edge node's LAN address directly
    assert _pings([(cloud["netns"], edge[0]["addresses"][0])]) == {
        (cloud["netns"], edge[0]["addresses"][0]): False
    }


def test_host_has_one_narrow_route_into_the_lab(lab):
    env = lab.env
    routes = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    ours = [r for r in routes if f"dev {env.prefix}-host " in r + " "]
    main = [r for r in ours if "table local" not in r]
    assert len(main) == 1, ours
    net = ipaddress.ip_network(main[0].split()[0])
    assert net.prefixlen == 30 and net.subnet_of(ipaddress.ip_network("198.18.0.0/15"))
    # the host cannot see past the API server namespace: no route to pods or node LANs
    get = subprocess.run(["ip", "route", "get", "10.244.1.2"], capture_output=True, text=True)
    assert f"{env.prefix}-host" not in get.stdout


def test_up_twice_refuses_and_changes_nothing(lab):
    env = lab.env
    before = (
        env.netns(),
        sorted(p.name for p in env.state_dir.iterdir()),
        (env.state_dir / "lab.json").read_text(),
    )
    res = env.raven("up", "--no-agents", "--no-apiserver")
    assert res.returncode != 0
    assert "already up" in res.stderr and "raven lab down" in res.stderr
    after = (
        env.netns(),
        sorted(p.name for p in env.state_dir.iterdir()),
        (env.state_dir / "lab.json").read_text(),
    )
    assert before == after


def test_kubectl_lists_nine_ready_nodes_with_pool_labels(lab):
    env, st = lab.env, lab.status
    if not apiserver_proc.apiserver_available():
        pytest.fail("the lab API server (raven.lab.apiserver.__main__) does not exist yet")
    kubeconfig = st["kubeconfig"]
    assert kubeconfig == str(env.state_dir / "kubeconfig")
    out = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, "get", "nodes", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    items = json.loads(out.stdout)["items"]
    got = {}
    for item in items:
        ready = [c for c in item["status"]["conditions"] if c["type"] == "Ready"]
        addrs = {a["type"]: a["address"] for a in item["status"]["addresses"]}
        got[item["metadata"]["name"]] = (
            item["metadata"]["labels"]["apps.openyurt.io/nodepool"],
            ready[0]["status"],
            addrs["InternalIP"],
            item["spec"]["podCIDR"],
            item["spec"]["podCIDRs"],
        )
    want = {
        n["name"]: (n["pool"], "True", n["addresses"][0], n["podCIDR"], [n["podCIDR"]])
        for n in st["nodes"]
    }
    assert got == want


def test_edge_node_reaches_the_api_server_through_nat(lab):
    env, st = lab.env, lab.status
    if not apiserver_proc.apiserver_available():
        pytest.fail("the lab API server (raven.lab.apiserver.__main__) does not exist yet")
    node_kcfg = Path(st["kubeconfig"]).with_name("nodes.kubeconfig")
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            f"{env.prefix}-edge-b-3",
            "kubectl",
            "--kubeconfig",
            str(node_kcfg),
            "get",
            "node",
            "edge-b-3",
            "-o",
            "name",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "node/edge-b-3"


def test_gateway_crd_is_installed_and_the_relay_pool_marked(lab):
    st = lab.status
    if not apiserver_proc.apiserver_available():
        pytest.fail("the lab API server (raven.lab.apiserver.__main__) does not exist yet")
    out = subprocess.run(
        ["kubectl", "--kubeconfig", st["kubeconfig"], "get", "gw", "-o", "json"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    # The topology marks cloud as the relay: up pre-creates its Gateway, as an operator would.
    items = json.loads(out.stdout)["items"]
    assert [(g["metadata"]["name"], g["spec"]) for g in items] == [("cloud", {"relay": True})]
