"""A gateway's state at volume: it restarts after a large history, what ages out leaves memory, and
a normal round trip raises no permission violation anywhere (issue 9's first findings)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import msgspec

from psvn import devnet
from psvn.backbone.buckets import provision_state_bucket
from psvn.gateway.server import GatewayServer
from psvn.gateway.store import HistoryEntry, InRecord, OutRecord
from psvn.protocol.envelope import now_rfc3339
from psvn.protocol.subjects import inbox_stream, state_bucket
from tests.conftest import Network
from tests.gateway.test_feeds import PURPOSE, TOPIC, event
from tests.gateway.test_service import call, referral, wait_status


async def restart(net: Network, org: str) -> GatewayServer:
    old = net.gateways[org]
    await old.stop()
    net.gateways[org] = await GatewayServer(old.config).start()
    return net.gateways[org]


def _closed(i: int, org: str) -> InRecord:
    return InRecord(id=f"old-in-{i}", source="ods:RYR", to=org, type="fhir.r4.ServiceRequest",
                    time="2026-12-01T00:00:00Z", status="acknowledged", size=1300, seq=i + 1,
                    received="2026-12-01T00:00:00Z")


async def test_a_gateway_restarts_after_a_large_history_reading_only_what_is_open(network: Network) -> None:
    """40,000 entries of history in the council's state bucket (20,000 sent-message records and
    20,000 closed mail entries; the review's gateway could not restart after 6,539) and three
    letters still open: it starts having read exactly the three (counted, not timed), is ready,
    lists them, and sends."""
    history, org = 20_000, network.COUNCIL
    gw = network.gateways[org]
    await gw.stop()
    nc = await devnet.member_connect(network.layout, network.nats.url, org, name="history")
    try:
        js = nc.jetstream()
        prefix = f"$KV.{state_bucket(org)}."
        for start in range(0, history, 1000):  # bounded: 20 rounds of 2 x 1,000 acknowledged writes
            outs = [OutRecord(id=f"old-{i}", to=network.TRUST, type="fhir.r4.ServiceRequest", status="acknowledged",
                              history=[HistoryEntry(status="acknowledged", time="2026-12-01T00:00:00Z")],
                              created="2026-12-01T00:00:00Z") for i in range(start, start + 1000)]
            await asyncio.gather(*(js.publish(prefix + "out." + r.id, msgspec.json.encode(r)) for r in outs),
                                 *(js.publish(prefix + f"done.old-in-{i}", msgspec.json.encode(_closed(i, org)))
                                   for i in range(start, start + 1000)))
        opened = [msgspec.structs.replace(_closed(history + i, org), id=f"open-{i}", status="delivered")
                  for i in range(3)]
        await asyncio.gather(*(js.publish(prefix + "in." + r.id, msgspec.json.encode(r)) for r in opened))
        info = await js.stream_info(f"KV_{state_bucket(org)}")
        assert info.state.messages >= 2 * history + 3
    finally:
        await nc.close()
    network.gateways[org] = gw = await GatewayServer(gw.config).start()
    assert gw.gateway.store.loaded == 3, gw.gateway.store.stats()
    assert sorted(gw.gateway.store.open) == ["open-0", "open-1", "open-2"]
    code, body = await call(network, org, "GET", "/healthz")
    assert code == 200, body
    code, listed = await call(network, org, "GET", "/v1/inbox")
    assert [m["id"] for m in listed["messages"]] == ["open-0", "open-1", "open-2"]
    code, old = await call(network, org, "GET", "/v1/messages/old-123")  # history is read by key
    assert code == 200 and old["status"] == "acknowledged"
    status, sent = await call(network, org, "POST", "/v1/messages", referral())
    assert status == 202, sent
    await wait_status(network, org, sent["id"], "delivered")
    assert gw.gateway.connected


async def test_open_mail_that_ages_out_leaves_memory(network: Network) -> None:
    """The trust's state bucket with an 8 s TTL (real expiry, not a purge): once a letter's open
    entry ages out, the server's limit marker tells the gateway, which lets it go."""
    gw = network.gateways[network.TRUST]
    await gw.stop()
    nc = await devnet.member_connect(network.layout, network.nats.url, network.TRUST, name="short ttl")
    try:
        js = nc.jetstream()
        await js.delete_key_value(state_bucket(network.TRUST))
        await provision_state_bucket(js, network.TRUST, retention_days=8 / 86400)  # 8 s
        network.gateways[network.TRUST] = gw = await GatewayServer(gw.config).start()
        status, sent = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
        assert status == 202, sent
        await wait_status(network, network.COUNCIL, sent["id"], "delivered")
        assert sent["id"] in gw.gateway.store.open
        for _ in range(300):  # up to a minute: the TTL, then the server's sweep
            if sent["id"] not in gw.gateway.store.open:
                break
            await asyncio.sleep(0.2)
        assert sent["id"] not in gw.gateway.store.open, "an entry that aged out stayed in memory"
        assert network.COUNCIL not in gw.gateway.store.held
        # it aged out (the server's MaxAge marker), nobody purged or deleted it
        last = await js.get_msg(f"KV_{state_bucket(network.TRUST)}",
                                subject=f"$KV.{state_bucket(network.TRUST)}.in.{sent['id']}")
        assert (last.headers or {}).get("Nats-Marker-Reason") == "MaxAge", last.headers
    finally:
        await nc.close()


