"""Receipts batched per recipient batch, through real gateways and a real nats-server: one
signed, sealed receipt message answers a whole fetched batch, each item still naming its
message and the hash of the sealed bytes that arrived; the batch is acked only once its receipt
is on the backbone; a member cannot slip another member's message into its receipt; a receipt
applied leaves the sender's inbox."""

from __future__ import annotations

import hashlib
from typing import Any

from psvn import devnet
from psvn.gateway import core
from psvn.gateway.link import Publish
from psvn.gateway.server import GatewayServer
from psvn.protocol.subjects import inbox_stream, rcpt_subject
from tests.broker.test_backbone import settled, wait_quarantined
from tests.broker.test_cluster import wait_until
from tests.conftest import Network
from tests.gateway.test_service import call, referral, wait_status

BATCH = "/v1/messages:batch"


async def trust_back_after(network: Network, sent: int, tag: str, publish: Publish | None = None) -> list[str]:
    """The trust's gateway is away while the council sends ``sent`` referrals (they wait in its
    inbox), then comes back, its publishes going through ``publish`` if given, and takes them in
    as one fetch. Returns the message ids."""
    old = network.gateways.pop(network.TRUST)
    await old.stop()
    items = [referral(idempotency_key=f"{tag}-{i}") for i in range(sent)]
    status, body = await call(network, network.COUNCIL, "POST", BATCH, {"messages": items})
    assert status == 200 and all(r["status"] == "accepted" for r in body["results"]), body
    server = GatewayServer(old.config)
    if publish is not None:
        real = server.gateway._publish

        async def through(subject: str, data: bytes, msg_id: str) -> None:
            await publish(subject, data, msg_id)
            await real(subject, data, msg_id)

        server.gateway._publish = through  # type: ignore[method-assign]
    network.gateways[network.TRUST] = await server.start()
    return [r["id"] for r in body["results"]]


async def receipts_in_inbox(net: Network, org: str, by: str) -> int:
    nc = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        subject = rcpt_subject(org, by)
        info = await nc.jetstream().stream_info(inbox_stream(org), subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))
    finally:
        await nc.close()


async def test_a_fetched_batch_is_receipted_in_one_message_naming_each_message_and_its_hash(
        network: Network) -> None:
    sent: list[tuple[str, bytes, str]] = []

    async def record(subject: str, data: bytes, msg_id: str) -> None:
        if msg_id.startswith("rcpt."):
            sent.append((subject, data, msg_id))

    ids = await trust_back_after(network, 40, "rcpt-batch", record)
    statuses = [await wait_status(network, network.COUNCIL, mid, "delivered", timeout=30) for mid in ids]
    assert 1 <= len(sent) <= 2, [m for _, _, m in sent]  # 40 messages, one fetch: not 40 receipts
    council = network.gateways[network.COUNCIL].gateway
    named: dict[str, str | None] = {}
    for subject, data, rid in sent:  # each opened and verified as the council's gateway opens it
        for receipt in core.open_receipts(data, subject=subject, receipt_msg_id=rid, me=council.identity,
                                          registry=council.registry):
            assert receipt.status == "delivered" and receipt.by == network.TRUST
            named[receipt.message_id] = receipt.sha256
    assert sorted(named) == sorted(ids)
    # each item names the sealed message the trust filed, by the SHA-256 of its bytes as stored,
    # and the council keeps that hash in the message's history
    trust = network.gateways[network.TRUST].gateway
    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        js = nc.jetstream()
        for mid, st in zip(ids, statuses, strict=True):
            stored = await js.get_msg(inbox_stream(network.TRUST), trust.store.open[mid].seq)
            digest = hashlib.sha256(stored.data or b"").hexdigest()
            [delivered] = [h for h in st["history"] if h["status"] == "delivered"]
            assert named[mid] == digest and delivered["sha256"] == digest, mid
    finally:
        await nc.close()
    # applied receipts leave the council's inbox (their subject there holds at most 100,000)
    await settled(network, network.COUNCIL)
    assert await receipts_in_inbox(network, network.COUNCIL, network.TRUST) == 0


