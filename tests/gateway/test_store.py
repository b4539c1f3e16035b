"""The state store's turns per message id (``StateStore.lock``: one writer per id in a process)."""

from __future__ import annotations

import asyncio

import pytest

from psvn.gateway.store import KeyTurn


async def test_one_key_one_holder_at_a_time_and_the_lock_dropped_once_idle() -> None:
    locks: dict[str, asyncio.Lock] = {}
    order: list[str] = []
    gate = asyncio.Event()

    async def hold(name: str, key: str) -> None:
        async with KeyTurn(locks, key):
            order.append(f"{name} in")
            await gate.wait()
            order.append(f"{name} out")

    first = asyncio.ensure_future(hold("a", "m1"))
    second = asyncio.ensure_future(hold("b", "m1"))
    other = asyncio.ensure_future(hold("c", "m2"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == ["a in", "c in"]  # b waits for a; another key does not
    assert set(locks) == {"m1", "m2"}
    gate.set()
    await asyncio.gather(first, second, other)
    assert order.index("a out") < order.index("b in")
    assert locks == {}  # nobody holds or waits: nothing is kept per id


async def test_a_turn_cancelled_while_waiting_is_not_taken_and_leaves_nothing_behind() -> None:
    locks: dict[str, asyncio.Lock] = {}
    gate = asyncio.Event()
    entered: list[str] = []

    async def hold(name: str) -> None:
        async with KeyTurn(locks, "m1"):
            entered.append(name)
            await gate.wait()

    holder = asyncio.ensure_future(hold("a"))
    waiter = asyncio.ensure_future(hold("b"))
    for _ in range(5):
        await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert entered == ["a"] and "m1" in locks  # still held by a
    gate.set()
    await holder
    assert locks == {}
    async with KeyTurn(locks, "m1"):  # free again
        entered.append("c")
    assert entered == ["a", "c"] and locks == {}


async def test_a_failure_inside_a_turn_releases_it() -> None:
    locks: dict[str, asyncio.Lock] = {}
    with pytest.raises(RuntimeError):
        async with KeyTurn(locks, "m1"):
            raise RuntimeError("boom")
    assert locks == {}
    async with asyncio.timeout(5), KeyTurn(locks, "m1"):  # not left locked
        pass
