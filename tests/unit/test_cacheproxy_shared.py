"""Node-level reuse against the lab API server: kube-proxy and CoreDNS read Services and
EndpointSlices through one node's proxy, the API server serves that node one list+watch per
resource, each component ends with exactly the server's objects for its selector (each change
once, in order), and nobody is shown what its own credential may not read."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from raven.cacheproxy.sharing import SERVICES
from raven.kube.client import KubeClient, load_config
from raven.lab import deployment
from raven.lab.apiserver.serviceaccounts import write_service_account_kubeconfig
from raven.lab.churn import Churn, ChurnPlan
from raven.lab.standins.components import COREDNS, KUBE_PROXY, rbac_objects
from raven.lab.standins.process import StandIn
from raven.lab.testing.apiserver import run_apiserver
from raven.lab.testing.cacheproxy import run_proxy

NODE = "edge-a-1"
SLICES = "endpointslices.discovery.k8s.io"


@pytest.fixture
def env(tmp_path):
    with run_apiserver(tmp_path / "api", nodes=[NODE], bookmark_interval=0.5) as api:
        deployment.apply(api.kubeconfig, rbac_objects())
        deployment.apply(api.kubeconfig, _limited_reader())
        with run_proxy(
            api.url,
            api.ca_cert,
            tmp_path / "cache",
            tls=(api.pki.server_cert, api.pki.server_key),
            node=api.node_client_pair(NODE),
            review_ttl=0.5,
        ) as proxy:
            _wait(lambda: all(r.synced for r in proxy.proxy.shared.reflectors.values()))
            yield api, proxy


def _limited_reader() -> list[dict]:
    """ServiceAccount default/reader may list and watch Services in namespace ``team`` only."""
    rbac = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"namespace": "default", "name": "reader"}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"namespace": "default", "name": "nobody"}},
        {"apiVersion": f"{rbac}/v1", "kind": "Role",
         "metadata": {"namespace": "team", "name": "services-reader"},
         "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]}]},
        {"apiVersion": f"{rbac}/v1", "kind": "RoleBinding",
         "metadata": {"namespace": "team", "name": "services-reader"},
         "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "services-reader"},
         "subjects": [{"kind": "ServiceAccount", "namespace": "default", "name": "reader"}]},
    ]  # fmt: skip


def _service(api, name: str, namespace: str = "default") -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"port": 80, "protocol": "TCP"}]},
    }
    r = api.kubectl("create", "-f", "-", stdin=json.dumps(body))
    assert r.returncode == 0, r.stderr


def _wait(cond, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met in {timeout} s")
        time.sleep(0.05)


def _component_client(api, proxy, tmp_path: Path, component) -> KubeClient:
    namespace, name = component.service_account
    token = api.create_token(namespace, name)
    path = write_service_account_kubeconfig(
        tmp_path / f"{component.name}.kubeconfig", proxy.url, api.ca_cert, token,
        namespace=namespace, name=name,
    )  # fmt: skip
    return KubeClient(load_config(str(path)), user_agent=component.user_agent)


def _server_state(api, resource: str, selector: str = "") -> dict[str, dict]:
    args = ["get", resource, "-A", "-o", "json"] + (["-l", selector] if selector else [])
    r = api.kubectl(*args)
    assert r.returncode == 0, r.stderr
    return {
        f"{o['metadata']['namespace']}/{o['metadata']['name']}": {
            k: v for k, v in o.items() if k not in ("apiVersion", "kind")
        }
        for o in json.loads(r.stdout)["items"]
    }


def _strip(objects: dict[str, dict]) -> dict[str, dict]:
    return {k: {f: v for f, v in o.items() if f not in ("apiVersion", "kind")}
            for k, o in objects.items()}  # fmt: skip


def _get(proxy, path: str, token: str | None, ca: Path) -> tuple[int, dict, dict]:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(proxy.url + path)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"{}")


def _watch_lines(proxy, path: str, token: str, ca: Path, *, count: int) -> list[dict]:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(proxy.url + path, headers={"Authorization": f"Bearer {token}"})
    out = []
    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
        assert r.headers.get("X-Raven-Shared") is not None
        while len(out) < count:
            line = r.readline()
            if not line:
                break
            out.append(json.loads(line))
    return out


async def test_components_of_a_node_share_one_upstream_watch_and_end_with_the_servers_objects(
    env, tmp_path
):
    api, proxy = env
    kube_proxy = StandIn(KUBE_PROXY, NODE, _component_client(api, proxy, tmp_path, KUBE_PROXY))
    dns = StandIn(COREDNS, NODE, _component_client(api, proxy, tmp_path, COREDNS))
    admin = KubeClient(load_config(str(api.kubeconfig)), user_agent="raven-test")
    tasks = [asyncio.create_task(r.run()) for s in (kube_proxy, dns) for r in s.reflectors()]
    try:
        await asyncio.wait_for(kube_proxy.synced.wait(), 15)
        await asyncio.wait_for(dns.synced.wait(), 15)
        churn = Churn(admin, nodes=[NODE, "edge-a-2"])
        plan = ChurnPlan(services=10, seed=11, headless=0.3)
        await churn.seed(plan)
        await churn.run(plan, rate=40, seconds=2.0)
        want_all = _server_state(api, SLICES)
        want_proxy = _server_state(api, SLICES, KUBE_PROXY.watches[1].label_selector)

        async def converged() -> None:
            while not (
                _strip(dns.mirrors["endpointslices"].objects) == want_all
                and _strip(kube_proxy.mirrors["endpointslices"].objects) == want_proxy
            ):
                await asyncio.sleep(0.1)

        await asyncio.wait_for(converged(), 15)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for k in (admin, kube_proxy.kube, dns.kube):
            await k.close()

    assert len(want_all) > len(want_proxy) > 0  # some Services are headless
    assert _strip(dns.mirrors["services"].objects) == _server_state(api, "services")
    # Every slice write reached CoreDNS once, in order.
    writes = [w for w in churn.writes if w.resource == "endpointslices"]
    got = {(a.key, a.rv) for a in dns.mirrors["endpointslices"].arrivals}
    assert all((w.key, w.rv) in got for w in writes)
    for s in (kube_proxy, dns):
        rvs = [int(a.rv) for a in s.mirrors["endpointslices"].arrivals if a.type != "LIST"]
        assert rvs == sorted(set(rvs))

    # The API server served one list+watch per shared resource, to the node; the components'
    # own credentials were only asked about, never streamed to.
    events = [e for e in api.audit_events() if e["stage"] == "ResponseComplete"]
    started = [e for e in api.audit_events() if e["stage"] == "ResponseStarted"]
    opened = {(e["user"]["username"], e["objectRef"]["resource"]) for e in started
              if e["verb"] == "watch" and e.get("objectRef")
              and e["objectRef"]["resource"] in ("services", "endpointslices")}  # fmt: skip
    assert (f"system:node:{NODE}", "services") in opened
    assert (f"system:node:{NODE}", "endpointslices") in opened
    assert not any(user in (KUBE_PROXY.user, COREDNS.user) for user, _ in opened)
    review = "selfsubjectaccessreviews"
    reviews = {e["user"]["username"] for e in events
               if (e.get("objectRef") or {}).get("resource") == review}  # fmt: skip
    assert {KUBE_PROXY.user, COREDNS.user} <= reviews
    metrics = proxy.metrics()
    assert metrics['raven_cacheproxy_shared_reads{resource="services",verb="watch"}'] >= 2


def test_a_client_is_never_shown_what_its_own_credential_may_not_read(env):
    api, proxy = env
    _service(api, "web", "team")
    _service(api, "db", "default")
    reader = api.create_token("default", "reader")
    nobody = api.create_token("default", "nobody")
    objects = proxy.proxy.shared.reflectors[SERVICES].cache.objects
    _wait(lambda: {("team", "web"), ("default", "db")} <= objects.keys())

    # Allowed in its namespace: answered from the copy, that namespace only.
    status, headers, body = _get(proxy, "/api/v1/namespaces/team/services", reader, api.ca_cert)
    assert status == 200 and headers.get("X-Raven-Shared") == "services"
    assert [i["metadata"]["name"] for i in body["items"]] == ["web"]
    # Not allowed across namespaces, or at all: the API server's own 403, not the copy.
    for token, path in (
        (reader, "/api/v1/services"),
        (reader, "/api/v1/namespaces/default/services"),
        (nobody, "/api/v1/services"),
        (nobody, "/api/v1/services?watch=true"),
    ):
        status, headers, body = _get(proxy, path, token, api.ca_cert)
        assert status == 403 and "X-Raven-Shared" not in headers, (path, body)
        assert body["reason"] == "Forbidden"
    # A token the API server does not know, and none at all: its own 401 and 403.
    status, headers, _ = _get(proxy, "/api/v1/services", "not-a-token", api.ca_cert)
    assert status == 401 and "X-Raven-Shared" not in headers
    status, headers, _ = _get(proxy, "/api/v1/services", None, api.ca_cert)
    assert status in (401, 403) and "X-Raven-Shared" not in headers

    # A right taken away stops new shared reads once the review's answer is older than its TTL.
    assert api.kubectl("delete", "rolebinding", "services-reader", "-n", "team").returncode == 0
    time.sleep(0.6)
    status, headers, _ = _get(proxy, "/api/v1/namespaces/team/services", reader, api.ca_cert)
    assert status == 403 and "X-Raven-Shared" not in headers


def test_a_watch_gets_each_change_after_its_version_and_410_before_the_history(env, tmp_path):
    api, proxy = env
    token = api.create_token(*KUBE_PROXY.service_account)
    status, _, body = _get(proxy, "/api/v1/services", token, api.ca_cert)
    start = int(body["metadata"]["resourceVersion"])
    for name in ("a", "b"):
        _service(api, name)
    api.kubectl("label", "service", "a", "tier=x")
    api.kubectl("delete", "service", "b")
    events = _watch_lines(
        proxy, f"/api/v1/services?watch=true&resourceVersion={start}", token, api.ca_cert,
        count=4,
    )  # fmt: skip
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),
    ]
    # Through a selector: a leaves it when it loses the label, as on the API server.
    api.kubectl("label", "service", "a", "tier-")
    events = _watch_lines(
        proxy,
        f"/api/v1/services?watch=true&labelSelector=tier%3Dx&resourceVersion={start}",
        token, api.ca_cert, count=2,
    )  # fmt: skip
    # a starts to match when labelled (ADDED) and stops when unlabelled (DELETED); b never does.
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("DELETED", "a"),
    ]
    assert "tier" not in events[1]["object"]["metadata"].get("labels", {})
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(set(rvs))


def test_a_version_older_than_the_history_gets_410_expired(tmp_path):
    with run_apiserver(tmp_path / "api", nodes=[NODE]) as api:
        deployment.apply(api.kubeconfig, rbac_objects())
        with run_proxy(
            api.url, api.ca_cert, tmp_path / "cache",
            tls=(api.pki.server_cert, api.pki.server_key),
            node=api.node_client_pair(NODE), share_history=2,
        ) as proxy:  # fmt: skip
            _wait(lambda: proxy.proxy.shared.reflectors[SERVICES].synced)
            token = api.create_token(*KUBE_PROXY.service_account)
            _, _, body = _get(proxy, "/api/v1/services", token, api.ca_cert)
            start = int(body["metadata"]["resourceVersion"])
            for name in ("a", "b", "c", "d"):
                _service(api, name)
            cache = proxy.proxy.shared.reflectors[SERVICES].cache
            _wait(lambda: len(cache.objects) == 4)
            events = _watch_lines(
                proxy, f"/api/v1/services?watch=true&resourceVersion={start}", token,
                api.ca_cert, count=1,
            )  # fmt: skip
    assert events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"
    assert events[0]["object"]["message"].startswith(f"too old resource version: {start} (")


def test_offline_the_copy_answers_credentials_allowed_before_and_nobody_else(env):
    api, proxy = env
    token = api.create_token(*COREDNS.service_account)
    stranger = api.create_token("default", "reader")
    _service(api, "web")
    _wait(lambda: ("default", "web") in proxy.proxy.shared.reflectors[SERVICES].cache.objects)
    status, _, before = _get(proxy, "/api/v1/services", token, api.ca_cert)
    assert status == 200
    api.stop()
    proxy.wait_cloud(False)
    status, headers, body = _get(proxy, "/api/v1/services", token, api.ca_cert)
    assert status == 200 and headers.get("X-Raven-Shared") == "services"
    assert body["items"] == before["items"]
    status, headers, _ = _get(proxy, "/api/v1/services", stranger, api.ca_cert)
    assert status == 503 and "X-Raven-Shared" not in headers
    api.start()
    proxy.wait_cloud(True)
    _service(api, "after")
    _wait(lambda: ("default", "after") in proxy.proxy.shared.reflectors[SERVICES].cache.objects)
