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
    # the sealed data key (64 bytes: X25519 + key + tag), the nonce and tag, framing and signature
    assert len(data) < len(PAYLOAD) + 250


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


# -- data keys (wire version 2) -------------------------------------------------------------

def _wire(data: bytes) -> seal.Wire:
    return msgspec.msgpack.decode(data, type=seal.Wire)


def _seal_with(keys: seal.DataKeys, info: bytes = INFO, recipient: X25519PrivateKey = RECIPIENT) -> bytes:
    return seal.seal(seal.KIND_MESSAGE, HEADER, PAYLOAD, signing_key=SENDER, recipient_key=recipient.public_key(),
                     info=info, keys=keys)


def test_a_sender_seals_many_messages_under_one_data_key_for_a_while() -> None:
    now = [0.0]
    keys = seal.DataKeys(uses=3, seconds=10.0, clock=lambda: now[0])
    public = RECIPIENT.public_key()

    def one(info: bytes = INFO) -> seal.Wire:
        return _wire(seal.seal(seal.KIND_MESSAGE, HEADER, PAYLOAD, signing_key=SENDER, recipient_key=public,
                               info=info, keys=keys))

    first = [one(seal.info_for("gss:E06000043", "ods:RYR", f"m-{i}")) for i in range(3)]
    assert len({w.key for w in first}) == 1 and len({w.nonce for w in first}) == 3 and keys.made == 1
    assert one().key != first[0].key and keys.made == 2  # three uses, then a new data key
    now[0] = 10.0
    assert one().key != first[0].key and keys.made == 3  # its time is up
    assert one(seal.info_for("gss:E06000043", "ods:G81001", "m-1")).key != first[0].key  # another recipient
    assert one(seal.info_for("ods:G81001", "ods:RYR", "m-1")).key != first[0].key  # or sender
    rotated = X25519PrivateKey.generate()
    wire = _wire(seal.seal(seal.KIND_MESSAGE, HEADER, PAYLOAD, signing_key=SENDER, recipient_key=rotated.public_key(),
                           info=INFO, keys=keys))
    assert keys.made == 6  # a recipient's new key: a new data key at once
    data = msgspec.msgpack.encode(wire)
    assert seal.unseal(data, private_key=rotated, info=INFO, opened=seal.OpenedKeys()).payload == PAYLOAD
    with pytest.raises(PsvnError):
        seal.unseal(data, private_key=RECIPIENT, info=INFO, opened=seal.OpenedKeys())


def test_the_sender_keeps_a_bounded_number_of_data_keys() -> None:
    keys = seal.DataKeys(size=4)
    for i in range(20):
        _seal_with(keys, seal.info_for("gss:E06000043", f"ods:R{i:02d}", "m-1"))
    assert len(keys) == 4 and keys.made == 20


def test_a_recipient_opens_each_data_key_once_and_only_with_a_key_it_still_holds() -> None:
    keys, opened = seal.DataKeys(), seal.OpenedKeys()
    infos = [seal.info_for("gss:E06000043", "ods:RYR", f"m-{i}") for i in range(5)]
    for info in infos:
        inner = seal.unseal(_seal_with(keys, info), private_key=RECIPIENT, info=info, opened=opened)
        seal.verify(inner, SENDER.public_key())
    assert opened.opened == 1  # one HPKE open for five messages
    data = _seal_with(keys)
    retired = X25519PrivateKey.generate()
    assert seal.unseal(data, private_key=[retired, RECIPIENT], info=INFO, opened=opened).payload == PAYLOAD
    with pytest.raises(PsvnError) as err:  # its key taken off the ring: the kept data key opens nothing
        seal.unseal(data, private_key=[retired], info=INFO, opened=opened, message_id="m-1")
    assert (err.value.code, err.value.rule, err.value.message_id) == (Code.DECRYPT_FAILED, "hpke-open", "m-1")


def test_a_sealed_data_key_copied_into_another_senders_message_does_not_open() -> None:
    """A hostile member that copies the sealed data key of another sender's message (the backbone
    operator could see it) into its own, or claims that sender's whole message, opens nothing:
    the data key is sealed under (sender, recipient) and each message's AES-GCM associated data
    names sender, recipient and message id (either binding alone refuses both; the second is
    what ``test_context_binding`` goes red without)."""
    keys, opened = seal.DataKeys(), seal.OpenedKeys()
    genuine = _wire(_seal_with(keys))
    seal.unseal(msgspec.msgpack.encode(genuine), private_key=RECIPIENT, info=INFO, opened=opened)  # kept now
    hostile_info = seal.info_for("ods:G81001", "ods:RYR", "m-1")
    mine = _wire(_seal_with(seal.DataKeys(), hostile_info))
    forged = msgspec.msgpack.encode(seal.Wire(v=2, suite=mine.suite, ct=mine.ct, key=genuine.key, nonce=mine.nonce))
    with pytest.raises(PsvnError) as err:
        seal.unseal(forged, private_key=RECIPIENT, info=hostile_info, opened=opened)
    assert err.value.code is Code.DECRYPT_FAILED
    replayed = msgspec.msgpack.encode(genuine)  # the genuine message claimed by the hostile sender
    with pytest.raises(PsvnError):
        seal.unseal(replayed, private_key=RECIPIENT, info=hostile_info, opened=opened)
    assert opened.opened == 1


@pytest.mark.parametrize("field", ["key", "nonce", "ct", "short nonce", "no nonce", "4-byte nonce", "long nonce",
                                   "no key", "short data key"])
