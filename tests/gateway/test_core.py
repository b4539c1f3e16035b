"""gateway/core.py without any network: the whole egress/ingress protocol as plain functions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from psvn.backbone.registry_view import RegistryView
from psvn.certs.keys import raw_public
from psvn.core.errors import Code, PsvnError
from psvn.gateway import core
from psvn.policies import bundle
from psvn.policies.consent import ConsentChange, ConsentRegistry
from psvn.policies.snapshot import PolicySnapshot
from psvn.protocol import seal
from psvn.protocol.envelope import SendRequest, build, payload_bytes
from psvn.protocol.members import Member
from psvn.protocol.subjects import msg_subject

REFERRAL = json.loads((Path(__file__).resolve().parents[2] / "examples" / "referral.json").read_text())
SNAP = PolicySnapshot.compile(bundle.load_dir())
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def identity(org: str, member_type: str) -> core.Identity:
    return core.Identity(org=org, member_type=member_type, signing_key=Ed25519PrivateKey.generate(),
                         hpke_key=X25519PrivateKey.generate())


COUNCIL = identity("gss:E06000043", "council")
TRUST = identity("ods:RYR", "nhs-trust")
GP = identity("ods:G81001", "gp")


def registry(*ids: core.Identity, status: str = "active") -> RegistryView:
    view = RegistryView(Ed25519PrivateKey.generate().public_key())  # filled by hand below
    for i in ids:
        view.members[i.org] = Member(address=i.org, name=i.org, type=i.member_type,
                                     sign_key=raw_public(i.signing_key), hpke_key=raw_public(i.hpke_key),
                                     cert_fingerprint="0" * 64, status=status,  # type: ignore[arg-type]
                                     wire=seal.WIRE_VERSION)
    return view


REG = registry(COUNCIL, TRUST, GP)


def request(**over: object) -> SendRequest:
    base: dict[str, object] = {"to": "ods:RYR", "type": "fhir.r4.ServiceRequest", "purpose": "direct-care",
                               "classification": "OFFICIAL-SENSITIVE", "subject": "nhs:9434765919",
                               "payload": REFERRAL}
    base.update(over)
    return msgspec.convert(base, SendRequest)


def send(req: SendRequest | None = None, mid: str = "m-1") -> core.Outgoing:
    return core.prepare_send(req or request(), me=COUNCIL, system="asc", snap=SNAP, registry=REG, message_id=mid,
                             now=NOW)


def test_egress_then_ingress_round_trip() -> None:
    out = send()
    assert out.subject == "psvn.msg.ods_RYR.gss_E06000043"
    assert out.decision.allow and out.decision.rule_ids == ["care-referrals"]
    assert b"9434765919" not in out.data  # sealed
    inc = core.open_incoming(out.data, subject=out.subject, message_id="m-1", me=TRUST, registry=REG, snap=SNAP,
                             now=NOW)
    assert inc.envelope == out.envelope and json.loads(inc.payload) == REFERRAL
    assert inc.sender.address == COUNCIL.org and inc.decision.allow


@pytest.mark.parametrize("kwargs,code,rule", [
    ({"message_id": "m-2"}, Code.DECRYPT_FAILED, "hpke-open"),  # replayed under another id
    ({"subject": "psvn.msg.ods_RYR.ods_G81001"}, Code.DECRYPT_FAILED, "hpke-open"),  # claimed by another sender
    ({"subject": "psvn.msg.ods_G81001.gss_E06000043"}, Code.SENDER_MISMATCH, "subject-format"),  # not for me
    ({"subject": "psvn.msg.ods_RYR.ch_99999999"}, Code.UNKNOWN_RECIPIENT, "registry-member"),  # unknown sender
])
def test_ingress_bindings(kwargs: dict[str, str], code: Code, rule: str) -> None:
    out = send()
    args = {"subject": out.subject, "message_id": "m-1", **kwargs}
    with pytest.raises(PsvnError) as err:
        core.open_incoming(out.data, me=TRUST, registry=REG, snap=SNAP, now=NOW, **args)  # type: ignore[arg-type]
    assert (err.value.code, err.value.rule) == (code, rule)
    assert err.value.message_id == args["message_id"]


def test_ingress_refuses_an_expired_message() -> None:
    out = send(request(ttl_seconds=60))
    with pytest.raises(PsvnError) as err:
        core.open_incoming(out.data, subject=out.subject, message_id="m-1", me=TRUST, registry=REG, snap=SNAP,
                           now=NOW + timedelta(minutes=2))
    assert (err.value.code, err.value.field) == (Code.EXPIRED, "expires")


def test_ingress_refuses_a_revoked_sender() -> None:
    out = send()
    revoked = registry(COUNCIL, TRUST, GP, status="revoked")
    with pytest.raises(PsvnError) as err:
        core.open_incoming(out.data, subject=out.subject, message_id="m-1", me=TRUST, registry=revoked,
                           snap=SNAP, now=NOW)
    assert err.value.code is Code.MEMBER_REVOKED


@pytest.mark.parametrize("over,code,field", [
    ({"to": "ods:XXX"}, Code.UNKNOWN_RECIPIENT, "to"),
    ({"type": "fhir.r4.Nope"}, Code.UNKNOWN_TYPE, "type"),
    ({"payload": {**REFERRAL, "status": "whenever"}}, Code.INVALID_PAYLOAD, "payload/status"),
    ({"purpose": "marketing"}, Code.POLICY_DENIED, None),
    ({"purpose": "Bad Purpose"}, Code.INVALID_ENVELOPE, "purpose"),
])
def test_egress_refusals_carry_the_message_id(over: dict[str, object], code: Code, field: str | None) -> None:
    with pytest.raises(PsvnError) as err:
        send(request(**over), mid="m-9")
    assert err.value.code is code and err.value.message_id == "m-9"
    if field:
        assert err.value.field == field


def test_receipt_round_trip_and_forgery() -> None:
    subject, rid, data = core.make_receipts([core.ReceiptItem(message_id="m-1", status="delivered")], me=TRUST,
                                            to=REG.members[COUNCIL.org], now=NOW)
    assert (subject, rid) == ("psvn.rcpt.gss_E06000043.ods_RYR", "rcpt.m-1.delivered")
    [receipt] = core.open_receipts(data, subject=subject, receipt_msg_id=rid, me=COUNCIL, registry=REG)
    assert (receipt.message_id, receipt.status, receipt.by) == ("m-1", "delivered", TRUST.org)
    with pytest.raises(PsvnError):  # the GP cannot pass off the trust's receipt as its own
        core.open_receipts(data, subject="psvn.rcpt.gss_E06000043.ods_G81001", receipt_msg_id=rid, me=COUNCIL,
                          registry=REG)
    with pytest.raises(PsvnError):  # nor relabel it as acknowledged
        core.open_receipts(data, subject=subject, receipt_msg_id="rcpt.m-1.acknowledged", me=COUNCIL,
                          registry=REG)


def test_a_receipt_of_many_messages_is_signed_once_and_binds_every_item() -> None:
    items = [core.ReceiptItem(message_id=f"m-{i}", status="delivered", sha256=f"{i:064x}") for i in range(3)]
    items.append(core.ReceiptItem(message_id="m-9", status="rejected", reason="invalid-payload: ...",
                                  rule_ids=["fhir-required"]))
    subject, rid, data = core.make_receipts(items, me=TRUST, to=REG.members[COUNCIL.org], now=NOW)
    assert rid.startswith("rcpt.batch.") and rid == core.receipts_id(items)
    opened = core.open_receipts(data, subject=subject, receipt_msg_id=rid, me=COUNCIL, registry=REG)
    assert [(r.message_id, r.status, r.by, r.sha256) for r in opened] == [
        *((f"m-{i}", "delivered", TRUST.org, f"{i:064x}") for i in range(3)), ("m-9", "rejected", TRUST.org, None)]
    assert opened[3].rule_ids == ["fhir-required"]
    # the dedupe id is fixed by what the receipt says: it cannot be relabelled as another receipt
    # (e.g. the single receipt of one of its items), nor does one of fewer items open under it
    for wrong in (core.receipt_id("m-0", "delivered"), core.receipts_id(items[:3])):
        with pytest.raises(PsvnError) as err:
            core.open_receipts(data, subject=subject, receipt_msg_id=wrong, me=COUNCIL, registry=REG)
        assert err.value.code is Code.DECRYPT_FAILED  # the HPKE info binds the id
    # a receipt whose id was computed over other items than it carries is refused for its binding
    body = msgspec.json.encode(core.ReceiptBatch(by=TRUST.org, time="2026-11-25T12:00:00Z", items=items[:2]))
    forged_id = core.receipts_id(items)
    forged = seal.seal(seal.KIND_RECEIPT, body, b"", signing_key=TRUST.signing_key,
                       recipient_key=seal.public_key_for(seal.DEFAULT_SUITE, REG.members[COUNCIL.org].hpke_key),
                       info=seal.info_for(TRUST.org, COUNCIL.org, forged_id))
    with pytest.raises(PsvnError) as err:
        core.open_receipts(forged, subject=subject, receipt_msg_id=forged_id, me=COUNCIL, registry=REG)
    assert (err.value.code, err.value.rule) == (Code.SENDER_MISMATCH, "receipt-binding")
    with pytest.raises(ValueError):
        core.make_receipts([], me=TRUST, to=REG.members[COUNCIL.org])
    too_many = [core.ReceiptItem(message_id=f"m-{i}", status="delivered") for i in range(core.MAX_RECEIPT_ITEMS + 1)]
    with pytest.raises(ValueError):
        core.make_receipts(too_many, me=TRUST, to=REG.members[COUNCIL.org])


def test_a_receipt_is_the_same_however_its_batch_was_ordered_and_names_each_message_once() -> None:
    items = [core.ReceiptItem(message_id=m, status="delivered", sha256="ab" * 32) for m in ("m-2", "m-1", "m-3")]
    council = REG.members[COUNCIL.org]
    _, rid, data = core.make_receipts([*items, items[0]], me=TRUST, to=council, now=NOW)  # m-2 twice
    assert rid == core.make_receipts(items[::-1], me=TRUST, to=council, now=NOW)[1]  # a redelivered batch
    opened = core.open_receipts(data, subject=RCPT_SUBJECT, receipt_msg_id=rid, me=COUNCIL, registry=REG)
    assert [r.message_id for r in opened] == ["m-1", "m-2", "m-3"]


def test_a_receipt_of_one_message_is_written_in_the_form_gateways_from_before_batching_read() -> None:
    class OldReceipt(msgspec.Struct, kw_only=True):  # what a gateway from before batching decodes
        message_id: str
        status: str
        by: str
        time: str

    subject, rid, data = core.make_receipts([core.ReceiptItem(message_id="m-1", status="delivered",
                                                              sha256="cd" * 32)],
                                            me=TRUST, to=REG.members[COUNCIL.org], now=NOW)
    inner = seal.unseal(data, private_key=COUNCIL.private_keys, info=seal.info_for(TRUST.org, COUNCIL.org, rid))
    old = msgspec.json.decode(inner.header, type=OldReceipt)
    assert (old.message_id, old.status, old.by, rid) == ("m-1", "delivered", TRUST.org, "rcpt.m-1.delivered")
    [receipt] = core.open_receipts(data, subject=subject, receipt_msg_id=rid, me=COUNCIL, registry=REG)
    assert receipt.sha256 == "cd" * 32


RCPT_SUBJECT = "psvn.rcpt.gss_E06000043.ods_RYR"  # the trust's receipts to the council


def sealed_by_trust(header: dict[str, object], rid: str) -> bytes:
    """A receipt header as the trust's gateway would sign and seal it for the council."""
    return seal.seal(seal.KIND_RECEIPT, json.dumps(header).encode(), b"", signing_key=TRUST.signing_key,
                     recipient_key=seal.public_key_for(seal.DEFAULT_SUITE, REG.members[COUNCIL.org].hpke_key),
                     info=seal.info_for(TRUST.org, COUNCIL.org, rid))