async def test_a_round_trip_raises_no_permission_violation(network: Network) -> None:
    """Send, deliver, receipt, acknowledge, subscribe and publish a feed: the backbone's log and
    every gateway's backbone connection report no violation of any kind."""
    errors: list[str] = []
    for server in network.gateways.values():
        nc = server.gateway.nc
        assert nc is not None
        previous = nc._error_cb

        async def record(exc: Exception, previous: object = previous) -> None:
            errors.append(str(exc))
            if callable(previous):
                with contextlib.suppress(Exception):
                    await previous(exc)

        nc._error_cb = record
    status, sent = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert status == 202, sent
    await wait_status(network, network.COUNCIL, sent["id"], "delivered")
    status, _ = await call(network, network.TRUST, "POST", f"/v1/inbox/{sent['id']}/ack")
    assert status == 200
    await wait_status(network, network.COUNCIL, sent["id"], "acknowledged")
    code, _ = await call(network, network.TRUST, "PUT", f"/v1/subscriptions/{TOPIC}", {"purpose": PURPOSE})
    assert code in (200, 201)
    code, published = await call(network, network.COUNCIL, "POST", f"/v1/feeds/{TOPIC}", event())
    assert code in (200, 202) and [d["to"] for d in published["deliveries"]] == [network.TRUST], published
    await wait_status(network, network.COUNCIL, published["deliveries"][0]["id"], "delivered")
    log = network.nats.log_path.read_text()
    assert "Violation" not in log, [line for line in log.splitlines() if "Violation" in line][:5]
    assert errors == []


async def referrals_delivered(network: Network, count: int, tag: str) -> list[str]:
    """``count`` referrals from the council to the trust, one at a time, each awaited to ``delivered``."""
    ids = []
    for i in range(count):
        _code, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(local_id=f"{tag}{i}"))
        ids.append(body["id"])
    for mid in ids:
        await wait_status(network, network.COUNCIL, mid, "delivered")
    return ids


