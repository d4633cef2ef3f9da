"""Connection settings and the one HTTP client Raven uses to talk to kube-apiserver.

:func:`load_config` reads a kubeconfig file (explicit path, ``$KUBECONFIG`` or ``~/.kube/config``)
or the in-cluster service account. :class:`KubeClient` speaks the REST API over aiohttp with a
connect and a read timeout on every call, returns plain dicts (the JSON shape of objects), and maps
every failure into the tree in :mod:`raven.kube.errors`.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from raven.kube.errors import (
    Conflict,
    Expired,
    KubeError,
    NotFound,
    PermanentError,
    TransientError,
)
from raven.kube.resources import Resource

JSON = dict[str, Any]

IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Bound service-account tokens are rotated by the kubelet; re-read the file this often.
TOKEN_REREAD_SECONDS = 60.0


@dataclass(frozen=True)
class Timeouts:
    """Client-side limits, in seconds, applied to every request.

    ``connect`` bounds TCP+TLS set-up; ``read`` bounds the wait for each chunk of a normal
    response. A watch waits up to its own ``timeoutSeconds`` plus ``read`` between chunks, since
    a quiet watch legitimately sends nothing for a while.
    """

    connect: float = 5.0
    read: float = 15.0


@dataclass(frozen=True)
class ClientConfig:
    """Where the API server is and how to authenticate. Build it with :func:`load_config`."""

    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    insecure_skip_tls_verify: bool = False
    token: str | None = None
    token_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)

    @property
    def has_credentials(self) -> bool:
        return any(
            v is not None
            for v in (
                self.token,
                self.token_file,
                self.cert_file,
                self.key_file,
                self.cert_data,
                self.key_data,
            )
        )

    def check_transport(self) -> None:
        """Refuse credentials over plain HTTP: anyone on the path could read a bearer token
        (and a client key has no business near an unencrypted connection either)."""
        if self.has_credentials and not self.server.startswith("https://"):
            raise PermanentError(
                f"refusing to send credentials to {self.server}: the server URL is not https:// "
                "(a bearer token or client key would cross the network unencrypted)"
            )

    def ssl_context(self) -> ssl.SSLContext | bool:
        """The TLS settings; raises :class:`PermanentError` for unreadable or bad CA/certs."""
        try:
            return self._ssl_context()
        except (OSError, ssl.SSLError, ValueError) as e:
            raise PermanentError(f"TLS settings for {self.server}: {e}") from e

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https://"):
            return False
        ctx = ssl.create_default_context()
        if self.insecure_skip_tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_data is not None:
            ctx.load_verify_locations(cadata=self.ca_data.decode())
        elif self.ca_file is not None:
            ctx.load_verify_locations(cafile=self.ca_file)
        if self.cert_data is not None and self.key_data is not None:
            # ssl can only load a client key from a file; keep it private and short-lived.
            with tempfile.TemporaryDirectory() as tmp:
                cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
                cert.write_bytes(self.cert_data)
                fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(self.key_data)
                ctx.load_cert_chain(str(cert), str(key))
        elif self.cert_file is not None and self.key_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as e:
        raise PermanentError(f"kubeconfig: {what} is not valid base64") from e


def _named(items: Any, name: str, what: str, path: Path) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            body = item.get(what)
            if isinstance(body, dict):
                return body
    raise PermanentError(f"kubeconfig {path}: no {what} named {name!r}")


def _from_kubeconfig(path: Path, context: str | None, timeouts: Timeouts) -> ClientConfig:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise PermanentError(f"kubeconfig {path}: cannot read: {e}") from e
    if not isinstance(doc, dict):
        raise PermanentError(f"kubeconfig {path}: not a mapping")
    ctx_name = context or doc.get("current-context")
    if not ctx_name:
        raise PermanentError(f"kubeconfig {path}: no current-context and no context given")
    ctx = _named(doc.get("contexts"), ctx_name, "context", path)
    cluster = _named(doc.get("clusters"), ctx.get("cluster", ""), "cluster", path)
    user = _named(doc.get("users"), ctx.get("user", ""), "user", path) if ctx.get("user") else {}
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise PermanentError(f"kubeconfig {path}: cluster.server {server!r} is not an http(s) URL")
    if "exec" in user or "auth-provider" in user:
        raise PermanentError(f"kubeconfig {path}: user.exec/auth-provider is not supported")

    def rel(p: str | None) -> str | None:
        # Relative paths in a kubeconfig are relative to the file itself.
        return None if p is None else str((path.parent / p).resolve())

    return ClientConfig(
        server=server.rstrip("/"),
        ca_file=rel(cluster.get("certificate-authority")),
        ca_data=_b64(cluster["certificate-authority-data"], "certificate-authority-data")
        if cluster.get("certificate-authority-data")
        else None,
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=user.get("token"),
        token_file=rel(user.get("tokenFile")),
        cert_file=rel(user.get("client-certificate")),
        key_file=rel(user.get("client-key")),
        cert_data=_b64(user["client-certificate-data"], "client-certificate-data")
        if user.get("client-certificate-data")
        else None,
        key_data=_b64(user["client-key-data"], "client-key-data")
        if user.get("client-key-data")
        else None,
        timeouts=timeouts,
    )


def _in_cluster(timeouts: Timeouts) -> ClientConfig:
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    if not host or not port:
        raise PermanentError("in-cluster config: KUBERNETES_SERVICE_HOST/PORT not set")
    token_file = IN_CLUSTER_DIR / "token"
    if not token_file.exists():
        raise PermanentError(f"in-cluster config: {token_file} missing")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return ClientConfig(
        server=f"https://{host}:{port}",
        ca_file=str(IN_CLUSTER_DIR / "ca.crt"),
        token_file=str(token_file),
        timeouts=timeouts,
    )


def load_config(
    kubeconfig: str | Path | None = None,
    *,
    context: str | None = None,
    timeouts: Timeouts | None = None,
) -> ClientConfig:
    """Settings from ``kubeconfig``, else ``$KUBECONFIG``, else in-cluster, else ~/.kube/config.

    Raises :class:`PermanentError` naming what is missing or malformed, or when credentials
    would go to a plain ``http://`` server.
    """
    config = _load_config(kubeconfig, context, timeouts or Timeouts())
    config.check_transport()
    return config


def _load_config(
    kubeconfig: str | Path | None, context: str | None, timeouts: Timeouts
) -> ClientConfig:
    if kubeconfig is not None:
        return _from_kubeconfig(Path(kubeconfig), context, timeouts)
    env = os.environ.get("KUBECONFIG")
    if env:
        # Only the first file of a KUBECONFIG list; merging is not supported.
        return _from_kubeconfig(Path(env.split(os.pathsep)[0]), context, timeouts)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return _in_cluster(timeouts)
    home = Path.home() / ".kube" / "config"
    if home.exists():
        return _from_kubeconfig(home, context, timeouts)
    raise PermanentError("no kubeconfig given, KUBECONFIG unset, not in a cluster")


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        return max(0.1, float(headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def error_for_status(status: int, body: Any, headers: Mapping[str, str], what: str) -> KubeError:
    """Map an HTTP error answer (with its Status body if any) to the typed tree."""
    message, reason = "", ""
    if isinstance(body, dict):
        message, reason = str(body.get("message", "")), str(body.get("reason", ""))
    text = f"{what}: HTTP {status} {reason}: {message}".rstrip(": ")
    if status == 404:
        return NotFound(text, status=status, reason=reason)
    if status == 409:
        return Conflict(text, status=status, reason=reason)
    if status == 410:
        return Expired(text, status=status, reason=reason)
    if status == 429 or status >= 500:
        return TransientError(text, delay=_retry_after(headers), status=status, reason=reason)
    return PermanentError(text, status=status, reason=reason)


class KubeClient:
    """An async REST client for one API server. Use ``async with`` or call :meth:`close`.

    Every method raises only :class:`~raven.kube.errors.KubeError` subclasses.
    """

    def __init__(self, config: ClientConfig, *, user_agent: str = "raven") -> None:
        config.check_transport()
        self.config = config
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._ssl = config.ssl_context()
        self._token: str | None = config.token
        self._token_read_at = -1e9

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, content_type: str | None) -> dict[str, str]:
        if self.config.token_file and time.monotonic() - self._token_read_at > TOKEN_REREAD_SECONDS:
            try:
                self._token = Path(self.config.token_file).read_text().strip()
                self._token_read_at = time.monotonic()
            except OSError as e:
                raise PermanentError(f"cannot read token file {self.config.token_file}") from e
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if self._token and self.config.server.startswith("https://"):
            headers["Authorization"] = f"Bearer {self._token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No pooling surprises across restarts of the server: a dead keep-alive socket is
            # simply a transient error and the next call connects anew.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0)
            )
        return self._session

    def _timeout(self, read: float | None) -> aiohttp.ClientTimeout:
        t = self.config.timeouts
        return aiohttp.ClientTimeout(
            total=None, sock_connect=t.connect, connect=t.connect, sock_read=read or t.read
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        read_timeout: float | None = None,
    ) -> JSON:
        """One REST call; returns the decoded JSON body."""
        what = f"{method} {path}"
        data = None if body is None else json.dumps(body)
        try:
            async with self._get_session().request(
                method,
                self.config.server + path,
                params=params,
                data=data,
                headers=self._headers(content_type if body is not None else None),
                timeout=self._timeout(read_timeout),
            ) as resp:
                raw = await resp.read()
                try:
                    decoded = json.loads(raw) if raw else {}
                except ValueError:
                    decoded = None
                if resp.status >= 400:
                    raise error_for_status(resp.status, decoded, resp.headers, what)
                if not isinstance(decoded, dict):
                    raise TransientError(f"{what}: answer is not a JSON object", delay=1.0)
                return decoded
        except KubeError:
            raise
        except aiohttp.ClientConnectorCertificateError as e:
            raise PermanentError(f"{what}: TLS verification failed: {e}") from e
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise TransientError(f"{what}: {type(e).__name__}: {e}", delay=1.0) from e

    # Typed shortcuts -------------------------------------------------------------------------

    async def get(self, resource: Resource, name: str, **kw: Any) -> JSON:
        return await self.request("GET", resource.object_path(name), **kw)

    async def list(
        self,
        resource: Resource,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> JSON:
        params = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        return await self.request("GET", resource.collection_path(), params=params or None)

    async def create(self, resource: Resource, obj: JSON, **kw: Any) -> JSON:
        return await self.request("POST", resource.collection_path(), body=obj, **kw)

    async def replace(self, resource: Resource, obj: JSON, **kw: Any) -> JSON:
        """PUT ``obj``; with metadata.resourceVersion set, a stale copy gets :class:`Conflict`."""
        name = obj.get("metadata", {}).get("name", "")
        return await self.request("PUT", resource.object_path(name), body=obj, **kw)

    async def merge_patch(
        self, resource: Resource, name: str, patch: JSON, *, subresource: str | None = None
    ) -> JSON:
        return await self.request(
            "PATCH",
            resource.object_path(name, subresource),
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def delete(self, resource: Resource, name: str) -> JSON:
        return await self.request("DELETE", resource.object_path(name))

    async def watch(
        self,
        resource: Resource,
        *,
        resource_version: str,
        timeout_seconds: int = 300,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> AsyncIterator[JSON]:
        """Yield watch events ``{"type": ..., "object": {...}}`` until the server ends the watch.

        Bookmarks are requested. An ERROR event with code 410 raises :class:`Expired`; a broken
        connection raises :class:`TransientError`.
        """
        what = f"WATCH {resource.collection_path()}"
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        try:
            async with self._get_session().get(
                self.config.server + resource.collection_path(),
                params=params,
                headers=self._headers(None),
                timeout=self._timeout(timeout_seconds + self.config.timeouts.read),
            ) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    try:
                        decoded = json.loads(raw)
                    except ValueError:
                        decoded = None
                    raise error_for_status(resp.status, decoded, resp.headers, what)
                buf = b""
                # Split lines ourselves: one object (a Node with many images) can exceed
                # aiohttp's readline limit.
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            yield self._event(line, what)
                if buf.strip():
                    yield self._event(buf, what)
        except KubeError:
            raise
        except aiohttp.ClientConnectorCertificateError as e:
            raise PermanentError(f"{what}: TLS verification failed: {e}") from e
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise TransientError(f"{what}: {type(e).__name__}: {e}", delay=1.0) from e

    @staticmethod
    def _event(line: bytes, what: str) -> JSON:
        try:
            event = json.loads(line)
        except ValueError as e:
            raise TransientError(f"{what}: malformed watch line", delay=1.0) from e
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise TransientError(f"{what}: watch event without object", delay=1.0)
        if event.get("type") == "ERROR":
            status = event["object"]
            code = int(status.get("code") or 500)
            raise error_for_status(code, status, {}, what)
        return event
