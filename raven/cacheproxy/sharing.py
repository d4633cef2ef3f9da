"""Which reads share one upstream list+watch (node-level reuse), and when a shared copy may
answer one. Pure: a request's shape in, a decision out.

The *shared resources* (default: v1 Services and discovery.k8s.io/v1 EndpointSlices, what
kube-proxy, CoreDNS, CNIs and our own agent all read on every node) are listed and watched once,
whole, by the proxy (raven/cacheproxy/reflector.py), and every client's list or watch of them is
answered from that copy (raven/cacheproxy/watchcache.py) with its own namespace and selectors.

A read is shared only when the copy can answer it exactly as the API server would:

- a ``list`` or ``watch`` of a shared resource, at its shared version, all namespaces or one,
  with no name and no subresource;
- in JSON (an ``Accept`` listing only ``*/*`` or ``application/json``, or none): protobuf and
  Tables go through;
- with a label selector the proxy parses, and a field selector over ``metadata.name`` and
  ``metadata.namespace`` only (anything else goes through, so the API server gives its own
  answer, or its own error);
- at a version the copy serves: a list of the newest state (``resourceVersion`` unset, ``0``, or
  ``N`` not-older-than when the copy is at ``N`` or later), whole even when the client asked for
  pages (the API server may answer a paged list whole, and a list with ``continue`` goes
  through); a watch from any version (too old: 410, as the API server), without
  ``sendInitialEvents``.

Whether a shared read is answered from the copy, :func:`route`, depends on the copy being in
sync with the API server and on the client's own credential: the API server's answer to that
credential's SelfSubjectAccessReview for exactly this verb, resource and namespace. The copy is
read with the node's identity; it is never shown to a credential the API server did not allow.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from raven.cacheproxy.request import RequestInfo
from raven.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)

SHARED_FIELDS = ("metadata.name", "metadata.namespace")
# Query parameters a shared read understands; any other sends it through.
LIST_PARAMS = frozenset(
    {"labelSelector", "fieldSelector", "resourceVersion", "resourceVersionMatch", "limit"}
)
WATCH_PARAMS = frozenset(
    {
        "labelSelector",
        "fieldSelector",
        "resourceVersion",
        "resourceVersionMatch",
        "watch",
        "allowWatchBookmarks",
        "timeoutSeconds",
    }
)
JSON_ACCEPTS = frozenset({"", "*/*", "application/json"})


@dataclass(frozen=True)
class SharedResource:
    """One resource read once for every client: where it lives and what its list is called."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def name(self) -> str:
        """As kubectl names it: ``services``, ``endpointslices.discovery.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def collection_path(self, namespace: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


SERVICES = SharedResource("", "v1", "services", "Service")
ENDPOINTSLICES = SharedResource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
KNOWN = {r.name: r for r in (SERVICES, ENDPOINTSLICES)}
DEFAULT_SHARED = (SERVICES, ENDPOINTSLICES)


def parse_shared(text: str) -> tuple[SharedResource, ...]:
    """``--share``'s value: comma-separated names as kubectl writes them (``services``,
    ``endpointslices.discovery.k8s.io``), or ``none``."""
    text = text.strip()
    if text == "none":
        return ()
    out: list[SharedResource] = []
    for name in (n.strip() for n in text.split(",")):
        if name not in KNOWN:
            raise ValueError(
                f"cannot share {name!r}: the shared resources are {', '.join(sorted(KNOWN))} "
                "(or none)"
            )
        if KNOWN[name] not in out:
            out.append(KNOWN[name])
    if not out:
        raise ValueError("--share needs at least one resource, or none")
    return tuple(out)


@dataclass(frozen=True)
class SharedRead:
    """A read the shared copy of ``resource`` can answer."""

    resource: SharedResource
    verb: str  # list or watch
    namespace: str  # "" for all namespaces
    labels: LabelSelector
    fields: FieldSelector
    resource_version: str  # as the client gave it
    bookmarks: bool = False
    timeout: int | None = None  # a watch's timeoutSeconds


def plain_json(accept: str) -> bool:
    """Whether every media range ``accept`` lists is plain JSON (or anything): no protobuf, no
    Table or other ``as=`` form."""
    for entry in accept.split(","):
        media, *params = entry.split(";")
        if media.strip().lower() not in JSON_ACCEPTS:
            return False
        if any(p.split("=")[0].strip().lower() not in ("q", "charset") for p in params):
            return False
    return True


def _version_number(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def shared_read(
    info: RequestInfo,
    query: Sequence[tuple[str, str]],
    accept: str,
    resources: Iterable[SharedResource],
    *,
    group: str,
    version: str,
) -> SharedRead | None:
    """The shared read ``info`` is, or None when it must go through. ``group``/``version``: the
    request path's (``""`` for the core group)."""
    if not info.resource_request or info.verb not in ("list", "watch"):
        return None
    if info.name or info.subresource or info.verb_via_path:
        return None
    resource = next(
        (r for r in resources if (r.group, r.version, r.plural) == (group, version, info.resource)),
        None,
    )
    if resource is None:
        return None
    if not plain_json(accept):
        return None
    allowed = WATCH_PARAMS if info.verb == "watch" else LIST_PARAMS
    values: dict[str, str] = {}
    for key, value in query:
        if key not in allowed or key in values:
            return None
        values[key] = value
    match = values.get("resourceVersionMatch", "")
    if match not in ("", "NotOlderThan"):
        return None
    rv = values.get("resourceVersion", "")
    if rv and _version_number(rv) is None:
        return None
    if match and not rv:
        return None
    if info.verb == "list" and rv not in ("", "0") and values.get("limit") and not match:
        return None  # a paged list at N is read as exact by the API server
    try:
        labels = parse_label_selector(values.get("labelSelector"))
        fields = parse_field_selector(values.get("fieldSelector"), SHARED_FIELDS)
    except SelectorError:
        return None
    timeout = None
    if info.verb == "watch":
        text = values.get("timeoutSeconds", "")
        if text:
            if not text.isdigit():
                return None
            timeout = int(text)
    return SharedRead(
        resource,
        info.verb,
        info.namespace,
        labels,
        fields,
        rv,
        bookmarks=values.get("allowWatchBookmarks", "").lower() == "true",
        timeout=timeout,
    )


