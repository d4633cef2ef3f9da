"""The kube-proxy and CoreDNS stand-ins against the lab API server: what they read, as whom,
and that their copies end equal to the server's, object by object, under churn."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from raven.kube.client import KubeClient, load_config
from raven.lab import deployment
from raven.lab.churn import NAMESPACE, Churn, ChurnPlan
from raven.lab.standins.components import COREDNS, ENDPOINTSLICES, KUBE_PROXY, rbac_objects
from raven.lab.standins.mirror import Mirror
from raven.lab.standins.process import StandIn
from raven.lab.standins.reflector import Reflector
from raven.lab.testing.apiserver import run_apiserver


@pytest.fixture
def server(tmp_path):
    with run_apiserver(tmp_path / "api", history=30, bookmark_interval=0.5) as handle:
        deployment.apply(handle.kubeconfig, rbac_objects())
        yield handle


def _client(path, component=None) -> KubeClient:
    agent = component.user_agent if component else "raven-test"
    return KubeClient(load_config(str(path)), user_agent=agent)


def _kubeconfig(server, component):
    namespace, name = component.service_account
    return server.service_account_kubeconfig(namespace, name)


def _server_state(server, resource: str, selector: str = "") -> dict[str, dict]:
    args = ["get", resource, "-A", "-o", "json"] + (["-l", selector] if selector else [])
    r = server.kubectl(*args)
    assert r.returncode == 0, r.stderr
    return {
        f"{o['metadata']['namespace']}/{o['metadata']['name']}": o
        for o in json.loads(r.stdout)["items"]
    }


def _strip(objects: dict[str, dict]) -> dict[str, dict]:
    """Objects as a watch and a list both carry them (kubectl adds nothing, but be exact)."""
    return {k: {f: v for f, v in o.items() if f not in ("apiVersion", "kind")}
            for k, o in objects.items()}  # fmt: skip


async def test_standins_end_with_the_servers_objects_under_churn(server):
    proxy = StandIn(KUBE_PROXY, "n1", _client(_kubeconfig(server, KUBE_PROXY), KUBE_PROXY))
    dns = StandIn(COREDNS, "n1", _client(_kubeconfig(server, COREDNS), COREDNS))
    tasks = [asyncio.create_task(r.run()) for s in (proxy, dns) for r in s.reflectors()]
    admin = _client(server.kubeconfig)
    try:
        await asyncio.wait_for(proxy.synced.wait(), 10)
        await asyncio.wait_for(dns.synced.wait(), 10)
        churn = Churn(admin, nodes=["n1", "n2"])
        plan = ChurnPlan(services=10, seed=7, headless=0.3)
        await churn.seed(plan)
        await churn.run(plan, rate=40, seconds=2.0)
        await asyncio.sleep(1.5)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for k in (admin, proxy.kube, dns.kube):
            await k.close()

    selector = KUBE_PROXY.watches[1].label_selector
    want_proxy = _server_state(server, "endpointslices.discovery.k8s.io", selector)
    want_all = _server_state(server, "endpointslices.discovery.k8s.io")
    assert len(want_all) > len(want_proxy) > 0  # some Services are headless
    assert _strip(proxy.mirrors["endpointslices"].objects) == _strip(want_proxy)
    assert _strip(dns.mirrors["endpointslices"].objects) == _strip(want_all)
    assert _strip(dns.mirrors["services"].objects) == _strip(_server_state(server, "services"))
    assert NAMESPACE in dns.mirrors["namespaces"].objects

    # Every slice write reached CoreDNS, once and in order; kube-proxy got those it watches.
    writes = [w for w in churn.writes if w.resource == "endpointslices"]
    got = {(a.key, a.rv): a for a in dns.mirrors["endpointslices"].arrivals}
    assert all((w.key, w.rv) in got for w in writes)
    assert all(got[(w.key, w.rv)].at >= w.sent for w in writes)
    rvs = [int(a.rv) for a in dns.mirrors["endpointslices"].arrivals if a.type != "LIST"]
    assert rvs == sorted(set(rvs))


async def test_a_watch_too_old_is_followed_by_a_relist(server):
    admin = _client(server.kubeconfig)
    kube = _client(_kubeconfig(server, KUBE_PROXY), KUBE_PROXY)
    mirror = Mirror("endpointslices")
    reflector = Reflector(kube, KUBE_PROXY.watches[1], mirror)
    try:
        await reflector.list_once("0")
        churn = Churn(admin)
        await churn.seed(ChurnPlan(services=20, seed=3, headless=0))  # 40 writes > history 30
        task = asyncio.create_task(reflector.run())
        for _ in range(100):
            if mirror.expired and len(mirror.objects) == 20:
                break
            await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await admin.close()
        await kube.close()
    assert mirror.expired == 1 and mirror.lists == 2
    assert sorted(mirror.objects) == sorted(_server_state(server, "endpointslices"))


async def test_each_component_reads_as_its_own_service_account_with_its_user_agent(server):
    proxy = StandIn(KUBE_PROXY, "n1", _client(_kubeconfig(server, KUBE_PROXY), KUBE_PROXY))
    tasks = [asyncio.create_task(r.run()) for r in proxy.reflectors()]
    try:
        await asyncio.wait_for(proxy.synced.wait(), 10)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await proxy.kube.close()
    mine = [
        e for e in server.audit_events()
        if (e.get("user") or {}).get("username") == KUBE_PROXY.user
    ]  # fmt: skip
    assert mine and {e["userAgent"] for e in mine} == {KUBE_PROXY.user_agent}
    assert {e["responseStatus"]["code"] for e in mine if e["stage"] == "ResponseComplete"} == {200}
    lists = {e["requestURI"] for e in mine if e["verb"] == "list"}
    assert any(u.startswith(ENDPOINTSLICES.collection_path()) for u in lists)
    selectors = {parse_qs(urlsplit(u).query)["labelSelector"][0] for u in lists}
    assert selectors == {
        "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
    }
    # CoreDNS's token may read Namespaces; kube-proxy's may not.
    r = server.kubectl("get", "namespaces", "--kubeconfig", str(_kubeconfig(server, KUBE_PROXY)))
    assert r.returncode != 0 and "forbidden" in r.stderr


def test_the_process_reads_through_a_cache_proxy_and_dumps_on_sigusr1(server, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from raven.lab.apiserver.serviceaccounts import write_service_account_kubeconfig
    from raven.lab.standins.process import READY_LINE
    from raven.lab.testing.cacheproxy import run_proxy

    tls = (server.pki.server_cert, server.pki.server_key)
    with run_proxy(server.url, server.ca_cert, tmp_path / "cache", tls=tls) as proxy:
        token = server.create_token("kube-system", "kube-proxy")
        kubeconfig = write_service_account_kubeconfig(
            tmp_path / "kp.kubeconfig", proxy.url, server.ca_cert, token,
            namespace="kube-system", name="kube-proxy",
        )  # fmt: skip
        dump_file = tmp_path / "kube-proxy.dump.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "raven.lab.standins", "kube-proxy", "--node", "n1",
             "--kubeconfig", str(kubeconfig), "--dump-file", str(dump_file)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            line = proc.stdout.readline()
            assert READY_LINE in line, line

            async def churn() -> None:
                admin = _client(server.kubeconfig)
                try:
                    writer = Churn(admin)
                    plan = ChurnPlan(services=5, seed=4, headless=0)
                    await writer.seed(plan)
                    await writer.run(plan, rate=20, seconds=1.0)
                finally:
                    await admin.close()

            asyncio.run(churn())
            time.sleep(1.0)
            asked = time.time()
            os.kill(proc.pid, signal.SIGUSR1)
            for _ in range(100):
                if dump_file.exists() and json.loads(dump_file.read_text())["at"] >= asked:
                    break
                time.sleep(0.05)
            dump = json.loads(dump_file.read_text())
        finally:
            proc.terminate()
            proc.wait(10)
    slices = dump["resources"]["endpointslices"]
    assert dump["component"] == "kube-proxy" and slices["synced"] and slices["expired"] == 0
    assert _strip(slices["objects"]) == _strip(_server_state(server, "endpointslices"))
    assert slices["events"] > 5 and len(slices["arrivals"]) >= slices["events"]
