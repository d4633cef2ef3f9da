"""The API's computed answers: access reviews, rules reviews, who-am-I, and TokenRequest.

What ``kubectl auth can-i`` (SelfSubjectAccessReview, and SelfSubjectRulesReview for
``--list``), ``kubectl auth whoami`` (SelfSubjectReview) and ``kubectl create token``
(``serviceaccounts/<name>/token``) post, answered as kube-apiserver answers them. Nothing here is
stored; each function takes the request body and returns the body to send (201 Created).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from raven.lab.apiserver import errors
from raven.lab.apiserver.authn import TokenIssuer, UserInfo
from raven.lab.apiserver.rbac import Decision, Rbac
from raven.lab.apiserver.requestinfo import RequestInfo

# kube-apiserver's bounds on a requested token lifetime, and its default.
MIN_TOKEN_SECONDS = 600
MAX_TOKEN_SECONDS = 2**32
DEFAULT_TOKEN_SECONDS = 3600


def _body(body: Any, kind: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise errors.bad_request(f"the request body must be a {kind} object")
    found = body.get("kind")
    if found not in (None, kind):
        raise errors.bad_request(f"expected a {kind}, got {found!r}")
    spec = body.get("spec")
    if spec is not None and not isinstance(spec, dict):
        raise errors.bad_request(f"{kind}.spec must be an object")
    return body


def _answer(body: dict[str, Any], api_version: str, kind: str, status: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"creationTimestamp": None},
        "spec": body.get("spec") or {},
        "status": status,
    }


def access_review(
    body: Any, user: UserInfo, authorize: Callable[[UserInfo, RequestInfo], Decision]
) -> dict[str, Any]:
    """SelfSubjectAccessReview: may ``user`` do what ``spec`` describes, per ``authorize`` (the
    server's authorizers)?"""
    body = _body(body, "SelfSubjectAccessReview")
    spec = body.get("spec") or {}
    res, non = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if isinstance(res, dict) and not non:
        info = RequestInfo(
            verb=str(res.get("verb", "")),
            path="",
            resource_request=True,
            api_group=str(res.get("group", "")),
            api_version=str(res.get("version", "")),
            namespace=str(res.get("namespace", "")),
            resource=str(res.get("resource", "")),
            subresource=str(res.get("subresource", "")),
            name=str(res.get("name", "")),
        )
    elif isinstance(non, dict) and not res:
        info = RequestInfo(verb=str(non.get("verb", "")), path=str(non.get("path", "")))
    else:
        raise errors.invalid(
            "SelfSubjectAccessReview",
            "authorization.k8s.io",
            "",
            [
                (
                    "spec.resourceAttributes",
                    "Invalid value: exactly one of nonResourceAttributes "
                    "or resourceAttributes must be specified",
                )
            ],
        )
    decision = authorize(user, info)
    status: dict[str, Any] = {"allowed": decision.allowed}
    if decision.reason:
        status["reason"] = decision.reason
    return _answer(body, "authorization.k8s.io/v1", "SelfSubjectAccessReview", status)


def rules_review(body: Any, user: UserInfo, rbac: Rbac) -> dict[str, Any]:
    """SelfSubjectRulesReview: every rule that applies to ``user`` in ``spec.namespace``."""
    body = _body(body, "SelfSubjectRulesReview")
    namespace = str((body.get("spec") or {}).get("namespace") or "")
    grants, problems = rbac.grants(user, namespace)
    resource_rules, non_resource_rules = [], []
    for grant in grants:
        for rule in grant.rules:
            if rule.get("nonResourceURLs"):
                non_resource_rules.append(
                    {
                        "verbs": list(rule.get("verbs") or []),
                        "nonResourceURLs": list(rule["nonResourceURLs"]),
                    }
                )
            else:
                entry: dict[str, Any] = {
                    "verbs": list(rule.get("verbs") or []),
                    "apiGroups": list(rule.get("apiGroups") or []),
                    "resources": list(rule.get("resources") or []),
                }
                if rule.get("resourceNames"):
                    entry["resourceNames"] = list(rule["resourceNames"])
                resource_rules.append(entry)
    status: dict[str, Any] = {
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": bool(problems),
    }
    if problems:
        status["evaluationError"] = ", ".join(problems)
    return _answer(body, "authorization.k8s.io/v1", "SelfSubjectRulesReview", status)


def self_review(body: Any, user: UserInfo) -> dict[str, Any]:
    """SelfSubjectReview: who the server takes the caller to be."""
    body = _body(body, "SelfSubjectReview")
    status = {"userInfo": user.as_json()}
    answer = _answer(body, "authentication.k8s.io/v1", "SelfSubjectReview", status)
    answer.pop("spec")
    return answer


def token_request(
    body: Any, namespace: str, account: dict[str, Any], issuer: TokenIssuer
) -> dict[str, Any]:
    """TokenRequest for the stored ServiceAccount ``account``: a signed token and its expiry."""
    body = _body(body or {"spec": {}}, "TokenRequest")
    spec = dict(body.get("spec") or {})
    name = account["metadata"]["name"]
    seconds = spec.get("expirationSeconds")
    if seconds is None:
        seconds = DEFAULT_TOKEN_SECONDS
    problems: list[tuple[str, str]] = []
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        problems.append(
            ("spec.expirationSeconds", f"Invalid value: {seconds!r}: must be an integer")
        )
    elif seconds < MIN_TOKEN_SECONDS:
        problems.append(
            (
                "spec.expirationSeconds",
                f"Invalid value: {seconds}: may not specify a duration less than 10 minutes",
            )
        )
    elif seconds > MAX_TOKEN_SECONDS:
        problems.append(
            (
                "spec.expirationSeconds",
                f"Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds",
            )
        )
    if spec.get("boundObjectRef"):
        problems.append(
            (
                "spec.boundObjectRef",
                "Forbidden: tokens bound to an object are not supported by the lab API server",
            )
        )
    audiences = spec.get("audiences") or list(issuer.audiences)
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        problems.append(("spec.audiences", f"Invalid value: {audiences!r}"))
    if problems:
        raise errors.invalid("TokenRequest", "authentication.k8s.io", name, problems)
    token, expires = issuer.mint(
        namespace,
        name,
        account["metadata"]["uid"],
        audiences=audiences,
        expiration_seconds=int(seconds),
    )
    spec.update({"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": None})
    stamp = dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": stamp},
    }