@pytest.mark.parametrize(("items", "field"), [
    (None, "items"),  # neither items nor a single message
    ([], "items"),
    ([{"message_id": "m-1", "status": "delivered"}, {"message_id": "m-1", "status": "rejected"}], "items"),
    ([{"message_id": "m-1", "status": "delivered", "sha256": "<script>"},
      {"message_id": "m-2", "status": "delivered"}], "items.sha256"),
    ([{"message_id": "m-1", "status": "delivered", "stored": "yesterday"},
      {"message_id": "m-2", "status": "delivered"}], "items.stored"),
    ([{"message_id": "m-1", "status": "delivered", "stored": "2026-11-25T12:00:00"},  # no offset: whose clock?
      {"message_id": "m-2", "status": "delivered"}], "items.stored"),
    ([{"message_id": "m-1", "status": "delivered", "stored": "2026-W48-3T12:00:00Z"},  # ISO 8601, not RFC 3339
      {"message_id": "m-2", "status": "delivered"}], "items.stored"),
    ([{"message_id": "m-1", "status": "delivered", "stored": "0001-01-01T00:00:00+05:00"},  # before year 1 in UTC
      {"message_id": "m-2", "status": "delivered"}], "items.stored"),
])
def test_a_receipt_that_says_nothing_names_a_message_twice_or_carries_a_bad_hash_is_refused(
        items: list[dict[str, str]] | None, field: str) -> None:
    header: dict[str, object] = {"by": TRUST.org, "time": "2026-11-25T12:00:00Z"}
    if items is not None:
        header["items"] = items
    rid = core.receipts_id([core.ReceiptItem(message_id=i["message_id"], status=i["status"])
                            for i in items]) if items else "rcpt.batch.empty"
    with pytest.raises(PsvnError) as err:
        core.open_receipts(sealed_by_trust(header, rid), subject=RCPT_SUBJECT, receipt_msg_id=rid, me=COUNCIL,
                           registry=REG)
    assert (err.value.field, err.value.rule) == (field, "receipt-items")


