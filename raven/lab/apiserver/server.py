"""The HTTPS front of the API server: authentication, authorization, routing, watch, audit.

Paths follow kube-apiserver: ``/api/v1/...`` for the core group, ``/apis/<group>/<version>/...``
for the others, ``namespaces/<ns>/<plural>`` for namespaced kinds, ``/<name>/status`` for the
status subresource, ``serviceaccounts/<name>/token`` for TokenRequest. All verbs are handled by
:class:`raven.lab.apiserver.api.Api`; this module translates HTTP to those calls and errors to
``Status`` bodies.

Every request but a health check (``/healthz``, ``/readyz``, ``/livez``, open to anyone, as the
lab's readiness probe needs) goes through, in order:

1. authentication (:mod:`raven.lab.apiserver.authn`): with ``client_ca`` set (``--client-ca-file``)
   the listener asks for a client certificate (optional) and verifies it against that CA during
   the handshake (one that does not verify ends the handshake); a verified certificate is the user
   in its CN with its O values as groups (a node: ``system:node:<name>`` in ``system:nodes``).
   Otherwise the admin token is ``raven-lab-admin`` in ``system:masters``; a service-account
   token from the TokenRequest API is ``system:serviceaccount:<ns>:<name>``; anything else, or
   nothing, is 401;
2. impersonation (``Impersonate-User``/``-Group``/``-Uid``/``-Extra-*``, ``kubectl --as``), if
   the caller may ``impersonate`` those users, service accounts and groups;
3. authorization: ``system:masters`` may do anything; a node gets what kube-apiserver's Node
   authorizer gives a kubelet (:mod:`raven.lab.apiserver.nodeauthz`); everyone (a node too) gets
   what RBAC from the stored Roles, ClusterRoles and bindings grants
   (:mod:`raven.lab.apiserver.rbac`) and 403 with kube-apiserver's message for the rest. The
   default ClusterRoles let any authenticated user read discovery, /version, /openapi and review
   its own access. Then admission: NodeRestriction keeps a node's writes to its own Node and its
   own ``kube-node-lease`` Lease (403 otherwise; on create, the name in the body counts);
4. the audit log (:mod:`raven.lab.apiserver.audit`), when configured: one line per request.

Bounds (kube-apiserver's defaults unless said otherwise; every one is a test):

- request bodies: 3 MiB, YAML counted with its aliases expanded; beyond, 413
  ``Request entity too large: limit is 3145728``;
- stored objects: 1.5 MiB as JSON (etcd's default request limit); beyond, 422 with reason
  ``RequestEntityTooLarge`` (kube-apiserver passes etcd's refusal on as a 500 that clients would
  retry; here it is final);
- JSON patches: 10000 operations (413) and 3 MiB added by ``copy`` operations (422);
- nesting: 200 levels of JSON/YAML (400, one warning line, no traceback); Go's decoders allow
  10000, Python's stack would not;
- a watch holds at most ``watch_queue_events`` events (1000, kube-apiserver's largest watch
  buffer) and ``watch_queue_bytes`` (16 MiB) for a client that does not read; past either, the
  watch is closed, as kube-apiserver's cacher closes a watcher whose buffer stays full (a
  client blocked mid-write gets a TCP reset) and the client resumes from its last version;
- Events live ``event_ttl`` (1 h, ``--event-ttl``) after their last write, then are deleted;
- the event history for resuming watches: ``history`` writes (1000).

See :mod:`raven.lab.apiserver.limits` and :mod:`raven.lab.apiserver.watch` for the details.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from aiohttp import web

from raven.lab.apiserver import discovery, errors, limits, openapi, protobuf, reviews
from raven.lab.apiserver.access import Access
from raven.lab.apiserver.api import DEFAULT_EVENT_TTL, Api
from raven.lab.apiserver.audit import AuditEntry, AuditLog
from raven.lab.apiserver.authn import TokenIssuer, UserInfo
from raven.lab.apiserver.metrics import METRICS_PATH, ApiMetrics
from raven.lab.apiserver.rbac import forbidden
from raven.lab.apiserver.requestinfo import RequestInfo, request_info
from raven.lab.apiserver.resources import ResourceType
from raven.lab.apiserver.store import Store
from raven.lab.apiserver.table import to_table
from raven.lab.apiserver.watch import MAX_QUEUED_BYTES, MAX_QUEUED_EVENTS, WatchStream

log = logging.getLogger("raven.lab.apiserver")

HEALTH_PATHS = ("/healthz", "/readyz", "/livez")
# kube-apiserver ends watches after a random 30-60 minutes when the client gives no timeout.
DEFAULT_WATCH_TIMEOUT = 1800.0
DB_NAME = "apiserver.sqlite"
SA_KEY_NAME = "sa-signing.key"


@dataclass(frozen=True)
class ServerConfig:
    state_dir: Path
    host: str
    port: int
    cert: Path
    key: Path
    token: str
    history: int = 1000
    # Seconds between BOOKMARK events on watches that allow them (the first comes after ~1 s).
    bookmark_interval: float = 5.0
    # What one watch may hold for a client that does not read; past it the watch is closed.
    watch_queue_events: int = MAX_QUEUED_EVENTS
    watch_queue_bytes: int = MAX_QUEUED_BYTES
    # Seconds an Event lives after its last write (kube-apiserver's --event-ttl, 1h).
    event_ttl: float = DEFAULT_EVENT_TTL
    # Where to append the audit log (None: no audit log).
    audit_log: Path | None = None
    # The key service-account tokens are signed with (default: STATE/sa-signing.key, made once).
    service_account_key: Path | None = None
    # CA whose client certificates authenticate their CN/O (kube-apiserver's --client-ca-file);
    # None: no client certificates are asked for.
    client_ca: Path | None = None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def _error(e: errors.ApiError) -> web.Response:
    return _json(e.status(), e.code)


def _table_version(accept: str) -> str | None:
    """The meta.k8s.io version of Table the client accepts first, if any."""
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        kv = dict(p.split("=", 1) for p in params if "=" in p)
        if (
            media in ("application/json", "*/*")
            and kv.get("as") == "Table"
            and kv.get("g") == "meta.k8s.io"
        ):
            return kv.get("v", "v1")
        if media == "application/json" and "as" not in kv:
            return None
    return None


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The request body; 413 as soon as it is known to exceed ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise errors.request_too_large(f"limit is {limit}")
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise errors.request_too_large(f"limit is {limit}")
    return bytes(data)


def _reset(transport: asyncio.BaseTransport) -> None:
    """Close a connection at once with a TCP reset, dropping data not yet sent."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cast(asyncio.Transport, transport).abort()


