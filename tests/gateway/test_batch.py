"""``POST /v1/messages:batch`` through real gateways, real TLS and a real nats-server: one result
per item in order, each refusal the problem its single send gets (and audited like one), each
accepted message delivered exactly once, idempotency per item, the limits refused clearly."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.broker.test_backbone import stream_count
from tests.conftest import Network
from tests.gateway.test_service import REFERRAL, audit_records, call, referral, wait_status

BATCH = "/v1/messages:batch"
# what a problem says about the item itself; message_id and instance name this one occurrence
SAME = ("type", "title", "status", "detail", "code", "field", "rule", "violations", "rule_ids", "policy_version")


def _essence(problem: dict[str, Any]) -> dict[str, Any]:
    return {k: problem.get(k) for k in SAME}


inbox_count = stream_count  # how many messages the member's inbox holds: a duplicate publish would show


def delivered_count(net: Network, org: str) -> float:
    """Messages the member's gateway filed as delivered (each is filed once, by id)."""
    return float(net.gateways[org].gateway.metrics.received.labels("delivered")._value.get())


async def test_batch_answers_each_item_in_order_as_its_single_send_would(network: Network) -> None:
    council = network.COUNCIL
    bad_items: list[Any] = [
        referral(to="ods:XXX"),                                   # unknown recipient
        referral(payload={**REFERRAL, "status": None}),           # invalid payload, with violations
        referral(purpose="marketing"),                            # policy denied, with rule ids
        {"to": "ods:RYR"},                                        # envelope: missing fields
        referral(surprise=1),                                     # envelope: unknown field
        referral(idempotency_key="bad key\n"),                    # envelope: key format
        "not an object",                                          # not a SendRequest at all
    ]
    items: list[Any] = [referral(local_id="first"), *bad_items, referral(local_id="last")]
    status, body = await call(network, council, "POST", BATCH, {"messages": items})
    assert status == 200, body
    results = body["results"]
    assert len(results) == len(items)

    first, *refused, last = results
    for accepted in (first, last):
        assert accepted["status"] == "accepted" and accepted["policy"]["rule_ids"] == ["care-referrals"]
        assert accepted["duplicate"] is False
    for i, (item, problem) in enumerate(zip(bad_items, refused, strict=True), start=1):
        single_status, single = await call(network, council, "POST", "/v1/messages", item)
        assert problem["status"] == single_status, (item, problem, single)
        assert _essence(problem) == _essence(single), (item, problem, single)
        assert problem["message_id"] and problem["message_id"] != single["message_id"]
        assert problem["instance"] == f"{BATCH}#/messages/{i}"

    # every refusal audited like a single refused send
    refused_ids = {p["message_id"] for p in refused}
    records = await audit_records(network, refused_ids, at_least=len(refused_ids))
    assert {r["message_id"] for r in records if r["event"] == "rejected"} == refused_ids

    # the accepted ones, and only they, delivered, once each
    for accepted in (first, last):
        await wait_status(network, council, accepted["id"], "delivered")
    _, inbox = await call(network, network.TRUST, "GET", "/v1/inbox")
    assert sorted(m["id"] for m in inbox["messages"]) == sorted([first["id"], last["id"]])
    assert await inbox_count(network, network.TRUST) == 2
    assert delivered_count(network, network.TRUST) == 2


async def test_a_retried_batch_returns_the_same_ids_and_delivers_nothing_twice(network: Network) -> None:
    council = network.COUNCIL
    items = [referral(idempotency_key=f"batch-retry-{i}", local_id=f"n{i}") for i in range(6)]
    items.append(referral(to="ods:XXX", idempotency_key="batch-retry-bad"))
    status, first = await call(network, council, "POST", BATCH, {"messages": items})
    assert status == 200, first
    ids = [r["id"] for r in first["results"][:6]]
    assert len(set(ids)) == 6 and first["results"][6]["code"] == "unknown-recipient"
    for mid in ids:
        await wait_status(network, council, mid, "delivered")

    status, again = await call(network, council, "POST", BATCH, {"messages": items})
    assert status == 200, again
    assert [r["id"] for r in again["results"][:6]] == ids
    assert all(r["duplicate"] is True for r in again["results"][:6])
    assert again["results"][6]["code"] == "unknown-recipient"

    # the same key with a different message is a conflict for that item alone
    changed = [*items[:5], referral(idempotency_key="batch-retry-5", purpose="safeguarding")]
    status, conflict = await call(network, council, "POST", BATCH, {"messages": changed})
    assert [r.get("code") for r in conflict["results"]] == [None] * 5 + ["conflict"]
    assert conflict["results"][5]["field"] == "idempotency_key"

    # a marker sent after the retries: once it is filed, anything the retries had published
    # would be in the stream before it
    status, marker = await call(network, council, "POST", "/v1/messages", referral(local_id="marker"))
    await wait_status(network, council, marker["id"], "delivered")
    assert await inbox_count(network, network.TRUST) == 7
    assert delivered_count(network, network.TRUST) == 7