async def test_a_batch_whose_receipt_is_lost_is_redelivered_and_receipted_again(network: Network) -> None:
    failures: list[str] = []

    async def fail_first_receipt(subject: str, data: bytes, msg_id: str) -> None:
        if msg_id.startswith("rcpt.") and not failures:
            failures.append(msg_id)
            raise RuntimeError("backbone hiccup")  # the receipt is not stored anywhere

    ids = await trust_back_after(network, 12, "rcpt-lost", fail_first_receipt)
    for mid in ids:
        await wait_status(network, network.COUNCIL, mid, "delivered", timeout=30)
    assert len(failures) == 1 and failures[0].startswith("rcpt.batch.")  # the whole batch's receipt
    await settled(network, network.TRUST)  # nothing left unacked: the batch was acked the second time
    _, inbox = await call(network, network.TRUST, "GET", "/v1/inbox")
    filed = [m["id"] for m in inbox["messages"]]
    assert sorted(filed) == sorted(ids)  # each filed once, though every message came twice


async def test_a_receipt_that_slips_in_another_members_message_is_quarantined_and_that_item_not_applied(
        network: Network) -> None:
    _, to_gp = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(to=network.GP))
    _, to_trust = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    await wait_status(network, network.COUNCIL, to_gp["id"], "delivered")
    await wait_status(network, network.COUNCIL, to_trust["id"], "delivered")
    gp = network.gateways[network.GP].gateway
    # signed by the GP with its own key: honest about its own message, lying about the trust's
    items = [core.ReceiptItem(message_id=to_gp["id"], status="acknowledged"),
             core.ReceiptItem(message_id=to_trust["id"], status="acknowledged")]
    subject, rid, data = core.make_receipts(items, me=gp.identity, to=gp.registry.lookup(network.COUNCIL))
    assert gp.js is not None
    await gp.js.publish(subject, data, headers={"Nats-Msg-Id": rid})
    q = await wait_quarantined(network, network.COUNCIL, rid)
    assert q["rule"] == "receipt-recipient"
    _, st = await call(network, network.COUNCIL, "GET", f"/v1/messages/{to_trust['id']}")
    assert st["status"] == "delivered"  # the trust's message: not the GP's to acknowledge
    _, st = await call(network, network.COUNCIL, "GET", f"/v1/messages/{to_gp['id']}")
    assert st["status"] == "acknowledged"  # its own message: the GP may say it acknowledged it


async def test_an_applied_receipt_the_inbox_would_not_delete_is_redelivered_until_it_is_gone(
        network: Network) -> None:
    """The delete of an applied receipt fails past its retries (a leader election longer than the
    patience): the receipt is not acked but redelivered, applied again (a repeatable move) and
    deleted then; acked and left, it would count against the 100,000 its subject may hold."""
    council = network.gateways[network.COUNCIL].gateway
    net = council.link.net_ops
    assert net is not None
    real_delete, refused = net.delete_msg, []

    async def refuse_first(stream: str, seq: int, **kw: Any) -> bool:
        assert not kw.get("erase"), "an applied receipt is removed, not erased"
        if not refused:
            refused.append(seq)
            raise RuntimeError("the inbox's leader did not answer")
        return await real_delete(stream, seq, **kw)

    net.delete_msg = refuse_first  # type: ignore[method-assign]
    _, sent = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    await wait_status(network, network.COUNCIL, sent["id"], "delivered")
    await wait_until(lambda: _no_receipts(network), timeout=30, what="the receipt deleted on its redelivery")
    await settled(network, network.COUNCIL, timeout=30)
    assert len(refused) == 1  # the first delete refused; the receipt came again and went
    _, st = await call(network, network.COUNCIL, "GET", f"/v1/messages/{sent['id']}")
    assert [h["status"] for h in st["history"]].count("delivered") == 1  # applied twice, recorded once


async def _no_receipts(network: Network) -> bool:
    return await receipts_in_inbox(network, network.COUNCIL, network.TRUST) == 0
