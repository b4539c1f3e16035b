"""psvn/protocol/seal.py: sign-then-encrypt round trip and every way it must refuse."""

from __future__ import annotations

import msgspec
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from psvn.core.errors import Code, PsvnError
from psvn.protocol import seal

SENDER = Ed25519PrivateKey.generate()
RECIPIENT = X25519PrivateKey.generate()
INFO = seal.info_for("gss:E06000043", "ods:RYR", "m-1")
HEADER = b'{"id":"m-1"}'
PAYLOAD = b'{"resourceType":"ServiceRequest"}' * 30


def sealed() -> bytes:
    return seal.seal(seal.KIND_MESSAGE, HEADER, PAYLOAD, signing_key=SENDER,
                     recipient_key=RECIPIENT.public_key(), info=INFO)


def test_round_trip() -> None:
    inner = seal.unseal(sealed(), private_key=RECIPIENT, info=INFO)
    seal.verify(inner, SENDER.public_key())
    assert (inner.kind, inner.header, inner.payload) == (seal.KIND_MESSAGE, HEADER, PAYLOAD)


def test_backbone_sees_no_plaintext() -> None:
    data = sealed()
    assert PAYLOAD[:20] not in data and b"m-1" not in data and b"ServiceRequest" not in data
    assert len(data) < len(PAYLOAD) + 200  # X25519 HPKE adds ~48 bytes plus framing and signature


def test_each_seal_is_fresh() -> None:
    assert sealed() != sealed()