def test_a_receipt_says_when_the_backbone_stored_each_message_in_one_form() -> None:
    """``stored`` (the sender's ``sent`` step) travels signed in both forms, and is read back in
    the one form every record's times take (UTC, milliseconds, Z)."""
    items = [core.ReceiptItem(message_id="m-1", status="delivered", stored="2026-11-25T13:00:00.5+01:00"),
             core.ReceiptItem(message_id="m-2", status="delivered")]
    for batch in (items, items[:1]):
        subject, rid, data = core.make_receipts(batch, me=TRUST, to=REG.members[COUNCIL.org], now=NOW)
        got = core.open_receipts(data, subject=subject, receipt_msg_id=rid, me=COUNCIL, registry=REG)
        assert [(r.message_id, r.stored) for r in got] == [("m-1", "2026-11-25T12:00:00.500Z"),
                                                           ("m-2", None)][:len(batch)]


def test_a_receipt_in_the_single_form_of_before_batching_is_still_read() -> None:
    header = {"message_id": "m-1", "status": "delivered", "by": TRUST.org, "time": "2026-11-25T12:00:00Z"}
    rid = core.receipt_id("m-1", "delivered")
    [receipt] = core.open_receipts(sealed_by_trust(header, rid), subject=RCPT_SUBJECT, receipt_msg_id=rid,
                                   me=COUNCIL, registry=REG)
    assert (receipt.message_id, receipt.status, receipt.sha256) == ("m-1", "delivered", None)