def path_group_version(path: str) -> tuple[str, str]:
    """The API group and version of a resource path (``/api/v1/...``: ``("", "v1")``)."""
    parts = path.strip("/").split("/")
    if len(parts) >= 2 and parts[0] == "api":
        return "", parts[1]
    if len(parts) >= 3 and parts[0] == "apis":
        return parts[1], parts[2]
    return "", ""


class Route(enum.Enum):
    SHARED = "shared"  # answer from the shared copy
    THROUGH = "through"  # the proxy's usual path (forward, or the per-client cache offline)
    CHECK = "check"  # ask the API server whether this credential may, then route again


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    DENIED = "denied"
    UNKNOWN = "unknown"  # never asked, or the answer is older than the proxy trusts online


@dataclass(frozen=True)
class Copy:
    """What the proxy knows of the shared copy a read would come from."""

    synced: bool  # listed, and its watch is up (or being resumed without a gap)
    filled: bool  # it holds a list (possibly old: offline, it is the last known state)
    rv: int  # its version


def route(
    read: SharedRead,
    copy: Copy,
    verdict: Verdict,
    *,
    cloud_healthy: bool,
    has_credential: bool,
) -> Route:
    """Whether ``read`` is answered from the shared copy.

    Online, the copy answers only while it is in sync, and only a credential the API server
    allowed for this read (asked when not known). Offline, the last known copy answers a
    credential that was allowed before, as the per-client cache answers it; nothing else
    changes what the proxy does offline.
    """
    if not has_credential:
        return Route.THROUGH  # anonymous: the API server decides, as before
    if cloud_healthy:
        if not copy.synced:
            return Route.THROUGH
        if read.verb == "list":
            wanted = _version_number(read.resource_version) or 0
            if wanted > copy.rv:
                return Route.THROUGH  # the copy has not reached the version asked for
        if verdict is Verdict.UNKNOWN:
            return Route.CHECK
        return Route.SHARED if verdict is Verdict.ALLOWED else Route.THROUGH
    if copy.filled and verdict is Verdict.ALLOWED:
        wanted = _version_number(read.resource_version) or 0
        if read.verb == "list" and wanted > copy.rv:
            return Route.THROUGH
        return Route.SHARED
    return Route.THROUGH


def access_attributes(read: SharedRead) -> Mapping[str, str]:
    """The SelfSubjectAccessReview's resourceAttributes that authorize ``read``."""
    return {
        "verb": read.verb,
        "group": read.resource.group,
        "version": read.resource.version,
        "resource": read.resource.plural,
        "namespace": read.namespace,
    }