def test_tampered_ciphertext_is_refused() -> None:
    wire = msgspec.msgpack.decode(sealed(), type=seal.Wire)
    ct = bytearray(wire.ct)
    ct[len(ct) // 2] ^= 0x01
    tampered = msgspec.msgpack.encode(seal.Wire(v=wire.v, suite=wire.suite, ct=bytes(ct)))
    with pytest.raises(PsvnError) as err:
        seal.unseal(tampered, private_key=RECIPIENT, info=INFO, message_id="m-1")
    assert err.value.code is Code.DECRYPT_FAILED and err.value.rule == "hpke-open"
    assert err.value.message_id == "m-1"


def test_wrong_key_is_refused() -> None:
    with pytest.raises(PsvnError) as err:
        seal.unseal(sealed(), private_key=X25519PrivateKey.generate(), info=INFO)
    assert err.value.code is Code.DECRYPT_FAILED


@pytest.mark.parametrize("info", [
    seal.info_for("gss:E06000043", "ods:RYR", "m-2"),  # replayed under another id
    seal.info_for("ods:G81001", "ods:RYR", "m-1"),  # claimed by another sender
    seal.info_for("gss:E06000043", "ods:G81001", "m-1"),  # re-addressed
])
def test_context_binding(info: bytes) -> None:
    with pytest.raises(PsvnError) as err:
        seal.unseal(sealed(), private_key=RECIPIENT, info=info)
    assert err.value.code is Code.DECRYPT_FAILED


def test_forged_signature_is_refused() -> None:
    forger = Ed25519PrivateKey.generate()
    data = seal.seal(seal.KIND_MESSAGE, HEADER, PAYLOAD, signing_key=forger,
                     recipient_key=RECIPIENT.public_key(), info=INFO)
    inner = seal.unseal(data, private_key=RECIPIENT, info=INFO)
    with pytest.raises(PsvnError) as err:
        seal.verify(inner, SENDER.public_key(), message_id="m-1")
    assert err.value.code is Code.SIGNATURE_INVALID and err.value.rule == "ed25519-signature"


def test_signature_covers_header_and_payload_separately() -> None:
    inner = seal.unseal(sealed(), private_key=RECIPIENT, info=INFO)
    # moving a byte from header to payload must not keep the signature valid
    shifted = seal.Inner(kind=inner.kind, header=inner.header[:-1], payload=inner.header[-1:] + inner.payload,
                         signature=inner.signature)
    with pytest.raises(PsvnError):
        seal.verify(shifted, SENDER.public_key())
    relabelled = seal.Inner(kind=seal.KIND_RECEIPT, header=inner.header, payload=inner.payload,
                            signature=inner.signature)
    with pytest.raises(PsvnError):
        seal.verify(relabelled, SENDER.public_key())


@pytest.mark.parametrize("data", [b"", b"not msgpack at all", msgspec.msgpack.encode([9, "x", b""])])
def test_garbage_is_refused_not_crashing(data: bytes) -> None:
    with pytest.raises(PsvnError) as err:
        seal.unseal(data, private_key=RECIPIENT, info=INFO)
    assert err.value.code is Code.DECRYPT_FAILED


def test_hybrid_post_quantum_round_trip() -> None:
    from cryptography.hazmat.primitives import hpke
    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey

    pq, classic = MLKEM768PrivateKey.generate(), X25519PrivateKey.generate()
    private = hpke.MLKEM768X25519PrivateKey(pq, classic)
    raw = pq.public_key().public_bytes_raw() + classic.public_key().public_bytes_raw()
    public = seal.public_key_for(seal.HYBRID_SUITE, raw)
    data = seal.seal(seal.KIND_MESSAGE, HEADER, PAYLOAD, signing_key=SENDER, recipient_key=public, info=INFO,
                     suite=seal.HYBRID_SUITE)
    assert len(data) - len(sealed()) >= 1088  # the ML-KEM-768 ciphertext (1,088 bytes) rides along
    inner = seal.unseal(data, private_key={seal.DEFAULT_SUITE: RECIPIENT, seal.HYBRID_SUITE: private}, info=INFO)
    seal.verify(inner, SENDER.public_key())
    assert inner.payload == PAYLOAD
    with pytest.raises(PsvnError) as err:  # a gateway without a hybrid key cannot open it
        seal.unseal(data, private_key={seal.DEFAULT_SUITE: RECIPIENT}, info=INFO, message_id="m-1")
    assert (err.value.code, err.value.rule) == (Code.DECRYPT_FAILED, "hpke-suite")
    other = hpke.MLKEM768X25519PrivateKey(MLKEM768PrivateKey.generate(), X25519PrivateKey.generate())
    with pytest.raises(PsvnError) as err:  # nor one with the wrong hybrid key
        seal.unseal(data, private_key={seal.HYBRID_SUITE: other}, info=INFO)
    assert err.value.code is Code.DECRYPT_FAILED
    with pytest.raises(PsvnError):
        seal.public_key_for(seal.HYBRID_SUITE, raw[:-1])


ED25519_L = 2**252 + 27742317777372353535851937790883648493  # the group order: S must be below it


def test_libsodium_verification_agrees_with_openssl_and_refuses_what_it_must() -> None:
    """Signatures are made by OpenSSL (``cryptography``) and checked by libsodium: both agree on
    every genuine and every altered signature, and a non-canonical S (S + L, which verifies the
    same equation), a short signature and another signer's key are refused."""

    def openssl(sig: bytes, data: bytes) -> bool:
        try:
            SENDER.public_key().verify(sig, data)
            return True
        except InvalidSignature:
            return False

    other = Ed25519PrivateKey.generate().public_key()
    for i in range(40):
        data = seal.signed_bytes(seal.KIND_MESSAGE, HEADER, PAYLOAD + bytes([i]))
        sig = SENDER.sign(data)
        assert seal.verify_any(sig, data, [SENDER.public_key()])
        assert seal.verify_any(sig, data, [other, SENDER.public_key()])  # a retired key first
        assert not seal.verify_any(sig, data, [other])
        flipped = bytearray(sig)
        flipped[i % 64] ^= 1 << (i % 8)
        assert not seal.verify_any(bytes(flipped), data, [SENDER.public_key()]) and not openssl(bytes(flipped), data)
        assert openssl(sig, data)
        assert not seal.verify_any(sig, data[:-1] + bytes([data[-1] ^ 1]), [SENDER.public_key()])
    assert not seal.verify_any(sig[:63], data, [SENDER.public_key()])
    assert not seal.verify_any(sig + b"\x00", data, [SENDER.public_key()])
    s = int.from_bytes(sig[32:], "little")
    malleated = sig[:32] + (s + ED25519_L).to_bytes(32, "little")
    assert not seal.verify_any(malleated, data, [SENDER.public_key()])
    assert not seal.verify_any(sig, data, [])


def test_a_small_order_key_signs_nothing() -> None:
    """The identity point as a public key, with R the identity and S = 0, passes OpenSSL's
    cofactorless check for any message whatever (``cryptography`` accepts it): a member holding
    such a key could disown everything "signed" with it. libsodium refuses small-order keys."""
    identity = b"\x01" + bytes(31)
    key = Ed25519PublicKey.from_public_bytes(identity)
    forged = identity + bytes(32)
    key.verify(forged, b"anything at all")  # what the check before libsodium let through
    assert not seal.verify_any(forged, b"anything at all", [key])
    assert not seal.verify_any(forged, seal.signed_bytes(seal.KIND_MESSAGE, HEADER, PAYLOAD), [key])


@pytest.mark.parametrize("size", [0, 1, 63, 64, 1_500, 70_000])
def test_libsodium_signs_exactly_as_openssl_does(size: int) -> None:
    """Ed25519 is deterministic: the signature :func:`seal.sign` makes through libsodium is
    byte for byte the one ``cryptography`` (OpenSSL) makes with the same key, for any length,
    and what a sealed message carries verifies under the signer's key with either library."""
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for key in (SENDER, Ed25519PrivateKey.generate()):
        assert seal.sign(key, data) == key.sign(data)
        key.public_key().verify(seal.sign(key, data), data)
    inner = seal.unseal(sealed(), private_key=RECIPIENT, info=INFO)
    SENDER.public_key().verify(inner.signature, seal.signed_bytes(inner.kind, inner.header, inner.payload))
    assert seal.sign(Ed25519PrivateKey.generate(), data) != seal.sign(SENDER, data)  # the key's own, not a cached one's
