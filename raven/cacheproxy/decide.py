"""The pure core of the proxy: given a request's shape and the proxy's state, decide what to do.

No I/O here, so every combination is tested with exact inputs. The server executes the decision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

READ_METHODS = frozenset({"GET", "HEAD"})


class Action(enum.Enum):
    FORWARD = "forward"  # pass to the API server (and cache a successful read)
    FORWARD_WATCH = "forward-watch"  # stream through, updating the cache
    SERVE_CACHE = "serve-cache"  # offline, and this credential was accepted for this entry
    HOLD_WATCH = "hold-watch"  # offline watch: open, silent, closed when the cloud returns
    REFUSE_WRITE = "refuse-write"  # offline write: 503 naming the outage
    REFUSE_AUTH = "refuse-auth"  # offline, credential missing or never accepted for this data
    REFUSE_MISS = "refuse-miss"  # offline, nothing cached for this request


@dataclass(frozen=True)
class Request:
    method: str
    watch: bool
    credential: str | None  # hash of the Authorization header, None when absent


@dataclass(frozen=True)
class State:
    cloud_healthy: bool
    cached: bool  # an entry exists for this request's cache key
    accepted_credentials: frozenset[str]  # credential hashes the API server accepted for it


def decide(req: Request, state: State) -> Action:
    method = req.method.upper()
    if state.cloud_healthy:
        if method in READ_METHODS and req.watch:
            return Action.FORWARD_WATCH
        return Action.FORWARD
    if method not in READ_METHODS:
        return Action.REFUSE_WRITE
    # Offline: only a credential the API server already accepted may see cached data.
    if req.credential is None:
        return Action.REFUSE_AUTH
    if req.watch:
        # A watch reveals no data while held, but still demand a known credential for the list
        # it belongs to, so unknown clients cannot probe the proxy.
        if state.cached and req.credential in state.accepted_credentials:
            return Action.HOLD_WATCH
        return Action.REFUSE_AUTH if state.cached else Action.REFUSE_MISS
    if not state.cached:
        return Action.REFUSE_MISS
    if req.credential not in state.accepted_credentials:
        return Action.REFUSE_AUTH
    return Action.SERVE_CACHE
