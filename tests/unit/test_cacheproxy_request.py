"""What a request is, read as kube-apiserver reads it: verb, long-running, credential."""

import pytest

from raven.cacheproxy.request import (
    RequestInfo,
    bearer_token,
    credential,
    query_bool,
    request_info,
)


def info(method: str, path: str, query: str = "") -> RequestInfo:
    q: dict[str, list[str]] = {}
    for part in filter(None, query.split("&")):
        k, _, v = part.partition("=")
        q.setdefault(k, []).append(v)
    return request_info(method, path, q)


@pytest.mark.parametrize(
    "query",
    ["watch=true", "watch=True", "watch=TRUE", "watch=1", "watch=", "watch", "watch=yes",
     "watch=t", "watch=true&watch=false", "limit=5&watch=1"],
)  # fmt: skip
def test_every_spelling_the_api_server_accepts_is_a_watch(query: str) -> None:
    got = info("GET", "/api/v1/nodes", query)
    assert (got.verb, got.watch, got.long_running) == ("watch", True, True)


@pytest.mark.parametrize(
    "query", ["", "watch=false", "watch=False", "watch=FALSE", "watch=0", "watch=0&watch=1"]
)
def test_false_zero_or_absent_is_a_list(query: str) -> None:
    got = info("GET", "/api/v1/nodes", query)
    assert (got.verb, got.watch, got.long_running) == ("list", False, False)


def test_query_bool_follows_the_api_server_conversion() -> None:
    assert [query_bool(v) for v in ([], [""], ["0"], ["fAlSe"], ["no"], ["off"])] == [
        False, True, False, False, True, True
    ]  # fmt: skip


def test_a_named_get_is_a_get_whatever_its_query() -> None:
    got = info("GET", "/api/v1/nodes/n1", "watch=true")
    assert (got.verb, got.name, got.long_running) == ("get", "n1", False)


def test_old_watch_paths_are_watches() -> None:
    got = info("GET", "/api/v1/watch/namespaces/default/pods")
    assert (got.verb, got.namespace, got.resource, got.verb_via_path) == (
        "watch", "default", "pods", True
    )  # fmt: skip
    assert info("GET", "/apis/raven.io/v1/watch/gateways").watch


@pytest.mark.parametrize(
    "method,path,query,long_running",
    [
        ("GET", "/api/v1/namespaces/default/pods/p/log", "follow=true", True),
        ("GET", "/api/v1/namespaces/default/pods/p/log", "", True),  # the API server: any log
        ("POST", "/api/v1/namespaces/default/pods/p/exec", "command=sh", True),
        ("GET", "/api/v1/namespaces/default/pods/p/attach", "", True),
        ("POST", "/api/v1/namespaces/default/pods/p/portforward", "", True),
        ("GET", "/api/v1/namespaces/default/services/s/proxy/x", "", True),
        ("GET", "/api/v1/proxy/nodes/n1", "", True),
        ("GET", "/api/v1/namespaces/default/pods/p/status", "", False),
        ("GET", "/api/v1/namespaces/default/pods/p", "follow=true", False),
        ("GET", "/api/v1/namespaces/default/pods", "", False),
        ("PUT", "/api/v1/nodes/n1", "", False),
        ("GET", "/version", "watch=true", False),
        ("GET", "/healthz/log", "", False),  # not a resource: no subresource
    ],
)
def test_long_running_as_the_api_server_decides(
    method: str, path: str, query: str, long_running: bool
) -> None:
    assert info(method, path, query).long_running is long_running


def test_namespaces_and_their_subresources() -> None:
    assert info("GET", "/api/v1/namespaces/kube-system").resource == "namespaces"
    assert info("GET", "/api/v1/namespaces/kube-system").name == "kube-system"
    got = info("PUT", "/api/v1/namespaces/ns1/finalize")
    assert (got.resource, got.name, got.subresource) == ("namespaces", "ns1", "finalize")
    assert info("GET", "/api/v1/namespaces").verb == "list"
    assert info("DELETE", "/api/v1/namespaces/a/pods").verb == "deletecollection"


@pytest.mark.parametrize(
    "header,token",
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("  Bearer abc  ", "abc"),  # the header is trimmed first
        ("Bearer abc def", "abc"),  # a third part is ignored
        ("Bearer  abc", None),  # two spaces: an empty token, refused
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic dXNlcjpwdw==", None),
        ("Bearerabc", None),
        ("Bearer\tabc", None),  # only a space separates
        ("", None),
        (None, None),
    ],
)
def test_bearer_parsing_matches_the_api_server(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_the_credential_is_the_token_not_the_header() -> None:
    assert credential("Bearer abc") == credential("bearer abc") == credential("Bearer abc x")
    assert credential("Bearer abc") != credential("Bearer abd")
    assert credential("Bearer  abc") is None and credential("Basic x") is None
    assert len(credential("Bearer abc") or "") == 64  # a hash, never the token