# ------------------------------------------------------------------------------ key rotation


@pytest.mark.parametrize("wire", [1, 2, 3])
def test_mail_and_receipts_are_sealed_in_the_form_the_recipients_entry_says_it_opens(wire: int) -> None:
    """A network upgrades one gateway at a time: a member whose registry entry says nothing of
    data keys (an entry signed before them, ``wire`` 1) gets HPKE over each message, which
    every gateway opens; one that opens version 2 (or says a newer version) gets data keys."""
    reg = registry(COUNCIL, GP)
    reg.members[TRUST.org] = msgspec.structs.replace(REG.members[TRUST.org], wire=wire)
    out = core.prepare_send(request(), me=COUNCIL, system="asc", snap=SNAP, registry=reg, message_id="m-1", now=NOW)
    assert msgspec.msgpack.decode(out.data, type=seal.Wire).v == min(wire, seal.WIRE_VERSION)
    inc = core.open_incoming(out.data, subject=out.subject, message_id="m-1", me=TRUST, registry=reg, snap=SNAP,
                             now=NOW)
    assert json.loads(inc.payload) == REFERRAL
    old = msgspec.json.decode(msgspec.json.encode(reg.members[TRUST.org]))
    del old["wire"]  # an entry as signed before data keys
    assert msgspec.convert(old, Member).wire == 1
    reg.members[COUNCIL.org] = msgspec.structs.replace(REG.members[COUNCIL.org], wire=wire)
    subject, rid, data = core.make_receipts([core.ReceiptItem(message_id="m-1", status="delivered")], me=TRUST,
                                            to=reg.members[COUNCIL.org], now=NOW)
    assert msgspec.msgpack.decode(data, type=seal.Wire).v == min(wire, seal.WIRE_VERSION)
    [receipt] = core.open_receipts(data, subject=subject, receipt_msg_id=rid, me=COUNCIL, registry=reg)
    assert receipt.message_id == "m-1"


