"""Failures half-way through ingress: redelivery repeats what was missed; bad input never loops."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from psvn import devnet
from psvn.certs.keys import x25519_public
from psvn.gateway import core
from psvn.protocol import seal
from psvn.protocol.envelope import SendRequest
from psvn.protocol.subjects import inbox_stream, msg_subject
from tests.broker.test_backbone import settled, stream_count, wait_quarantined
from tests.conftest import Network
from tests.gateway.test_service import audit_records, call, referral, wait_status


async def test_lost_receipt_is_sent_again_on_redelivery(network: Network) -> None:
    trust = network.gateways[network.TRUST].gateway
    real_publish = trust._publish
    failures: list[str] = []

    async def flaky_publish(subject: str, data: bytes, msg_id: str) -> None:
        if msg_id.startswith("rcpt.") and not failures:
            failures.append(msg_id)
            raise RuntimeError("backbone hiccup")  # the receipt is not stored anywhere
        await real_publish(subject, data, msg_id)

    trust._publish = flaky_publish  # type: ignore[method-assign]
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert status == 202
    await wait_status(network, network.COUNCIL, body["id"], "delivered", timeout=20)
    assert failures == [f"rcpt.{body['id']}.delivered"]
    _, inbox = await call(network, network.TRUST, "GET", "/v1/inbox")
    assert [m["id"] for m in inbox["messages"]] == [body["id"]]  # filed once, not twice


async def test_receipt_from_a_member_the_message_did_not_go_to_is_refused(network: Network) -> None:
    _, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    mid = body["id"]
    await wait_status(network, network.COUNCIL, mid, "delivered")
    gp = network.gateways[network.GP].gateway
    subject, rid, data = core.make_receipts([core.ReceiptItem(message_id=mid, status="acknowledged")],
                                            me=gp.identity, to=gp.registry.lookup(network.COUNCIL))
    assert gp.js is not None
    await gp.js.publish(subject, data, headers={"Nats-Msg-Id": rid})
    q = await wait_quarantined(network, network.COUNCIL, rid)
    assert q["rule"] == "receipt-recipient"
    _, st = await call(network, network.COUNCIL, "GET", f"/v1/messages/{mid}")
    assert st["status"] == "delivered"


@pytest.mark.parametrize("bad_id", ["../../etc passwd", "a..b", "ends-with-a-dot.", "a.b"])
async def test_a_sender_chosen_id_that_is_not_well_formed_is_not_trusted(network: Network, bad_id: str) -> None:
    """Filed under its stream sequence instead, and quarantined: an id with an empty token would
    make no state key at all (``in.a..b`` is no subject), so the message came back for ever; a
    message id with dots (receipts' ids have them) could be filed but never read or acknowledged
    through the mailbox, which takes dotless ids."""
    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        ack = await nc.jetstream().publish(msg_subject(network.TRUST, network.COUNCIL), b"x",
                                           headers={"Nats-Msg-Id": bad_id})
    finally:
        await nc.close()
    q = await wait_quarantined(network, network.TRUST, f"seq-{ack.seq}")
    assert q["status"] == "quarantined"


async def test_malformed_but_signed_envelope_is_quarantined_not_redelivered(network: Network) -> None:
    council = network.gateways[network.COUNCIL].gateway
    trust_member = council.registry.lookup(network.TRUST)
    req = msgspec.convert(referral(), SendRequest)
    env = core.build(req, source=network.COUNCIL, source_system="x", policy_version=1,
                     datacontenttype="application/fhir+json", message_id="bad-expiry")
    header = msgspec.json.encode(msgspec.structs.replace(env, expires="not-a-time"))
    data = seal.seal(seal.KIND_MESSAGE, header, msgspec.json.encode(req.payload), signing_key=council.signing_key,
                     recipient_key=x25519_public(trust_member.hpke_key),
                     info=seal.info_for(network.COUNCIL, network.TRUST, "bad-expiry"))
    assert council.js is not None
    await council.js.publish(msg_subject(network.TRUST, network.COUNCIL), data, headers={"Nats-Msg-Id": "bad-expiry"})
    q: dict[str, Any] = await wait_quarantined(network, network.TRUST, "bad-expiry")
    assert q["rule"] == "malformed"
    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        for _ in range(100):  # acked, not left pending for another delivery
            info = await nc.jetstream().consumer_info(inbox_stream(network.TRUST), "gw")
            if info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.05)
        assert info.num_ack_pending == 0 and info.num_redelivered == 0
    finally:
        await nc.close()


async def test_lost_publish_ack_then_retry_with_same_key_delivers_once(network: Network) -> None:
    council = network.gateways[network.COUNCIL].gateway
    real_publish = council._publish
    lost: list[str] = []

    async def ack_lost(subject: str, data: bytes, msg_id: str) -> None:
        await real_publish(subject, data, msg_id)  # the backbone stored it ...
        if not lost:
            lost.append(msg_id)
            from psvn.core.errors import Code, PsvnError

            raise PsvnError(Code.BACKBONE_UNAVAILABLE, "ack lost", rule="publish-ack", message_id=msg_id)

    council._publish = ack_lost  # type: ignore[method-assign]
    status, problem = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key="k-1"))
    assert (status, problem["code"]) == (503, "backbone-unavailable")
    _, st = await call(network, network.COUNCIL, "GET", f"/v1/messages/{problem['message_id']}")
    assert st["status"] in ("accepted", "delivered")  # not rejected: the outcome was unknown
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key="k-1"))
    assert status in (200, 202) and body["id"] == problem["message_id"]
    await wait_status(network, network.COUNCIL, body["id"], "delivered")
    await settled(network, network.TRUST)
    assert await stream_count(network, network.TRUST) == 1  # stored once (the retry deduplicated)
    _, inbox = await call(network, network.TRUST, "GET", "/v1/inbox")
    assert [m["id"] for m in inbox["messages"]] == [body["id"]]
    # the 503 is audited as a refusal (and the retry's publish as the send, if the receipt had
    # not come back first: then it found the message delivered and published nothing)
    records = await audit_records(network, {body["id"]}, at_least=2)
    ours = [(r["event"], r.get("code")) for r in records if r["org"] == network.COUNCIL]
    assert ours[0] == ("rejected", "backbone-unavailable") and set(ours[1:]) <= {("sent", None)}, records
    [refused] = [r for r in records if r["org"] == network.COUNCIL and r["event"] == "rejected"]
    assert (refused["outcome"], refused["to"], refused["type"]) == ("unknown", network.TRUST, "fhir.r4.ServiceRequest")


async def test_a_send_resumed_by_its_retry_is_sealed_again_with_its_first_time_and_expiry(
        network: Network) -> None:
    """The first publish never reached the backbone; the retry comes five minutes later (the
    gateway's clock moved on). What the recipient files carries the time and expiry the
    sender's record holds, so both ends judge the same message (age, expiry)."""
    council = network.gateways[network.COUNCIL].gateway
    real_publish, real_clock = council._publish, council.egress.clock
    failed: list[str] = []

    async def down_once(subject: str, data: bytes, msg_id: str) -> None:
        if not failed:
            failed.append(msg_id)
            from psvn.core.errors import Code, PsvnError

            raise PsvnError(Code.BACKBONE_UNAVAILABLE, "backbone down", rule="publish", message_id=msg_id)
        await real_publish(subject, data, msg_id)

    council._publish = down_once  # type: ignore[method-assign]
    status, problem = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key="k-3"))
    assert status == 503 and failed == [problem["message_id"]]
    _, first = await call(network, network.COUNCIL, "GET", f"/v1/messages/{problem['message_id']}")
    assert first["status"] == "accepted" and first["expires"]
    council.egress.clock = lambda: real_clock() + timedelta(minutes=5)
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key="k-3"))
    assert status in (200, 202) and body["id"] == problem["message_id"]
    await wait_status(network, network.COUNCIL, body["id"], "delivered")
    _, got = await call(network, network.TRUST, "GET", f"/v1/inbox/{body['id']}")
    assert (got["envelope"]["time"], got["envelope"]["expires"]) == (first["created"], first["expires"])


