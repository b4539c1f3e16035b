"""psvn.core.retry: the one retry loop (no network)."""

from __future__ import annotations

import asyncio
import time

import pytest

from psvn.core.retry import retrying


class Flaky:
    """Fails with ``errors`` in turn, then returns "done"; counts the calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits between tries (still really slept)."""
    seen: list[float] = []
    real = asyncio.sleep

    async def sleep(seconds: float, *args: object) -> None:
        seen.append(round(seconds, 6))
        await real(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return seen


async def test_retries_the_named_errors_with_doubling_waits(sleeps: list[float]) -> None:
    step = Flaky(TimeoutError(), ConnectionError(), TimeoutError(), TimeoutError())
    got = await retrying(step, on=(TimeoutError, ConnectionError), first_delay=0.01, max_delay=0.03, attempts=9)
    assert got == "done" and step.calls == 5
    assert sleeps == [0.01, 0.02, 0.03, 0.03]


async def test_an_error_not_named_is_raised_at_once(sleeps: list[float]) -> None:
    step = Flaky(KeyError("no"))
    with pytest.raises(KeyError):
        await retrying(step, on=TimeoutError, first_delay=0.01, max_delay=0.01, attempts=5)
    assert step.calls == 1 and sleeps == []


async def test_a_predicate_chooses_what_is_retried(sleeps: list[float]) -> None:
    step = Flaky(ValueError("transient"), ValueError("final"))
    with pytest.raises(ValueError, match="final"):
        await retrying(step, on=lambda exc: str(exc) == "transient", first_delay=0.01, max_delay=0.01, attempts=5)
    assert step.calls == 2


async def test_cancellation_is_never_retried() -> None:
    step = Flaky(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await retrying(step, on=lambda exc: True, first_delay=0.01, max_delay=0.01, attempts=5)
    assert step.calls == 1


async def test_attempts_bound_the_tries_and_the_last_error_is_raised(sleeps: list[float]) -> None:
    step = Flaky(*(TimeoutError(str(i)) for i in range(10)))
    with pytest.raises(TimeoutError, match=r"^2$"):
        await retrying(step, on=TimeoutError, first_delay=0.01, max_delay=1.0, attempts=3)
    assert step.calls == 3 and sleeps == [0.01, 0.02]  # no wait after the last try


async def test_patience_bounds_the_time_and_is_never_slept_past(sleeps: list[float]) -> None:
    step = Flaky(*(TimeoutError() for _ in range(1000)))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await retrying(step, on=TimeoutError, first_delay=0.02, max_delay=0.08, patience=0.5)
    took = time.monotonic() - started
    assert took < 0.5 + 0.1, took  # the next wait would have ended past the patience: it gave up instead
    assert sum(sleeps) < 0.5 and sleeps[:4] == [0.02, 0.04, 0.08, 0.08]
    assert step.calls == len(sleeps) + 1 and step.calls >= 6


async def test_stop_when_gives_up_early(sleeps: list[float]) -> None:
    closing = {"now": False}
    step = Flaky(*(TimeoutError() for _ in range(10)))
    with pytest.raises(TimeoutError):
        await retrying(step, on=TimeoutError, first_delay=0.01, max_delay=0.01, attempts=6,
                       stop_when=lambda tries: closing["now"] and tries >= 2)
    assert step.calls == 6
    closing["now"] = True
    step = Flaky(*(TimeoutError() for _ in range(10)))
    with pytest.raises(TimeoutError):
        await retrying(step, on=TimeoutError, first_delay=0.01, max_delay=0.01, attempts=6,
                       stop_when=lambda tries: closing["now"] and tries >= 2)
    assert step.calls == 2
