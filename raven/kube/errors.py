"""The typed error tree every Kubernetes call in Raven raises.

The retry policy lives in the type: a :class:`TransientError` carries the delay after which a
retry makes sense; a :class:`PermanentError` will fail the same way again. :class:`Conflict`
(HTTP 409, a stale resourceVersion or an object that already exists) and :class:`NotFound`
(HTTP 404) are answers the caller usually handles itself, so they get their own types.
The underlying exception is always chained (``raise ... from``).
"""

from __future__ import annotations


class KubeError(Exception):
    """Base of every error raised by :mod:`raven.kube`."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status  # HTTP status when the server answered, else None
        self.reason = reason  # Status.reason from the server, e.g. "AlreadyExists"


class TransientError(KubeError):
    """Worth retrying after ``delay`` seconds: connection failure, timeout, 429, 5xx."""

    def __init__(
        self, message: str, *, delay: float = 1.0, status: int | None = None, reason: str = ""
    ) -> None:
        super().__init__(message, status=status, reason=reason)
        self.delay = delay


class PermanentError(KubeError):
    """Retrying the same request will not help: bad config, 400, 401, 403, 422."""


class Conflict(KubeError):
    """HTTP 409: the object changed since it was read, or it already exists."""


class NotFound(KubeError):
    """HTTP 404: the object (or the kind) does not exist."""


class Expired(KubeError):
    """HTTP 410 Gone: the resourceVersion is older than the server's history; list again."""
