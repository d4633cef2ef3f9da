"""A change counter that many tasks can wait on without missing or stealing wake-ups.

An ``asyncio.Event`` shared by several consumers loses changes when one of them clears it; a
counter does not: each waiter remembers the generation it has seen and waits for a newer one.
"""

from __future__ import annotations

import asyncio


class Generation:
    """Monotonic change counter with an awaitable "newer than" wait."""

    def __init__(self) -> None:
        self.value = 0
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        # Created lazily so the object can be built outside a running loop.
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def bump(self) -> int:
        cond = self._condition()
        async with cond:
            self.value += 1
            cond.notify_all()
        return self.value

    async def wait_newer(self, seen: int, timeout: float | None = None) -> int:
        """Return the current generation once it is > ``seen``; raise TimeoutError after timeout."""
        cond = self._condition()

        async def _wait() -> int:
            async with cond:
                await cond.wait_for(lambda: self.value > seen)
                return self.value

        async with asyncio.timeout(timeout):
            return await _wait()