def _peer_certificate(request: web.Request) -> bytes | None:
    """The client's certificate (DER), which the handshake verified, if it sent one."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    return cast(ssl.SSLObject, ssl_object).getpeercert(binary_form=True)


def _name_in(body: Any) -> str:
    """``metadata.name`` of a request body, or "" (a body without one, or not an object)."""
    metadata = body.get("metadata") if isinstance(body, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else ""


def _truthy(value: str | None) -> bool:
    return value in ("true", "1", "True")


def _int_param(query: Any, name: str) -> int | None:
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.bad_request(f"invalid {name} {value!r}: must be an integer") from None


def _strict(request: web.Request) -> bool:
    return request.query.get("fieldValidation") == "Strict"


def _dry_run(request: web.Request) -> bool:
    values = request.query.getall("dryRun", [])
    for value in values:
        if value != "All":
            raise errors.bad_request(f'unsupported dryRun value {value!r}: only "All" is valid')
    return bool(values)


class ApiServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.state_dir / DB_NAME, history=config.history)
        self.api = Api(self.store, event_ttl=config.event_ttl)
        tokens = TokenIssuer(config.service_account_key or config.state_dir / SA_KEY_NAME)
        self.access = Access(self.store, config.token, tokens)
        self.audit = AuditLog(config.audit_log) if config.audit_log is not None else None
        self._streams: set[WatchStream] = set()
        self.metrics = ApiMetrics()
        self._runner: web.AppRunner | None = None
        self._expiry: asyncio.Task[None] | None = None
        self.port = config.port

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        app = web.Application(client_max_size=limits.MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.config.cert), str(self.config.key))
        if self.config.client_ca is not None:
            # Only this CA: nothing from the system's trust store may name a user here.
            ctx.load_verify_locations(cafile=str(self.config.client_ca))
            ctx.verify_mode = ssl.CERT_OPTIONAL
        site = web.TCPSite(
            self._runner,
            self.config.host,
            self.config.port,
            ssl_context=ctx,
            reuse_address=True,
        )
        await site.start()
        # aiohttp exposes the bound sockets only on the site's asyncio server
        server = cast(asyncio.Server, site._server)
        self.port = server.sockets[0].getsockname()[1]
        log.info("listening on https://%s:%d", self.config.host, self.port)
        self._expiry = asyncio.create_task(self._expire_loop(), name="apiserver-expiry")
        return self.port

    async def _expire_loop(self) -> None:
        """Delete expired objects (Events) a few times per TTL, at least every 10 s."""
        interval = min(10.0, max(0.05, self.config.event_ttl / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                gone = self.store.expire()
            except Exception:  # a failed sweep is retried at the next one
                log.exception("expiring objects failed")
                continue
            if gone:
                log.debug("expired %d objects", gone)

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
            self._expiry = None
        for stream in list(self._streams):
            stream.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.store.close()
        if self.audit is not None:
            self.audit.close()

    @property
    def open_watches(self) -> int:
        return len(self._streams)

    # -- request handling -------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        status = 500
        info = request_info(request.method, request.path, request.query)
        entry = AuditEntry.begin(
            info, request.path_qs, request.remote or "", request.headers.get("User-Agent", "")
        )
        try:
            response = await self._serve(request, info, entry)
            status = response.status
            return response
        except errors.ApiError as e:
            status = e.code
            return _error(e)
        except (ConnectionResetError, asyncio.CancelledError):
            status = 499
            raise
        except RecursionError:
            # Whatever the checks on the way in missed: a document too deep to walk is the
            # client's problem, worth one line, not a traceback.
            status = 400
            log.warning("%s %s: refused, nested too deeply", request.method, request.path)
            return _error(errors.too_deep("the request", limits.MAX_DEPTH))
        except Exception:  # a bug here must not take the server down; the client gets a 500
            log.exception("internal error on %s %s", request.method, request.path_qs)
            return _json(errors.ApiError(500, "InternalError", "internal error").status(), 500)
        finally:
            if self.audit is not None:
                self.audit.write(entry, "ResponseComplete", status)
            self.metrics.answered(request.method, request.path, request.query, status)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s %d %.1fms",
                    request.method,
                    request.path_qs,
                    status,
                    (time.monotonic() - started) * 1000,
                )

    async def _serve(
        self, request: web.Request, info: RequestInfo, entry: AuditEntry
    ) -> web.StreamResponse:
        """Authenticate, authorize, then route. Health checks need no credentials."""
        path = request.path.rstrip("/") or "/"
        if path in HEALTH_PATHS or path.split("/")[1:2] in (["healthz"], ["readyz"], ["livez"]):
            return web.Response(text="ok")
        user = entry.user = self.access.authenticate(request.headers, _peer_certificate(request))
        try:
            acting = self.access.impersonate(request.headers, user)
        except errors.ApiError as e:
            if e.code == 403:
                entry.decision, entry.reason = "forbid", e.message
            raise
        if acting is not None:
            user = entry.impersonated = acting
        decision = self.access.authorize(user, info)
        entry.decision = "allow" if decision.allowed else "forbid"
        entry.reason = decision.reason
        if not decision.allowed:
            raise forbidden(user, info, decision.reason)
        if info.verb != "create":
            self.access.admit(user, info, info.name)  # on create, once the body is read
        return await self._route(request, user, entry)

    async def _route(
        self, request: web.Request, user: UserInfo, entry: AuditEntry
    ) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path == METRICS_PATH:
            body, content_type = self.metrics.exposition()
            return web.Response(body=body, headers={"Content-Type": content_type})
        registry = self.api.registry
        if path == "/version":
            return _json(discovery.VERSION_INFO)
        if path == "/api":
            return _json(discovery.api_versions(f"{self.config.host}:{self.port}"))
        if path == "/apis":
            return _json(discovery.group_list(registry))
        if path.startswith("/openapi/"):
            return self._openapi(path)
        segs = path.strip("/").split("/")
        if segs[0] == "api" and len(segs) >= 2:
            group, version, rest = "", segs[1], segs[2:]
        elif segs[0] == "apis" and len(segs) >= 3:
            group, version, rest = segs[1], segs[2], segs[3:]
        elif segs[0] == "apis" and len(segs) == 2:
            doc = discovery.group(registry, segs[1])
            if doc is None:
                raise errors.no_such_resource(path)
            return _json(doc)
        else:
            raise errors.no_such_resource(path)
        if not rest:
            doc = discovery.resource_list(registry, group, version)
            if doc is None:
                raise errors.no_such_resource(path)
            return _json(doc)
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            inner = registry.find(group, version, rest[2])
            if inner is not None and inner.namespaced:
                namespace, rest = rest[1], rest[2:]
        rtype = registry.lookup(group, version, rest[0])
        if len(rest) > 3 or (rtype.namespaced and namespace is None and len(rest) > 1):
            raise errors.no_such_resource(path)
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (
            (sub == "status" and rtype.status_subresource)
            or any(s.name == sub for s in rtype.subresources)
        ):
            raise errors.no_such_resource(path)
        if rtype.virtual:
            return await self._review(request, rtype, user)
        if name is None:
            return await self._collection(request, rtype, namespace, user, entry)
        if sub == "token":
            return await self._token_request(request, rtype, namespace, name)
        return await self._item(request, rtype, namespace, name, sub)

    async def _review(
        self, request: web.Request, rtype: ResourceType, user: UserInfo
    ) -> web.Response:
        if request.method != "POST":
            raise errors.method_not_allowed(
                f"{request.method} is not supported on {rtype.plural}: only create"
            )
        body = await self._body(request)
        if rtype.plural == "selfsubjectaccessreviews":
            return _json(reviews.access_review(body, user, self.access.authorize), 201)
        if rtype.plural == "selfsubjectrulesreviews":
            return _json(reviews.rules_review(body, user, self.access.rbac.get()), 201)
        return _json(reviews.self_review(body, user), 201)

    async def _token_request(
        self, request: web.Request, rtype: ResourceType, namespace: str | None, name: str
    ) -> web.Response:
        if request.method != "POST":
            raise errors.method_not_allowed(
                f"{request.method} is not supported on {rtype.plural}/token: only create"
            )
        body = await self._body(request)
        account = self.api.get(rtype, namespace, name)  # 404 when there is no such account
        return _json(reviews.token_request(body, namespace or "", account, self.access.tokens), 201)

    def _openapi(self, path: str) -> web.Response:
        if path == "/openapi/v3":
            return _json(openapi.root(self.api.registry))
        if path.startswith("/openapi/v3/"):
            doc = openapi.gv_document(self.api.registry, path[len("/openapi/v3/") :])
            if doc is not None:
                return _json(doc)
        raise errors.no_such_resource(path)

    async def _body(self, request: web.Request) -> Any:
        raw = await _read_limited(request, limits.MAX_REQUEST_BYTES)
        if not raw:
            return None
        if "protobuf" in (request.content_type or ""):
            # Only kubectl's imperative generators (create namespace ...) send protobuf.
            try:
                return protobuf.decode(raw)
            except protobuf.ProtobufError as e:
                raise errors.unsupported_media_type(
                    f"the body of the request could not be read as protobuf ({e}) - accepted "
                    "media types include: application/json, application/yaml"
                ) from None
        is_yaml = "yaml" in (request.content_type or "")
        try:
            body = yaml.safe_load(raw) if is_yaml else json.loads(raw)
        except RecursionError:
            raise errors.too_deep("the request body", limits.MAX_DEPTH) from None
        except (ValueError, yaml.YAMLError) as e:
            what = "YAML" if is_yaml else "JSON"
            raise errors.bad_request(f"the request body is not valid {what}: {e}") from None
        limits.check_depth(body, "the request body")
        if is_yaml:
            # Aliases share one value many times; what the request really carries is the
            # expanded document, so that is what the size limit applies to.
            size = limits.encoded_size(body)
            if size > limits.MAX_REQUEST_BYTES:
                raise errors.request_too_large(
                    f"limit is {limits.MAX_REQUEST_BYTES} (the YAML body expands to {size} bytes "
                    "through its aliases)"
                )
            body = json.loads(json.dumps(body))  # no shared values past this point
        return body

    def _render(
        self, request: web.Request, rtype: ResourceType, obj: dict[str, Any], status: int = 200
    ) -> web.Response:
        version = _table_version(request.headers.get("Accept", ""))
        if version is not None and request.method == "GET":
            return _json(
                to_table(
                    rtype,
                    [obj],
                    resource_version=obj["metadata"].get("resourceVersion"),
                    include_object=request.query.get("includeObject", "Metadata"),
                    table_version=version,
                ),
                status,
            )
        return _json(obj, status)

    async def _collection(
        self,
        request: web.Request,
        rtype: ResourceType,
        namespace: str | None,
        user: UserInfo,
        entry: AuditEntry,
    ) -> web.StreamResponse:
        q = request.query
        labels, fields = q.get("labelSelector"), q.get("fieldSelector")
        if request.method == "GET":
            if _truthy(q.get("watch")):
                return await self._watch(request, rtype, namespace, entry)
            listing = self.api.list(
                rtype,
                namespace,
                label_selector=labels,
                field_selector=fields,
                limit=_int_param(q, "limit"),
                continue_token=q.get("continue"),
            )
            version = _table_version(request.headers.get("Accept", ""))
            if version is not None:
                return _json(
                    to_table(
                        rtype,
                        listing["items"],
                        resource_version=listing["metadata"]["resourceVersion"],
                        continue_token=listing["metadata"].get("continue"),
                        include_object=q.get("includeObject", "Metadata"),
                        table_version=version,
                    )
                )
            return _json(listing)
        if request.method == "POST":
            body = await self._body(request)
            self.access.admit(user, entry.info, _name_in(body))
            obj = self.api.create(
                rtype,
                namespace,
                body,
                dry_run=_dry_run(request),
                strict=_strict(request),
            )
            # like kube-apiserver, the audit names the object a create made
            entry.info = dataclasses.replace(entry.info, name=obj["metadata"]["name"])
            return _json(obj, 201)
        if request.method == "DELETE":
            return _json(
                self.api.delete_collection(
                    rtype, namespace, label_selector=labels, field_selector=fields
                )
            )
        raise errors.method_not_allowed(f"{request.method} is not supported on a collection")

    async def _item(
        self,
        request: web.Request,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        sub: str | None,
    ) -> web.StreamResponse:
        if request.method == "GET":
            return self._render(request, rtype, self.api.get(rtype, namespace, name))
        if request.method == "PUT":
            body = await self._body(request)
            return _json(
                self.api.replace(
                    rtype,
                    namespace,
                    name,
                    body,
                    subresource=sub,
                    dry_run=_dry_run(request),
                    strict=_strict(request),
                )
            )
        if request.method == "PATCH":
            body = await self._body(request)
            obj = self.api.patch(
                rtype,
                namespace,
                name,
                request.headers.get("Content-Type", ""),
                body,
                subresource=sub,
                dry_run=_dry_run(request),
                strict=_strict(request),
            )
            return _json(obj)
        if request.method == "DELETE" and sub is None:
            options = await self._body(request) or {}
            pre = options.get("preconditions") or {} if isinstance(options, dict) else {}
            gone = self.api.delete(
                rtype,
                namespace,
                name,
                precondition_rv=pre.get("resourceVersion"),
                precondition_uid=pre.get("uid"),
                dry_run=_dry_run(request),
            )
            return _json(gone)
        raise errors.method_not_allowed(f"{request.method} is not supported here")

    async def _watch(
        self,
        request: web.Request,
        rtype: ResourceType,
        namespace: str | None,
        entry: AuditEntry,
    ) -> web.StreamResponse:
        q = request.query
        try:
            timeout = float(q.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        except ValueError:
            raise errors.bad_request(
                f"invalid timeoutSeconds {q.get('timeoutSeconds')!r}"
            ) from None
        table = _table_version(request.headers.get("Accept", ""))
        stream_error: errors.ApiError | None = None
        stream: WatchStream | None = None
        writing = False

        def overflow() -> None:
            log.warning(
                "closing a watch of %s for %s: more than %d events or %d bytes behind",
                rtype.storage_key,
                request.remote,
                self.config.watch_queue_events,
                self.config.watch_queue_bytes,
            )
            # A handler blocked on a write to a client that does not read would never see the
            # end of the stream: reset the connection, which also frees what the kernel still
            # holds for that client. Otherwise the stream ends cleanly.
            if writing and request.transport is not None:
                _reset(request.transport)

        try:
            stream = self.api.watch(
                rtype,
                namespace,
                resource_version=q.get("resourceVersion"),
                label_selector=q.get("labelSelector"),
                field_selector=q.get("fieldSelector"),
                bookmarks=_truthy(q.get("allowWatchBookmarks")) and table is None,
                max_events=self.config.watch_queue_events,
                max_bytes=self.config.watch_queue_bytes,
                on_overflow=overflow,
            )
        except errors.ApiError as e:
            if e.code != 410:
                raise
            # kube-apiserver reports an expired version inside the watch stream, not as HTTP 410.
            stream_error = e
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"},
        )
        await response.prepare(request)
        if self.audit is not None:
            self.audit.write(entry, "ResponseStarted", 200)
        self.metrics.watch_opened(rtype.plural)
        if stream is None:
            assert stream_error is not None
            await response.write(self._event("ERROR", stream_error.status()))
            await response.write_eof()
            self.metrics.watch_closed(rtype.plural)
            return response
        self._streams.add(stream)
        first = True
        try:
            events = stream.events(
                timeout=timeout,
                bookmark_interval=self.config.bookmark_interval,
                alive=lambda: request.transport is not None and not request.transport.is_closing(),
            )
            async with contextlib.aclosing(events):
                async for kind, obj in events:
                    if kind != "BOOKMARK":
                        obj = dict(obj)  # shallow copy: the store's object is shared
                        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
                        if table is not None:
                            obj = to_table(
                                rtype,
                                [obj],
                                resource_version=obj["metadata"]["resourceVersion"],
                                include_object=q.get("includeObject", "Metadata"),
                                table_version=table,
                                with_columns=first,
                            )
                            first = False
                    writing = True
                    await response.write(self._event(kind, obj))
                    self.metrics.watch_event(rtype.plural, kind)
                    writing = False
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away; nothing to tell it
        finally:
            self._streams.discard(stream)
            stream.close()
            self.metrics.watch_closed(rtype.plural)
        return response

    @staticmethod
    def _event(kind: str, obj: dict[str, Any]) -> bytes:
        return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"
