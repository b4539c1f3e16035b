"""Running and stopping asyncio tasks.

``together`` gathers awaitables, but awaits a lone one in the caller's own task.

On Python 3.11 ``asyncio.wait_for`` can swallow a cancellation that arrives just as its inner
wait finishes, so a loop built on it may carry on after ``task.cancel()``, and ``await task``
then waits for ever (seen: a gateway's stop hung in one of its followers). ``halt`` cancels
again until the task is done, waiting a moment between tries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import TypeVar

T = TypeVar("T")


async def together(aws: Sequence[Awaitable[T]]) -> list[T]:
    """``asyncio.gather(*aws)``, except that a lone awaitable is awaited in the caller's task:
    gather wraps each in a task of its own, which starts a loop turn later, and on an idle
    gateway a turn costs tens of microseconds of a one-at-a-time message's way. Results in
    order; the first exception raised propagates, as gather's does."""
    if len(aws) == 1:
        return [await aws[0]]
    return list(await asyncio.gather(*aws))


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
