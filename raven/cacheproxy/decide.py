"""The pure core of the proxy: given a request's shape and the proxy's state, decide what to do;
given how a forwarded request failed or what the API server answered, decide what follows.

No I/O here, so every combination is tested with exact inputs. The server executes the decision.

- Offline, only a credential the API server accepted for exactly this data is served from the
  cache. Every other request for data (no credential, an unknown one, one accepted for other
  data only, nothing cached) gets one and the same answer, so it learns nothing of what is
  cached.
- The cloud's state comes from the probe; a forwarded request changes it only with evidence
  that the *path* failed (no connection could be opened), never because one request was slow or
  its connection broke.
- A write whose request never reached the API server was not applied; one that timed out or
  broke after it was sent may or may not have been, and says so.
- 401 means the API server no longer accepts the credential at all: it is forgotten for every
  entry. 403 on a read means it may not read that data: forgotten for that entry.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

READ_METHODS = frozenset({"GET", "HEAD"})


class Action(enum.Enum):
    FORWARD = "forward"  # pass to the API server (and learn from a read's answer)
    FORWARD_WATCH = "forward-watch"  # stream through at once, folding events into the cache
    FORWARD_STREAM = "forward-stream"  # another long-running request: streamed, never cached
    SERVE_CACHE = "serve-cache"  # offline, and this credential was accepted for this entry
    HOLD_WATCH = "hold-watch"  # offline watch: open, silent, closed when the cloud returns
    REFUSE_WRITE = "refuse-write"  # offline write: 503 naming the outage
    REFUSE_UNAVAILABLE = "refuse-unavailable"  # offline, nothing cached for this credential


@dataclass(frozen=True)
class Request:
    method: str
    watch: bool
    credential: str | None  # hash of the bearer token, None when there is none
    long_running: bool = False  # a watch, logs, exec, attach, port-forward, proxy


@dataclass(frozen=True)
class State:
    cloud_healthy: bool
    cached: bool  # an entry answers this request
    accepted_credentials: frozenset[str]  # credential hashes the API server accepted for it
    fresh_enough: bool = True  # the entry is at least at the version the request asks for


def decide(req: Request, state: State) -> Action:
    method = req.method.upper()
    read = method in READ_METHODS
    if state.cloud_healthy:
        if read and req.watch:
            return Action.FORWARD_WATCH
        if req.long_running:
            return Action.FORWARD_STREAM
        return Action.FORWARD
    if not read:
        return Action.REFUSE_WRITE
    known = (
        req.credential is not None and state.cached and req.credential in state.accepted_credentials
    )
    if not known or (req.long_running and not req.watch):
        return Action.REFUSE_UNAVAILABLE
    if req.watch:
        # A held watch shows no data, but only a credential accepted for the list it continues
        # is held, so that the answer to an unknown one is the same as for a miss.
        return Action.HOLD_WATCH
    if not state.fresh_enough:
        return Action.REFUSE_UNAVAILABLE
    return Action.SERVE_CACHE


class Failure(enum.Enum):
    CONNECT = "connect"  # no connection could be opened: the request never left the node
    TIMEOUT = "timeout"  # connected and sent, but the answer did not come in time
    BROKEN = "broken"  # the connection broke after the request was sent


def marks_cloud_down(failure: Failure) -> bool:
    """Only a connection that cannot be opened is evidence about the path to the cloud."""
    return failure is Failure.CONNECT


class Outcome(enum.Enum):
    ANSWER_OFFLINE = "answer-offline"  # a read: answer it as while the cloud is unreachable
    NOT_APPLIED = "not-applied"  # a write that never reached the API server: 503
    OUTCOME_UNKNOWN = "outcome-unknown"  # a write that may have been applied: 504
    GATEWAY_TIMEOUT = "gateway-timeout"  # a read that got no answer in time: 504
    BAD_GATEWAY = "bad-gateway"  # a read whose connection broke: 502


def after_failure(method: str, failure: Failure) -> Outcome:
    if method.upper() in READ_METHODS:
        if failure is Failure.CONNECT:
            return Outcome.ANSWER_OFFLINE
        return Outcome.GATEWAY_TIMEOUT if failure is Failure.TIMEOUT else Outcome.BAD_GATEWAY
    return Outcome.NOT_APPLIED if failure is Failure.CONNECT else Outcome.OUTCOME_UNKNOWN


class Verdict(enum.Enum):
    KEEP = "keep"  # the answer says nothing new about the credential
    ACCEPTED = "accepted"  # a successful read: the credential may read this entry (cache it)
    FORBIDDEN = "forbidden"  # 403 on a read: forget the credential for this entry
    REFUSED = "refused"  # 401: forget the credential for every entry


def credential_verdict(method: str, status: int) -> Verdict:
    if status == 401:
        return Verdict.REFUSED
    if method.upper() in READ_METHODS:
        if status == 403:
            return Verdict.FORBIDDEN
        if status == 200 and method.upper() == "GET":
            return Verdict.ACCEPTED
    return Verdict.KEEP
