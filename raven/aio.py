"""Small asyncio helpers that hold up under cancellation.

Python 3.11's ``asyncio.wait_for`` can lose a cancellation when the awaited operation finishes in
the same loop iteration as the cancel; a task cancelled at that moment carries on as if nothing
happened, and whoever awaits it waits forever. :func:`cancel_and_wait` therefore cancels again
until the task really ends, and the loops in Raven use ``asyncio.timeout`` instead of
``wait_for``.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None, *, nudge: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again every ``nudge`` seconds.

    The task's own outcome (cancelled, an exception) is not raised here; a cancellation of the
    *caller* still propagates, unlike the common ``try: await task except CancelledError: pass``.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=nudge)
    if not task.cancelled():
        task.exception()  # mark it retrieved; the owner logged or recorded it already
