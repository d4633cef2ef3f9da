"""The HTTPS front of the API server: routing, bearer-token auth, content negotiation, watch.

Paths follow kube-apiserver: ``/api/v1/...`` for the core group, ``/apis/<group>/<version>/...``
for the others, ``namespaces/<ns>/<plural>`` for namespaced kinds, ``/<name>/status`` for the
status subresource. All verbs are handled by :class:`raven.lab.apiserver.api.Api`; this module only
translates HTTP to those calls and errors to ``Status`` bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from aiohttp import web

from raven.lab.apiserver import discovery, errors, openapi, protobuf
from raven.lab.apiserver.api import Api
from raven.lab.apiserver.metrics import METRICS_PATH, ApiMetrics
from raven.lab.apiserver.resources import ResourceType
from raven.lab.apiserver.store import Store
from raven.lab.apiserver.table import to_table
from raven.lab.apiserver.watch import WatchStream

log = logging.getLogger("raven.lab.apiserver")

HEALTH_PATHS = ("/healthz", "/readyz", "/livez")
# kube-apiserver ends watches after a random 30-60 minutes when the client gives no timeout.
DEFAULT_WATCH_TIMEOUT = 1800.0
DB_NAME = "apiserver.sqlite"


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
        self.api = Api(self.store)
        self._streams: set[WatchStream] = set()
        self.metrics = ApiMetrics()
        self._runner: web.AppRunner | None = None
        self.port = config.port

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.config.cert), str(self.config.key))
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
        return self.port

    async def stop(self) -> None:
        for stream in list(self._streams):
            stream.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.store.close()

    # -- request handling -------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(
            token.strip().encode(), self.config.token.encode()
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        status = 500
        try:
            response = await self._route(request)
            status = response.status
            return response
        except errors.ApiError as e:
            status = e.code
            return _error(e)
        except (ConnectionResetError, asyncio.CancelledError):
            status = 499
            raise
        except Exception:  # a bug here must not take the server down; the client gets a 500
            log.exception("internal error on %s %s", request.method, request.path_qs)
            return _json(errors.ApiError(500, "InternalError", "internal error").status(), 500)
        finally:
            self.metrics.answered(request.method, request.path, request.query, status)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s %d %.1fms",
                    request.method,
                    request.path_qs,
                    status,
                    (time.monotonic() - started) * 1000,
                )

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in HEALTH_PATHS or path.split("/")[1:2] in (["healthz"], ["readyz"], ["livez"]):
            return web.Response(text="ok")
        if not self._authorized(request):
            raise errors.unauthorized()
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
        if sub is not None and (sub != "status" or not rtype.status_subresource):
            raise errors.no_such_resource(path)
        if name is None:
            return await self._collection(request, rtype, namespace)
        return await self._item(request, rtype, namespace, name, sub)

    def _openapi(self, path: str) -> web.Response:
        if path == "/openapi/v3":
            return _json(openapi.root(self.api.registry))
        if path.startswith("/openapi/v3/"):
            doc = openapi.gv_document(self.api.registry, path[len("/openapi/v3/") :])
            if doc is not None:
                return _json(doc)
        raise errors.no_such_resource(path)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
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
        try:
            if "yaml" in (request.content_type or ""):
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as e:
            raise errors.bad_request(f"the request body is not valid JSON: {e}") from None

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
        self, request: web.Request, rtype: ResourceType, namespace: str | None
    ) -> web.StreamResponse:
        q = request.query
        labels, fields = q.get("labelSelector"), q.get("fieldSelector")
        if request.method == "GET":
            if _truthy(q.get("watch")):
                return await self._watch(request, rtype, namespace)
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
            obj = self.api.create(
                rtype,
                namespace,
                await self._body(request),
                dry_run=_dry_run(request),
                strict=_strict(request),
            )
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
        self, request: web.Request, rtype: ResourceType, namespace: str | None
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
        try:
            stream = self.api.watch(
                rtype,
                namespace,
                resource_version=q.get("resourceVersion"),
                label_selector=q.get("labelSelector"),
                field_selector=q.get("fieldSelector"),
                bookmarks=_truthy(q.get("allowWatchBookmarks")) and table is None,
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
                    await response.write(self._event(kind, obj))
                    self.metrics.watch_event(rtype.plural, kind)
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
