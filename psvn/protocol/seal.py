"""Sign-then-encrypt for the backbone (sans-IO: bytes in, bytes out, no network).

A sealed message is an inner record (the envelope, the payload and the sender's Ed25519
signature over both) encrypted with AES-128-GCM under a data key, and the data key sealed with
HPKE (RFC 9180, base mode) to the recipient gateway's key, both carried in the message: each
message opens on its own, with the recipient's private key alone.

Why a data key rather than HPKE over each message (wire version 1, which still opens): HPKE's
KEM is an X25519 key generation and exchange, ~75 us a message to seal and ~45 us to open on the
project's VM, about a tenth of the CPU a message costs the network in all, where AES-GCM over a
message takes ~2 us. A sender keeps one data key per (recipient key, sender, recipient) for at
most :data:`DATA_KEY_USES` messages and :data:`DATA_KEY_SECONDS` seconds (:class:`DataKeys`); a
recipient keeps the data keys it unsealed, a bounded number (:class:`OpenedKeys`). The HPKE
``info`` of the data key binds it to (sender, recipient); the AES-GCM associated data binds each
message to (sender, recipient, message id), so a sealed message cannot be replayed under another
id or re-addressed by the backbone. The backbone sees none of it; that messages share a sealed
data key tells it little its subjects do not already say (who sent them to whom): at most which
of a member's gateway instances sent them, within a minute. Every message is still signed on
its own: what proves it is its signature, not its encryption.
"""

from __future__ import annotations

import functools
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import msgspec
import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from psvn.core.errors import Code, PsvnError

WIRE_VERSION = 2  # 2: a data key sealed with HPKE, the message with AES-GCM. 1: HPKE per message
WIRE_VERSIONS = (1, 2)  # what opens: mail sealed before an upgrade is still in inboxes
DATA_KEY_USES = 10_000  # messages a sender seals under one data key at most
DATA_KEY_SECONDS = 60.0  # and for how long
_DATA_KEY_BYTES = 16  # AES-128, as the suites' own AEAD
_NONCE_BYTES = 12
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
    """What the backbone stores. Version 1: ``ct`` is HPKE over the inner record. Version 2:
    ``key`` is the data key sealed with HPKE, ``ct`` AES-GCM over the inner record with ``nonce``
    (version 1's form is version 2's without its last two fields)."""
    v: int
    suite: str
    ct: bytes
    key: bytes = b""
    nonce: bytes = b""


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


def _key_info(info: bytes) -> bytes:
    """The HPKE ``info`` a data key is sealed under: a message's binding (:func:`info_for`)
    without its message id, i.e. (sender, recipient), in a domain of its own. Message ids and
    organisation addresses never hold ``|``."""
    return b"psvn/v2-key|" + info.rpartition(b"|")[0]


@dataclass(slots=True)
class _DataKey:
    """One data key a sender seals under: for whom (the key object, see :meth:`DataKeys.take`),
    the key, its HPKE-sealed form, and how much longer it serves."""

    recipient_key: RecipientKey
    aead: AESGCM
    sealed: bytes
    uses_left: int
    until: float