async def gauge(network: Network, org: str, name: str) -> float:
    """A gateway's metric without labels, as its /metrics says it."""
    [line] = [x for x in (await _metrics(network, org)).splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


async def test_the_record_cache_is_bounded_by_its_setting_and_reported(network: Network) -> None:
    """The records a gateway keeps from its own writes (so a receipt needs no read) stay within
    ``gateway.record_cache_size``, shown as ``psvn_state_record_cache``; records that fell out
    are read where they live, and every status still arrives."""
    from psvn.gateway.service import Gateway

    council = network.gateways[network.COUNCIL]
    cfg = council.config
    sized = msgspec.structs.replace(cfg, gateway=msgspec.structs.replace(cfg.gateway, record_cache_size=7))
    assert Gateway(sized).store.cache_size == 7  # the setting reaches the store
    council.gateway.store.cache_size = 3
    await referrals_delivered(network, 6, "rc")
    assert 0 < len(council.gateway.store._recent) <= 3
    assert 0 < await gauge(network, network.COUNCIL, "psvn_state_record_cache") <= 3


async def test_the_data_key_caches_are_bounded_by_their_settings_and_reported(network: Network) -> None:
    """Each gateway seals under data keys of its own (``gateway.seal_data_key_uses`` messages
    each at most, ``seal_data_keys`` kept) and keeps the data keys senders sealed to it
    (``seal_opened_keys``), shown as ``psvn_seal_data_keys`` and ``psvn_seal_opened_keys``:
    with two uses a key, four messages to the trust travel under two sealed data keys, which
    the trust unseals once each."""
    from psvn.gateway.service import Gateway
    from psvn.protocol import seal

    council, trust = network.gateways[network.COUNCIL], network.gateways[network.TRUST]
    cfg = council.config
    sized = Gateway(msgspec.structs.replace(cfg, gateway=msgspec.structs.replace(
        cfg.gateway, seal_data_key_uses=3, seal_data_key_seconds=5.0, seal_data_keys=4, seal_opened_keys=6)))
    keys, opened = sized.member.data_keys, sized.member.opened_keys
    assert (keys.uses, keys.seconds, keys.size, opened.size) == (3, 5.0, 4, 6)  # the settings reach them
    assert council.gateway.member.data_keys is not trust.gateway.member.data_keys  # each gateway its own
    council.gateway.member.data_keys.uses = 2
    await referrals_delivered(network, 4, "dk")
    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        stored = [await nc.jetstream().get_msg(inbox_stream(network.TRUST), seq=seq) for seq in range(1, 5)]
    finally:
        await nc.close()
    sealed_keys = [msgspec.msgpack.decode(m.data or b"", type=seal.Wire).key for m in stored]
    assert len(set(sealed_keys)) == 2 and sealed_keys[0] == sealed_keys[1] != sealed_keys[2] == sealed_keys[3]
    assert await gauge(network, network.COUNCIL, "psvn_seal_data_keys") == 1  # one recipient key: one slot
    assert await gauge(network, network.TRUST, "psvn_seal_opened_keys") == 2
    assert trust.gateway.member.opened_keys.opened == 2


async def test_a_send_takes_two_writes_of_its_senders_state_up_to_delivered(network: Network) -> None:
    """The sender's state takes two writes per message up to ``delivered``: the record's
    create-once (the idempotency claim, ``accepted``, before the publish) and the receipt's move,
    which writes the ``sent`` step too, at the time the backbone stored the message in the
    trust's inbox (the receipt says it). The 202 answers ``accepted``, what is stored. Counted
    on the state stream's sequence, which nothing else in the council's bucket advances
    meanwhile: a third write (a ``sent`` move of its own), or a lost one, fails it. The step's
    own write is held off (a minute's delay) so the count does not hang on the receipt's speed."""
    org = network.COUNCIL
    network.gateways[org].gateway.config.gateway.sent_step_delay_seconds = 60.0
    # the time the council's own queue would give the step: only one not from the receipt has it
    network.gateways[org].gateway.sent_steps.clock = lambda: datetime(2000, 1, 1, tzinfo=UTC)
    stream, prefix = f"KV_{state_bucket(org)}", f"$KV.{state_bucket(org)}."
    nc = await devnet.member_connect(network.layout, network.nats.url, org, name="count")
    try:
        js = nc.jetstream()
        before = (await js.stream_info(stream)).state.last_seq
        status, body = await call(network, org, "POST", "/v1/messages", referral(idempotency_key="count-1"))
        assert status == 202 and body["status"] == "accepted"
        final = await wait_status(network, org, body["id"], "delivered")
        assert [h["status"] for h in final["history"]] == ["accepted", "sent", "delivered"]
        assert (await js.stream_info(stream)).state.last_seq == before + 2
        last = await js.get_msg(stream, seq=before + 2)
        assert last.subject == prefix + "out." + body["id"]
        # the sent step's time is the backbone's: when the trust's inbox stored the message
        trust = network.gateways[network.TRUST].gateway
        filed = await trust.store.in_record(body["id"])
        assert filed is not None and trust.link.net_ops is not None
        stored = await trust.link.net_ops.direct_get(inbox_stream(network.TRUST), seq=filed.seq)
        assert stored is not None
        accepted, sent, delivered = final["history"]
        assert sent["time"] == now_rfc3339(stored.time.astimezone(UTC))
        assert accepted["time"] <= sent["time"] <= delivered["time"]
        assert body["id"] not in network.gateways[org].gateway.sent_steps.pending
    finally:
        await nc.close()


async def test_a_message_no_receipt_answers_gets_its_sent_step_written_alone(network: Network) -> None:
    """The recipient is away: no receipt comes, so after ``gateway.sent_step_delay_seconds`` the
    record's ``sent`` step is written on its own (a second write), at the time the backbone
    acknowledged the publish, and the status says ``sent``. When the recipient comes back its
    receipt moves the record on to ``delivered``, the history keeping one ``sent`` step."""
    org = network.COUNCIL
    council = network.gateways[org].gateway
    council.config.gateway.sent_step_delay_seconds = 0.2
    trust = network.gateways.pop(network.TRUST)
    await trust.stop()
    stream = f"KV_{state_bucket(org)}"
    nc = await devnet.member_connect(network.layout, network.nats.url, org, name="count")
    try:
        js = nc.jetstream()
        before = (await js.stream_info(stream)).state.last_seq
        written = council.sent_steps.written
        status, body = await call(network, org, "POST", "/v1/messages", referral(idempotency_key="away-1"))
        assert status == 202 and body["status"] == "accepted"
        sent = await wait_status(network, org, body["id"], "sent")
        assert [h["status"] for h in sent["history"]] == ["accepted", "sent"]
        for _ in range(2000):  # the writer counts it once its write's ack is in: a moment after a reader sees it
            if council.sent_steps.written == written + 1:
                break
            await asyncio.sleep(0.01)
        assert council.sent_steps.written == written + 1 and not council.sent_steps.pending
        assert (await js.stream_info(stream)).state.last_seq == before + 2
        metrics = await _metrics(network, org)
        assert "psvn_sent_steps_pending 0.0" in metrics
        assert f'psvn_sent_steps_total{{outcome="written"}} {float(written + 1)}' in metrics
        network.gateways[network.TRUST] = await GatewayServer(trust.config).start()
        final = await wait_status(network, org, body["id"], "delivered")
        assert [h["status"] for h in final["history"]] == ["accepted", "sent", "delivered"]
    finally:
        await nc.close()


async def test_a_receipts_stored_time_is_put_between_the_steps_around_it(network: Network) -> None:
    """The ``sent`` step's time comes from the recipient's receipt: whatever it says (a skewed
    clock, or a recipient making things up), the record puts it between the step before
    (``accepted``) and the step it comes with, so a history is always in order."""
    from psvn.protocol.lifecycle import State

    trust = network.gateways.pop(network.TRUST)
    await trust.stop()  # no receipt comes: the moves below are the only ones
    store = network.gateways[network.COUNCIL].gateway.store
    network.gateways[network.COUNCIL].gateway.config.gateway.sent_step_delay_seconds = 60.0
    for key, said in (("early-1", "1999-01-01T00:00:00.000Z"), ("late-1", "2999-01-01T00:00:00.000Z")):
        _code, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key=key))
        moved = await store.move_out(body["id"], State.DELIVERED, sent_at=said, at="2100-01-01T00:00:00.000Z")
        assert moved is not None
        accepted, sent, delivered = ((h.status, h.time) for h in moved.history)
        assert (sent[0], delivered) == ("sent", ("delivered", "2100-01-01T00:00:00.000Z"))
        assert sent[1] == (accepted[1] if key == "early-1" else delivered[1])


