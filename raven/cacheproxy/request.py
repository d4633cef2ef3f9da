"""What a request is, read the way kube-apiserver reads it: its verb and resource, whether it
is long-running, and which credential it carries. Pure: strings in, values out.

- The verb follows the API server's request info: ``/api/<v>/...`` and ``/apis/<g>/<v>/...``
  are resource requests; ``watch`` and ``proxy`` as the segment after the version are verbs of
  their own (the old ``/watch/`` paths); a GET without a name is a ``list`` or, when its first
  ``watch`` value is anything but ``false`` (any case) or ``0`` — ``watch``, ``watch=``,
  ``watch=1``, ``watch=True``, ``watch=yes`` all count — a ``watch``. A GET of a named object is
  a ``get`` whatever its query says.
- Long-running as the API server's own check: the verbs ``watch`` and ``proxy``, and the
  subresources ``attach``, ``exec``, ``log``, ``portforward`` and ``proxy``. The API server
  applies no request timeout to these; neither does the proxy, and it never buffers them.
- The credential is the bearer token as the API server's authenticator takes it: the header
  trimmed, split on single spaces into at most three parts, the first ``bearer`` in any case,
  the token the second part (empty: no token; anything after it is ignored). Anything else is
  no credential at all. Only its SHA-256 is kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

API_PREFIXES = frozenset({"api", "apis"})
GROUPLESS_PREFIXES = frozenset({"api"})
SPECIAL_VERBS = frozenset({"proxy", "watch"})
VERBS_WITHOUT_SUBRESOURCES = frozenset({"proxy"})
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
LONG_RUNNING_VERBS = frozenset({"watch", "proxy"})
LONG_RUNNING_SUBRESOURCES = frozenset({"attach", "exec", "log", "portforward", "proxy"})
READ_METHODS = frozenset({"GET", "HEAD"})
METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}


@dataclass(frozen=True)
class RequestInfo:
    verb: str  # get, list, watch, create, update, patch, delete, deletecollection, proxy, ...
    resource_request: bool = False
    namespace: str = ""
    resource: str = ""
    name: str = ""
    subresource: str = ""
    verb_via_path: bool = False  # the old /watch/... form

    @property
    def watch(self) -> bool:
        return self.verb == "watch"

    @property
    def long_running(self) -> bool:
        if self.verb in LONG_RUNNING_VERBS:
            return True
        return self.resource_request and self.subresource in LONG_RUNNING_SUBRESOURCES


def query_bool(values: Sequence[str]) -> bool:
    """A boolean query parameter as the API server converts one: absent, ``0`` or ``false`` (any
    case) in its first value is false, everything else (the empty string too) true."""
    if not values:
        return False
    return not (values[0] == "0" or values[0].lower() == "false")


def request_info(method: str, path: str, query: Mapping[str, Sequence[str]]) -> RequestInfo:
    """``path`` decoded (as the API server sees it), ``query`` each parameter's values in order."""
    method = method.upper()
    parts = path.strip("/").split("/") if path.strip("/") else []
    plain = RequestInfo(verb=method.lower())
    if len(parts) < 3 or parts[0] not in API_PREFIXES:
        return plain
    prefix, parts = parts[0], parts[1:]
    if prefix not in GROUPLESS_PREFIXES:
        if len(parts) < 3:
            return plain
        parts = parts[1:]  # the group
    parts = parts[1:]  # the version
    via_path = False
    if parts[0] in SPECIAL_VERBS:
        if len(parts) < 2:  # the API server refuses this path; just pass it on
            return RequestInfo(verb=method.lower(), resource_request=True)
        verb, parts, via_path = parts[0], parts[1:], True
    else:
        verb = METHOD_VERBS.get(method, "")
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    sub = parts[2] if len(parts) >= 3 and verb not in VERBS_WITHOUT_SUBRESOURCES else ""
    if not name and verb == "get":
        verb = "watch" if query_bool(query.get("watch", ())) else "list"
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(verb, True, namespace, resource, name, sub, via_path)


def bearer_token(authorization: str | None) -> str | None:
    """The token kube-apiserver would authenticate from this ``Authorization`` header, if any."""
    if authorization is None:
        return None
    auth = authorization.strip()
    if not auth:
        return None
    parts = auth.split(" ", 2)
    if len(parts) < 2 or parts[0].lower() != "bearer":
        return None
    return parts[1] or None


def credential(authorization: str | None) -> str | None:
    """The hash the cache keeps for the request's credential; None when it carries none."""
    token = bearer_token(authorization)
    if token is None:
        return None
    return hashlib.sha256(token.encode()).hexdigest()
