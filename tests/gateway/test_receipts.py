"""Receipts batched per recipient batch, through real gateways and a real nats-server: one
signed, sealed receipt message answers a whole fetched batch, each item still naming its
message and the hash of the sealed bytes that arrived; a member cannot slip another member's
message into its receipt."""

from __future__ import annotations

import hashlib

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from psvn import devnet
from psvn.gateway import core
from psvn.gateway.server import GatewayServer
from psvn.gateway.service import Gateway
from psvn.protocol.subjects import inbox_stream, rcpt_subject
from tests.broker.test_backbone import wait_quarantined
from tests.conftest import Network
from tests.gateway.test_service import call, referral, wait_status

BATCH = "/v1/messages:batch"


async def receipted(js: JetStreamContext, gateway: Gateway, by: str) -> dict[str, set[str]]:
    """Every message id the receipts ``by`` stored in ``gateway``'s member's inbox name, with the
    statuses they give it: each receipt message read back from the stream, opened and verified
    as the gateway opens it."""
    stream, subject = inbox_stream(gateway.org), rcpt_subject(gateway.org, by)
    named: dict[str, set[str]] = {}
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq, subject=subject, next=True)
        except NotFoundError:
            return named
        assert msg.seq is not None and msg.headers is not None
        for receipt in core.open_receipts(msg.data or b"", subject=subject, receipt_msg_id=msg.headers["Nats-Msg-Id"],
                                          me=gateway.identity, registry=gateway.registry):
            named.setdefault(receipt.message_id, set()).add(receipt.status)
        seq = msg.seq + 1


async def receipt_messages(net: Network, org: str, by: str) -> int:
    """How many receipt messages ``by`` has stored in ``org``'s inbox (receipts stay there after
    they are taken in: the inbox keeps what arrived until its age limit)."""
    nc = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        subject = rcpt_subject(org, by)
        info = await nc.jetstream().stream_info(inbox_stream(org), subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))
    finally:
        await nc.close()


async def test_a_fetched_batch_is_receipted_in_one_message_naming_each_message_and_its_hash(
        network: Network) -> None:
    # the trust is away while the council sends 40: they wait in its inbox, and the trust's
    # gateway takes them in as one fetch when it is back
    old = network.gateways.pop(network.TRUST)
    await old.stop()
    items = [referral(idempotency_key=f"rcpt-batch-{i}") for i in range(40)]
    status, body = await call(network, network.COUNCIL, "POST", BATCH, {"messages": items})
    assert status == 200, body
    ids = [r["id"] for r in body["results"]]
    assert len(set(ids)) == 40 and all(r["status"] == "sent" for r in body["results"])
    before = await receipt_messages(network, network.COUNCIL, network.TRUST)
    network.gateways[network.TRUST] = trust = await GatewayServer(old.config).start()
    statuses = [await wait_status(network, network.COUNCIL, mid, "delivered", timeout=30) for mid in ids]
    receipts = await receipt_messages(network, network.COUNCIL, network.TRUST) - before
    assert 1 <= receipts <= 2, receipts  # 40 messages, one fetch (at most split in two): not 40 receipts
    # each item names the sealed message the trust filed, by the SHA-256 of its bytes as stored
    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        js = nc.jetstream()
        named = await receipted(js, network.gateways[network.COUNCIL].gateway, network.TRUST)
        assert {mid: named.get(mid) for mid in ids} == {mid: {"delivered"} for mid in ids}
        for mid, st in zip(ids, statuses, strict=True):
            seq = trust.gateway.store.open[mid].seq
            stored = await js.get_msg(inbox_stream(network.TRUST), seq)
            [delivered] = [h for h in st["history"] if h["status"] == "delivered"]
            assert delivered["sha256"] == hashlib.sha256(stored.data or b"").hexdigest(), mid
    finally:
        await nc.close()


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
