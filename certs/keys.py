"""Message keys: what a gateway signs and opens mail with, apart from its TLS certificates.

``sign.key`` (Ed25519) signs messages and receipts; ``hpke.key`` (X25519) is the HPKE recipient
key, and a post-quantum gateway also has ``hpke-hybrid.key`` (ML-KEM-768 + X25519). They are
separate from the X.509 keys in :mod:`psvn.certs.ca` so that a transport certificate can be
re-issued without re-keying the message layer, and message keys can be rotated
(:func:`rotate_gateway_keys`) without touching the certificates. Peers learn these keys from the
signed registry as 32 raw bytes (:func:`raw_public`), not from certificates.

Every key is written 0600 from the moment it exists (:func:`psvn.certs.files.write_private`).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from psvn.certs.files import GatewayFiles, load_private, pem_private, read_named, write_private
from psvn.core.errors import Code, PsvnError

__all__ = [
    "HYBRID_MAGIC",
    "RETIRED_DIR",
    "RetiredKeys",
    "ed25519_public",
    "hybrid_public_raw",
    "load_hpke_key",
    "load_hybrid_hpke_key",
    "load_retired_keys",
    "load_signing_key",
    "new_hpke_key",
    "new_hybrid_hpke_key",
    "new_signing_key",
    "raw_public",
    "rotate_gateway_keys",
    "write_gateway_keys",
    "x25519_public",
]


# ------------------------------------------------------------------------- Ed25519 and X25519


def new_signing_key(path: Path) -> Ed25519PrivateKey:
    """Generate an Ed25519 key and write it PKCS8 PEM 0600 (gateway or policy authority key)."""
    key = Ed25519PrivateKey.generate()
    write_private(Path(path), pem_private(key))
    return key


def new_hpke_key(path: Path) -> X25519PrivateKey:
    """Generate an X25519 HPKE recipient key and write it PKCS8 PEM 0600."""
    key = X25519PrivateKey.generate()
    write_private(Path(path), pem_private(key))
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    key = load_private(Path(path), "signing key")
    if not isinstance(key, Ed25519PrivateKey):
        raise PsvnError(Code.CONFIG_INVALID, f"{path} is not an Ed25519 key", field=str(path))
    return key


def load_hpke_key(path: Path) -> X25519PrivateKey:
    key = load_private(Path(path), "HPKE key")
    if not isinstance(key, X25519PrivateKey):
        raise PsvnError(Code.CONFIG_INVALID, f"{path} is not an X25519 key", field=str(path))
    return key


def raw_public(
    key: Ed25519PrivateKey | Ed25519PublicKey | X25519PrivateKey | X25519PublicKey,
) -> bytes:
    """The 32 raw public bytes of an Ed25519/X25519 key (private or public): registry form."""
    if isinstance(key, (Ed25519PrivateKey, X25519PrivateKey)):
        key = key.public_key()
    if not isinstance(key, (Ed25519PublicKey, X25519PublicKey)):
        raise TypeError(f"not an Ed25519/X25519 key: {type(key).__name__}")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw32(raw: bytes, what: str) -> bytes:
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 32:
        raise PsvnError(Code.CONFIG_INVALID, f"{what} public key must be 32 raw bytes", field="key")
    return bytes(raw)


def ed25519_public(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_raw32(raw, "Ed25519"))


def x25519_public(raw: bytes) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(_raw32(raw, "X25519"))


# -- hybrid post-quantum HPKE key (ML-KEM-768 + X25519) -----------------------------------------
HYBRID_MAGIC = b"psvn-hpke-mlkem768x25519-v1\n"


def new_hybrid_hpke_key(path: Path) -> tuple[MLKEM768PrivateKey, X25519PrivateKey]:
    """Write a hybrid HPKE recipient key (0600): the ML-KEM-768 seed and the X25519 key, raw.

    The hybrid key has no serialisation of its own, so its two parts are stored side by side."""
    pq, classic = MLKEM768PrivateKey.generate(), X25519PrivateKey.generate()
    write_private(path, HYBRID_MAGIC + pq.private_bytes_raw() + classic.private_bytes_raw())
    return pq, classic


def load_hybrid_hpke_key(path: Path) -> tuple[MLKEM768PrivateKey, X25519PrivateKey]:
    data = read_named(path, "hybrid HPKE key")
    body = data[len(HYBRID_MAGIC):]
    if not data.startswith(HYBRID_MAGIC) or len(body) != 64 + 32:
        raise PsvnError(Code.CONFIG_INVALID, f"{path}: not a psvn hybrid HPKE key", field=str(path),
                        rule="key-format")
    return MLKEM768PrivateKey.from_seed_bytes(body[:64]), X25519PrivateKey.from_private_bytes(body[64:])


def hybrid_public_raw(pq: MLKEM768PrivateKey, classic: X25519PrivateKey) -> bytes:
    """Registry form of a hybrid public key: ML-KEM-768 public (1,184 bytes) then X25519 (32)."""
    return pq.public_key().public_bytes_raw() + raw_public(classic)


# -- a gateway's message keys ----------------------------------------------------------------------


def write_gateway_keys(files: GatewayFiles) -> None:
    """Write fresh message keys where ``files`` says: signing, HPKE and (if named) hybrid HPKE.

    Issuing a gateway and rotating its keys both end here, so the two cannot drift apart."""
    new_signing_key(files.sign_key)
    new_hpke_key(files.hpke_key)
    if files.hpke_hybrid is not None:
        new_hybrid_hpke_key(files.hpke_hybrid)


# -- key rotation --------------------------------------------------------------------------------
RETIRED_DIR = "retired"


@dataclass(frozen=True)
class RetiredKeys:
    """A gateway's former message keys, newest first: they open and verify mail from before a rotation."""

    signing: list[Ed25519PrivateKey]
    hpke: list[X25519PrivateKey]
    hybrid: list[tuple[MLKEM768PrivateKey, X25519PrivateKey]]


