"""cancel_and_wait ends a task even when one cancellation is lost, and never hides the caller's."""

from __future__ import annotations

import asyncio

import pytest

from raven.aio import cancel_and_wait


async def test_a_task_that_swallows_one_cancel_still_ends() -> None:
    # What Python 3.11's wait_for does when the inner call completes as the cancel arrives.
    rounds = 0

    async def stubborn() -> None:
        nonlocal rounds
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                rounds += 1
                if rounds >= 2:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(task, nudge=0.05)
    assert task.cancelled() and rounds == 2


async def test_the_callers_own_cancellation_propagates() -> None:
    stop = asyncio.Event()

    async def deaf() -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass

    inner = asyncio.create_task(deaf())
    outer = asyncio.create_task(cancel_and_wait(inner, nudge=10))
    await asyncio.sleep(0.05)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert not inner.done()  # it ignored us; the caller was free to go anyway
    stop.set()
    await inner


async def test_none_and_finished_tasks_are_fine() -> None:
    await cancel_and_wait(None)

    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    assert task.done(), "the case under test: a task that ended before it is stopped"
    await cancel_and_wait(task)  # its outcome is the owner's business, not raised here
    with pytest.raises(RuntimeError, match="boom"):
        await task  # ... and is still there for the owner
