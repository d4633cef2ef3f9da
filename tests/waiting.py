"""Waiting for what a test checks, with a deadline, instead of asserting a snapshot of a system
that may still be settling (used by the lab and the namespace tests)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    condition: Callable[[], object], deadline: float, describe: str, *, interval: float = 0.3
) -> float:
    """Call ``condition`` until it holds; the seconds that took.

    ``condition`` holds when it returns a true value. Returning a false value or raising
    AssertionError means "not yet"; on timeout the AssertionError names ``describe`` and what
    was observed last (the false value, or the message of the last failed assertion), so a
    check written with plain ``assert`` statements reads the same whether it timed out or not.
    Any other exception is a bug in the check and propagates at once.
    """
    start = time.monotonic()
    while True:
        try:
            value = condition()
        except AssertionError as error:
            last: str = str(error) or repr(error)
        else:
            if value:
                return time.monotonic() - start
            last = repr(value)
        if time.monotonic() - start >= deadline:
            raise AssertionError(
                f"timed out after {deadline:g}s waiting for {describe}; last observed: {last}"
            )
        time.sleep(interval)