def test_a_rotated_recipient_still_opens_mail_sealed_to_its_old_key() -> None:
    out = send()  # sealed to TRUST's current key
    rotated = core.Identity(org=TRUST.org, member_type=TRUST.member_type, signing_key=TRUST.signing_key,
                            hpke_key=X25519PrivateKey.generate(), retired_hpke=(TRUST.hpke_key,))
    inc = core.open_incoming(out.data, subject=out.subject, message_id="m-1", me=rotated, registry=REG,
                             snap=SNAP, now=NOW)
    assert json.loads(inc.payload) == REFERRAL
    # without the retired key it cannot: the ring is what keeps stored mail readable
    forgot = core.Identity(org=TRUST.org, member_type=TRUST.member_type, signing_key=TRUST.signing_key,
                           hpke_key=rotated.hpke_key)
    with pytest.raises(PsvnError) as err:
        core.open_incoming(out.data, subject=out.subject, message_id="m-1", me=forgot, registry=REG,
                           snap=SNAP, now=NOW)
    assert (err.value.code, err.value.rule, err.value.message_id) == (Code.DECRYPT_FAILED, "hpke-open", "m-1")


def test_a_retired_signing_key_verifies_only_what_was_published_before_it_retired() -> None:
    from psvn.protocol.members import RetiredKey

    out = send()  # signed with the council's key, which now retires at NOW
    new_key = Ed25519PrivateKey.generate()
    reg = registry(TRUST, GP)
    reg.members[COUNCIL.org] = Member(
        address=COUNCIL.org, name="council", type="council", sign_key=raw_public(new_key),
        hpke_key=raw_public(COUNCIL.hpke_key), cert_fingerprint="0" * 64,
        retired_sign_keys=(RetiredKey(key=raw_public(COUNCIL.signing_key), retired_at="2026-11-25T12:00:00.000Z"),))

    def open_at(published: datetime | None) -> core.Incoming:
        return core.open_incoming(out.data, subject=out.subject, message_id="m-1", me=TRUST, registry=reg,
                                  snap=SNAP, now=NOW, published=published)

    assert open_at(NOW - timedelta(seconds=1)).sender.address == COUNCIL.org
    assert open_at(NOW).decision.allow  # the boundary itself still counts
    for late in (NOW + timedelta(milliseconds=1), None):  # after retirement, or no backbone stamp
        with pytest.raises(PsvnError) as err:
            open_at(late)
        assert (err.value.code, err.value.rule) == (Code.SIGNATURE_INVALID, "ed25519-signature")


def test_the_signing_key_follows_the_registry() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    assert core.choose_signing_key([new, old], raw_public(old)) is old  # registry not switched yet
    assert core.choose_signing_key([new, old], raw_public(new)) is new
    assert core.choose_signing_key([new, old], b"\0" * 32) is new  # unknown: the newest


