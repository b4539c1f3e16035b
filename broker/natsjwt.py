"""NATS decentralised auth tokens (JWT v2 signed with nkeys): pure functions, data in, text out.

nats-server verifies these itself (operator -> account -> user chain); this module only writes
them. The format is small and fixed (``github.com/nats-io/jwt`` v2): a header
``{"typ":"JWT","alg":"ed25519-nkey"}``, claims with ``jti`` = base32(SHA-512/256 of the claims
without ``jti``), and an Ed25519 signature by the issuer's nkey over ``header.payload``. The
``nkeys`` package (nats-io's own) makes and holds the keys. We write the claims here instead of
taking the ``nats-jwt`` package: it pulls in marshmallow, pycryptodome and pytz for the same
forty lines, and the real server in the tests is the judge of every token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
UNLIMITED = -1

_PREFIX = {"operator": nkeys.PREFIX_BYTE_OPERATOR, "account": nkeys.PREFIX_BYTE_ACCOUNT,
           "user": nkeys.PREFIX_BYTE_USER}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_seed(kind: str) -> bytes:
    """A fresh nkey seed (``SO...``, ``SA...`` or ``SU...``)."""
    return bytes(nkeys.encode_seed(os.urandom(32), _PREFIX[kind]))


def keypair(seed: bytes) -> nkeys.KeyPair:
    return nkeys.from_seed(bytearray(seed))


def public_key(seed: bytes) -> str:
    return str(keypair(seed).public_key.decode())


def load_or_create_seed(path: Path, kind: str) -> bytes:
    """A seed kept in a 0600 file (created on first use): seeds are the backbone's root secrets."""
    path = Path(path)
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = new_seed(kind)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed)
    return seed


def encode(claims: dict[str, Any], signer_seed: bytes, *, now: int | None = None) -> str:
    """Sign ``claims`` (``sub``, ``name``, ``nats`` given) as issued by ``signer_seed``'s key."""
    kp = keypair(signer_seed)
    body = {**claims, "iat": int(time.time()) if now is None else now, "iss": kp.public_key.decode()}
    body.pop("jti", None)
    body["jti"] = base64.b32encode(hashlib.new("sha512_256", _json(body)).digest()).decode().rstrip("=")
    signing_input = f"{_b64(_json(HEADER))}.{_b64(_json(body))}"
    return f"{signing_input}.{_b64(kp.sign(signing_input.encode()))}"


def decode_claims(token: str) -> dict[str, Any]:
    """The claims of a token, unverified (for reading back what we wrote)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def operator_jwt(operator_seed: bytes, *, name: str, system_account: str) -> str:
    sub = public_key(operator_seed)
    return encode({"sub": sub, "name": name,
                   "nats": {"system_account": system_account, "type": "operator", "version": 2}}, operator_seed)


def nats_limits(*, subs: int = UNLIMITED, data: int = UNLIMITED, payload: int = UNLIMITED) -> dict[str, int]:
    return {"subs": subs, "data": data, "payload": payload}


def account_jwt(operator_seed: bytes, account_seed: bytes, *, name: str, jetstream: dict[str, int] | None = None,
                exports: list[dict[str, Any]] | None = None, imports: list[dict[str, Any]] | None = None,
                revocations: dict[str, int] | None = None, conn: int = UNLIMITED,
                payload: int = UNLIMITED, subs: int = UNLIMITED) -> str:
    """An account: its limits (``jetstream`` None: no JetStream), exports, imports, revoked users."""
    limits: dict[str, Any] = {**nats_limits(payload=payload, subs=subs), "imports": UNLIMITED, "exports": UNLIMITED,
                              "wildcards": True, "conn": conn, "leaf": 0}
    limits.update(jetstream or {"mem_storage": 0, "disk_storage": 0, "streams": 0, "consumer": 0})
    nats: dict[str, Any] = {"limits": limits, "default_permissions": {"pub": {}, "sub": {}},
                            "type": "account", "version": 2}
    if exports:
        nats["exports"] = exports
    if imports:
        nats["imports"] = imports
    if revocations:
        nats["revocations"] = revocations
    return encode({"sub": public_key(account_seed), "name": name, "nats": nats}, operator_seed)


def user_jwt(account_seed: bytes, user_seed: bytes, *, name: str, pub_allow: list[str] | None = None,
             sub_allow: list[str] | None = None, expires: int | None = None) -> str:
    """A user of an account; no permission lists: everything inside its own account."""
    pub = {"allow": pub_allow} if pub_allow is not None else {}
    sub = {"allow": sub_allow} if sub_allow is not None else {}
    claims: dict[str, Any] = {"sub": public_key(user_seed), "name": name,
                              "nats": {"pub": pub, "sub": sub, "subs": UNLIMITED, "data": UNLIMITED,
                                       "payload": UNLIMITED, "type": "user", "version": 2}}
    if expires is not None:
        claims["exp"] = expires
    return encode(claims, account_seed)


def activation_jwt(exporter_seed: bytes, *, importer: str, subject: str, kind: str) -> str:
    """Lets account ``importer`` import the exporter's private (``token_req``) export ``subject``."""
    return encode({"sub": importer, "name": subject,
                   "nats": {"subject": subject, "kind": kind, "type": "activation", "version": 2}}, exporter_seed)


def creds(jwt: str, seed: bytes) -> str:
    """A ``.creds`` file as nats clients read it (``nats.connect(user_credentials=...)``)."""
    return ("-----BEGIN NATS USER JWT-----\n" + jwt + "\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n" + seed.decode() + "\n------END USER NKEY SEED------\n\n"
            "*************************************************************\n")


def write_private(path: Path, text: str) -> None:
    """Write a secret 0600 (replacing any earlier file atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
