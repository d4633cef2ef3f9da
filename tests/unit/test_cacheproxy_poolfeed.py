"""Pool-level reuse with real proxies against the lab API server: the gateway's proxy keeps the
pool's one upstream watch and serves its copies to the other nodes' proxies over the pool feed
(mTLS, node identities of the pool only); a member's clients see every change once and in order,
also across a change of gateway, and end with the API server's objects.

The agent's ``/role`` is a stand-in here (the agent's own test covers what it answers): a small
HTTP server answering each node's role from one table the test changes, as an election would.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from raven.cacheproxy.sharing import ENDPOINTSLICES, SERVICES
from raven.lab import deployment
from raven.lab.apiserver.pki import make_pki, node_client_name, node_clients, node_serving_name
from raven.lab.standins.components import KUBE_PROXY, rbac_objects
from raven.lab.testing.apiserver import run_apiserver
from raven.lab.testing.cacheproxy import ProxyHandle, run_proxy

POOL = ["a-1", "a-2", "a-3"]
ADDRESS = {"a-1": "127.0.0.2", "a-2": "127.0.0.3", "a-3": "127.0.0.4", "b-1": "127.0.0.5"}


class Roles:
    """What each node's agent would say on /role, from one holder the test sets."""

    def __init__(self) -> None:
        self.holder = "a-1"
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        roles = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                node = self.path.rsplit("/", 1)[-1]
                body = json.dumps(
                    {
                        "node": node,
                        "pool": "edge-a",
                        "gateway": roles.holder == node,
                        "holder": roles.holder,
                        "holderAddress": ADDRESS[roles.holder],
                        "members": POOL,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/role/{node}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(cond, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met in {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def pool(tmp_path):
    serving = {node_serving_name(n): [ADDRESS[n]] for n in POOL}
    roles = Roles()
    roles.thread.start()
    port = free_port()
    with ExitStack() as stack:
        api = stack.enter_context(
            run_apiserver(tmp_path / "api", nodes=[*POOL, "b-1"], serving=serving)
        )
        deployment.apply(api.kubeconfig, rbac_objects())

        def running(node: str):
            return run_proxy(
                api.url,
                api.ca_cert,
                tmp_path / f"cache-{node}",
                tls=(api.pki.server_cert, api.pki.server_key),
                node=api.node_client_pair(node),
                agent_role=roles.url(node),
                pool_listen=ADDRESS[node],
                pool_port=port,
                pool_pair=api.pki.extra_pair(node_serving_name(node)),
            )

        def proxy(node: str) -> ProxyHandle:
            return stack.enter_context(running(node))

        proxy.running = running  # type: ignore[attr-defined]
        yield api, roles, proxy, port
    roles.server.shutdown()


def sources(handle: ProxyHandle) -> set[str | None]:
    return {r.source.gateway for r in handle.proxy.shared.reflectors.values()}


def synced(handle: ProxyHandle) -> bool:
    return all(r.synced for r in handle.proxy.shared.reflectors.values())


def node_watchers(api, resource: str) -> set[str]:
    """Users that opened a watch of ``resource`` on the API server so far."""
    return {
        e["user"]["username"]
        for e in api.audit_events()
        if e["stage"] == "ResponseStarted"
        and e["verb"] == "watch"
        and (e.get("objectRef") or {}).get("resource") == resource
    }


def _service(api, name: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"port": 80, "protocol": "TCP"}]},
    }
    r = api.kubectl("create", "-f", "-", stdin=json.dumps(body))
    assert r.returncode == 0, r.stderr


def feed_get(api, port: int, node: str, path: str, *, cert: tuple[Path, Path] | None):
    ctx = ssl.create_default_context(cafile=str(api.ca_cert))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    url = f"https://{ADDRESS[node]}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextmanager
def watching(handle: ProxyHandle, token: str, ca: Path, rv: str) -> Iterator[list[dict]]:
    """A kube-proxy-like watch of Services through ``handle``, its events collected."""
    events: list[dict] = []
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", handle.proxy.port, context=ctx, timeout=60)
    conn.request(
        "GET",
        f"/api/v1/services?watch=true&allowWatchBookmarks=true&resourceVersion={rv}",
        headers={"Authorization": f"Bearer {token}"},
    )
    resp = conn.getresponse()
    assert resp.status == 200 and resp.headers.get("X-Raven-Shared") == "services"

    def read() -> None:
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            for line in resp:
                events.append(json.loads(line))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        yield events
    finally:
        assert conn.sock is not None
        conn.sock.shutdown(socket.SHUT_RDWR)  # ends the reader now, not at the next bookmark
        t.join(10)
        conn.close()


def test_members_read_the_gateways_feed_and_follow_a_new_gateway_without_a_gap(pool):
    api, roles, proxy, _ = pool
    gw = proxy("a-1")
    wait(lambda: synced(gw), what="the gateway's copies in sync")
    member = proxy("a-2")
    wait(lambda: sources(member) == {"a-1"} and synced(member), what="a-2 reading a-1's feed")
    # Only the gateway watches the API server; a-2's copies come over the LAN.
    assert "system:node:a-2" not in node_watchers(api, "services")
    assert "system:node:a-1" in node_watchers(api, "services")

    token = api.create_token(*KUBE_PROXY.service_account)
    ctx = ssl.create_default_context(cafile=str(api.ca_cert))
    req = urllib.request.Request(
        member.url + "/api/v1/services", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
        start = json.loads(r.read())["metadata"]["resourceVersion"]
    with watching(member, token, api.ca_cert, start) as events:
        for i in range(5):
            _service(api, f"before-{i}")
        # The election moves to a-2: it reads the API server itself, a-1 reads a-2's feed.
        roles.holder = "a-2"
        for i in range(5):
            _service(api, f"during-{i}")
        wait(lambda: sources(member) == {None} and synced(member), what="a-2 on the cloud")
        wait(lambda: sources(gw) == {"a-2"} and synced(gw), what="a-1 on a-2's feed")
        for i in range(5):
            _service(api, f"after-{i}")
        want = {f"{p}-{i}" for p in ("before", "during", "after") for i in range(5)}
        wait(
            lambda: (
                {e["object"]["metadata"]["name"] for e in events if e["type"] == "ADDED"} >= want
            ),
            what="every Service reaching the member's client",
        )
    changes = [e for e in events if e["type"] != "BOOKMARK"]
    names = [e["object"]["metadata"]["name"] for e in changes]
    assert sorted(names) == sorted(want) and len(names) == len(set(names))  # each once
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in changes]
    assert rvs == sorted(rvs)  # in order
    # Both copies end equal to the API server, object by object.
    r = api.kubectl("get", "services", "-A", "-o", "json")
    server = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
        for o in json.loads(r.stdout)["items"]
    }
    for handle in (gw, member):
        copy = handle.proxy.shared.reflectors[SERVICES].cache.objects
        wait(lambda copy=copy: {k: str(o.rv) for k, o in copy.items()} == server,
             what="the copy equal to the API server")  # fmt: skip


