"""Run the API server in-process for tests: ``with run_apiserver(tmp_path) as api: ...``.

The server runs on loopback in a background thread with its own event loop. The handle gives the
URL, token, CA certificate and a kubeconfig (for kubectl and the ``kubernetes`` client), and can
``restart()`` the server on the same port and state directory to test persistence.

The admin kubeconfig may do anything (group ``system:masters``); to act as a ServiceAccount,
``create_token()`` or ``service_account_kubeconfig()``; to act as a node (a kubelet's client
certificate, ``system:node:<name>``), start with ``nodes=[...]`` and use ``node_kubeconfig()``.
Every request is in the audit log (``audit_events()``), and ``rule_usage(role, user)`` compares
what a user did with what a Role or ClusterRole grants.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client

from raven.lab.apiserver.api import DEFAULT_EVENT_TTL
from raven.lab.apiserver.audit import RuleUsage, read_audit_log, rule_usage
from raven.lab.apiserver.kubeconfig import write_kubeconfig
from raven.lab.apiserver.lifecycle import DEFAULT_GRACE_PERIOD, DEFAULT_MONITOR_PERIOD
from raven.lab.apiserver.pki import Pki, make_pki, node_client_name, node_clients
from raven.lab.apiserver.server import ApiServer, ServerConfig
from raven.lab.apiserver.serviceaccounts import request_token, write_service_account_kubeconfig
from raven.lab.apiserver.watch import MAX_QUEUED_BYTES, MAX_QUEUED_EVENTS


@dataclass
class ApiServerHandle:
    state_dir: Path
    host: str
    port: int
    history: int
    pki: Pki
    kubeconfig: Path
    bookmark_interval: float = 5.0
    event_ttl: float = DEFAULT_EVENT_TTL
    watch_queue_events: int = MAX_QUEUED_EVENTS
    watch_queue_bytes: int = MAX_QUEUED_BYTES
    audit_log: Path | None = None
    node_monitor_period: float = DEFAULT_MONITOR_PERIOD
    node_monitor_grace_period: float = DEFAULT_GRACE_PERIOD
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _server: ApiServer | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def token(self) -> str:
        return self.pki.token

    @property
    def ca_cert(self) -> Path:
        return self.pki.ca_cert

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def open_watches(self) -> int:
        """Watch streams the server is serving right now."""
        return self._server.open_watches if self._server is not None else 0

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the API server is already running")
        config = ServerConfig(
            state_dir=self.state_dir,
            host=self.host,
            port=self.port,
            cert=self.pki.server_cert,
            key=self.pki.server_key,
            token=self.token,
            history=self.history,
            bookmark_interval=self.bookmark_interval,
            event_ttl=self.event_ttl,
            watch_queue_events=self.watch_queue_events,
            watch_queue_bytes=self.watch_queue_bytes,
            audit_log=self.audit_log,
            client_ca=self.pki.ca_cert,
            node_monitor_period=self.node_monitor_period,
            node_monitor_grace_period=self.node_monitor_grace_period,
        )
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []
        server_box: list[ApiServer] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                server = ApiServer(config)
                loop.run_until_complete(server.start())
                server_box.append(server)
            except BaseException as e:  # reported to the starting thread below
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        thread = threading.Thread(target=run, name=f"raven-apiserver-{self.port}", daemon=True)
        thread.start()
        ready.wait(30)
        if failure:
            thread.join(5)
            raise RuntimeError(f"the API server did not start: {failure[0]}") from failure[0]
        if not server_box:
            raise RuntimeError("the API server did not start within 30 s")
        self._loop, self._thread, self._server = loop, thread, server_box[0]
        self.port = server_box[0].port
        write_kubeconfig(self.kubeconfig, self.url, self.ca_cert, self.token)

    # -- acting as a ServiceAccount, and what everyone did ------------------------------------

    def create_token(
        self, namespace: str, name: str, *, seconds: int = 3600, audiences: Sequence[str] = ()
    ) -> str:
        """A token for ServiceAccount ``namespace/name`` (``kubectl create token``)."""
        return request_token(
            self.url,
            self.ca_cert,
            self.token,
            namespace,
            name,
            seconds=seconds,
            audiences=audiences,
        )

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path | None = None, *, seconds: int = 3600
    ) -> Path:
        """A kubeconfig acting as ServiceAccount ``namespace/name`` (default path: beside the
        admin kubeconfig, ``<namespace>-<name>.kubeconfig``)."""
        token = self.create_token(namespace, name, seconds=seconds)
        path = path or self.kubeconfig.with_name(f"{namespace}-{name}.kubeconfig")
        return write_service_account_kubeconfig(
            path, self.url, self.ca_cert, token, namespace=namespace, name=name
        )

    def node_client_pair(self, node: str) -> tuple[Path, Path]:
        """(certificate, key) of node ``node``'s client certificate (``run_apiserver(nodes=)``)."""
        cert, key = self.pki.extra_pair(node_client_name(node))
        if not cert.exists() or not key.exists():
            raise KeyError(f"no client certificate for node {node!r}: pass it in nodes=")
        return cert, key

    def node_kubeconfig(self, node: str, path: Path | None = None) -> Path:
        """A kubeconfig acting as node ``node`` with its client certificate (default path:
        beside the admin kubeconfig, ``node-<node>.kubeconfig``)."""
        cert, key = self.node_client_pair(node)
        path = path or self.kubeconfig.with_name(f"{node_client_name(node)}.kubeconfig")
        return write_kubeconfig(
            path, self.url, self.ca_cert, client_cert=cert, client_key=key, name=f"node-{node}"
        )

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this server (the admin's kubeconfig unless another is given)."""
        cache = self.state_dir / "kubectl-cache"
        return subprocess.run(
            [
                "kubectl",
                "--kubeconfig",
                str(kubeconfig or self.kubeconfig),
                "--cache-dir",
                str(cache),
                *args,
            ],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
        )

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audit event so far (``audit.k8s.io/v1`` Events, oldest first)."""
        if self.audit_log is None or not self.audit_log.exists():
            return []
        return read_audit_log(self.audit_log)

    def rule_usage(self, role: Mapping[str, Any], user: str) -> RuleUsage:
        """Which of ``role``'s permissions ``user`` never used, and which of its requests were
        refused, per the audit log so far."""
        return rule_usage(self.audit_events(), role, user=user)

    def stop(self) -> None:
        if self._server is None or self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop)
        try:
            future.result(15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
            self._server = self._loop = self._thread = None

    def restart(self) -> None:
        """Stop and start again on the same port and state directory."""
        self.stop()
        self.start()


@contextmanager
def run_apiserver(
    state_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    history: int = 1000,
    bookmark_interval: float = 5.0,
    event_ttl: float = DEFAULT_EVENT_TTL,
    watch_queue_events: int = MAX_QUEUED_EVENTS,
    watch_queue_bytes: int = MAX_QUEUED_BYTES,
    audit_log: Path | None | bool = True,
    nodes: Sequence[str] = (),
    node_monitor_period: float = DEFAULT_MONITOR_PERIOD,
    node_monitor_grace_period: float = DEFAULT_GRACE_PERIOD,
    serving: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[ApiServerHandle]:
    """Start a server on ``host`` (loopback) storing its state and PKI in ``state_dir``.

    The keywords are :class:`raven.lab.apiserver.server.ServerConfig`'s (the bounds on slow
    watchers, the Events' time to live, the node-lifecycle controller's periods); ``audit_log``
    is a path, True (``state_dir/audit.log``) or False (none). ``nodes`` get client
    certificates from the lab CA (``system:node:<name>`` in ``system:nodes``):
    :meth:`ApiServerHandle.node_kubeconfig`. ``serving`` names more serving certificates from
    the same CA and their hosts (``pki.extra_pair(name)``), e.g. a node's kubelet serving pair.
    """
    state_dir = Path(state_dir)
    pki_dir = state_dir / "pki"
    if (pki_dir / "ca.crt").exists() and (pki_dir / "token").exists():
        pki = Pki(
            pki_dir / "ca.crt", pki_dir / "server.crt", pki_dir / "server.key", pki_dir / "token"
        )
    else:
        pki = make_pki(pki_dir, [host], clients=node_clients(nodes), extra=serving)
    handle = ApiServerHandle(
        state_dir=state_dir,
        host=host,
        port=port,
        history=history,
        pki=pki,
        kubeconfig=state_dir / "kubeconfig",
        bookmark_interval=bookmark_interval,
        event_ttl=event_ttl,
        watch_queue_events=watch_queue_events,
        watch_queue_bytes=watch_queue_bytes,
        audit_log=state_dir / "audit.log" if audit_log is True else audit_log or None,
        node_monitor_period=node_monitor_period,
        node_monitor_grace_period=node_monitor_grace_period,
    )
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


def api_client(handle: ApiServerHandle) -> k8s_client.ApiClient:
    """A ``kubernetes`` client configured for the handle's server (token + lab CA)."""
    config = k8s_client.Configuration()
    config.host = handle.url
    config.ssl_ca_cert = str(handle.ca_cert)
    config.api_key = {"authorization": handle.token}
    config.api_key_prefix = {"authorization": "Bearer"}
    return k8s_client.ApiClient(config)
