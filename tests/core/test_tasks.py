"""psvn.core.tasks: ``together`` awaits a lone awaitable in the caller's task and gathers
several (results in order, the first error raised); ``halt`` stops a task for certain."""

from __future__ import annotations

import asyncio

import pytest

from psvn.core.tasks import halt, together


async def _where(tag: str, turns: int = 0) -> tuple[str, asyncio.Task[object] | None]:
    for _ in range(turns):
        await asyncio.sleep(0)
    return tag, asyncio.current_task()


async def test_a_lone_awaitable_runs_in_the_callers_task() -> None:
    assert await together([_where("only")]) == [("only", asyncio.current_task())]


async def test_several_run_as_tasks_of_their_own_with_results_in_order() -> None:
    got = await together([_where("slow", turns=3), _where("quick")])
    assert [tag for tag, _ in got] == ["slow", "quick"]
    tasks = {task for _, task in got}
    assert asyncio.current_task() not in tasks and len(tasks) == 2
    assert await together([]) == []


async def test_an_error_propagates_alone_or_among_several() -> None:
    async def fail() -> tuple[str, asyncio.Task[object] | None]:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await together([fail()])
    with pytest.raises(ValueError, match="refused"):
        await together([_where("fine"), fail()])


async def test_halt_stops_a_task_that_is_waiting() -> None:
    task = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    await halt(task)
    assert task.cancelled()
    await halt(None)  # nothing to stop