class DataKeys:
    """A sender's data keys: one per (suite, recipient key, sender, recipient), new after
    ``uses`` messages or ``seconds`` seconds, at most ``size`` kept (least recently used goes).

    A recipient's new key (a rotation) starts a new data key at once: entries are kept by the
    recipient's key."""

    def __init__(self, *, uses: int = DATA_KEY_USES, seconds: float = DATA_KEY_SECONDS, size: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= uses <= 2**32 or seconds <= 0 or size < 1:  # random 96-bit nonces: 2^32 at most
            raise ValueError("a data key needs 1 <= uses <= 2^32, seconds > 0 and room for one")
        self.uses, self.seconds, self.size, self.clock = uses, seconds, size, clock
        # (suite, recipient key, key info) -> its data key
        self._keys: OrderedDict[tuple[str, bytes | int, bytes], _DataKey] = OrderedDict()
        self.made = 0  # data keys made (sealed with HPKE) so far

    def take(self, suite: str, recipient_key: RecipientKey, key_info: bytes) -> tuple[AESGCM, bytes]:
        """The data key to seal one more message with, and its HPKE-sealed form."""
        # an X25519 key by its bytes; a hybrid key (no serialisation of its own) by the object,
        # which public_key_for makes once per registry key (the entry holds it: its id stays its own)
        if isinstance(recipient_key, X25519PublicKey):
            held: bytes | int = recipient_key.public_bytes_raw()
        else:
            held = id(recipient_key)
        slot = (suite, held, key_info)
        entry = self._keys.get(slot)
        now = self.clock()
        if (entry is None or (isinstance(held, int) and entry.recipient_key is not recipient_key)
                or entry.uses_left <= 0 or now >= entry.until):
            raw = AESGCM.generate_key(bit_length=8 * _DATA_KEY_BYTES)
            entry = _DataKey(recipient_key, AESGCM(raw), SUITES[suite].encrypt(raw, recipient_key, info=key_info),
                             self.uses, now + self.seconds)
            self._keys[slot] = entry
            self._keys.move_to_end(slot)  # (a renewed entry keeps its place otherwise)
            self.made += 1
            if len(self._keys) > self.size:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(slot)
        entry.uses_left -= 1
        return entry.aead, entry.sealed

    def __len__(self) -> int:
        return len(self._keys)


class OpenedKeys:
    """A recipient's data keys, unsealed once each and kept (at most ``size``, least recently
    used goes) with the private key that opened them: a key taken off the gateway's key ring
    (rotated out past its grace) opens no more mail, even through a data key kept here.

    Entries are kept by (suite, sealed key, key info): a sealed key copied into another
    sender's message is looked up under that sender's binding and does not open there."""

    def __init__(self, *, size: int = 1024) -> None:
        if size < 1:
            raise ValueError("room for one data key at least")
        self.size = size
        self._keys: OrderedDict[tuple[str, bytes, bytes], tuple[AESGCM, PrivateKey]] = OrderedDict()
        self.opened = 0  # data keys unsealed with HPKE so far

    def open(self, suite: str, sealed_key: bytes, key_info: bytes, ring: Sequence[PrivateKey]) -> AESGCM | None:
        """The data key ``sealed_key`` holds, if a key of ``ring`` opens it; else None."""
        slot = (suite, sealed_key, key_info)
        kept = self._keys.get(slot)
        if kept is not None and any(kept[1] is key for key in ring):
            self._keys.move_to_end(slot)
            return kept[0]
        for key in ring:
            try:
                raw = SUITES[suite].decrypt(sealed_key, key, info=key_info)
            except (InvalidTag, ValueError):
                continue
            if len(raw) != _DATA_KEY_BYTES:
                return None
            aead = AESGCM(raw)
            self._keys[slot] = (aead, key)
            self._keys.move_to_end(slot)
            self.opened += 1
            if len(self._keys) > self.size:
                self._keys.popitem(last=False)
            return aead
        return None

    def __len__(self) -> int:
        return len(self._keys)


# The process's own: each gateway seals and opens through these unless told otherwise
DATA_KEYS = DataKeys()
OPENED_KEYS = OpenedKeys()


def seal(kind: str, header: bytes, payload: bytes, *, signing_key: Ed25519PrivateKey,
         recipient_key: RecipientKey, info: bytes, suite: str = DEFAULT_SUITE,
         keys: DataKeys | None = None, version: int = WIRE_VERSION) -> bytes:
    """Sign, then seal to the recipient's key in wire ``version`` (the newest the recipient's
    gateway opens, as its registry entry says; a version newer than this code's is sealed in
    this code's newest form)."""
    sig = sign(signing_key, signed_bytes(kind, header, payload))
    inner = _enc.encode(Inner(kind=kind, header=header, payload=payload, signature=sig))
    if version < 2:  # a gateway from before data keys: HPKE over the message itself
        return _enc.encode(Wire(v=1, suite=suite, ct=SUITES[suite].encrypt(inner, recipient_key, info=info)))
    aead, sealed_key = (DATA_KEYS if keys is None else keys).take(suite, recipient_key, _key_info(info))
    nonce = os.urandom(_NONCE_BYTES)
    return _enc.encode(Wire(v=WIRE_VERSION, suite=suite, ct=aead.encrypt(nonce, inner, info), key=sealed_key,
                            nonce=nonce))


def unseal(data: bytes, *, private_key: PrivateKey | Mapping[str, PrivateKey | Sequence[PrivateKey]],
           info: bytes, message_id: str | None = None, opened: OpenedKeys | None = None) -> Inner:
    """Decrypt with the key for the message's suite (one key, or per suite one key or a key ring:
    the current key first, then retired ones, so mail sealed before a rotation still opens).
    Does NOT verify the signature (the caller looks up the sender's key first)."""
    try:
        wire = _wire_dec.decode(data)
    except msgspec.DecodeError as exc:
        raise PsvnError(Code.DECRYPT_FAILED, "not a psvn sealed message", rule="wire-format",
                        message_id=message_id) from exc
    if wire.v not in WIRE_VERSIONS or wire.suite not in SUITES:
        raise PsvnError(Code.DECRYPT_FAILED, f"unsupported wire version {wire.v} / suite {wire.suite!r}",
                        rule="wire-version", message_id=message_id)
    found = private_key.get(wire.suite) if isinstance(private_key, Mapping) else private_key
    ring: Sequence[PrivateKey] = () if found is None else (found if isinstance(found, Sequence) else (found,))
    if not ring:
        raise PsvnError(Code.DECRYPT_FAILED, f"this gateway holds no key for suite {wire.suite!r}",
                        rule="hpke-suite", message_id=message_id)
    inner_bytes = _open_v2(wire, ring, info, opened) if wire.v == 2 else _open_v1(wire, ring, info)
    if inner_bytes is None:
        raise PsvnError(Code.DECRYPT_FAILED,
                        "decryption failed: wrong key, tampered ciphertext, or re-addressed message",
                        rule="hpke-open", message_id=message_id)
    try:
        return _inner_dec.decode(inner_bytes)
    except msgspec.DecodeError as exc:
        raise PsvnError(Code.DECRYPT_FAILED, "decrypted record is malformed", rule="inner-format",
                        message_id=message_id) from exc


def _open_v2(wire: Wire, ring: Sequence[PrivateKey], info: bytes, opened: OpenedKeys | None) -> bytes | None:
    if len(wire.nonce) != _NONCE_BYTES:
        return None
    aead = (OPENED_KEYS if opened is None else opened).open(wire.suite, wire.key, _key_info(info), ring)
    if aead is None:
        return None
    try:
        return aead.decrypt(wire.nonce, wire.ct, info)
    except InvalidTag:
        return None


def _open_v1(wire: Wire, ring: Sequence[PrivateKey], info: bytes) -> bytes | None:
    for key in ring:
        try:
            return SUITES[wire.suite].decrypt(wire.ct, key, info=info)
        except (InvalidTag, ValueError):
            continue
    return None


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
