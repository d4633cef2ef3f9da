"""What the lab API server was asked and what its watches delivered, for the benchmarks.

Counters, in Prometheus text on ``GET /metrics`` (bearer token required, like every API path;
the lab has one token, the admin's), named after kube-apiserver's own:

- ``apiserver_request_total{verb, resource, subresource, code}``: every request answered.
  ``verb`` is kube-apiserver's: ``get`` and ``list`` (reads), ``watch`` (one per watch opened,
  counted when its stream starts, not when it ends), ``create``, ``update``, ``patch``,
  ``delete``, ``deletecollection`` (writes); paths outside the resource tree (discovery,
  ``/version``, ``/openapi``) count as ``get`` with an empty ``resource``. Health checks and
  ``/metrics`` itself are not counted, so scraping does not change what it reads.
- ``apiserver_watch_events_total{resource, type}``: every event written to a watch stream,
  ``BOOKMARK`` included (as its own ``type``): the fan-out a write costs.
- ``apiserver_registered_watchers{resource}``: watches open now.

One :class:`ApiMetrics` per server (its own registry), so several servers in one process (the
tests) keep apart. :func:`classify` is pure and shared with client-side counters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Paths the counters leave out: health checks and the scrape itself.
UNCOUNTED = ("/healthz", "/readyz", "/livez", "/metrics")
METRICS_PATH = "/metrics"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
READ_VERBS = frozenset({"get", "list"})


@dataclass(frozen=True)
class RequestKind:
    """What one request is, in kube-apiserver's terms."""

    verb: str
    resource: str = ""
    subresource: str = ""


def _truthy(value: str | None) -> bool:
    return value in ("true", "1", "True")


def classify(method: str, path: str, query: Mapping[str, str] | None = None) -> RequestKind:
    """The verb and resource of ``method path?query`` (no look-up of what the server serves:
    an unknown resource is classified all the same)."""
    segs = [s for s in path.split("/") if s]
    if len(segs) >= 2 and segs[0] == "api":
        rest = segs[2:]
    elif len(segs) >= 3 and segs[0] == "apis":
        rest = segs[3:]
    else:
        rest = []
    if not rest:
        return RequestKind("get")  # discovery and other paths outside the resource tree
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]  # namespaces/<ns>/<plural>[/<name>[/<sub>]]
    resource = rest[0]
    named = len(rest) >= 2
    subresource = rest[2] if len(rest) >= 3 else ""
    method = method.upper()
    if method == "GET":
        if not named and _truthy((query or {}).get("watch")):
            verb = "watch"
        else:
            verb = "get" if named else "list"
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = method.lower()
    return RequestKind(verb, resource, subresource)


class ApiMetrics:
    """The server's counters (module docstring). Call from the server's event loop."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "apiserver_request",
            "Requests answered, by verb, resource, subresource and HTTP code",
            ["verb", "resource", "subresource", "code"],
            registry=self.registry,
        )
        self._events = Counter(
            "apiserver_watch_events",
            "Events written to watch streams, by resource and type (BOOKMARK included)",
            ["resource", "type"],
            registry=self.registry,
        )
        self._watchers = Gauge(
            "apiserver_registered_watchers",
            "Watches open now, by resource",
            ["resource"],
            registry=self.registry,
        )

    def answered(self, method: str, path: str, query: Mapping[str, str], code: int) -> None:
        """A request ended with ``code``. A watch that streamed was counted when it opened."""
        if path.rstrip("/") in UNCOUNTED:
            return
        kind = classify(method, path, query)
        if kind.verb == "watch" and code in (200, 499):
            return
        self._requests.labels(kind.verb, kind.resource, kind.subresource, str(code)).inc()

    def watch_opened(self, resource: str) -> None:
        self._requests.labels("watch", resource, "", "200").inc()
        self._watchers.labels(resource).inc()

    def watch_closed(self, resource: str) -> None:
        self._watchers.labels(resource).dec()

    def watch_event(self, resource: str, kind: str) -> None:
        self._events.labels(resource, kind).inc()

    def exposition(self) -> tuple[bytes, str]:
        """(body, Content-Type) of the Prometheus text format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
