"""gateway/core.py without any network: the whole egress/ingress protocol as plain functions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from broker.registry import Member, RegistryView
from certs.pki import raw_public
from gateway import core
from gateway.policy import PolicySnapshot
from policies import bundle
from psvn.envelope import SendRequest
from psvn.errors import Code, PsvnError

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
    view = RegistryView()
    for i in ids:
        view.members[i.org] = Member(address=i.org, name=i.org, type=i.member_type,
                                     sign_key=raw_public(i.signing_key), hpke_key=raw_public(i.hpke_key),
                                     cert_fingerprint="0" * 64, status=status)  # type: ignore[arg-type]
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
    subject, rid, data = core.make_receipt(message_id="m-1", status="delivered", me=TRUST,
                                           to=REG.members[COUNCIL.org], now=NOW)
    assert (subject, rid) == ("psvn.rcpt.gss_E06000043.ods_RYR", "rcpt.m-1.delivered")
    receipt = core.open_receipt(data, subject=subject, receipt_msg_id=rid, me=COUNCIL, registry=REG)
    assert (receipt.message_id, receipt.status, receipt.by) == ("m-1", "delivered", TRUST.org)
    with pytest.raises(PsvnError):  # the GP cannot pass off the trust's receipt as its own
        core.open_receipt(data, subject="psvn.rcpt.gss_E06000043.ods_G81001", receipt_msg_id=rid, me=COUNCIL,
                          registry=REG)
    with pytest.raises(PsvnError):  # nor relabel it as acknowledged
        core.open_receipt(data, subject=subject, receipt_msg_id="rcpt.m-1.acknowledged", me=COUNCIL,
                          registry=REG)


# ------------------------------------------------------------------------------ key rotation


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
    from broker.registry import RetiredKey

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
