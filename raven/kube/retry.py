"""Retry a Kubernetes call on transient failures, with the delay its error asks for."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from raven.kube.errors import TransientError

T = TypeVar("T")


async def retry_transient(
    call: Callable[[], Awaitable[T]], *, attempts: int = 5, max_delay: float = 5.0
) -> T:
    """Run ``call()``; on :class:`TransientError` wait (its delay, jittered, capped) and retry.

    The last error propagates after ``attempts`` tries; other errors propagate at once.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(attempts):
        try:
            return await call()
        except TransientError as e:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(min(max_delay, e.delay) * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")
