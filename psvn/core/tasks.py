"""Stopping asyncio tasks for certain.

On Python 3.11 ``asyncio.wait_for`` can swallow a cancellation that arrives just as its inner
wait finishes, so a loop built on it may carry on after ``task.cancel()``, and ``await task``
then waits for ever (seen: a gateway's stop hung in one of its followers). ``halt`` cancels
again until the task is done, waiting a moment between tries.
"""

from __future__ import annotations

import asyncio
import contextlib


async def halt(task: asyncio.Task[object] | asyncio.Task[None] | None, *, tries: int = 100) -> None:
    """Cancel ``task`` and wait until it is done (re-cancelling while it is not)."""
    if task is None:
        return
    for _ in range(tries):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if task.done() and not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()