def test_the_feed_serves_only_the_other_nodes_of_its_pool(pool, tmp_path):
    api, _, proxy, port = pool
    gw = proxy("a-1")
    wait(lambda: synced(gw), what="the gateway's copies in sync")
    path = ENDPOINTSLICES.collection_path()
    pair = api.node_client_pair
    status, body = feed_get(api, port, "a-1", path, cert=pair("a-3"))
    assert status == 200 and json.loads(body)["kind"] == "EndpointSliceList"
    assert feed_get(api, port, "a-1", "/readyz", cert=pair("a-3")) == (200, b"in sync")
    # A node of another pool, the gateway itself: refused by name.
    status, body = feed_get(api, port, "a-1", path, cert=pair("b-1"))
    assert status == 403 and b"not a member of pool edge-a" in body
    status, body = feed_get(api, port, "a-1", path, cert=pair("a-1"))
    assert status == 403
    # Only the shared resources, in JSON.
    status, body = feed_get(api, port, "a-1", "/api/v1/secrets", cert=pair("a-3"))
    assert status == 400 and b"only JSON lists and watches" in body
    # No certificate, or one from another CA: no TLS session at all.
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        feed_get(api, port, "a-1", path, cert=None)
    other = make_pki(tmp_path / "other", ["127.0.0.1"], clients=node_clients(["a-3"]))
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        feed_get(api, port, "a-1", path, cert=other.extra_pair(node_client_name("a-3")))
    # A member's feed is not ready: it is not the gateway.
    member = proxy("a-2")
    wait(lambda: synced(member), what="a-2 in sync")
    status, body = feed_get(api, port, "a-2", "/readyz", cert=pair("a-3"))
    assert status == 503 and b"not the pool's gateway (the gateway is a-1)" in body


def test_a_member_leaves_a_dead_feed_for_the_cloud(pool):
    api, _, proxy, _ = pool
    with proxy.running("a-1") as gw:
        wait(lambda: synced(gw), what="the gateway's copies in sync")
        member = proxy("a-2")
        wait(lambda: sources(member) == {"a-1"} and synced(member), what="a-2 reading a-1's feed")
    # The gateway's proxy is gone (its agent has not noticed yet): the member's copies go on
    # from the API server at once.
    wait(lambda: sources(member) == {None} and synced(member), what="a-2 on the cloud")
    _service(api, "after-the-gateway")
    copy = member.proxy.shared.reflectors[SERVICES].cache.objects
    wait(lambda: ("default", "after-the-gateway") in copy, what="the change reaching a-2")


def test_a_feed_without_its_serving_pair_is_off_and_the_proxy_serves_on(pool, tmp_path):
    api, roles, _, port = pool
    missing = (tmp_path / "nope.crt", tmp_path / "nope.key")
    with run_proxy(
        api.url,
        api.ca_cert,
        tmp_path / "cache-alone",
        tls=(api.pki.server_cert, api.pki.server_key),
        node=api.node_client_pair("a-1"),
        agent_role=roles.url("a-1"),
        pool_listen=ADDRESS["a-1"],
        pool_port=port,
        pool_pair=missing,
    ) as gw:
        wait(lambda: synced(gw), what="the copies in sync, from the API server")
        assert gw.metrics()["raven_cacheproxy_pool_feed_serving"] == 0
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            feed_get(api, port, "a-1", "/readyz", cert=api.node_client_pair("a-3"))
