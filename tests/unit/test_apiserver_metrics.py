"""The API server counts what it is asked and what its watches deliver, on /metrics (token
required), without counting the scrape itself."""

from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raven.kube import NODES, KubeClient, leases
from raven.lab.apiserver.metrics import RequestKind, classify

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("method", "path", "query", "kind"),
    [
        ("GET", "/api/v1/nodes", {}, RequestKind("list", "nodes")),
        ("GET", "/api/v1/nodes", {"watch": "1"}, RequestKind("watch", "nodes")),
        ("GET", "/api/v1/nodes", {"watch": "false"}, RequestKind("list", "nodes")),
        ("GET", "/api/v1/nodes/n1", {}, RequestKind("get", "nodes")),
        ("PATCH", "/api/v1/nodes/n1/status", {}, RequestKind("patch", "nodes", "status")),
        (
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/raven-gw-a",
            {},
            RequestKind("update", "leases"),
        ),
        (
            "PATCH",
            "/apis/raven.io/v1alpha1/gateways/edge-a/status",
            {},
            RequestKind("patch", "gateways", "status"),
        ),
        ("POST", "/api/v1/namespaces/default/events", {}, RequestKind("create", "events")),
        ("DELETE", "/api/v1/namespaces/x/pods/p", {}, RequestKind("delete", "pods")),
        ("DELETE", "/api/v1/namespaces/x/pods", {}, RequestKind("deletecollection", "pods")),
        ("GET", "/api/v1/namespaces/kube-system", {}, RequestKind("get", "namespaces")),
        ("GET", "/apis", {}, RequestKind("get")),
        ("GET", "/version", {}, RequestKind("get")),
    ],
)
def test_requests_are_classified_as_kube_apiserver_does(
    method: str, path: str, query: dict[str, str], kind: RequestKind
) -> None:
    assert classify(method, path, query) == kind


def _scrape(apiserver: Any, token: str | None = None) -> dict[tuple[str, tuple], float]:
    ctx = ssl.create_default_context(cafile=str(apiserver.ca_cert))
    request = urllib.request.Request(
        f"{apiserver.url}/metrics",
        headers={"Authorization": f"Bearer {token or apiserver.token}"},
    )
    with urllib.request.urlopen(request, context=ctx, timeout=10) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _requests(samples: dict[tuple[str, tuple], float], verb: str, resource: str) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "apiserver_request_total"
        and dict(labels)["verb"] == verb
        and dict(labels)["resource"] == resource
    )


def _events(samples: dict[tuple[str, tuple], float], resource: str, kind: str) -> float:
    key = ("apiserver_watch_events_total", (("resource", resource), ("type", kind)))
    return samples.get(key, 0.0)


async def test_requests_and_watch_events_are_counted(apiserver: Any, kube: KubeClient) -> None:
    before = await asyncio.to_thread(_scrape, apiserver)
    seen: list[str] = []

    async def watch() -> None:
        listed = await kube.list(NODES)
        async for event in kube.watch(
            NODES, resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=5
        ):
            seen.append(event["type"])
            if len(seen) == 2:
                return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)  # the watch is open
    body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
    await kube.create(NODES, body)
    await kube.merge_patch(NODES, "n1", {"metadata": {"labels": {"a": "b"}}})
    await kube.get(NODES, "n1")
    with pytest.raises(Exception):  # noqa: B017 - a 404 is counted like any answer
        await kube.get(leases("kube-system"), "missing")
    await asyncio.wait_for(watcher, 10)
    after = await asyncio.to_thread(_scrape, apiserver)

    def delta(verb: str, resource: str) -> float:
        return _requests(after, verb, resource) - _requests(before, verb, resource)

    assert seen == ["ADDED", "MODIFIED"]
    assert delta("create", "nodes") == 1
    assert delta("patch", "nodes") == 1
    assert delta("get", "nodes") == 1
    assert delta("list", "nodes") == 1
    assert delta("watch", "nodes") == 1
    assert delta("get", "leases") == 1
    missing = ("apiserver_request_total", tuple(sorted(
        {"verb": "get", "resource": "leases", "subresource": "", "code": "404"}.items()
    )))  # fmt: skip
    assert after.get(missing) == 1
    assert _events(after, "nodes", "ADDED") - _events(before, "nodes", "ADDED") == 1
    assert _events(after, "nodes", "MODIFIED") - _events(before, "nodes", "MODIFIED") == 1
    # Scraping is not counted: a third scrape reads the same request counters.
    again = await asyncio.to_thread(_scrape, apiserver)
    assert {k: v for k, v in again.items() if k[0] == "apiserver_request_total"} == {
        k: v for k, v in after.items() if k[0] == "apiserver_request_total"
    }


def test_metrics_need_the_token(apiserver: Any) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        _scrape(apiserver, token="not-the-token")
    assert refused.value.code == 401