async def test_a_key_repeated_inside_one_batch_sends_one_message(network: Network) -> None:
    items = [referral(idempotency_key="twice-in-one")] * 3
    status, body = await call(network, network.COUNCIL, "POST", BATCH, {"messages": items})
    assert status == 200, body
    assert len({r["id"] for r in body["results"]}) == 1
    await wait_status(network, network.COUNCIL, body["results"][0]["id"], "delivered")
    assert await inbox_count(network, network.TRUST) == 1


async def test_batch_limits_and_malformed_bodies_are_one_clear_problem(network: Network) -> None:
    council = network.COUNCIL
    gw = network.gateways[council].gateway
    limit = gw.config.gateway.max_batch_items

    status, problem = await call(network, council, "POST", BATCH, {"messages": [referral()] * (limit + 1)})
    assert (status, problem["code"], problem["field"], problem["rule"]) == \
        (413, "payload-too-large", "messages", "max-batch-items"), problem
    assert problem["max_items"] == limit and problem["items"] == limit + 1 and str(limit) in problem["detail"]
    [record] = await audit_records(network, {problem["message_id"]}, at_least=1)
    assert record["event"] == "rejected" and record["rule"] == "max-batch-items"

    big = {"messages": [referral(payload={**REFERRAL, "note": [{"text": "x" * 8000}]})] * 400}
    assert len(json.dumps(big)) > gw.config.gateway.max_body_bytes
    status, problem = await call(network, council, "POST", BATCH, big)
    assert (status, problem["code"], problem["field"], problem["rule"]) == \
        (413, "payload-too-large", "body", "max-body-bytes"), problem
    assert str(gw.config.gateway.max_body_bytes) in problem["detail"]

    cases: list[tuple[Any, int, str, str | None]] = [
        (b'{"messages": [{"to": ', 400, "malformed-json", "body"),
        ({"items": []}, 422, "invalid-envelope", None),
        ({}, 422, "invalid-envelope", "messages"),
        ({"messages": {"to": "ods:RYR"}}, 422, "invalid-envelope", "messages"),
        ([referral()], 422, "invalid-envelope", None),
    ]
    for body, want_status, code, field in cases:
        raw = body if isinstance(body, bytes) else None
        status, problem = await call(network, council, "POST", BATCH, None if raw else body, raw=raw)
        assert (status, problem["code"]) == (want_status, code), (body, problem)
        assert problem["message_id"], problem
        if field:
            assert problem["field"] == field, problem

    status, empty = await call(network, council, "POST", BATCH, {"messages": []})
    assert (status, empty) == (200, {"results": []})

    # idempotency is per item: a header on the batch would promise what it cannot keep
    conn = aiohttp.TCPConnector(ssl=network.client_ssl(council))
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.post(network.url(council) + BATCH, json={"messages": [referral()]},
                          headers={"Idempotency-Key": "whole-batch"}) as r:
            problem = await r.json(content_type=None)
    assert (r.status, problem["field"], problem["rule"]) == (400, "Idempotency-Key", "batch-idempotency"), problem
    assert await inbox_count(network, network.TRUST) == 0


async def test_a_batch_sends_at_most_batch_concurrency_at_a_time_and_answers_in_order(network: Network) -> None:
    """``gateway.batch_concurrency`` bounds how many of a batch's items are being sent at once
    (a few workers take the next item in turn); every item still gets its own outcome, in the
    order sent, refusals decoded earlier included."""
    council = network.COUNCIL
    gw = network.gateways[council].gateway
    gw.egress.settings.batch_concurrency = 3
    in_flight: list[int] = [0, 0]  # now, most
    send = gw.egress.send

    async def counted(*args: Any, **kwargs: Any) -> Any:
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            return await send(*args, **kwargs)
        finally:
            in_flight[0] -= 1

    gw.egress.send = counted  # type: ignore[method-assign]
    items: list[Any] = [referral(local_id=f"n{i}") if i % 5 else "not an object" for i in range(20)]
    status, body = await call(network, council, "POST", BATCH, {"messages": items})
    assert status == 200, body
    assert in_flight == [0, 3]
    for i, result in enumerate(body["results"]):
        if i % 5:
            assert result["status"] == "accepted", result
        else:
            assert (result["status"], result["code"]) == (422, "invalid-envelope"), result
            assert result["instance"] == f"{BATCH}#/messages/{i}"
    ids = [r["id"] for i, r in enumerate(body["results"]) if i % 5]
    assert len(set(ids)) == 16
    for mid in ids:
        await wait_status(network, council, mid, "delivered")