async def test_a_send_without_a_key_whose_publish_fails_is_rejected_and_audited(network: Network) -> None:
    """Nobody can retry a message sent without a key, so a failed publish makes its record
    ``rejected``; the 503 that says so is in the audit log."""
    council = network.gateways[network.COUNCIL].gateway

    async def down(subject: str, data: bytes, msg_id: str) -> None:
        from psvn.core.errors import Code, PsvnError

        raise PsvnError(Code.BACKBONE_UNAVAILABLE, "backbone down", rule="publish", message_id=msg_id)

    council._publish = down  # type: ignore[method-assign]
    status, problem = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert (status, problem["code"], problem["rule"]) == (503, "backbone-unavailable", "publish")
    _, st = await call(network, network.COUNCIL, "GET", f"/v1/messages/{problem['message_id']}")
    assert (st["status"], st["reason"]) == ("rejected", "backbone unavailable")
    assert [h["status"] for h in st["history"]] == ["accepted", "rejected"]
    [refused] = await audit_records(network, {problem["message_id"]}, at_least=1)
    assert (refused["event"], refused["code"], refused["rule"]) == ("rejected", "backbone-unavailable", "publish")
    assert "outcome" not in refused and refused["to"] == network.TRUST  # the record says what became of it
    assert await stream_count(network, network.TRUST) == 0