# ------------------------------------------------------------------------------ consent and data subjects
# A citizen's opt-out applies to every message *about* them: consent is decided for the people the
# payload names (NHS numbers, from validation), not only for the one the sender types in the envelope.

JOHN, JANE = "9434765919", "9434765811"  # John is the example referral's patient
NHS = "https://fhir.nhs.uk/Id/nhs-number"
ADT = (Path(__file__).resolve().parents[2] / "examples" / "adt_a01.hl7").read_text()


def opted_out(*purposes: str, subject: str = f"nhs:{JOHN}", seq: int = 1) -> ConsentRegistry:
    reg = ConsentRegistry()
    reg.apply(ConsentChange(subject=subject, seq=seq, opt_outs=list(purposes), effective="2026-11-25T10:00:00Z",
                            issuer="pds:mydex"))
    return reg


def research(**over: object) -> SendRequest:
    return request(**{"to": "ods:RYR/research", "purpose": "research-consented", **over})


def send_as(me: core.Identity, req: SendRequest, consent: ConsentRegistry | None, mid: str = "m-c") -> core.Outgoing:
    return core.prepare_send(req, me=me, system="pas", snap=SNAP, registry=REG, message_id=mid, now=NOW,
                             consent=consent)


def bundle_of(*numbers: str) -> dict[str, object]:
    """A collection Bundle: a referral about the first patient, and every patient named."""
    uuids = [f"urn:uuid:0b8e9f5c-6a3d-4c1e-9b2a-7f6e5d4c3b{i:02d}" for i in range(len(numbers) + 1)]
    sr = {k: v for k, v in REFERRAL.items() if k != "id"}
    sr["subject"] = {"reference": uuids[0]}
    entries = [{"fullUrl": u, "resource": {"resourceType": "Patient", "identifier": [{"system": NHS, "value": n}]}}
               for u, n in zip(uuids, numbers, strict=False)]
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [*entries, {"fullUrl": uuids[-1], "resource": sr}]}


def assert_consent_denied(err: pytest.ExceptionInfo[PsvnError], mid: str, masked: str = "nhs:******5919") -> None:
    e = err.value
    assert (e.code, e.message_id) == (Code.POLICY_DENIED, mid)
    assert "consent-honour-opt-out" in e.extra["rule_ids"] and "consent-honour-opt-out" in (e.rule or "")
    assert "consent-honour-opt-out" in e.detail and masked in e.detail  # names the rule and whom, masked
    assert JOHN not in e.detail and JANE not in e.detail  # a stored reason never holds a full NHS number


@pytest.mark.parametrize("subject", [None, f"nhs:{JOHN}"])
def test_research_about_an_opted_out_patient_is_denied_with_or_without_an_envelope_subject(
        subject: str | None) -> None:
    with pytest.raises(PsvnError) as err:
        send_as(GP, research(subject=subject), opted_out("research-consented"))
    assert_consent_denied(err, "m-c")
    # the same referral is allowed when John has not opted out, even with no envelope subject:
    # the payload names him, which is what the research rule's require_subject asks for
    out = send_as(GP, research(subject=subject), opted_out("research-consented", subject=f"nhs:{JANE}"))
    assert out.decision.allow and out.decision.rule_ids == ["research-with-consent"]
    assert out.envelope.subject == subject  # the envelope is not rewritten


def test_naming_someone_else_in_the_envelope_is_refused_as_subject_binding() -> None:
    for consent in (opted_out("research-consented"), None):  # refused whatever the opt-outs
        with pytest.raises(PsvnError) as err:
            send_as(GP, research(subject=f"nhs:{JANE}"), consent, mid="m-b")
        e = err.value
        assert (e.code, e.field, e.rule, e.message_id) == (Code.INVALID_ENVELOPE, "subject", "subject-binding", "m-b")
        assert "nhs:******5811" in e.detail and "nhs:******5919" in e.detail
        assert JOHN not in e.detail and JANE not in e.detail
    with pytest.raises(PsvnError) as err:  # direct care too, not only research
        send(request(subject=f"nhs:{JANE}"), mid="m-d")
    assert (err.value.field, err.value.rule, err.value.message_id) == ("subject", "subject-binding", "m-d")


