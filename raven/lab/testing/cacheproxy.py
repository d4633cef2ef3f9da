"""Run the cache proxy in a background thread for tests: ``with run_proxy(api, dir) as p: ...``.

A thread of its own lets synchronous clients (the ``kubernetes`` client, kubectl) talk to it from
the test without blocking the proxy's event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s_client

from raven.cacheproxy.cache import CacheConfig
from raven.cacheproxy.health import HealthConfig
from raven.cacheproxy.pool import DEFAULT_FEED_PORT
from raven.cacheproxy.server import CacheProxy, ProxyConfig
from raven.cacheproxy.sharing import SharedResource
from raven.lab.apiserver.pki import Pki
from raven.lab.testing.apiserver import ApiServerHandle

T = TypeVar("T")

# Fast thresholds so tests see transitions within a fraction of a second.
FAST_HEALTH = HealthConfig(interval=0.1, timeout=0.5, fail_threshold=1, success_threshold=2)


def proxy_argv(api: ApiServerHandle, cache_dir: Path, *extra: str) -> list[str]:
    """Arguments (after the program) for a ``raven-cache-proxy`` process in front of ``api``:
    any free port, TLS with the API server's own pair, a 0.1 s cloud probe."""
    return proxy_argv_for(api.url, api.pki, cache_dir, *extra)


def proxy_argv_for(url: str, pki: Pki, cache_dir: Path, *extra: str) -> list[str]:
    """:func:`proxy_argv` for an API server at ``url`` whose certificates are ``pki``."""
    return [
        "--upstream", url,
        "--ca-cert", str(pki.ca_cert),
        "--cache-dir", str(cache_dir),
        "--port", "0",
        "--tls-cert", str(pki.server_cert),
        "--tls-key", str(pki.server_key),
        "--probe-interval", "0.1",
        *extra,
    ]  # fmt: skip


class ProxyHandle:
    def __init__(
        self, proxy: CacheProxy, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ):
        self.proxy, self.loop, self.thread = proxy, loop, thread

    @property
    def url(self) -> str:
        scheme = "https" if self.proxy.config.tls_cert else "http"
        return f"{scheme}://127.0.0.1:{self.proxy.port}"

    def call(self, coro_fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 15.0) -> T:
        """Run ``coro_fn()`` on the proxy's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro_fn(), self.loop).result(timeout)

    def metrics(self) -> dict[str, float]:
        """The proxy's own metrics, by name (labels included)."""
        out: dict[str, float] = {}
        ctx = self.proxy.ssl_ctx if self.proxy.config.tls_cert else None
        with urllib.request.urlopen(self.url + "/metrics", timeout=10, context=ctx) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def wait_cloud(self, healthy: bool, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.proxy.health.healthy != healthy:
            if time.monotonic() > deadline:
                raise TimeoutError(f"cloud did not become healthy={healthy} in {timeout} s")
            time.sleep(0.02)


@contextmanager
def run_proxy(
    upstream: str,
    ca_cert: Path,
    cache_dir: Path,
    health: HealthConfig = FAST_HEALTH,
    tls: tuple[Path, Path] | None = None,
    cache: CacheConfig | None = None,
    request_timeout: float | None = None,
    node: tuple[Path, Path] | None = None,
    client_ca: Path | None = None,
    path_file: Path | None = None,
    path_poll: float = 0.05,
    share: tuple[SharedResource, ...] | None = None,
    share_history: int | None = None,
    review_ttl: float | None = None,
    agent_role: str | None = None,
    pool_listen: str | None = None,
    pool_port: int | None = None,
    pool_pair: tuple[Path, Path] | None = None,
) -> Iterator[ProxyHandle]:
    """``tls`` = (cert, key) for 127.0.0.1; the API server's own pair from run_apiserver fits.
    ``node`` = the node's client (cert, key) to present for its clients (needs ``tls``);
    ``path_file`` = the node's cloud path file, looked at every ``path_poll`` seconds;
    ``share`` = the shared resources (default: the proxy's), ``()`` for none; ``agent_role``,
    ``pool_listen``, ``pool_port`` and ``pool_pair`` (cert, key) = pool-level reuse."""
    cert, key = tls if tls else (None, None)
    node_cert, node_key = node if node else (None, None)
    pool_cert, pool_key = pool_pair if pool_pair else (None, None)
    config = ProxyConfig(
        upstream,
        ca_cert,
        cache_dir,
        port=0,
        agent_role=agent_role,
        pool_listen=pool_listen,
        pool_cert=pool_cert,
        pool_key=pool_key,
        pool_port=pool_port if pool_port is not None else DEFAULT_FEED_PORT,
        health=health,
        tls_cert=cert,
        tls_key=key,
        node_cert=node_cert,
        node_key=node_key,
        client_ca=client_ca,
        path_file=path_file,
        path_poll=path_poll,
    )
    if cache is not None:
        config.cache = cache
    if request_timeout is not None:
        config.request_timeout = request_timeout
    if share is not None:
        config.share = share
    if share_history is not None:
        config.share_history = share_history
    if review_ttl is not None:
        config.review_ttl = review_ttl
    proxy = CacheProxy(config)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(proxy.start())
        except BaseException as e:  # reported to the starting thread
            errors.append(e)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True, name="raven-cacheproxy")
    thread.start()
    started.wait(15)
    if errors:
        raise RuntimeError(f"the cache proxy did not start: {errors[0]}") from errors[0]
    try:
        yield ProxyHandle(proxy, loop, thread)
    finally:
        asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        loop.close()


def proxy_client(
    handle: ProxyHandle,
    token: str | None,
    user_agent: str = "raven-test",
    ca_cert: Path | None = None,
) -> k8s_client.ApiClient:
    config = k8s_client.Configuration()
    config.host = handle.url
    if ca_cert is not None:
        config.ssl_ca_cert = str(ca_cert)
    if token is not None:
        config.api_key = {"authorization": token}
        config.api_key_prefix = {"authorization": "Bearer"}
    c = k8s_client.ApiClient(config)
    c.user_agent = user_agent
    return c