async def test_concurrent_requests_with_one_key_make_one_message(network: Network) -> None:
    results = await asyncio.gather(*(call(network, network.COUNCIL, "POST", "/v1/messages",
                                          referral(idempotency_key="same-key")) for _ in range(5)))
    ids = {body["id"] for status, body in results if status in (200, 202)}
    assert len(ids) == 1 and all(status in (200, 202) for status, _ in results)
    await wait_status(network, network.COUNCIL, ids.pop(), "delivered")
    await settled(network, network.TRUST)
    assert await stream_count(network, network.TRUST) == 1
    _, inbox = await call(network, network.TRUST, "GET", "/v1/inbox")
    assert len(inbox["messages"]) == 1


async def test_a_retry_of_a_send_already_on_the_backbone_is_a_duplicate_audited_once(network: Network) -> None:
    """The record says ``accepted`` after the 202 (its ``sent`` step waits for the receipt), so
    a retry with the same key cannot tell from it whether the first publish got there: it
    publishes again, and the backbone's ack says ``duplicate``. The retry is then answered 200,
    the same id, and stored once. The instance that published it audited ``sent`` already and
    audits nothing more; an instance holding no step for it (another instance answered the
    first request, or its ack was lost) audits ``sent`` with ``found_on_backbone``."""
    trust = network.gateways.pop(network.TRUST)
    await trust.stop()  # no receipt: the record stays accepted for every retry below
    council = network.gateways[network.COUNCIL].gateway
    council.config.gateway.sent_step_delay_seconds = 60.0
    first = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key="dup-1"))
    assert first[0] == 202 and first[1]["status"] == "accepted", first
    mid = first[1]["id"]
    again = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key="dup-1"))
    assert again[0] == 200 and again[1]["id"] == mid and again[1]["status"] == "accepted", again
    council.sent_steps.pending.clear()  # as if another instance had answered the first request
    third = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key="dup-1"))
    assert third[0] == 200 and third[1]["id"] == mid, third
    assert mid in council.sent_steps.pending  # this instance now holds its sent step
    assert await stream_count(network, network.TRUST) == 1  # stored once
    records = await audit_records(network, {mid}, at_least=2)
    sent = [r for r in records if r["org"] == network.COUNCIL and r["event"] == "sent"]
    assert [r.get("found_on_backbone") for r in sent] == [None, True], records