def test_a_bundle_is_denied_if_any_patient_in_it_opted_out() -> None:
    two = bundle_of(JANE, JOHN)  # the referral is about Jane; John is in the Bundle too
    with pytest.raises(PsvnError) as err:  # naming Jane, who has not opted out, does not help
        send_as(GP, research(type="fhir.r4.Bundle", payload=two, subject=f"nhs:{JANE}"),
                opted_out("research-consented"))
    assert_consent_denied(err, "m-c")
    with pytest.raises(PsvnError) as err:
        send_as(COUNCIL, request(type="fhir.r4.Bundle", payload=two, subject=None), opted_out("direct-care"))
    assert_consent_denied(err, "m-c")
    out = send_as(GP, research(type="fhir.r4.Bundle", payload=bundle_of(JANE), subject=None),
                  opted_out("research-consented"))
    assert out.decision.allow


def test_an_adt_whose_pid_3_holds_an_opted_out_nhs_number_is_denied() -> None:
    adt = request(to="gss:E06000043/adult-social-care", type="hl7v2.ADT_A01", payload=ADT,
                  datacontenttype="application/hl7-v2")
    with pytest.raises(PsvnError) as err:
        send_as(TRUST, msgspec.structs.replace(adt, subject=None), opted_out("direct-care"))
    assert_consent_denied(err, "m-c")
    # naming him in the envelope as well: the same
    with pytest.raises(PsvnError) as err:
        send_as(TRUST, adt, opted_out("direct-care"))
    assert_consent_denied(err, "m-c")
    assert send_as(TRUST, adt, opted_out("research-consented")).decision.allow  # another purpose


def test_safeguarding_overrides_every_patients_opt_out_and_says_so() -> None:
    reg = opted_out("*")
    reg.apply(ConsentChange(subject=f"nhs:{JANE}", seq=1, opt_outs=["*"], effective="2026-11-25T10:00:00Z"))
    out = send_as(COUNCIL, request(type="fhir.r4.Bundle", payload=bundle_of(JANE, JOHN), subject=None,
                                   purpose="safeguarding"), reg)
    assert out.decision.allow and "consent-safeguarding-override" in out.decision.rule_ids
    assert "1 more data subject" in out.decision.reason and JOHN not in out.decision.reason


def test_a_payload_that_names_nobody_is_decided_as_before() -> None:
    nobody = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
        "resourceType": "Organization", "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code",
                                                        "value": "RYR"}], "name": "A trust"}}]}
    req = research(type="fhir.r4.Bundle", payload=nobody)
    # the envelope's subject is the only one: its opt-out applies, any subject may be named ...
    with pytest.raises(PsvnError) as err:
        send_as(GP, msgspec.structs.replace(req, subject=f"nhs:{JOHN}"), opted_out("research-consented"))
    assert_consent_denied(err, "m-c")
    other = msgspec.structs.replace(req, subject=f"nhs:{JANE}")
    assert send_as(GP, other, opted_out("research-consented")).decision.allow
    # ... and research without any subject is still refused by require_subject
    with pytest.raises(PsvnError) as err:
        send_as(GP, msgspec.structs.replace(req, subject=None), opted_out("research-consented"))
    assert err.value.code is Code.POLICY_DENIED and err.value.extra["rule_ids"] == ["consent-research-names-subject"]


def test_a_consent_change_is_not_blocked_by_the_opt_out_it_changes() -> None:
    """Its payload's subject is not a data subject: someone who opted out of everything can still
    restore consent (and the envelope's subject is not bound to it)."""
    pds, operator = identity("pds:mydex", "pds"), identity("psvn:operator", "operator")
    reg = registry(pds, operator)
    change = msgspec.convert({"to": operator.org, "type": "psvn.consent-change", "purpose": "consent-management",
                              "payload": {"subject": f"nhs:{JOHN}", "seq": 2, "opt_outs": [],
                                          "effective": "2026-11-25T10:00:00Z"}}, SendRequest)
    out = core.prepare_send(change, me=pds, system="app", snap=SNAP, registry=reg, message_id="m-p", now=NOW,
                            consent=opted_out("*"))
    assert out.decision.allow and out.decision.rule_ids == ["consent-changes"]