async def test_a_sent_step_gives_way_to_a_record_another_instance_changed(network: Network) -> None:
    """Another instance changed the record since this one wrote it (there: a receipt it took;
    here: a rewrite still ``accepted``, so that a retry of the step would write it). The step's
    compare-and-set fails and it gives way: no read, no retry, the other's write stands and the
    step is counted ``overtaken``."""
    trust = network.gateways.pop(network.TRUST)
    await trust.stop()
    org = network.COUNCIL
    council = network.gateways[org].gateway
    council.config.gateway.sent_step_delay_seconds = 60.0
    _code, body = await call(network, org, "POST", "/v1/messages", referral(idempotency_key="give-way-1"))
    mid = body["id"]
    stream = f"KV_{state_bucket(org)}"
    nc = await devnet.member_connect(network.layout, network.nats.url, org, name="other instance")
    try:
        js = nc.jetstream()
        kv = await js.key_value(state_bucket(org))
        entry = await kv.get(f"out.{mid}")
        assert entry.value is not None
        theirs = entry.value.replace(b'"system":', b'"reason":"rewritten elsewhere","system":', 1)
        await kv.update(f"out.{mid}", theirs, last=entry.revision)
        after_theirs = (await js.stream_info(stream)).state.last_seq
        assert await council.sent_steps.write_due(everything=True) == 1
        assert (await js.stream_info(stream)).state.last_seq == after_theirs  # nothing more written
        assert (await kv.get(f"out.{mid}")).value == theirs
        assert council.sent_steps.written == 0 and not council.sent_steps.pending
        assert 'psvn_sent_steps_total{outcome="overtaken"} 1.0' in await _metrics(network, org)
    finally:
        await nc.close()


async def _metrics(network: Network, org: str) -> str:
    async with network.https(org).get(network.url(org) + "/metrics") as r:
        return await r.text()
