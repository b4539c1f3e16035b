"""The policy's retention per type: received mail is deleted from the mailbox when it is over."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from nats.js.errors import NotFoundError

from psvn import devnet
from psvn.devnet import EXAMPLE_MEMBERS, PDS_MEMBER
from psvn.gateway.server import GatewayServer
from psvn.gateway.service import Gateway
from psvn.protocol.subjects import inbox_stream
from tests.conftest import Network, start_network, stop_network
from tests.gateway.test_service import audit_records, call, referral, wait_status

ROOT = Path(__file__).resolve().parents[2]
ADDRESS_CHANGE = json.loads((ROOT / "examples" / "address-change.json").read_text())


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[tuple[Network, Clock]]:
    n = await start_network(tmp_path, [*EXAMPLE_MEMBERS, PDS_MEMBER])
    clock = Clock()
    try:  # the council's gateway runs on a clock the test moves, and sweeps often
        old = n.gateways.pop(n.COUNCIL)
        await old.stop()
        cfg = msgspec.structs.replace(old.config, gateway=msgspec.structs.replace(
            old.config.gateway, expiry_sweep_seconds=0.1, retention_scan_seconds=0.1))
        n.gateways[n.COUNCIL] = await GatewayServer(cfg, gateway=Gateway(cfg, clock=clock)).start()
        yield n, clock
    finally:
        await stop_network(n)


async def wait_gone(net: Network, mid: str) -> None:
    """Deleted: out of the listing, its entry kept as a tombstone (so a replay is recognised)."""
    for _ in range(200):
        rec = await net.gateways[net.COUNCIL].gateway.store.in_record(mid)
        if rec is not None and rec.deleted:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{mid} is still in the mailbox")


async def in_stream(net: Network, seq: int) -> bool:
    nc = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        await nc.jetstream().get_msg(inbox_stream(net.COUNCIL), seq)
        return True
    except NotFoundError:
        return False
    finally:
        await nc.close()


async def test_mail_is_deleted_when_its_types_retention_is_over(net: tuple[Network, Clock]) -> None:
    n, clock = net
    council = n.gateways[n.COUNCIL].gateway
    code, moved = await call(n, PDS_MEMBER.org, "POST", "/v1/messages", {
        "to": n.COUNCIL, "type": "psvn.address-change", "purpose": "statutory-duty",
        "subject": "nhs:9434765919", "payload": ADDRESS_CHANGE})
    assert code == 202, moved
    code, referred = await call(n, n.TRUST, "POST", "/v1/messages", referral("gss:E06000043/adult-social-care"))
    assert code == 202, referred
    code, handled = await call(n, n.TRUST, "POST", "/v1/messages", referral("gss:E06000043/adult-social-care"))
    assert code == 202, handled
    await wait_status(n, PDS_MEMBER.org, moved["id"], "delivered")
    await wait_status(n, n.TRUST, referred["id"], "delivered")
    await wait_status(n, n.TRUST, handled["id"], "delivered")
    # one referral is acknowledged at once: closed mail, out of memory, and still kept 30 days
    code, _ = await call(n, n.COUNCIL, "POST", f"/v1/inbox/{handled['id']}/ack")
    assert code == 200
    acked = await council.store.in_record(handled["id"])
    assert acked is not None and acked.status == "acknowledged" and handled["id"] not in council.store.open
    address, care = council.store.open[moved["id"]], council.store.open[referred["id"]]
    # the recipient sees when each goes: 7 days for a change of address, 30 for a referral
    code, listed = await call(n, n.COUNCIL, "GET", "/v1/inbox")
    until = {m["id"]: m["retain_until"] for m in listed["messages"]}
    assert until == {address.id: address.retain_until, care.id: care.retain_until}
    received = datetime.fromisoformat(address.received.replace("Z", "+00:00"))
    assert address.retain_until and care.retain_until
    assert datetime.fromisoformat(address.retain_until.replace("Z", "+00:00")) - received == timedelta(days=7)

    clock.now += timedelta(days=6)
    begun = council.sweeps
    for _ in range(400):  # three whole sweeps on the new date (counted, not slept)
        if council.sweeps >= begun + 4:
            break
        await asyncio.sleep(0.025)
    assert council.sweeps >= begun + 4  # nothing was due yet:
    assert {address.id, care.id} <= council.store.open.keys()
    assert await in_stream(n, acked.seq) and not (await council.store.in_record(acked.id) or acked).deleted

    # what retention deletes is erased (overwritten on disk); the hot path's deletes only remove
    net_ops = council.link.net_ops
    assert net_ops is not None
    deletes: list[tuple[int, bool]] = []
    real_delete = net_ops.delete_msg

    async def recorded_delete(stream: str, seq: int, *, erase: bool = False, timeout: float | None = None) -> bool:
        deletes.append((seq, erase))
        return await real_delete(stream, seq, erase=erase, timeout=timeout)

    net_ops.delete_msg = recorded_delete  # type: ignore[method-assign]
    clock.now += timedelta(days=2)  # day 8: the change of address is past its retention
    await wait_gone(n, address.id)
    assert (address.seq, True) in deletes and all(erase for _, erase in deletes), deletes
    assert not await in_stream(n, address.seq) and await in_stream(n, care.seq)
    code, problem = await call(n, n.COUNCIL, "GET", f"/v1/inbox/{address.id}")
    assert (code, problem["code"], problem["rule"]) == (404, "not-found", "retention")
    code, listed = await call(n, n.COUNCIL, "GET", "/v1/inbox")
    assert [m["id"] for m in listed["messages"]] == [care.id]
    code, got = await call(n, n.COUNCIL, "GET", f"/v1/inbox/{care.id}")
    assert code == 200 and got["envelope"]["id"] == care.id

    # the stream's own max age (or another instance) may delete the mail first: still recorded once
    nc = await devnet.broker_connect(n.layout, n.nats.url)
    try:
        await nc.jetstream().delete_msg(inbox_stream(n.COUNCIL), care.seq)
    finally:
        await nc.close()
    code, problem = await call(n, n.COUNCIL, "GET", f"/v1/inbox/{care.id}")
    assert (code, problem["rule"]) == (404, "mailbox-age")  # not a 500
    clock.now += timedelta(days=23)  # day 31 (referrals: 30 days, within the stream's 30: 29)
    await wait_gone(n, care.id)
    await wait_gone(n, acked.id)  # closed mail: found by the streamed walk of closed entries
    assert not await in_stream(n, care.seq) and not await in_stream(n, acked.seq)
    records = await audit_records(n, {address.id, care.id, acked.id}, at_least=6)
    deleted = sorted(r["type"] for r in records if r["event"] == "retention-deleted")
    assert deleted == ["fhir.r4.ServiceRequest", "fhir.r4.ServiceRequest", "psvn.address-change"]
    assert len([r for r in records if r["event"] == "retention-deleted"]) == 3  # once each
    # the senders' records are untouched: delivered is what they were told
    assert (await wait_status(n, PDS_MEMBER.org, moved["id"], "delivered"))["status"] == "delivered"
