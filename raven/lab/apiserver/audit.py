"""The audit log: one JSON line per request, in kube-apiserver's ``audit.k8s.io/v1`` Event format.

Each line is an Event at level ``Metadata``: ``user`` (username, groups), ``impersonatedUser``
when the request was impersonated, ``verb``, ``requestURI``, ``objectRef`` (apiGroup,
apiVersion, resource, subresource, namespace, name), ``responseStatus.code``, and the
annotations ``authorization.k8s.io/decision`` (``allow``/``forbid``) and
``authorization.k8s.io/reason``. Requests end with stage ``ResponseComplete``; a watch also
logs ``ResponseStarted`` when it begins (both carry the same ``auditID``), as kube-apiserver
does for long-running requests. So tools that read a cluster's audit log read this one too.

:func:`rule_usage` answers the question a least-privilege role must survive: given the log and a
Role or ClusterRole, which of its permissions did an identity never use, and which of its
requests were refused?
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from raven.lab.apiserver.authn import UserInfo
from raven.lab.apiserver.rbac import rule_allows
from raven.lab.apiserver.requestinfo import RequestInfo

DECISION = "authorization.k8s.io/decision"
REASON = "authorization.k8s.io/reason"


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class AuditEntry:
    """One request on its way through the server; :meth:`AuditLog.write` records it."""

    info: RequestInfo
    uri: str
    source: str
    user_agent: str
    received: str
    audit_id: str
    user: UserInfo | None = None
    impersonated: UserInfo | None = None
    decision: str = ""
    reason: str = ""

    @classmethod
    def begin(cls, info: RequestInfo, uri: str, source: str, user_agent: str) -> AuditEntry:
        return cls(info, uri, source, user_agent, _stamp(), str(uuid.uuid4()))

    def event(self, stage: str, code: int) -> dict[str, Any]:
        info = self.info
        event: dict[str, Any] = {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": self.audit_id,
            "stage": stage,
            "requestURI": self.uri,
            "verb": info.verb,
            "user": self.user.as_json() if self.user else {},
            "sourceIPs": [self.source] if self.source else [],
            "userAgent": self.user_agent,
            "responseStatus": {"metadata": {}, "code": code},
            "requestReceivedTimestamp": self.received,
            "stageTimestamp": _stamp(),
        }
        if self.impersonated is not None:
            event["impersonatedUser"] = self.impersonated.as_json()
        if info.resource_request:
            ref = {
                "resource": info.resource,
                "namespace": info.namespace,
                "name": info.name,
                "apiGroup": info.api_group,
                "apiVersion": info.api_version,
                "subresource": info.subresource,
            }
            event["objectRef"] = {k: v for k, v in ref.items() if v}
        if self.decision:
            event["annotations"] = {DECISION: self.decision, REASON: self.reason}
        return event


class AuditLog:
    """Appends events to ``path`` (created 0600: it names every user), one flushed line each."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        self.path = path
        self._file: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, entry: AuditEntry, stage: str, code: int) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(entry.event(stage, code), separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_audit_log(path: Path) -> list[dict[str, Any]]:
    """The events in an audit log file, in order (a torn last line is skipped)."""
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def acting_user(event: Mapping[str, Any]) -> str:
    """Whose permissions the request used: the impersonated user if any, else the caller."""
    who = event.get("impersonatedUser") or event.get("user") or {}
    return str(who.get("username", ""))


def request_of(event: Mapping[str, Any]) -> RequestInfo:
    """The request an audit event describes, as authorization saw it."""
    ref = event.get("objectRef")
    uri = str(event.get("requestURI", "")).split("?")[0]
    if not ref:
        return RequestInfo(verb=str(event.get("verb", "")), path=uri)
    return RequestInfo(
        verb=str(event.get("verb", "")),
        path=uri,
        resource_request=True,
        api_group=ref.get("apiGroup", ""),
        api_version=ref.get("apiVersion", ""),
        namespace=ref.get("namespace", ""),
        resource=ref.get("resource", ""),
        subresource=ref.get("subresource", ""),
        name=ref.get("name", ""),
    )


@dataclass(frozen=True)
class Permission:
    """One verb on one resource (or non-resource URL) that a role's rule grants."""

    verb: str
    api_group: str = ""
    resource: str = ""  # "gateways" or "gateways/status"
    resource_names: tuple[str, ...] = ()
    non_resource_url: str = ""

    def __str__(self) -> str:
        if self.non_resource_url:
            return f"{self.verb} {self.non_resource_url}"
        group = f".{self.api_group}" if self.api_group else ""
        names = f" {list(self.resource_names)}" if self.resource_names else ""
        return f"{self.verb} {self.resource}{group}{names}"

    def as_rule(self) -> dict[str, Any]:
        if self.non_resource_url:
            return {"verbs": [self.verb], "nonResourceURLs": [self.non_resource_url]}
        rule: dict[str, Any] = {
            "verbs": [self.verb],
            "apiGroups": [self.api_group],
            "resources": [self.resource],
        }
        if self.resource_names:
            rule["resourceNames"] = list(self.resource_names)
        return rule


def permissions(role: Mapping[str, Any]) -> list[Permission]:
    """Every (verb, group, resource) a Role or ClusterRole grants, one per combination."""
    out: list[Permission] = []
    for rule in role.get("rules") or []:
        verbs = rule.get("verbs") or []
        names = tuple(rule.get("resourceNames") or ())
        for url in rule.get("nonResourceURLs") or []:
            out.extend(Permission(v, non_resource_url=url) for v in verbs)
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                out.extend(Permission(v, group, resource, names) for v in verbs)
    return out


@dataclass(frozen=True)
class RuleUsage:
    """What :func:`rule_usage` found: permissions never used and requests refused."""

    unused: tuple[Permission, ...]
    refused: tuple[dict[str, Any], ...]
    used: tuple[Permission, ...]

    def refused_summary(self) -> list[str]:
        """``verb uri -> code`` for each refused request, for an assertion message."""
        return [
            f"{e.get('verb')} {e.get('requestURI')} -> {e.get('responseStatus', {}).get('code')}"
            for e in self.refused
        ]


def requests_of(events: Iterable[Mapping[str, Any]], user: str) -> list[Mapping[str, Any]]:
    """The last stage of each request ``user`` made (a watch logs two), in order."""
    seen: dict[str, Mapping[str, Any]] = {}
    for event in events:
        if acting_user(event) == user:
            seen[str(event.get("auditID"))] = event
    return list(seen.values())


def is_refused(event: Mapping[str, Any]) -> bool:
    """Authorization forbade the request, or it was answered 403 for another reason."""
    return (event.get("annotations") or {}).get(DECISION) == "forbid" or (
        event.get("responseStatus") or {}
    ).get("code") == 403


def refused(events: Iterable[Mapping[str, Any]], user: str) -> tuple[dict[str, Any], ...]:
    """The requests of ``user`` that were refused (:func:`is_refused`)."""
    return tuple(dict(e) for e in requests_of(events, user) if is_refused(e))


def rule_usage(
    events: Iterable[Mapping[str, Any]], role: Mapping[str, Any], *, user: str
) -> RuleUsage:
    """Compare what ``user`` did (per the audit ``events``) with what ``role`` grants.

    A permission counts as used when some request of ``user`` that was allowed falls under it
    (for a Role, only requests in the Role's namespace). Refused requests are those of
    ``user`` that were refused (:func:`is_refused`).
    """
    requests = requests_of(events, user)
    namespace = None
    if role.get("kind") == "Role":
        namespace = (role.get("metadata") or {}).get("namespace")
    allowed = [
        request_of(e) for e in requests if (e.get("annotations") or {}).get(DECISION) == "allow"
    ]
    if namespace is not None:
        allowed = [r for r in allowed if r.namespace == namespace]
    used: list[Permission] = []
    unused: list[Permission] = []
    for permission in permissions(role):
        rule = permission.as_rule()
        (used if any(rule_allows(rule, r) for r in allowed) else unused).append(permission)
    denied = tuple(dict(e) for e in requests if is_refused(e))
    return RuleUsage(tuple(unused), denied, tuple(used))
