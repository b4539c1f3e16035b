"""``send_many`` (sync and async) against real gateways: one result per message, in order, each
the SendResult or the same error ``send`` raises; chunking into requests within the gateway's
limits; retries that never send twice."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import psvn_client
import pytest
from psvn_client import BatchResult, Message, _core

from tests.clients.test_client import REFERRAL, SERVICE_REQUEST, aclient, client
from tests.conftest import Network


def referral(i: int, **over: Any) -> Message:
    fields: dict[str, Any] = {"to": "ods:RYR", "type": SERVICE_REQUEST, "payload": REFERRAL,
                              "purpose": "direct-care", "local_id": f"case-{i}", **over}
    return Message(**fields)


def batch_requests(net: Network, org: str) -> float:
    """How many batch requests the gateway has answered (its psvn_batch_items histogram)."""
    return net.gateways[org].gateway.metrics.registry.get_sample_value("psvn_batch_items_count") or 0.0


async def test_async_send_many_gives_each_message_its_own_result(network: Network) -> None:
    messages: list[Message | dict[str, Any]] = [
        referral(0),
        referral(1, payload={**REFERRAL, "status": None}),
        referral(2, purpose="marketing"),
        {"to": "ods:XXX", "type": SERVICE_REQUEST, "payload": REFERRAL, "purpose": "direct-care"},
        {"to": "ods:RYR", "type": SERVICE_REQUEST, "payload": REFERRAL, "purpose": "direct-care", "local_id": "m"},
    ]
    async with aclient(network, network.COUNCIL) as council, aclient(network, network.TRUST) as trust:
        results = await council.send_many(messages)
        assert [r.index for r in results] == [0, 1, 2, 3, 4]
        assert [r.ok for r in results] == [True, False, False, False, True]
        assert all(r.idempotency_key for r in results) and len({r.idempotency_key for r in results}) == 5

        # each refusal is the error send() raises for the same message, with its data
        for r, message in zip(results[1:4], messages[1:4], strict=True):
            body = message.to_json() if isinstance(message, Message) else dict(message)
            with pytest.raises(psvn_client.PsvnError) as single:
                await council.send(body.pop("to"), body.pop("type"), body.pop("payload"), **body)
            assert r.error is not None and type(r.error) is type(single.value)
            assert (r.error.code, r.error.status, r.error.field, r.error.rule) == \
                (single.value.code, single.value.status, single.value.field, single.value.rule)
            assert r.error.violations == single.value.violations
            assert r.id == r.error.message_id and r.id
        assert isinstance(results[1].error, psvn_client.InvalidPayload)
        assert [v.path for v in results[1].error.violations] == ["/status"]
        assert isinstance(results[2].error, psvn_client.PolicyDenied)
        assert isinstance(results[3].error, psvn_client.ValidationError) and results[3].error.field == "to"
        with pytest.raises(psvn_client.PolicyDenied):
            results[2].unwrap()

        sent = [r.unwrap() for r in (results[0], results[4])]
        for s in sent:
            assert s.status == "accepted" and not s.duplicate and s.location == f"/v1/messages/{s.id}"
            await council.wait_for_status(s.id, "delivered", timeout=10)
        assert sorted(m.id for m in await trust.inbox()) == sorted(s.id for s in sent)

        # again with the keys it was given: the same ids, nothing sent twice
        again = await council.send_many([_with_key(m, r) for m, r in zip(messages, results, strict=True)])
        assert [r.id for r in again if r.ok] == [s.id for s in sent]
        assert all(r.unwrap().duplicate for r in again if r.ok)
        assert sorted(m.id for m in await trust.inbox()) == sorted(s.id for s in sent)


def _with_key(message: Message | dict[str, Any], result: BatchResult) -> dict[str, Any]:
    body = message.to_json() if isinstance(message, Message) else dict(message)
    return {**body, "idempotency_key": result.idempotency_key}


async def test_sync_send_many_chunks_a_long_iterable_into_requests(network: Network) -> None:
    taken: list[int] = []

    def messages() -> Iterator[Message]:  # read lazily, one chunk at a time
        for i in range(7):
            taken.append(i)
            yield referral(i)

    before = batch_requests(network, network.COUNCIL)

    def flow() -> list[BatchResult]:
        with client(network, network.COUNCIL) as council:
            return council.send_many(messages(), batch_size=3)

    results = await asyncio.to_thread(flow)
    assert [r.index for r in results] == list(range(7)) and all(r.ok for r in results)
    assert batch_requests(network, network.COUNCIL) - before == 3  # 3 + 3 + 1
    assert taken == list(range(7))
    async with aclient(network, network.COUNCIL) as council:
        for r in results:
            await council.wait_for_status(r.unwrap().id, "delivered", timeout=10)


async def test_a_message_over_the_body_limit_is_refused_alone(network: Network) -> None:
    limit = network.gateways[network.COUNCIL].gateway.config.gateway.max_body_bytes
    huge = referral(1, payload={**REFERRAL, "note": [{"text": "x" * 1024}] * (limit // 1024 + 1)})
    async with aclient(network, network.COUNCIL) as council:
        results = await council.send_many([referral(0), huge, referral(2)], max_batch_bytes=limit)
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, psvn_client.PayloadTooLarge) and results[1].error.field == "body"


async def test_a_request_that_fails_whole_is_each_messages_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the client connects
    async with psvn_client.AsyncClient(f"https://127.0.0.1:{port}", retries=1, backoff=0.01) as nowhere:
        results = await nowhere.send_many([referral(i) for i in range(3)])
    assert [r.index for r in results] == [0, 1, 2]
    assert all(isinstance(r.error, psvn_client.ConnectionError) for r in results)


def test_batches_split_by_count_and_by_size_without_reading_ahead() -> None:
    items = [{"to": "ods:RYR", "type": SERVICE_REQUEST, "payload": {"n": "x" * 100}, "purpose": "direct-care"}] * 10
    by_count = list(_core.batches(items, batch_size=4, max_bytes=10**6))
    assert [len(c) for c in by_count] == [4, 4, 2]
    one = len(by_count[0][0].encoded)  # each item is encoded once, and sized exactly
    assert json.loads(by_count[0][0].encoded) == by_count[0][0].body
    three = len('{"messages":[]}') + 3 * one + 2  # three items and their two commas
    by_size = list(_core.batches(items, batch_size=500, max_bytes=three))
    assert [len(c) for c in by_size] == [3, 3, 3, 1]
    assert [len(c) for c in _core.batches(items, batch_size=500, max_bytes=three - 1)] == [2, 2, 2, 2, 2]
    request = _core.batch_call(by_size[0]).body()  # the items' own bytes, joined
    assert request is not None and len(request) == three
    assert json.loads(request) == {"messages": [i.body for i in by_size[0]]}
    assert [i.index for c in by_size for i in c] == list(range(10))
    assert all(i.body["idempotency_key"] == i.key for c in by_size for i in c)
    kept = next(_core.batches([{**items[0], "idempotency_key": "mine"}], batch_size=1, max_bytes=10**6))
    assert kept[0].key == "mine"
    with pytest.raises(TypeError):
        list(_core.batches(["not a message"], batch_size=1, max_bytes=10**6))  # type: ignore[list-item]


def test_an_item_json_cannot_carry_is_named_before_anything_is_sent() -> None:
    """NaN (or a value JSON has no form for) in one item stops ``send_many`` while it batches,
    naming that item, as a malformed message does."""
    items: list[Any] = [{"to": "ods:RYR", "type": SERVICE_REQUEST, "payload": {"n": 1}, "purpose": "direct-care"},
                        {"to": "ods:RYR", "type": SERVICE_REQUEST, "payload": {"n": float("nan")},
                         "purpose": "direct-care"}]
    with pytest.raises(ValueError, match="item 1 cannot be sent as JSON"):
        list(_core.batches(items, batch_size=10, max_bytes=10**6))
    items[1]["payload"] = {"n": object()}
    with pytest.raises(ValueError, match="item 1 cannot be sent as JSON"):
        list(_core.batches(items, batch_size=10, max_bytes=10**6))