async def test_a_receipt_that_does_not_say_when_still_writes_the_sent_step_and_a_refused_one_leaves_it(
        network: Network) -> None:
    """A receipt from another member (the message did not go to it) is refused: the record stays
    ``accepted`` and its ``sent`` step still waits. The recipient's receipt in the form of a
    gateway from before ``stored``, applied where no acknowledgement time is known (another
    instance published it), still writes the ``sent`` step, at the move's own time: the
    message reached its recipient, so it was sent by then."""
    trust = network.gateways.pop(network.TRUST)
    await trust.stop()  # away: the only receipts are the ones this test writes
    council = network.gateways[network.COUNCIL].gateway
    council.config.gateway.sent_step_delay_seconds = 60.0
    _, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key="old-rcpt-1"))
    mid = body["id"]
    gp = network.gateways[network.GP].gateway
    to = gp.registry.lookup(network.COUNCIL)
    subject, rid, data = core.make_receipts(
        [core.ReceiptItem(message_id=mid, status="acknowledged", stored="2026-12-07T09:00:00.000Z")], me=gp.identity,
        to=to)
    assert gp.js is not None
    await gp.js.publish(subject, data, headers={"Nats-Msg-Id": rid})
    assert (await wait_quarantined(network, network.COUNCIL, rid))["rule"] == "receipt-recipient"
    assert mid in council.sent_steps.pending
    council.sent_steps.pending.clear()  # as if another instance had published it
    subject, rid, data = core.make_receipts([core.ReceiptItem(message_id=mid, status="delivered")],
                                            me=trust.gateway.identity, to=to)
    nc = await devnet.member_connect(network.layout, network.nats.url, network.TRUST, name="old trust")
    try:
        await nc.jetstream().publish(subject, data, headers={"Nats-Msg-Id": rid})
    finally:
        await nc.close()
    final = await wait_status(network, network.COUNCIL, mid, "delivered")
    assert [h["status"] for h in final["history"]] == ["accepted", "sent", "delivered"]
    assert final["history"][1]["time"] == final["history"][2]["time"]


async def test_a_message_whose_id_another_sender_has_on_file_is_refused_not_taken_for_a_repeat(
        network: Network) -> None:
    """The GP sends the trust a message under the id of a council message the trust holds
    (once the backbone's dedupe window has passed: within it, the backbone drops it). It is no
    redelivery of the council's letter: it is quarantined under its stream sequence with rule
    ``message-id-taken`` (its sender told ``rejected``), and the council's letter stays as it was."""
    from nats.js.api import StreamConfig

    _, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key="taken-1"))
    mid = body["id"]
    await wait_status(network, network.COUNCIL, mid, "delivered")
    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:  # a short dedupe window, so the GP's copy reaches the trust's gateway in this test's time
        cfg: StreamConfig = (await nc.jetstream().stream_info(inbox_stream(network.TRUST))).config
        cfg.duplicate_window = 0.2
        await nc.jetstream().update_stream(cfg)
    finally:
        await nc.close()
    gp = network.gateways[network.GP].gateway
    trust_member = gp.registry.lookup(network.TRUST)
    req = msgspec.convert(referral(), SendRequest)
    env = core.build(req, source=network.GP, source_system="x", policy_version=1,
                     datacontenttype="application/fhir+json", message_id=mid)
    data = seal.seal(seal.KIND_MESSAGE, msgspec.json.encode(env), msgspec.json.encode(req.payload),
                     signing_key=gp.signing_key, recipient_key=x25519_public(trust_member.hpke_key),
                     info=seal.info_for(network.GP, network.TRUST, mid))
    assert gp.js is not None
    for _ in range(200):  # until the window has passed: the backbone stores it (not a duplicate)
        ack = await gp.js.publish(msg_subject(network.TRUST, network.GP), data, headers={"Nats-Msg-Id": mid})
        if not ack.duplicate:
            break
        await asyncio.sleep(0.05)
    assert not ack.duplicate
    for _ in range(200):
        _, q = await call(network, network.TRUST, "GET", "/v1/inbox?status=quarantined")
        taken = [m for m in q["messages"] if m.get("rule") == "message-id-taken"]
        if taken:
            break
        await asyncio.sleep(0.05)
    assert [(m["id"], m["from"]) for m in taken] == [(f"seq-{ack.seq}", network.GP)], q
    status, got = await call(network, network.TRUST, "GET", f"/v1/inbox/{mid}")
    assert status == 200 and got["envelope"]["source"].startswith(network.COUNCIL), got
    _, inbox = await call(network, network.TRUST, "GET", "/v1/inbox")
    assert [m["id"] for m in inbox["messages"]] == [mid]