def test_every_part_of_a_version_2_message_is_checked(field: str) -> None:
    wire = _wire(_seal_with(seal.DataKeys()))
    flip = {"key": "key", "nonce": "nonce", "ct": "ct"}.get(field)
    parts = {"key": wire.key, "nonce": wire.nonce, "ct": wire.ct}
    if flip:
        changed = bytearray(parts[flip])
        changed[len(changed) // 2] ^= 0x01
        parts[flip] = bytes(changed)
    elif "nonce" in field:  # AES-GCM itself takes 8 to 128 bytes, and raises on fewer
        parts["nonce"] = {"short nonce": wire.nonce[:8], "no nonce": b"", "4-byte nonce": wire.nonce[:4],
                          "long nonce": wire.nonce + b"\x00"}[field]
    elif field == "no key":
        parts["key"] = b""
    else:  # a sealed "data key" of 15 bytes, under the right binding
        parts["key"] = seal.SUITES[seal.DEFAULT_SUITE].encrypt(bytes(15), RECIPIENT.public_key(),
                                                               info=seal._key_info(INFO))
    data = msgspec.msgpack.encode(seal.Wire(v=2, suite=wire.suite, **parts))
    with pytest.raises(PsvnError) as err:
        seal.unseal(data, private_key=RECIPIENT, info=INFO, opened=seal.OpenedKeys(), message_id="m-1")
    assert (err.value.code, err.value.rule) == (Code.DECRYPT_FAILED, "hpke-open")


def test_the_recipient_keeps_a_bounded_number_of_data_keys() -> None:
    opened = seal.OpenedKeys(size=3)
    for _ in range(10):  # ten senders' worth of fresh data keys
        seal.unseal(_seal_with(seal.DataKeys()), private_key=RECIPIENT, info=INFO, opened=opened)
    assert len(opened) == 3 and opened.opened == 10


def test_mail_sealed_before_data_keys_still_opens() -> None:
    """Wire version 1 (HPKE over each message) is what inboxes hold from before the upgrade."""
    inner = msgspec.msgpack.encode(seal.Inner(kind=seal.KIND_MESSAGE, header=HEADER, payload=PAYLOAD,
                                              signature=seal.sign(SENDER, seal.signed_bytes(seal.KIND_MESSAGE,
                                                                                            HEADER, PAYLOAD))))
    ct = seal.SUITES[seal.DEFAULT_SUITE].encrypt(inner, RECIPIENT.public_key(), info=INFO)
    old = msgspec.msgpack.encode([1, seal.DEFAULT_SUITE, ct])
    opened = seal.unseal(old, private_key=RECIPIENT, info=INFO)
    seal.verify(opened, SENDER.public_key())
    assert opened.payload == PAYLOAD
    with pytest.raises(PsvnError) as err:  # and its binding still holds
        seal.unseal(old, private_key=RECIPIENT, info=seal.info_for("gss:E06000043", "ods:RYR", "m-2"))
    assert err.value.rule == "hpke-open"
    with pytest.raises(PsvnError) as err:
        seal.unseal(msgspec.msgpack.encode([3, seal.DEFAULT_SUITE, ct]), private_key=RECIPIENT, info=INFO)
    assert err.value.rule == "wire-version"


def test_a_version_1_recipient_gets_hpke_over_each_message() -> None:
    keys = seal.DataKeys()
    data = seal.seal(seal.KIND_MESSAGE, HEADER, PAYLOAD, signing_key=SENDER, recipient_key=RECIPIENT.public_key(),
                     info=INFO, keys=keys, version=1)
    wire = _wire(data)
    assert (wire.v, wire.key, wire.nonce, keys.made) == (1, b"", b"", 0)
    seal.verify(seal.unseal(data, private_key=RECIPIENT, info=INFO, opened=seal.OpenedKeys()), SENDER.public_key())


def test_a_hybrid_recipients_new_key_gets_a_new_data_key() -> None:
    """Hybrid (post-quantum) keys have no serialisation of their own, so the sender keeps their
    data keys by key object; a rotated key, or the same key parsed again, is never sealed to
    under another key's data key."""
    from cryptography.hazmat.primitives import hpke
    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey

    def hybrid() -> tuple[hpke.MLKEM768X25519PrivateKey, bytes]:
        pq, classic = MLKEM768PrivateKey.generate(), X25519PrivateKey.generate()
        return (hpke.MLKEM768X25519PrivateKey(pq, classic),
                pq.public_key().public_bytes_raw() + classic.public_key().public_bytes_raw())

    keys = seal.DataKeys()
    (old, old_raw), (new, new_raw) = hybrid(), hybrid()

    def to(raw: bytes) -> bytes:
        return seal.seal(seal.KIND_MESSAGE, HEADER, PAYLOAD, signing_key=SENDER, info=INFO, keys=keys,
                         recipient_key=seal.public_key_for(seal.HYBRID_SUITE, raw), suite=seal.HYBRID_SUITE)

    first, again = to(old_raw), to(old_raw)
    assert _wire(first).key == _wire(again).key and keys.made == 1
    rotated = to(new_raw)
    assert keys.made == 2
    assert seal.unseal(rotated, private_key=new, info=INFO, opened=seal.OpenedKeys()).payload == PAYLOAD
    with pytest.raises(PsvnError):
        seal.unseal(rotated, private_key=old, info=INFO, opened=seal.OpenedKeys())
    seal.public_key_for.cache_clear()  # the same key parsed again: another object, a data key of its own
    reparsed = to(old_raw)
    assert keys.made == 3
    assert seal.unseal(reparsed, private_key=old, info=INFO, opened=seal.OpenedKeys()).payload == PAYLOAD
