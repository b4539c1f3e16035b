"""Sign-then-encrypt for the backbone (sans-IO: bytes in, bytes out, no network).

A sealed message is HPKE (RFC 9180, base mode) to the recipient gateway's key over an inner
record that carries the envelope, the payload and the sender's Ed25519 signature over both. The
HPKE ``info`` binds the ciphertext to (sender, recipient, message id), so a sealed message cannot
be replayed under another id or re-addressed by the backbone. The backbone sees none of it.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping, Sequence

import msgspec
import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from psvn.core.errors import Code, PsvnError

WIRE_VERSION = 1
DEFAULT_SUITE = "x25519-hkdf-sha256-aes128gcm"
# Hybrid post-quantum: ML-KEM-768 + X25519 (safe if either holds), +1,136 bytes a message.
HYBRID_SUITE = "mlkem768x25519-hkdf-sha256-aes128gcm"
SUITES: dict[str, hpke.Suite] = {
    DEFAULT_SUITE: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM),
    HYBRID_SUITE: hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM),
}
RecipientKey = X25519PublicKey | hpke.MLKEM768X25519PublicKey
PrivateKey = X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
MLKEM768_PUBLIC_BYTES = 1184


@functools.lru_cache(maxsize=4096)
def public_key_for(suite: str, raw: bytes) -> RecipientKey:
    """A recipient's key from its registry form (raw bytes) for its suite (parsed once per key:
    key objects are immutable, and parsing one for every message costs ~1% of a gateway's CPU)."""
    if suite == DEFAULT_SUITE:
        return X25519PublicKey.from_public_bytes(raw)
    if suite == HYBRID_SUITE and len(raw) == MLKEM768_PUBLIC_BYTES + 32:
        return hpke.MLKEM768X25519PublicKey(MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC_BYTES]),
                                            X25519PublicKey.from_public_bytes(raw[MLKEM768_PUBLIC_BYTES:]))
    raise PsvnError(Code.CONFIG_INVALID, f"registry key does not fit suite {suite!r}", rule="hpke-suite")
KIND_MESSAGE = "message"
KIND_RECEIPT = "receipt"


class Wire(msgspec.Struct, array_like=True, frozen=True):
    v: int
    suite: str
    ct: bytes


class Inner(msgspec.Struct, array_like=True, frozen=True):
    kind: str
    header: bytes  # canonical JSON: the envelope, or the receipt
    payload: bytes
    signature: bytes


_wire_dec = msgspec.msgpack.Decoder(Wire)
_inner_dec = msgspec.msgpack.Decoder(Inner)
_enc = msgspec.msgpack.Encoder()


def info_for(sender_org: str, recipient_org: str, message_id: str) -> bytes:
    return f"psvn/v1|{sender_org}|{recipient_org}|{message_id}".encode()


def signed_bytes(kind: str, header: bytes, payload: bytes) -> bytes:
    """Domain-separated, length-prefixed: no two (kind, header, payload) give the same bytes."""
    k = kind.encode()
    return b"psvn-sig-v1\x00" + struct.pack(">HQ", len(k), len(header)) + k + header + payload


@functools.lru_cache(maxsize=64)
def _sodium_secret(key: Ed25519PrivateKey) -> bytes:
    """libsodium's form of a signing key (seed and public key, 64 bytes), made once per key
    object (keys are immutable; a gateway holds one, or two across a rotation)."""
    return nacl.bindings.crypto_sign_seed_keypair(key.private_bytes_raw())[1]


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """An Ed25519 signature, made by libsodium: Ed25519 is deterministic, so it is the very
    signature ``cryptography`` (OpenSSL) makes, in ~24 us against ~35 us for a 1.5 KB message on
    the project's VM (every message and every receipt is signed once on the hot path)."""
    return nacl.bindings.crypto_sign(data, _sodium_secret(key))[:nacl.bindings.crypto_sign_BYTES]


def seal(kind: str, header: bytes, payload: bytes, *, signing_key: Ed25519PrivateKey,
         recipient_key: RecipientKey, info: bytes, suite: str = DEFAULT_SUITE) -> bytes:
    sig = sign(signing_key, signed_bytes(kind, header, payload))
    inner = _enc.encode(Inner(kind=kind, header=header, payload=payload, signature=sig))
    ct = SUITES[suite].encrypt(inner, recipient_key, info=info)
    return _enc.encode(Wire(v=WIRE_VERSION, suite=suite, ct=ct))


