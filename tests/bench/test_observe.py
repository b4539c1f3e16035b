"""The bench's delivery observer: a wait ends when its last message is done, not before."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from psvn.bench.observe import DeliveryObserver
from psvn.protocol.subjects import state_bucket

SENDER, RECIPIENT = "gss:E06000043", "ods:RYR"


@dataclass
class Update:  # what the observer reads of a state-bucket update
    subject: str
    data: bytes


def filed(obs: DeliveryObserver, mid: str, status: str = "delivered") -> None:
    obs._on_in(Update(f"$KV.{state_bucket(RECIPIENT)}.in.{mid}", b'{"status":"%s"}' % status.encode()))


def sender_saw(obs: DeliveryObserver, mid: str, status: str = "delivered") -> None:
    obs._on_out(Update(f"$KV.{state_bucket(SENDER)}.out.{mid}", b'{"status":"%s"}' % status.encode()))


async def test_a_wait_ends_when_every_message_is_done_at_both_ends() -> None:
    obs = DeliveryObserver(SENDER, RECIPIENT)
    wait = asyncio.ensure_future(obs.wait_all(["a", "b"], 30))
    await asyncio.sleep(0)
    sender_saw(obs, "a", "accepted")  # not yet delivered anywhere
    filed(obs, "a")
    sender_saw(obs, "a")
    filed(obs, "b")
    [(pending, all_done)] = obs._waiters
    # b is in the mailbox, but its sender has not seen it delivered: the wait is not woken
    assert pending == {"b"} and not all_done.is_set()
    sender_saw(obs, "b")
    assert all_done.is_set()
    assert await wait is True
    assert obs._waiters == []


async def test_a_failure_ends_the_wait_for_that_message() -> None:
    obs = DeliveryObserver(SENDER, RECIPIENT)
    wait = asyncio.ensure_future(obs.wait_all(["a"], 30))
    await asyncio.sleep(0)
    filed(obs, "a", "quarantined")
    assert await wait is True
    assert obs.failed == {"a": "trust: quarantined"}


async def test_a_wait_for_what_never_comes_times_out_and_is_forgotten() -> None:
    obs = DeliveryObserver(SENDER, RECIPIENT)
    filed(obs, "a")
    sender_saw(obs, "a")
    assert await obs.wait_all(["a"], 0.01) is True  # done already: no wait
    assert await obs.wait_all(["a", "never"], 0.05) is False
    assert obs._waiters == []


@pytest.mark.parametrize("garbage", [b"", b"not json", b'{"status": 3}'])
async def test_an_update_it_cannot_read_counts_for_nothing(garbage: bytes) -> None:
    obs = DeliveryObserver(SENDER, RECIPIENT)
    obs._on_in(Update(f"$KV.{state_bucket(RECIPIENT)}.in.a", garbage))
    assert obs.mailbox == {} and obs.failed == {}
