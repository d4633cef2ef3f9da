"""Whether a client's own credential may read what the shared copy would answer it with: the API
server's SelfSubjectAccessReview, asked with that credential, remembered for a while.

A shared copy is read with the node's identity, so before a client is answered from it the API
server is asked, as that client (its Authorization header, or the node's certificate for a
client that showed the node's), whether it may ``list``/``watch`` exactly that resource in
exactly that namespace. Selectors never change what RBAC allows, so this is the whole question.

Answers are remembered by (credential, verb, resource, namespace): an allowed one for
``ttl`` seconds online (a revoked right stops new reads within that time; a watch already open
runs on, as on kube-apiserver, which authorizes a watch once); offline the last answer stands,
as the per-client cache keeps what a credential was accepted for. A 401 forgets the credential
everywhere. A review that fails (no answer, an error status) decides nothing: the read goes
through as before.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from raven.cacheproxy.sharing import SharedRead, Verdict, access_attributes
from raven.cacheproxy.upstream import Upstream

log = logging.getLogger(__name__)

REVIEW_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
DEFAULT_TTL = 60.0
REVIEW_TIMEOUT = 10.0
MAX_REMEMBERED = 4096


@dataclass(frozen=True)
class _Answer:
    allowed: bool
    at: float


class AccessReviews:
    def __init__(
        self,
        upstream: Upstream,
        base_url: str,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"the access review TTL must be positive, got {ttl}")
        self.upstream = upstream
        self.base_url = base_url.rstrip("/")
        self.ttl = ttl
        self.clock = clock
        self.answers: dict[tuple[str, tuple[tuple[str, str], ...]], _Answer] = {}
        self.asked = 0

    @staticmethod
    def _key(credential: str, read: SharedRead) -> tuple[str, tuple[tuple[str, str], ...]]:
        return credential, tuple(sorted(access_attributes(read).items()))

    def verdict(self, credential: str, read: SharedRead, *, online: bool) -> Verdict:
        answer = self.answers.get(self._key(credential, read))
        if answer is None:
            return Verdict.UNKNOWN
        if online and self.clock() - answer.at > self.ttl:
            return Verdict.UNKNOWN
        return Verdict.ALLOWED if answer.allowed else Verdict.DENIED

    def forget(self, credential: str) -> None:
        """The API server refused the credential itself (401): no answer for it stands."""
        for key in [k for k in self.answers if k[0] == credential]:
            del self.answers[key]

    async def review(
        self,
        credential: str,
        read: SharedRead,
        headers: Mapping[str, str],
        ssl_context: ssl.SSLContext,
    ) -> Verdict:
        """Ask the API server as the client (``headers``: its Authorization and impersonation
        headers; ``ssl_context``: what to present), and remember the answer."""
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": dict(access_attributes(read))},
        }
        self.asked += 1
        try:
            async with self.upstream.request(
                "POST",
                URL(self.base_url + REVIEW_PATH),
                headers={**headers, "Content-Type": "application/json"},
                data=json.dumps(body).encode(),
                ssl=ssl_context,
                timeout=aiohttp.ClientTimeout(total=REVIEW_TIMEOUT),
            ) as resp:
                data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            log.info("access review for %s failed: %s", read.resource.name, e)
            return Verdict.UNKNOWN
        if status == 401:
            self.forget(credential)
            return Verdict.UNKNOWN
        if status != 201 and status != 200:
            return Verdict.UNKNOWN
        try:
            allowed = json.loads(data)["status"]["allowed"] is True
        except (ValueError, KeyError, TypeError):
            return Verdict.UNKNOWN
        if len(self.answers) >= MAX_REMEMBERED:
            oldest = min(self.answers, key=lambda k: self.answers[k].at)
            del self.answers[oldest]
        self.answers[self._key(credential, read)] = _Answer(allowed, self.clock())
        return Verdict.ALLOWED if allowed else Verdict.DENIED
