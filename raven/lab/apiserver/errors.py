"""API errors and the ``Status`` bodies the Kubernetes clients expect for them.

Every failure the server reports is an :class:`ApiError`; the HTTP layer turns it into a
``meta/v1 Status`` with the same reason/code/details the real kube-apiserver uses, because
client-go and the Python client branch on ``reason`` and ``code`` (e.g. retry on Conflict).
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request that failed; ``status()`` is the body to send."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        name: str | None = None,
        group: str | None = None,
        kind: str | None = None,
        causes: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.name = name
        self.group = group
        self.kind = kind
        self.causes = causes

    def status(self) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.name is not None:
            details["name"] = self.name
        if self.group:
            details["group"] = self.group
        if self.kind is not None:
            details["kind"] = self.kind
        if self.causes:
            details["causes"] = self.causes
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if details:
            body["details"] = details
        return body


def _qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{_qualified(plural, group)} "{name}" not found',
        name=name,
        group=group,
        kind=plural,
    )


def no_such_resource(path: str) -> ApiError:
    return ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{_qualified(plural, group)} "{name}" already exists',
        name=name,
        group=group,
        kind=plural,
    )


def conflict(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(plural, group)} "{name}": the object has '
        "been modified; please apply your changes to the latest version and try again",
        name=name,
        group=group,
        kind=plural,
    )


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 Invalid; ``causes`` are (field path, problem) pairs, all named in the message."""
    text = ", ".join(f"{field}: {problem}" for field, problem in causes)
    qualified = f"{kind}.{group}" if group else kind
    return ApiError(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid: {text}',
        name=name,
        group=group,
        kind=kind,
        causes=[{"reason": "FieldValueInvalid", "message": p, "field": f} for f, p in causes],
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", message)


def request_too_large(detail: str) -> ApiError:
    """413, worded as kube-apiserver does: ``Request entity too large: limit is 3145728``."""
    return ApiError(413, "RequestEntityTooLarge", f"Request entity too large: {detail}")


def object_too_large(plural: str, group: str, name: str, size: int, limit: int) -> ApiError:
    """422 with reason RequestEntityTooLarge: the object the request would store is too big."""
    return ApiError(
        422,
        "RequestEntityTooLarge",
        f'Request entity too large: limit is {limit}: {_qualified(plural, group)} "{name}" '
        f"would be stored as {size} bytes",
        name=name,
        group=group,
        kind=plural,
    )


def too_deep(what: str, limit: int) -> ApiError:
    return ApiError(400, "BadRequest", f"{what} nests more than {limit} levels deep: refused")