def rotate_gateway_keys(directory: Path, *, now: dt.datetime | None = None) -> GatewayFiles:
    """Retire a gateway's message keys and write fresh ones (certificates are untouched).

    ``sign.key``, ``hpke.key`` and ``hpke-hybrid.key`` move to ``retired/`` with a timestamp: the
    gateway keeps opening mail sealed to the old keys and signs with the old key until the
    registry lists the new one (so there is no moment when a peer cannot verify it). Delete a
    retired key once no stored mail needs it."""
    directory = Path(directory)
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    every = GatewayFiles.in_directory(directory, hybrid=True)
    keys = [p for p in (every.sign_key, every.hpke_key, every.hpke_hybrid) if p is not None]
    missing = [p.name for p in keys[:2] if not p.exists()]
    if missing:
        raise PsvnError(Code.CONFIG_INVALID, f"{directory}: no {', '.join(missing)} to rotate", field=str(directory),
                        rule="gateway-keys")
    retired = directory / RETIRED_DIR
    retired.mkdir(mode=0o700, exist_ok=True)
    hybrid = keys[2].exists()  # a post-quantum gateway stays post-quantum
    for path in keys:
        if path.exists():
            os.replace(path, retired / f"{path.name.removesuffix('.key')}-{stamp}.key")
    files = GatewayFiles.in_directory(directory, hybrid=hybrid)
    write_gateway_keys(files)
    return files


def load_retired_keys(retired: Path | None) -> RetiredKeys:
    """Every key in a ``retired/`` folder (none if it does not exist), newest first."""
    out = RetiredKeys(signing=[], hpke=[], hybrid=[])
    if retired is None or not Path(retired).is_dir():
        return out
    for path in sorted(Path(retired).glob("*.key"), key=lambda p: p.name.rsplit("-", 1)[-1], reverse=True):
        if path.name.startswith("sign-"):
            out.signing.append(load_signing_key(path))
        elif path.name.startswith("hpke-hybrid-"):
            out.hybrid.append(load_hybrid_hpke_key(path))
        elif path.name.startswith("hpke-"):
            out.hpke.append(load_hpke_key(path))
    return out
