"""Consent privacy on a real network (issue 8): a member learns a citizen's consent only for a
subject it names; nobody lists who opted out of what; the stored bytes show neither the NHS number
nor the note; a blanked, unsigned or forged value is refused loudly and never erases an opt-out.

The hostile member is the council, with its own gateway's backbone user; the operator account
(the broker's user) stands for whoever can write the bucket's raw values.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from psvn import devnet
from psvn.devnet import EXAMPLE_MEMBERS, OPERATOR_MEMBER, PDS_MEMBER
from psvn.gateway.consent import COVER_KEY, STREAM, cover_value, key_for, seal_record
from psvn.protocol.subjects import CONSENT_BUCKET, OPERATOR_JS_PREFIX
from tests.conftest import Network, start_network, stop_network
from tests.gateway.test_consent import PDS, SUBJECT, research
from tests.gateway.test_service import call, wait_status

NUMBER = SUBJECT.removeprefix("nhs:")
NOTE = "moved to Hove; does not want research contact"
P = OPERATOR_JS_PREFIX


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Network]:
    n = await start_network(tmp_path, [*EXAMPLE_MEMBERS, OPERATOR_MEMBER, PDS_MEMBER])
    try:
        yield n
    finally:
        await stop_network(n)


@pytest.fixture
async def hostile(net: Network) -> AsyncIterator[NATS]:
    nc = await devnet.member_connect(net.layout, net.nats.url, net.COUNCIL, name="hostile")
    yield nc
    await nc.close()


async def record(net: Network, seq: int = 1, purposes: tuple[str, ...] = ("research-consented",)) -> None:
    """The citizen's store sends a change with a note; the operator records it (acknowledged)."""
    status, sent = await call(net, PDS, "POST", "/v1/messages", {
        "to": OPERATOR_MEMBER.org, "type": "psvn.consent-change", "purpose": "consent-management",
        "payload": {"subject": SUBJECT, "seq": seq, "opt_outs": list(purposes), "note": NOTE,
                    "effective": "2026-11-25T10:00:00Z"}})
    assert status == 202, sent
    await wait_status(net, PDS, sent["id"], "acknowledged")


async def answered(nc: NATS, subject: str, body: Any = None) -> Any:
    """The reply's message, or None if nothing in the member's reach answered."""
    try:
        return await nc.request(subject, b"" if body is None else json.dumps(body).encode(), timeout=1.5)
    except (NoRespondersError, NatsTimeoutError):
        return None


def refused_count(net: Network, org: str) -> float:
    value = net.gateways[org].gateway.metrics.registry.get_sample_value(
        "psvn_backbone_values_refused_total", {"bucket": CONSENT_BUCKET})
    return value or 0.0


async def test_a_member_cannot_list_consent_records(net: Network, hostile: NATS) -> None:
    got: list[str] = []

    async def cb(msg: Any) -> None:
        got.append(msg.subject)

    await hostile.subscribe(f"$KV.{CONSENT_BUCKET}.>", cb=cb)
    await hostile.subscribe(">", cb=cb)
    await hostile.flush()
    await record(net)
    # and a write made in the network account itself (where the bucket lives): the notification
    # a stream export would carry to every member
    broker = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        await (await broker.jetstream().key_value(CONSENT_BUCKET)).put(COVER_KEY, cover_value())
    finally:
        await broker.close()
    await hostile.flush()
    await answered(hostile, f"{P}.DIRECT.GET.KV_{CONSENT_BUCKET}.$KV.{CONSENT_BUCKET}.{COVER_KEY}")  # a round trip
    # the change notifications are not exported to members: nothing about consent arrived
    assert [s for s in got if s.startswith(f"$KV.{CONSENT_BUCKET}")] == []
    # no stream info (message count, subjects), no read by sequence, next-by-subject or multi-last
    stream = f"KV_{CONSENT_BUCKET}"
    assert await answered(hostile, f"{P}.STREAM.INFO.{stream}", {"subjects_filter": ">"}) is None
    for body in ({"seq": 1}, {"next_by_subj": f"$KV.{CONSENT_BUCKET}.>", "seq": 1},
                 {"multi_last": [f"$KV.{CONSENT_BUCKET}.>"], "batch": 10}):
        assert await answered(hostile, f"{P}.DIRECT.GET.{stream}", body) is None, body
    # a by-subject read with a wildcard gets the bucket's newest entry: the cover, not the record
    for wildcard in (">", "*.*", "p.*"):
        msg = await answered(hostile, f"{P}.DIRECT.GET.{stream}.$KV.{CONSENT_BUCKET}.{wildcard}")
        assert msg is not None and (msg.headers or {}).get("Nats-Subject") == f"$KV.{CONSENT_BUCKET}.{COVER_KEY}"
    # while the old key shape (sha256 of the subject) finds nothing
    import hashlib
    legacy = "c." + hashlib.sha256(SUBJECT.encode()).hexdigest()
    msg = await answered(hostile, f"{P}.DIRECT.GET.{stream}.$KV.{CONSENT_BUCKET}.{legacy}")
    assert msg is not None and (msg.headers or {}).get("Status") == "404"


