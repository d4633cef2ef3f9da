"""Cache keys: every parameter that changes the answer is in them, nothing else is."""

from urllib.parse import parse_qsl

from raven.cacheproxy.keys import ReadKey, identity_headers, read_key, watch_key
from raven.cacheproxy.request import request_info

JSON = "application/json"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def rk(query: str = "", path: str = "/api/v1/nodes", ua: str = "kubelet", accept: str = JSON,
       identity: tuple[tuple[str, str], ...] = ()) -> ReadKey:  # fmt: skip
    pairs = parse_qsl(query, keep_blank_values=True)
    q: dict[str, list[str]] = {}
    for k, v in pairs:
        q.setdefault(k, []).append(v)
    info = request_info("GET", path, q)
    return read_key(
        info, user_agent=ua, raw_path=path, query=pairs, accept=accept, identity=identity
    )


def wk(query: str, path: str = "/api/v1/nodes", ua: str = "kubelet", accept: str = JSON) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    q: dict[str, list[str]] = {}
    for k, v in pairs:
        q.setdefault(k, []).append(v)
    return watch_key(
        request_info("GET", path, q), user_agent=ua, raw_path=path, query=pairs, accept=accept
    )


def test_components_selectors_and_accept_make_distinct_entries() -> None:
    base = rk("labelSelector=a%3D1").key
    assert base != rk("labelSelector=a%3D1", ua="kube-proxy").key
    assert base != rk("labelSelector=a%3D2").key
    assert base != rk("labelSelector=a%3D1&fieldSelector=spec.nodeName%3Dn1").key
    assert base != rk("labelSelector=a%3D1", accept=TABLE).key
    assert base == rk("timeoutSeconds=5&labelSelector=a%3D1").key  # only how long it may take


def test_include_object_and_other_parameters_are_in_the_key() -> None:
    table = rk("includeObject=Object", accept=TABLE).key
    assert table != rk("includeObject=None", accept=TABLE).key
    assert table != rk("", accept=TABLE).key
    assert rk("pretty=true").key != rk("").key  # unknown parameters: kept, to be safe
    logs = "/api/v1/namespaces/d/pods/p/log"
    assert rk("tailLines=10", path=logs).key != rk("tailLines=20", path=logs).key


def test_impersonation_is_in_the_key() -> None:
    alone = rk("").key
    assert alone != rk("", identity=(("Impersonate-User", "system:node:n1"),)).key
    assert (
        rk("", identity=(("Impersonate-User", "a"),)).key
        == rk("", identity=(("impersonate-user", "a"),)).key
    )
    assert identity_headers([("Impersonate-Group", "g"), ("Accept", "x")]) == [
        ("Impersonate-Group", "g")
    ]


def test_freshness_shares_one_entry_with_a_condition() -> None:
    newest = rk("").key
    for query in ("resourceVersion=0", "resourceVersion=", "resourceVersion=42",
                  "resourceVersion=42&resourceVersionMatch=NotOlderThan"):  # fmt: skip
        assert rk(query).key == newest, query
    assert rk("resourceVersion=42").min_rv == 42
    assert rk("resourceVersion=0").min_rv is None and rk("").min_rv is None


def test_an_exact_version_is_its_own_entry() -> None:
    exact = rk("resourceVersion=42&resourceVersionMatch=Exact")
    assert exact.key != rk("").key and exact.min_rv is None
    assert exact.key != rk("resourceVersion=43&resourceVersionMatch=Exact").key
    # A list's N with a limit and no match is exact too, as the API server reads it.
    assert rk("resourceVersion=42&limit=5").key == exact.key
    assert rk("resourceVersion=0&limit=5").key == rk("").key


def test_pages_are_not_entries_of_their_own() -> None:
    whole = rk("labelSelector=a")
    first = rk("labelSelector=a&limit=500")
    later = rk("labelSelector=a&limit=500&continue=TOKEN")
    assert whole.key == first.key == later.key
    assert (first.paged, first.continue_token) == (True, None)
    assert (later.paged, later.continue_token) == (True, "TOKEN")
    assert not whole.paged


def test_a_get_keeps_its_parameters_and_its_version_condition() -> None:
    one = rk("", path="/api/v1/nodes/n1")
    assert rk("resourceVersion=7", path="/api/v1/nodes/n1") == ReadKey(one.key, 7)
    assert rk("limit=5", path="/api/v1/nodes/n1").key != one.key


def test_a_watch_continues_the_list_with_its_own_selectors() -> None:
    assert wk("watch=true&resourceVersion=10&allowWatchBookmarks=true&timeoutSeconds=300") == (
        rk("resourceVersion=0&limit=500").key
    )
    assert wk("watch=1&labelSelector=a%3Db") == rk("labelSelector=a%3Db").key
    assert wk("watch=1&labelSelector=a%3Db") != rk("labelSelector=a%3Dc").key
    assert wk("watch=1", ua="kube-proxy") != rk("").key
    assert wk("", path="/api/v1/watch/nodes") == rk("").key  # the old /watch/ path
    assert (
        wk("", path="/apis/raven.io/v1/watch/gateways")
        == rk("", path="/apis/raven.io/v1/gateways").key
    )
