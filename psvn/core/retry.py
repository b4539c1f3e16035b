"""Trying a step again: the one retry loop of psvn (tenacity underneath).

Every part that rides something out uses it: provisioning and state reads through a backbone
election, the audit writer through a disconnect, the webhook through a local system that is
down for a moment. Waits double from ``first_delay`` up to ``max_delay`` (no jitter: few callers,
each retrying its own step); a caller bounds the whole by time (``patience``), by tries
(``attempts``) or both, and maps the last error to its own when this gives up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_any,
    stop_before_delay,
    stop_never,
    wait_exponential,
)
from tenacity.retry import retry_base
from tenacity.stop import stop_base

T = TypeVar("T")

Retried = type[BaseException] | tuple[type[BaseException], ...] | Callable[[Exception], bool]


async def retrying(step: Callable[[], Awaitable[T]], *, on: Retried, first_delay: float, max_delay: float,
                   patience: float | None = None, attempts: int | None = None,
                   stop_when: Callable[[int], bool] | None = None) -> T:
    """``await step()`` until it returns, trying again after an error ``on`` names (exception
    types, or a predicate on an exception), waiting ``first_delay`` seconds, then twice as long
    each time up to ``max_delay``.

    It gives up when the next try would start more than ``patience`` seconds after the first
    (it never sleeps past that), after ``attempts`` tries, or when ``stop_when(tries so far)``
    says so after a failed try, and then raises the last error as it was. An error ``on`` does not
    name is raised at once, and so is anything that is not an ``Exception`` (a cancellation)."""
    # The first try is a plain await: tenacity's machinery costs ~50 µs a call, and the state
    # reads and publishes that come through here run on every message and nearly always succeed.
    started = time.monotonic()
    try:
        return await step()
    except Exception as exc:
        if not _named(on, exc) or (attempts is not None and attempts <= 1) or (stop_when is not None and stop_when(1)) \
                or (patience is not None and time.monotonic() - started + first_delay >= patience):
            raise
    await asyncio.sleep(min(first_delay, max_delay))
    stops: list[stop_base] = []
    if patience is not None:
        stops.append(stop_before_delay(max(0.0, patience - (time.monotonic() - started))))
    if attempts is not None:
        stops.append(stop_after_attempt(attempts - 1))
    if stop_when is not None:
        then = stop_when
        stops.append(_StopWhen(lambda tries: then(tries + 1)))
    retry: retry_base
    if isinstance(on, type | tuple):
        retry = retry_if_exception_type(on)
    else:
        predicate = on
        retry = retry_if_exception(lambda exc: isinstance(exc, Exception) and predicate(exc))
    async for attempt in AsyncRetrying(retry=retry, stop=stop_any(*stops) if stops else stop_never,
                                       wait=wait_exponential(multiplier=2 * first_delay, max=max_delay),
                                       reraise=True):
        with attempt:
            return await step()
    raise AssertionError("unreachable: tenacity either returns the result or raises")


def _named(on: Retried, exc: Exception) -> bool:
    return isinstance(exc, on) if isinstance(on, type | tuple) else on(exc)


class _StopWhen(stop_base):
    def __init__(self, when: Callable[[int], bool]) -> None:
        self.when = when

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.when(retry_state.attempt_number)