async def test_what_a_member_can_still_learn_is_one_guess_per_request(net: Network, hostile: NATS) -> None:
    """The known limit, pinned: a member that already knows an NHS number can read that subject's
    record (every gateway must be able to), and a number with no record answers 'not found'."""
    from psvn.gateway.consent import verify_value

    await record(net)
    js = hostile.jetstream(prefix=P)
    msg = await js.get_msg(STREAM, subject=f"$KV.{CONSENT_BUCKET}.{key_for(SUBJECT)}", direct=True)
    change = verify_value(SUBJECT, msg.data, net.gateways[net.COUNCIL].gateway.registry, recorded=msg.time)
    assert change.opt_outs == ["research-consented"]
    from nats.js.errors import NotFoundError
    with pytest.raises(NotFoundError):
        await js.get_msg(STREAM, subject=f"$KV.{CONSENT_BUCKET}.{key_for('nhs:9000000009')}", direct=True)


async def test_the_stored_bytes_reveal_neither_the_number_nor_the_note(net: Network) -> None:
    await record(net)
    broker = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        js = broker.jetstream()
        info = await js.stream_info(STREAM, subjects_filter=">")
        stored = b""
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(STREAM, seq=seq)
            stored += (msg.subject or "").encode() + msgspec.json.encode(msg.headers or {}) + (msg.data or b"")
        assert info.state.messages >= 2  # the record and its cover
    finally:
        await broker.close()
    for secret in (NUMBER.encode(), NOTE.encode(), b"research-consented", PDS.encode(),
                   b"943 476 5919", NUMBER[-6:].encode()):
        assert secret not in stored, secret


@pytest.mark.parametrize("blank", ["empty", "delete", "purge"])
async def test_a_blanked_value_does_not_erase_an_opt_out(net: Network, blank: str) -> None:
    await record(net)
    status, problem = await call(net, net.GP, "POST", "/v1/messages", research())
    assert (status, problem["code"]) == (403, "policy-denied") and "consent-honour-opt-out" in problem["rule_ids"]
    before = refused_count(net, net.GP)
    broker = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        kv = await broker.jetstream().key_value(CONSENT_BUCKET)
        if blank == "empty":
            await kv.put(key_for(SUBJECT), b"")
        elif blank == "delete":
            await kv.delete(key_for(SUBJECT))
        else:  # a purge marker as kv.purge writes it, less the rollup the shared buckets refuse
            await broker.jetstream().publish(f"$KV.{CONSENT_BUCKET}.{key_for(SUBJECT)}", b"",
                                             headers={"KV-Operation": "PURGE"})
    finally:
        await broker.close()
    status, problem = await call(net, net.GP, "POST", "/v1/messages", research())
    assert status == 403 and problem["code"] == "policy-denied", problem
    assert "consent-record-unreadable" in problem["rule_ids"], problem
    assert "9434765919" not in problem["detail"]
    assert refused_count(net, net.GP) == before + 1
    # a new signed change from the citizen's store repairs it (the only way consent changes)
    await record(net, seq=2, purposes=())
    status, sent = await call(net, net.GP, "POST", "/v1/messages", research())
    assert status == 202, sent


@pytest.mark.parametrize("forgery", ["unsigned", "random", "other-key", "plaintext-v1"])
async def test_a_forged_or_unsigned_value_is_refused_and_counted(net: Network, forgery: str) -> None:
    """No opt-out recorded; someone writes a value claiming "no opt-out" (or garbage): refused,
    counted, and the research message is denied (fail closed), never let through."""
    from psvn.gateway.consent import SignedConsent, sign_record
    from psvn.policies.consent import ConsentChange

    restore = ConsentChange(subject=SUBJECT, seq=7, opt_outs=[], effective="2026-11-25T10:00:00Z").to_payload()
    unsigned = SignedConsent(payload=restore, issuer=PDS, message_id="m", recorded_by=OPERATOR_MEMBER.org,
                             signature=b"")
    value = {
        "unsigned": seal_record(SUBJECT, unsigned),
        "random": b"\x02" + bytes(range(256)) * 2,
        "other-key": seal_record("nhs:9000000009", unsigned),  # sealed for someone else
        "plaintext-v1": msgspec.msgpack.encode(sign_record(restore, issuer=PDS, message_id="m",
                                                           operator=OPERATOR_MEMBER.org,
                                                           key=_any_key())),
    }[forgery]
    broker = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        await (await broker.jetstream().key_value(CONSENT_BUCKET)).put(key_for(SUBJECT), value)
    finally:
        await broker.close()
    status, problem = await call(net, net.GP, "POST", "/v1/messages", research())
    assert status == 403 and problem["code"] == "policy-denied", problem
    assert "consent-record-unreadable" in problem["rule_ids"], problem
    assert refused_count(net, net.GP) == 1
    # someone else's sharing is untouched
    status, _ = await call(net, net.GP, "POST", "/v1/messages", research(subject="nhs:9000000009"))
    assert status == 202


def _any_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


async def test_an_opt_out_applies_at_the_next_decision(net: Network) -> None:
    """No cache: the first research message after the operator's acknowledgement is refused,
    at the sender's gateway and (had it been sent before) at the recipient's."""
    status, sent = await call(net, net.GP, "POST", "/v1/messages", research())
    assert status == 202, sent
    await record(net)
    status, problem = await call(net, net.GP, "POST", "/v1/messages", research())
    assert (status, problem["code"]) == (403, "policy-denied"), problem
    seen = await asyncio.gather(*(gw.gateway.consent.consult([SUBJECT]) for gw in net.gateways.values()))
    assert all(s.consent.blocks(SUBJECT, "research-consented") is not None for s in seen)