def forged(req: SendRequest, *, me: core.Identity, to: core.Identity, mid: str) -> tuple[str, bytes]:
    """What a sender's gateway that skipped the subject and consent checks would put on the backbone."""
    env = build(req, source=me.org, source_system="pas", policy_version=SNAP.version,
                datacontenttype="application/fhir+json", now=NOW, message_id=mid)
    data = seal.seal(seal.KIND_MESSAGE, msgspec.json.encode(env), payload_bytes(req.payload),
                     signing_key=me.signing_key, recipient_key=seal.public_key_for(seal.DEFAULT_SUITE,
                                                                                   raw_public(to.hpke_key)),
                     info=seal.info_for(me.org, to.org, mid))
    return msg_subject(to.org, me.org), data


def test_ingress_binds_the_subject_and_checks_every_data_subject_again() -> None:
    subject, data = forged(research(subject=f"nhs:{JANE}"), me=GP, to=TRUST, mid="m-i")
    with pytest.raises(PsvnError) as err:
        core.open_incoming(data, subject=subject, message_id="m-i", me=TRUST, registry=REG, snap=SNAP, now=NOW)
    e = err.value
    assert (e.code, e.field, e.rule, e.message_id) == (Code.INVALID_ENVELOPE, "subject", "subject-binding", "m-i")

    subject, data = forged(research(subject=None), me=GP, to=TRUST, mid="m-j")
    with pytest.raises(PsvnError) as err:
        core.open_incoming(data, subject=subject, message_id="m-j", me=TRUST, registry=REG, snap=SNAP, now=NOW,
                           consent=opted_out("research-consented"))
    assert_consent_denied(err, "m-j")
    assert err.value.detail.startswith("ingress: ")
    inc = core.open_incoming(data, subject=subject, message_id="m-j", me=TRUST, registry=REG, snap=SNAP, now=NOW,
                             consent=opted_out("direct-care"))
    assert inc.decision.allow and inc.envelope.subject is None
    # a message already delivered (checks=False) is opened without deciding again, as before
    assert core.open_incoming(data, subject=subject, message_id="m-j", me=TRUST, registry=REG, snap=SNAP,
                              now=NOW, consent=opted_out("research-consented"), checks=False).payload


def test_a_stored_reason_never_quotes_the_payload() -> None:
    """Reasons go into state and receipts, which the backbone can read: rule and path only."""
    bad = json.loads(json.dumps(REFERRAL).replace("9434765919", "9434765918"))  # wrong check digit
    with pytest.raises(PsvnError) as err:
        send(request(payload=bad, subject=None))
    assert "9434765918" in err.value.detail  # the sender's own system may see it, over its TLS
    reason = core.stored_reason(err.value)
    assert "9434765918" not in reason
    first = err.value.violations[0]
    assert reason == f"invalid-payload: {len(err.value.violations)} violation(s), first at {first.path} [{first.rule}]"
    other = PsvnError(Code.EXPIRED, "message expired at 2026-01-01T00:00:00Z", rule="expiry")
    assert core.stored_reason(other) == "expired: message expired at 2026-01-01T00:00:00Z"


def test_a_message_older_than_any_mailbox_keeps_mail_is_refused_at_arrival() -> None:
    """A replay of mail whose record is gone (retention, TTL) must not be filed as new mail."""
    out = send()
    written = datetime.fromisoformat(out.envelope.time.replace("Z", "+00:00"))

    def arrive(after: timedelta) -> core.Incoming:
        return core.open_incoming(out.data, subject=out.subject, message_id="m-1", me=TRUST, registry=REG,
                                  snap=SNAP, now=NOW, published=written + after)

    assert arrive(core.MAILBOX_MAX_AGE).decision.allow  # the boundary still arrives
    with pytest.raises(PsvnError) as err:
        arrive(core.MAILBOX_MAX_AGE + timedelta(seconds=1))
    assert (err.value.code, err.value.field, err.value.rule, err.value.message_id) == (
        Code.EXPIRED, "time", "arrival-age", "m-1")