def unseal(data: bytes, *, private_key: PrivateKey | Mapping[str, PrivateKey | Sequence[PrivateKey]],
           info: bytes, message_id: str | None = None) -> Inner:
    """Decrypt with the key for the message's suite (one key, or per suite one key or a key ring:
    the current key first, then retired ones, so mail sealed before a rotation still opens).
    Does NOT verify the signature (the caller looks up the sender's key first)."""
    try:
        wire = _wire_dec.decode(data)
    except msgspec.DecodeError as exc:
        raise PsvnError(Code.DECRYPT_FAILED, "not a psvn sealed message", rule="wire-format",
                        message_id=message_id) from exc
    if wire.v != WIRE_VERSION or wire.suite not in SUITES:
        raise PsvnError(Code.DECRYPT_FAILED, f"unsupported wire version {wire.v} / suite {wire.suite!r}",
                        rule="wire-version", message_id=message_id)
    found = private_key.get(wire.suite) if isinstance(private_key, Mapping) else private_key
    ring: Sequence[PrivateKey] = () if found is None else (found if isinstance(found, Sequence) else (found,))
    if not ring:
        raise PsvnError(Code.DECRYPT_FAILED, f"this gateway holds no key for suite {wire.suite!r}",
                        rule="hpke-suite", message_id=message_id)
    inner_bytes = None
    for key in ring:
        try:
            inner_bytes = SUITES[wire.suite].decrypt(wire.ct, key, info=info)
            break
        except (InvalidTag, ValueError):
            continue
    if inner_bytes is None:
        raise PsvnError(Code.DECRYPT_FAILED,
                        "decryption failed: wrong key, tampered ciphertext, or re-addressed message",
                        rule="hpke-open", message_id=message_id)
    try:
        return _inner_dec.decode(inner_bytes)
    except msgspec.DecodeError as exc:
        raise PsvnError(Code.DECRYPT_FAILED, "decrypted record is malformed", rule="inner-format",
                        message_id=message_id) from exc


def verify_any(signature: bytes, data: bytes, keys: Sequence[Ed25519PublicKey]) -> bool:
    """True if any of ``keys`` (a signer's current and still-valid retired keys) signed ``data``.

    Checked by libsodium (PyNaCl), not OpenSSL: every message and every receipt is verified
    once, and measured on the project's 2-core VM one Ed25519 verification of a 1.5 KB message
    cost 56-77 us there against 105-117 us through ``cryptography``'s OpenSSL 3.0 (signing goes
    through libsodium too: :func:`sign`). PyNaCl copies the signed bytes (the signature joined
    to them, and libsodium's output buffer), which for payloads of megabytes eats into the gain.
    The same keys and signatures verify; libsodium is the stricter of the two: it refuses
    small-order keys, under which OpenSSL's check accepts a forged "signature" of anything."""
    if len(signature) != nacl.bindings.crypto_sign_BYTES:
        return False
    signed = signature + data
    for key in keys:
        try:
            nacl.bindings.crypto_sign_open(signed, key.public_bytes_raw())
            return True
        except nacl.exceptions.BadSignatureError:
            continue
    return False


def strong_signing_key(raw: bytes) -> bool:
    """True if ``raw`` is an Ed25519 public key a signature can be bound to: a canonical point of
    the curve's large prime-order subgroup (libsodium's check). A small-order key (the identity
    point, say) "verifies" forged signatures under OpenSSL's check, so a member holding one
    could disown whatever it sent; such a key is never admitted to the registry (members)."""
    return (len(raw) == nacl.bindings.crypto_sign_PUBLICKEYBYTES
            and nacl.bindings.crypto_core_ed25519_is_valid_point(raw))


def verify(inner: Inner, sender_key: Ed25519PublicKey | Sequence[Ed25519PublicKey], *,
           message_id: str | None = None) -> None:
    """Verify against the sender's key (or any of its keys still valid for this message)."""
    keys = (sender_key,) if isinstance(sender_key, Ed25519PublicKey) else sender_key
    if verify_any(inner.signature, signed_bytes(inner.kind, inner.header, inner.payload), keys):
        return
    raise PsvnError(Code.SIGNATURE_INVALID, "the sender's signature does not verify",
                    rule="ed25519-signature", message_id=message_id)
