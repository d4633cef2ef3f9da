"""Which reads the shared copy answers (exactly those it can answer as the API server would), and
when: in sync online, with the client's own credential allowed by the API server."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from raven.cacheproxy.request import request_info
from raven.cacheproxy.sharing import (
    DEFAULT_SHARED,
    ENDPOINTSLICES,
    SERVICES,
    Copy,
    Route,
    Verdict,
    parse_shared,
    path_group_version,
    route,
    shared_read,
)

KUBE_PROXY = (
    "labelSelector=!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
)


def read(url: str, accept: str = "application/json", resources=DEFAULT_SHARED):
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query: dict[str, list[str]] = {}
    for k, v in pairs:
        query.setdefault(k, []).append(v)
    info = request_info("GET", parts.path, query)
    group, version = path_group_version(parts.path)
    return shared_read(info, pairs, accept, resources, group=group, version=version)


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/services",
        "/api/v1/services?resourceVersion=0",
        f"/api/v1/services?{KUBE_PROXY}&resourceVersion=0",
        "/api/v1/services?limit=500",  # answered whole, as the API server may
        "/api/v1/services?resourceVersion=12&resourceVersionMatch=NotOlderThan",
        "/api/v1/namespaces/kube-system/services",
        "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=kubernetes.io/service-name=web",
        "/apis/discovery.k8s.io/v1/endpointslices?fieldSelector=metadata.namespace%3Ddefault",
        "/api/v1/services?watch=true&resourceVersion=10&allowWatchBookmarks=true"
        "&timeoutSeconds=400",
        "/api/v1/services?watch=1",
        f"/apis/discovery.k8s.io/v1/endpointslices?watch=true&{KUBE_PROXY}",
    ],
)
def test_reads_the_copy_answers(url):
    assert read(url) is not None


@pytest.mark.parametrize(
    "url, accept",
    [
        ("/api/v1/services", "application/vnd.kubernetes.protobuf"),
        ("/api/v1/services", "application/json;as=Table;v=v1;g=meta.k8s.io"),
        ("/api/v1/namespaces/default/services/web", "application/json"),  # a get
        ("/api/v1/namespaces/default/services/web/status", "application/json"),
        ("/api/v1/pods", "application/json"),  # not shared
        ("/api/v1/configmaps", "application/json"),
        ("/apis/discovery.k8s.io/v1beta1/endpointslices", "application/json"),  # other version
        ("/api/v1/services?resourceVersion=5&resourceVersionMatch=Exact", "application/json"),
        ("/api/v1/services?resourceVersion=5&limit=10", "application/json"),  # exact by paging
        ("/api/v1/services?limit=10&continue=abc", "application/json"),  # a later page
        ("/api/v1/services?resourceVersion=abc", "application/json"),
        ("/api/v1/services?resourceVersionMatch=NotOlderThan", "application/json"),  # no rv
        ("/api/v1/services?fieldSelector=spec.clusterIP%3D10.0.0.1", "application/json"),
        ("/api/v1/services?labelSelector=a%20in%20(", "application/json"),  # API server's error
        ("/api/v1/services?watch=true&sendInitialEvents=true", "application/json"),
        ("/api/v1/services?watch=true&timeoutSeconds=x", "application/json"),
        ("/api/v1/services?pretty=true", "application/json"),  # not understood: through
        ("/api/v1/services?labelSelector=a&labelSelector=b", "application/json"),  # repeated
        ("/api/v1/watch/services", "application/json"),  # the old watch path
    ],
)
def test_reads_that_go_through(url, accept):
    assert read(url, accept) is None


def test_the_read_keeps_what_the_client_asked():
    r = read(
        "/api/v1/namespaces/x/services?watch=true&resourceVersion=7&allowWatchBookmarks=true"
        "&timeoutSeconds=30&labelSelector=app%3Dweb"
    )
    assert r is not None
    assert (r.resource, r.verb, r.namespace, r.resource_version) == (SERVICES, "watch", "x", "7")
    assert r.bookmarks and r.timeout == 30
    assert r.labels.matches({"app": "web"}) and not r.labels.matches({"app": "db"})


def test_only_the_configured_resources_are_shared():
    assert read("/api/v1/services", resources=(ENDPOINTSLICES,)) is None
    assert read("/api/v1/services", resources=()) is None


@pytest.mark.parametrize(
    "text, names",
    [
        (
            "services,endpointslices.discovery.k8s.io",
            ["services", "endpointslices.discovery.k8s.io"],
        ),
        ("services", ["services"]),
        (" services , services ", ["services"]),
        ("none", []),
    ],
)
def test_share_flag(text, names):
    assert [r.name for r in parse_shared(text)] == names


@pytest.mark.parametrize("text", ["pods", "endpointslices", "", "services,"])
def test_share_flag_names_what_is_wrong(text):
    with pytest.raises(ValueError, match="cannot share|at least one"):
        parse_shared(text)


LIST = read("/api/v1/services")
LIST_AT_20 = read("/api/v1/services?resourceVersion=20")
WATCH = read("/api/v1/services?watch=true&resourceVersion=3")
SYNCED = Copy(synced=True, filled=True, rv=10)
STALE = Copy(synced=False, filled=True, rv=10)
EMPTY = Copy(synced=False, filled=False, rv=0)
A, D, U = Verdict.ALLOWED, Verdict.DENIED, Verdict.UNKNOWN


@pytest.mark.parametrize(
    "r, copy, verdict, healthy, cred, expected",
    [
        # online: the copy answers only in sync, only an allowed credential, asked when unknown
        (LIST, SYNCED, A, True, True, Route.SHARED),
        (WATCH, SYNCED, A, True, True, Route.SHARED),
        (LIST, SYNCED, U, True, True, Route.CHECK),
        (LIST, SYNCED, D, True, True, Route.THROUGH),  # the API server gives its own 403
        (LIST, STALE, A, True, True, Route.THROUGH),
        (LIST, EMPTY, U, True, True, Route.THROUGH),
        (LIST, SYNCED, A, True, False, Route.THROUGH),  # anonymous: the API server decides
        (LIST_AT_20, SYNCED, A, True, True, Route.THROUGH),  # the copy is not there yet
        # offline: the last known copy, for a credential allowed before
        (LIST, STALE, A, False, True, Route.SHARED),
        (WATCH, STALE, A, False, True, Route.SHARED),
        (LIST, STALE, U, False, True, Route.THROUGH),
        (LIST, STALE, D, False, True, Route.THROUGH),
        (LIST, EMPTY, A, False, True, Route.THROUGH),
        (LIST_AT_20, STALE, A, False, True, Route.THROUGH),
    ],
)
def test_route(r, copy, verdict, healthy, cred, expected):
    assert route(r, copy, verdict, cloud_healthy=healthy, has_credential=cred) is expected
