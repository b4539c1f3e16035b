"""psvn/protocol/members.py: a signing key no signature can be bound to is never admitted,
signed or read, and the registry authority's signature is checked as strictly as a member's."""

from __future__ import annotations

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from psvn.core.errors import Code, PsvnError
from psvn.protocol import members
from psvn.protocol.members import EntryRefused, Member, RegistryEntry, RetiredKey, SignedEntry

AUTHORITY = Ed25519PrivateKey.generate()
ORG = "ods:RYR"
KEY = members.key_for(ORG)
IDENTITY = b"\x01" + bytes(31)  # the identity point: small order
# small-order and non-canonical encodings: the point of order 2, y = p (non-canonical 0), p + 1
P = 2**255 - 19
WEAK_KEYS = [IDENTITY, bytes(32), (P - 1).to_bytes(32, "little"), P.to_bytes(32, "little"),
             (P + 1).to_bytes(32, "little")]


def member(sign_key: bytes, *, retired: tuple[bytes, ...] = ()) -> Member:
    return Member(address=ORG, name="trust", type="nhs-trust", sign_key=sign_key, hpke_key=bytes(32),
                  cert_fingerprint="0" * 64,
                  retired_sign_keys=tuple(RetiredKey(key=k, retired_at="2026-01-01T00:00:00.000Z") for k in retired))


def strong() -> bytes:
    return Ed25519PrivateKey.generate().public_key().public_bytes_raw()


def signed_anyway(entry_member: Member) -> bytes:
    """What a writer that skipped the admission check (or predates it) would store: signed."""
    body = msgspec.json.encode(RegistryEntry(key=KEY, serial=1, signed_at="2026-12-07T00:00:00.000Z",
                                             member=entry_member))
    return msgspec.json.encode(SignedEntry(entry=body, signature=AUTHORITY.sign(members.SIGNATURE_DOMAIN + body)))


def test_genuine_keys_are_admitted_and_read() -> None:
    m = member(strong(), retired=(strong(),))
    entry = members.verify_entry(AUTHORITY.public_key(), KEY, members.sign_entry(AUTHORITY, KEY, m, serial=1))
    assert entry.member == m


@pytest.mark.parametrize("weak", WEAK_KEYS)
def test_a_weak_signing_key_is_not_admitted(weak: bytes) -> None:
    """The authority refuses to sign a member whose key (current or retired) is small-order or
    not canonical, naming the field and the rule."""
    for m in (member(weak), member(strong(), retired=(strong(), weak))):
        with pytest.raises(PsvnError) as err:
            members.sign_entry(AUTHORITY, KEY, m, serial=1)
        assert (err.value.code, err.value.field, err.value.rule) == (Code.BAD_REQUEST, "sign_key", "ed25519-key")
        assert ORG in err.value.detail


@pytest.mark.parametrize("weak", WEAK_KEYS)
def test_a_signed_entry_with_a_weak_key_is_refused_when_read(weak: bytes) -> None:
    """Signed by the genuine authority but carrying a key no signature binds to (a writer
    without the check): every reader refuses it, so the member is never trusted with it."""
    with pytest.raises(EntryRefused, match="sign_key"):
        members.verify_entry(AUTHORITY.public_key(), KEY, signed_anyway(member(weak)))
    with pytest.raises(EntryRefused, match="retired_sign_keys"):
        members.verify_entry(AUTHORITY.public_key(), KEY, signed_anyway(member(strong(), retired=(weak,))))


def test_a_small_order_authority_key_vouches_for_nothing() -> None:
    """Were the configured authority key the identity point, OpenSSL's check would accept the
    forged signature (R = identity, S = 0) over any entry; the registry's check refuses it."""
    authority = Ed25519PublicKey.from_public_bytes(IDENTITY)
    body = msgspec.json.encode(RegistryEntry(key=KEY, serial=1, signed_at="2026-12-07T00:00:00.000Z",
                                             member=member(strong())))
    forged = IDENTITY + bytes(32)
    authority.verify(forged, members.SIGNATURE_DOMAIN + body)  # what OpenSSL lets through
    with pytest.raises(EntryRefused, match="does not verify"):
        members.verify_entry(authority, KEY, msgspec.json.encode(SignedEntry(entry=body, signature=forged)))
