"""A citizen's opt-out, sent by their personal data store, takes effect at every gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from psvn import devnet
from psvn.devnet import EXAMPLE_MEMBERS, OPERATOR_MEMBER, PDS_MEMBER
from psvn.gateway import core
from psvn.gateway.consent import SignedConsent, key_for, seal_record, sign_record
from psvn.gateway.egress import Claim
from psvn.gateway.store import HistoryEntry, OutRecord, message_id_for
from psvn.policies.consent import ConsentChange, ConsentRegistry
from psvn.protocol.envelope import SendRequest, new_message_id
from tests.broker.test_registry import set_status, wait_member_status
from tests.conftest import Network, start_network, stop_network
from tests.gateway.test_service import REFERRAL, audit_records, call, wait_status

PDS = PDS_MEMBER.org
OPERATOR = OPERATOR_MEMBER.org
SUBJECT = "nhs:9434765919"


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Network]:
    n = await start_network(tmp_path, [*EXAMPLE_MEMBERS, OPERATOR_MEMBER, PDS_MEMBER])
    try:
        yield n
    finally:
        await stop_network(n)


OTHER = "nhs:9000000009"  # someone who has not opted out


def about(subject: str) -> dict[str, Any]:
    """The referral, about ``subject`` (its NHS number in the payload)."""
    number = subject.removeprefix("nhs:")
    return {**REFERRAL, "subject": {"reference": f"Patient/{number}", "identifier": {
        "system": "https://fhir.nhs.uk/Id/nhs-number", "value": number}}}


def research(subject: str | None = SUBJECT, purpose: str = "research-consented", *,
             patient: str | None = None) -> dict[str, Any]:
    """A research referral about ``patient`` (by default the envelope's ``subject``)."""
    body = {"to": "ods:RYR/research", "type": "fhir.r4.ServiceRequest", "purpose": purpose,
            "classification": "OFFICIAL-SENSITIVE", "payload": about(patient or subject or SUBJECT)}
    return body if subject is None else {**body, "subject": subject}


def opt_out(seq: int, purposes: list[str]) -> dict[str, Any]:
    return {"to": OPERATOR, "type": "psvn.consent-change", "purpose": "consent-management",
            "payload": {"subject": SUBJECT, "seq": seq, "opt_outs": purposes,
                        "effective": "2026-11-25T10:00:00Z"}}


async def wait_everywhere(net: Network, check: Any) -> None:
    """Every gateway's next lookup of SUBJECT satisfies ``check`` (polled, with a deadline)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        seen = [await gw.gateway.consent.consult([SUBJECT]) for gw in net.gateways.values()]
        if all(check(c.consent) for c in seen):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("not every gateway saw the consent change")
        await asyncio.sleep(0.025)


async def consult(net: Network, org: str, subject: str = SUBJECT) -> Any:
    return await net.gateways[org].gateway.consent.consult([subject])


async def test_opt_out_blocks_research_network_wide(net: Network) -> None:
    status, body = await call(net, net.GP, "POST", "/v1/messages", research())
    assert status == 202, body

    status, sent = await call(net, PDS, "POST", "/v1/messages", opt_out(1, ["research-consented"]))
    assert status == 202, sent
    await wait_everywhere(net, lambda c: c.blocks(SUBJECT, "research-consented") is not None)
    await wait_status(net, PDS, sent["id"], "acknowledged")  # the operator recorded it

    status, problem = await call(net, net.GP, "POST", "/v1/messages", research())
    assert (status, problem["code"]) == (403, "policy-denied")
    assert "consent-honour-opt-out" in problem["rule_ids"], problem
    # someone else is unaffected
    status, _ = await call(net, net.GP, "POST", "/v1/messages", research(subject=OTHER))
    assert status == 202
    # the citizen changes their mind: a newer change restores consent, a stale one is ignored
    await call(net, PDS, "POST", "/v1/messages", opt_out(3, []))
    await wait_everywhere(net, lambda c: c.blocks(SUBJECT, "research-consented") is None)
    status, stale = await call(net, PDS, "POST", "/v1/messages", opt_out(2, ["research-consented"]))
    assert status == 202
    await wait_status(net, PDS, stale["id"], "acknowledged")
    status, _ = await call(net, net.GP, "POST", "/v1/messages", research())
    assert status == 202


async def test_only_a_pds_can_change_consent(net: Network) -> None:
    status, problem = await call(net, net.COUNCIL, "POST", "/v1/messages", opt_out(1, ["*"]))
    assert (status, problem["code"]) == (403, "policy-denied")


async def test_forged_consent_record_is_refused(net: Network) -> None:
    """Someone with raw backbone access writes a consent record they signed themselves (sealed
    correctly under the subject's key): refused, counted, and the subject's consent-dependent
    sharing is denied (fail closed), never allowed as "no opt-out"."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    change = ConsentChange(subject=SUBJECT, seq=9, opt_outs=[], effective="2026-11-25T10:00:00Z")
    forged = sign_record(change.to_payload(), issuer=PDS, message_id="x", operator=OPERATOR,
                         key=Ed25519PrivateKey.generate())
    nc = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        kv = await nc.jetstream().key_value("psvn_consent")
        await kv.put(key_for(SUBJECT), seal_record(SUBJECT, forged))
    finally:
        await nc.close()
    for gw in net.gateways.values():
        seen = await gw.gateway.consent.consult([SUBJECT])
        assert seen.refused == ((key_for(SUBJECT), "consent-signature"),), seen
        record = seen.consent.get(SUBJECT)
        assert record is not None and record.refused and record.covers("research-consented")
    status, problem = await call(net, net.GP, "POST", "/v1/messages", research())
    assert (status, problem["code"]) == (403, "policy-denied"), problem
    assert "consent-record-unreadable" in problem["rule_ids"], problem
    assert refused_count(net, net.GP) >= 2  # the lookup above and the one the send made
    assert isinstance(forged, SignedConsent)


def refused_count(net: Network, org: str) -> float:
    value = net.gateways[org].gateway.metrics.registry.get_sample_value(
        "psvn_backbone_values_refused_total", {"bucket": "psvn_consent"})
    return value or 0.0


async def test_a_gateway_other_than_the_operator_cannot_write_consent(net: Network) -> None:
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeoutError
    from nats.js.errors import KeyNotFoundError, NoStreamResponseError

    council = await devnet.member_connect(net.layout, net.nats.url, net.COUNCIL, name="council as writer")
    try:
        await council.publish("$KV.psvn_consent." + key_for(SUBJECT), b"junk")
        # nothing in the council's reach stores it (no import, no stream in its own JetStream)
        with pytest.raises((NoRespondersError, NoStreamResponseError, NatsTimeoutError)):
            await council.jetstream().publish("$KV.psvn_consent." + key_for(SUBJECT), b"junk", timeout=1.5)
        await council.flush()
    finally:
        await council.close()
    nc = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        with pytest.raises(KeyNotFoundError):
            await (await nc.jetstream().key_value("psvn_consent")).get(key_for(SUBJECT))
    finally:
        await nc.close()
    for org in net.gateways:
        seen = await consult(net, org)
        assert len(seen.consent) == 0 and seen.refused == ()


async def record_opt_out(net: Network, purposes: list[str], seq: int = 1) -> None:
    status, sent = await call(net, PDS, "POST", "/v1/messages", opt_out(seq, purposes))
    assert status == 202, sent
    await wait_everywhere(net, lambda c: c.get(SUBJECT) is not None and c.get(SUBJECT).seq == seq)
    await wait_status(net, PDS, sent["id"], "acknowledged")


async def test_a_sender_cannot_dodge_an_opt_out_by_leaving_out_or_changing_the_subject(net: Network) -> None:
    await record_opt_out(net, ["research-consented"])
    # the referral is about the citizen who opted out, whatever the envelope says
    status, problem = await call(net, net.GP, "POST", "/v1/messages", research(subject=None))
    assert (status, problem["code"]) == (403, "policy-denied"), problem
    assert "consent-honour-opt-out" in problem["rule_ids"] and "consent-honour-opt-out" in problem["detail"]
    assert "nhs:******5919" in problem["detail"] and "9434765919" not in problem["detail"]
    status, problem = await call(net, net.GP, "POST", "/v1/messages", research(subject=OTHER, patient=SUBJECT))
    assert (status, problem["code"], problem["field"], problem["rule"]) == (
        422, "invalid-envelope", "subject", "subject-binding"), problem
    assert problem["message_id"] and "9434765919" not in problem["detail"]
    # nothing left the GP's gateway: no message about the citizen reached the research team
    status, inbox = await call(net, net.TRUST, "GET", "/v1/inbox")
    assert status == 200 and inbox["messages"] == []
    # a referral about someone else, with no envelope subject at all, still goes (as research needs)
    status, sent = await call(net, net.GP, "POST", "/v1/messages", research(subject=None, patient=OTHER))
    assert status == 202, sent
    await wait_status(net, net.GP, sent["id"], "delivered")


async def test_opt_outs_survive_a_restart_after_their_store_is_suspended(net: Network) -> None:
    """The pds that carried the opt-out is suspended later; a gateway that restarts must still
    honour it, like the gateways that did not restart (no fail-open, no disagreement)."""
    from psvn.gateway.server import GatewayServer

    await record_opt_out(net, ["research-consented"])
    await set_status(net, PDS, "suspended")
    await wait_member_status(net, net.GP, PDS, "suspended")
    old = net.gateways.pop(net.GP)
    await old.stop()
    restarted = await GatewayServer(old.config).start()
    net.gateways[net.GP] = restarted
    seen = await restarted.gateway.consent.consult([SUBJECT])
    assert seen.refused == (), seen.refused
    record = seen.consent.blocks(SUBJECT, "research-consented")
    assert record is not None and record.issuer == PDS and record.seq == 1
    status, problem = await call(net, net.GP, "POST", "/v1/messages", research())
    assert (status, problem["code"]) == (403, "policy-denied") and "consent-honour-opt-out" in problem["rule_ids"]
    # while the suspended store can change nothing: the operator refuses its new change
    status, sent = await call(net, PDS, "POST", "/v1/messages", opt_out(2, []))
    assert status == 202, sent
    rejected = await wait_status(net, PDS, sent["id"], "rejected")
    assert "member-revoked" in str(rejected), rejected
    for org in net.gateways:
        assert (await consult(net, org)).consent.blocks(SUBJECT, "research-consented") is not None


# -- verify_record, without a network --------------------------------------------------------------
REGISTRY_KEY = Ed25519PrivateKey.generate()  # the registry authority of the views made below


def _members(pds_status: str = "active", pds_type: str = "pds") -> tuple[Any, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from psvn.backbone.registry_view import RegistryView
    from psvn.certs.keys import raw_public
    from psvn.protocol.members import Member

    op_key = Ed25519PrivateKey.generate()
    view = RegistryView(REGISTRY_KEY.public_key())  # filled by hand below (sign with REGISTRY_KEY to apply)
    for org, type_, status, key in ((OPERATOR, "operator", "active", op_key),
                                    (PDS, pds_type, pds_status, Ed25519PrivateKey.generate())):
        view.members[org] = Member(address=org, name=org, type=type_, sign_key=raw_public(key),
                                   hpke_key=b"\0" * 32, cert_fingerprint="0" * 64, status=status)  # type: ignore[arg-type]
    return view, op_key


def _record(op_key: Any, *, operator: str = OPERATOR, payload: bytes | None = None) -> SignedConsent:
    change = ConsentChange(subject=SUBJECT, seq=4, opt_outs=["research-consented"], effective="2026-11-25T10:00:00Z")
    return sign_record(payload or change.to_payload(), issuer=PDS, message_id="m-1", operator=operator, key=op_key)


@pytest.mark.parametrize("pds_status", ["active", "suspended", "revoked"])
def test_a_record_stands_whatever_its_store_has_become_since(pds_status: str) -> None:
    from psvn.gateway.consent import verify_record, verify_value

    view, op_key = _members(pds_status)
    change = verify_record(_record(op_key), view)
    assert (change.subject, change.seq, change.issuer) == (SUBJECT, 4, PDS)
    stored = verify_value(SUBJECT, seal_record(SUBJECT, _record(op_key)), view)
    assert (stored.subject, stored.seq, stored.opt_outs) == (SUBJECT, 4, ["research-consented"])


def test_a_record_is_still_refused_on_type_and_signature() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from psvn.core.errors import Code, PsvnError
    from psvn.gateway.consent import verify_record

    view, op_key = _members("suspended")
    cases = [
        (_record(Ed25519PrivateKey.generate()), view, Code.SIGNATURE_INVALID, "consent-signature"),
        (msgspec.structs.replace(_record(op_key), payload=ConsentChange(
            subject=SUBJECT, seq=5, opt_outs=[], effective="2026-11-25T10:00:00Z").to_payload()),
         view, Code.SIGNATURE_INVALID, "consent-signature"),  # a restoration swapped in
        (_record(op_key, operator=PDS), _members()[0], Code.FORBIDDEN, "consent-recorder"),  # only the operator
        (_record(op_key), _members("revoked", pds_type="council")[0], Code.FORBIDDEN, "consent-issuer"),
        (msgspec.structs.replace(_record(op_key), issuer="pds:nobody"), view, Code.UNKNOWN_RECIPIENT,
         "registry-member"),
    ]
    for rec, members, code, rule in cases:
        with pytest.raises(PsvnError) as err:
            verify_record(rec, members)
        assert (err.value.code, err.value.rule) == (code, rule)


async def test_decisions_about_one_subject_share_a_read_that_began_after_they_asked(net: Network) -> None:
    """Fifty concurrent lookups of one patient before the read goes out cost one read, and see
    the opt-out recorded before they asked; a lookup made once a read is on its way gets a read
    of its own (it must not be answered by one that began before it asked)."""
    status, sent_change = await call(net, PDS, "POST", "/v1/messages", opt_out(1, ["research-consented"]))
    assert status == 202, sent_change
    await wait_everywhere(net, lambda c: c.blocks(SUBJECT, "research-consented") is not None)
    trust = net.gateways[net.TRUST].gateway
    lookup = trust.consent
    real = lookup._read_now
    sent: list[str] = []

    async def counted(subject: str) -> Any:
        sent.append(subject)
        return await real(subject)

    lookup._read_now = counted  # type: ignore[method-assign]
    many = await asyncio.gather(*(trust.consult(frozenset({SUBJECT}), f"m{i}") for i in range(50)))
    assert sent == [SUBJECT]
    assert all(c.consent.blocks(SUBJECT, "research-consented") is not None for c in many)
    first = asyncio.ensure_future(lookup.read(SUBJECT))
    for _ in range(10):  # let the first lookup ask and its read be sent (a few loop turns, no timing)
        await asyncio.sleep(0)
        if len(sent) == 2:
            break
    assert len(sent) == 2 and not lookup._queued
    second = await lookup.read(SUBJECT)
    assert (await first) is not None and second is not None and sent == [SUBJECT] * 3


async def test_a_read_shared_by_others_goes_on_for_them_when_its_first_caller_is_cancelled(net: Network) -> None:
    """The first caller reads in its own task: cancelled mid-read (its HTTP request gone), the
    callers that shared its read still get the subject's record, from a read of their own; a
    read that fails gives each sharer its own error, and the first caller the read's own."""
    from psvn.core.errors import Code, PsvnError

    status, sent_change = await call(net, PDS, "POST", "/v1/messages", opt_out(1, ["research-consented"]))
    assert status == 202, sent_change
    await wait_everywhere(net, lambda c: c.blocks(SUBJECT, "research-consented") is not None)
    lookup = net.gateways[net.TRUST].gateway.consent
    real = lookup._read_now
    sent: list[str] = []
    release = asyncio.Event()

    async def held(subject: str) -> Any:
        sent.append(subject)
        await release.wait()
        return await real(subject)

    lookup._read_now = held  # type: ignore[method-assign]
    first = asyncio.ensure_future(lookup.read(SUBJECT))
    others = [asyncio.ensure_future(lookup.read(SUBJECT)) for _ in range(3)]
    for _ in range(10):  # until the first caller's read is sent (a few loop turns, no timing)
        await asyncio.sleep(0)
        if sent:
            break
    assert sent == [SUBJECT] and not lookup._queued
    first.cancel()
    for _ in range(10):  # the sharers' own read is sent
        await asyncio.sleep(0)
        if len(sent) == 2:
            break
    assert len(sent) == 2
    release.set()
    assert first.cancelled()
    async with asyncio.timeout(60):  # (without the hand-over they would wait for ever)
        got = await asyncio.gather(*others)
    assert all(g is not None and g.value for g in got)
    assert not lookup._reading  # the hand-over task is let go once done

    failures = 0

    async def failing(subject: str) -> Any:
        nonlocal failures
        failures += 1
        await asyncio.sleep(0)
        raise PsvnError(Code.BACKBONE_UNAVAILABLE, "no answer", rule="consent-lookup")

    lookup._read_now = failing  # type: ignore[method-assign]
    outcomes = await asyncio.gather(*(lookup.read(SUBJECT) for _ in range(4)), return_exceptions=True)
    assert failures == 1
    assert all(isinstance(o, PsvnError) and o.rule == "consent-lookup" for o in outcomes)
    assert len({id(o) for o in outcomes}) == 4  # one error each: callers add their own message id


@pytest.mark.parametrize("then", ["fails", "first-cancelled"])
async def test_a_sharer_that_leaves_is_owed_nothing(then: str, caplog: pytest.LogCaptureFixture) -> None:
    """A caller that shared a read and was cancelled is no longer waited for: the first caller's
    failed read is not left unread in a future nobody awaits (asyncio would log "exception was
    never retrieved"), and the first caller's cancellation starts no read for nobody."""
    import gc
    import logging

    from psvn.core.errors import Code, PsvnError
    from psvn.gateway.consent import ConsentLookup

    lookup = ConsentLookup(None)  # type: ignore[arg-type]  # (no registry: nothing is verified here)
    reads = 0
    release = asyncio.Event()

    async def failing(subject: str) -> Any:
        nonlocal reads
        reads += 1
        await release.wait()
        raise PsvnError(Code.BACKBONE_UNAVAILABLE, "no answer", rule="consent-lookup")

    lookup._read_now = failing  # type: ignore[method-assign]
    first = asyncio.ensure_future(lookup.read(SUBJECT))
    sharer = asyncio.ensure_future(lookup.read(SUBJECT))
    for _ in range(10):  # until the read is sent
        await asyncio.sleep(0)
        if reads:
            break
    assert reads == 1 and not lookup._queued
    sharer.cancel()
    await asyncio.wait([sharer])
    if then == "first-cancelled":
        first.cancel()
    release.set()
    await asyncio.wait([first])
    assert first.cancelled() if then == "first-cancelled" else isinstance(first.exception(), PsvnError)
    for _ in range(5):
        await asyncio.sleep(0)
    assert reads == 1 and not lookup._reading and not lookup._queued
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        del first, sharer
        gc.collect()
        await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_retry_refused_by_an_opt_out_recorded_since_says_what_became_of_the_first(net: Network) -> None:
    """A research referral is accepted (202) while the research team's gateway is away, so its
    record stays ``accepted``; then the citizen opts out. A retry with the same key is refused by
    the checks now, but its first request is on the backbone: the instance that published it
    answers 200 with the record, never 403 (which would say "not sent"). An instance that cannot
    know (another instance published it, or its publish failed) answers 503 ``outcome-pending``,
    audited with the outcome unknown, and sends nothing again."""
    trust = net.gateways.pop(net.TRUST)
    await trust.stop()
    gp = net.gateways[net.GP].gateway
    gp.config.gateway.sent_step_delay_seconds = 60.0  # the record stays accepted throughout
    first = await call(net, net.GP, "POST", "/v1/messages", {**research(), "idempotency_key": "study-7"})
    assert first[0] == 202 and first[1]["status"] == "accepted", first
    mid = first[1]["id"]
    await record_opt_out(net, ["research-consented"])
    again = await call(net, net.GP, "POST", "/v1/messages", {**research(), "idempotency_key": "study-7"})
    assert again[0] == 200 and again[1]["id"] == mid and again[1]["status"] == "accepted", again
    gp.sent_steps.pending.clear()  # as if another instance had published it
    status, problem = await call(net, net.GP, "POST", "/v1/messages", {**research(), "idempotency_key": "study-7"})
    assert (status, problem["code"], problem["rule"], problem["message_id"]) == (
        503, "backbone-unavailable", "outcome-pending", mid), problem
    assert "policy-denied" in problem["detail"]
    records = await audit_records(net, {mid}, at_least=2)
    gp_records = [(r["event"], r.get("rule"), r.get("outcome")) for r in records if r["org"] == net.GP]
    assert gp_records == [("sent", None, None), ("rejected", "outcome-pending", "unknown")], records


async def test_the_record_is_written_while_the_consent_is_read(net: Network) -> None:
    """A send needing consent waits for two round trips, not three: its record is on the
    backbone while the consent read is still unanswered (held here until the record is seen),
    and nothing is published before the decision that read makes."""
    gp = net.gateways[net.GP].gateway
    release, asked = asyncio.Event(), asyncio.Event()
    real = gp.consent._read_now

    async def held(subject: str) -> Any:
        asked.set()
        await release.wait()
        return await real(subject)

    gp.consent._read_now = held  # type: ignore[method-assign]
    assert gp.store.id_secret is not None
    mid = message_id_for(gp.store.id_secret, net.GP, net.member(net.GP).system, "overlap-1")
    sending = asyncio.ensure_future(call(net, net.GP, "POST", "/v1/messages",
                                         {**research(), "idempotency_key": "overlap-1"}))
    try:
        await asyncio.wait_for(asked.wait(), 10)
        deadline = asyncio.get_running_loop().time() + 10
        while (rec := await gp.store.out_record(mid)) is None:  # the read stays unanswered meanwhile
            assert asyncio.get_running_loop().time() < deadline, "no record while the consent was read"
            await asyncio.sleep(0.01)
        assert rec.status == "accepted" and not sending.done()
        assert mid not in gp.sent_steps.pending  # not published: the decision has not been made
    finally:
        release.set()
    status, body = await sending
    assert (status, body["id"], body["status"]) == (202, mid, "accepted"), body
    await wait_status(net, net.GP, mid, "delivered")


async def test_a_message_an_opt_out_refuses_leaves_no_record_and_its_key_free(net: Network) -> None:
    """The record written while the consent was read is taken back when the decision refuses
    the message: nothing says ``accepted`` for it, and once the citizen consents again a retry
    with the same key is sent as a new message (202), not answered as an earlier one."""
    await record_opt_out(net, ["research-consented"])
    gp = net.gateways[net.GP].gateway
    status, problem = await call(net, net.GP, "POST", "/v1/messages", {**research(), "idempotency_key": "study-9"})
    assert (status, problem["code"]) == (403, "policy-denied"), problem
    mid = problem["message_id"]
    assert await gp.store.out_record(mid) is None
    assert gp.store._recent.get(mid) is None
    await record_opt_out(net, [], seq=2)
    status, body = await call(net, net.GP, "POST", "/v1/messages", {**research(), "idempotency_key": "study-9"})
    assert (status, body["id"]) == (202, mid), body
    await wait_status(net, net.GP, mid, "delivered")


async def test_a_claim_the_decision_changed_is_rewritten_and_a_withdrawal_spares_an_earlier_record(
        net: Network) -> None:
    """What the early record says is only kept if the decision says the same: a decision with
    other rule ids (or another expiry) rewrites it. A claim that found the id taken (a retry)
    withdraws nothing: the record is the earlier request's."""
    gp = net.gateways[net.GP].gateway
    guess = OutRecord(id=new_message_id(), to="ods:RYR/research", type="fhir.r4.ServiceRequest", status="accepted",
                      created="2026-12-07T10:00:00Z", system="pas", rule_ids=["guessed"], request_hash="h",
                      history=[HistoryEntry(status="accepted", time="2026-12-07T10:00:00Z")])
    planned = core.plan_send(msgspec.convert(research(), SendRequest), me=gp.identity, system="pas",
                             snap=gp.snapshot, registry=gp.registry, message_id=guess.id, consent=ConsentRegistry())
    claim = Claim(gp.egress, planned, guess)
    decided = msgspec.structs.replace(guess, rule_ids=["decided"], expires="2026-12-08T10:00:00Z")
    revision = await claim.settle(decided)
    assert revision is not None and revision != await claim.written
    assert await gp.store.out_record(guess.id) == decided
    repeat = Claim(gp.egress, planned, guess)
    assert await repeat.written is None
    await repeat.withdraw()
    assert await gp.store.out_record(guess.id) == decided


async def test_a_repeat_of_a_key_waits_for_the_first_requests_decision_on_its_instance(net: Network) -> None:
    """While the first request's record is only a claim (its consent read unanswered), a second
    request with the same key on the same instance waits its turn: it reads no consent and
    publishes nothing from a record the first one's decision might take back. Once the first is
    sent, the second is answered with it (200, the same id): one message."""
    gp = net.gateways[net.GP].gateway
    release, reads = asyncio.Event(), []
    real = gp.consent._read_now

    async def held(subject: str) -> Any:
        reads.append(subject)
        await release.wait()
        return await real(subject)

    gp.consent._read_now = held  # type: ignore[method-assign]
    body = {**research(), "idempotency_key": "turns-1"}
    assert gp.store.id_secret is not None
    turn = f"send.{message_id_for(gp.store.id_secret, net.GP, net.member(net.GP).system, 'turns-1')}"
    first = asyncio.ensure_future(call(net, net.GP, "POST", "/v1/messages", body))
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not reads:
            assert asyncio.get_running_loop().time() < deadline, "the first request never read consent"
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(call(net, net.GP, "POST", "/v1/messages", body))
        while not ((lock := gp.store._locks.get(turn)) is not None and lock._waiters):  # type: ignore[attr-defined]
            assert asyncio.get_running_loop().time() < deadline and not second.done(), "the second did not wait"
            await asyncio.sleep(0.01)
        assert len(reads) == 1 and not first.done() and not second.done()
    finally:
        release.set()
    answers = sorted([await first, await second], key=lambda a: a[0])
    assert [a[0] for a in answers] == [200, 202] and answers[0][1]["id"] == answers[1][1]["id"], answers
    await wait_status(net, net.GP, answers[0][1]["id"], "delivered")


async def test_a_send_that_fails_unexpectedly_mid_decision_takes_its_record_back(net: Network) -> None:
    """A failure no rule foresaw (here the consent read raising a plain error) answers 500 and
    still takes back the record written while the consent was being read: nothing was decided,
    so nothing says ``accepted``, and the key stays free for a retry."""
    gp = net.gateways[net.GP].gateway
    real = gp.consent._read_now

    async def broken(subject: str) -> Any:
        raise RuntimeError("not a backbone error anyone foresaw")

    gp.consent._read_now = broken  # type: ignore[method-assign]
    assert gp.store.id_secret is not None
    mid = message_id_for(gp.store.id_secret, net.GP, net.member(net.GP).system, "boom-1")
    status, problem = await call(net, net.GP, "POST", "/v1/messages", {**research(), "idempotency_key": "boom-1"})
    assert status == 500, problem
    deadline = asyncio.get_running_loop().time() + 10
    while await gp.store.out_record(mid) is not None:  # taken back in the background
        assert asyncio.get_running_loop().time() < deadline, "the record was left behind"
        await asyncio.sleep(0.02)
    gp.consent._read_now = real  # type: ignore[method-assign]
    status, body = await call(net, net.GP, "POST", "/v1/messages", {**research(), "idempotency_key": "boom-1"})
    assert (status, body["id"]) == (202, mid), body


async def test_a_refusal_is_answered_as_one_even_when_its_record_could_not_be_taken_back(net: Network) -> None:
    """A request refused by an opt-out whose record is left behind (the withdrawal failed, or
    the record's write was stored but its acknowledgement lost) is still answered 403: it knows
    the record is its own claim and that it published nothing, so it never says
    ``outcome-pending``."""
    await record_opt_out(net, ["research-consented"])
    gp = net.gateways[net.GP].gateway

    async def fails(message_id: str, revision: int) -> None:
        raise ConnectionError("backbone away")

    gp.store.withdraw_out = fails  # type: ignore[method-assign]
    status, problem = await call(net, net.GP, "POST", "/v1/messages", {**research(), "idempotency_key": "left-1"})
    assert (status, problem["code"]) == (403, "policy-denied"), problem
    left = await gp.store.out_record(problem["message_id"])
    assert left is not None and left.status == "accepted"  # left behind, as a crash would leave it
    del gp.store.withdraw_out  # the real one again

    real_put = gp.store.put_out

    async def lost_ack(rec: OutRecord) -> int | None:
        await real_put(rec)  # stored, but the answer never comes back
        raise TimeoutError("ack lost")

    gp.store.put_out = lost_ack  # type: ignore[method-assign]
    status, problem = await call(net, net.GP, "POST", "/v1/messages", {**research(), "idempotency_key": "left-2"})
    assert (status, problem["code"]) == (403, "policy-denied"), problem
    assert await gp.store.out_record(problem["message_id"]) is None  # found to be ours, and taken back
