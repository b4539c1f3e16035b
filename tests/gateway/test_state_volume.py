"""A gateway's state at volume: it restarts after a large history, what ages out leaves memory, and
a normal round trip raises no permission violation anywhere (issue 9's first findings)."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec

from psvn import devnet
from psvn.backbone.buckets import provision_state_bucket
from psvn.gateway.server import GatewayServer
from psvn.gateway.store import HistoryEntry, InRecord, OutRecord
from psvn.protocol.subjects import state_bucket
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
    ids = []
    for i in range(6):
        _code, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(local_id=f"rc{i}"))
        ids.append(body["id"])
    for mid in ids:
        await wait_status(network, network.COUNCIL, mid, "delivered")
    assert 0 < len(council.gateway.store._recent) <= 3
    async with network.https(network.COUNCIL).get(network.url(network.COUNCIL) + "/metrics") as r:
        text = await r.text()
    [line] = [x for x in text.splitlines() if x.startswith("psvn_state_record_cache ")]
    assert 0 < float(line.split()[1]) <= 3


async def test_a_send_takes_three_writes_of_its_senders_state_up_to_delivered(network: Network) -> None:
    """The sender's state takes three writes per message up to ``delivered``: the record's
    create-once (the idempotency claim, ``accepted``), its move to ``sent`` once the publish is
    confirmed (before the 202), and the receipt's move. Counted on the state stream's sequence,
    which nothing else in the council's bucket advances meanwhile: a fourth write, or a lost
    one, fails it."""
    org = network.COUNCIL
    stream, prefix = f"KV_{state_bucket(org)}", f"$KV.{state_bucket(org)}."
    nc = await devnet.member_connect(network.layout, network.nats.url, org, name="count")
    try:
        js = nc.jetstream()
        before = (await js.stream_info(stream)).state.last_seq
        status, body = await call(network, org, "POST", "/v1/messages", referral(idempotency_key="count-1"))
        assert status == 202 and body["status"] == "sent"
        final = await wait_status(network, org, body["id"], "delivered")
        assert [h["status"] for h in final["history"]] == ["accepted", "sent", "delivered"]
        assert (await js.stream_info(stream)).state.last_seq == before + 3
        last = await js.get_msg(stream, seq=before + 3)
        assert last.subject == prefix + "out." + body["id"]
    finally:
        await nc.close()
