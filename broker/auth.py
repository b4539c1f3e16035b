"""Console identities: short-lived JWTs that the broker issues and verifies.

A token names one user (``sub``) and one role (``compliance-officer``, ``approver`` or
``operator``). It is signed with the broker's console key (Ed25519, ``EdDSA``), a PKCS8 file
kept 0600 beside the devnet PKI; a key file that others can read is refused, and rotating the
file revokes every token at once. Verification checks the signature, the algorithm (no ``none``,
no HS/RS confusion), issuer, audience, expiry and a maximum lifetime, so a token minted for
something else, or one that somebody made "forever", is not accepted.

Tokens are bearer credentials: nothing here logs them, and errors never echo them.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import Literal, get_args

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from psvn.certs import keys
from psvn.core.errors import Code, PsvnError

Role = Literal["compliance-officer", "approver", "operator"]
ROLES: tuple[str, ...] = get_args(Role)
ISSUER = "psvn-broker"
AUDIENCE = "psvn-console"
ALGORITHM = "EdDSA"
DEFAULT_TTL = 3600  # one working hour; ask for a new one rather than keeping one around
MAX_TTL = 12 * 3600
LEEWAY = 5  # seconds of clock skew tolerated on exp/iat
_USER = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")


class Principal(msgspec.Struct, kw_only=True, frozen=True):
    """Who is calling, as the token says after verification."""

    user: str
    role: str
    expires: int  # unix seconds
    token_id: str


def key_path(pki_dir: Path) -> Path:
    """Where the console signing key lives under a PKI folder (devnet: ``<root>/pki``)."""
    return Path(pki_dir) / "console" / "jwt-signing.key"


def normalise_user(user: str) -> str:
    """One spelling per person, so the two-person rule cannot be dodged with ``Alice`` vs ``alice``."""
    name = user.strip().lower()
    if not _USER.fullmatch(name):
        raise PsvnError(Code.BAD_REQUEST, f"user name {user!r} must be 1-64 of a-z 0-9 . _ @ - "
                        "(starting with a letter or digit)", field="user", rule="user-name")
    return name


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PsvnError(Code.CONFIG_INVALID, f"{path} is readable by others (mode {oct(mode & 0o777)}); "
                        "the console signing key must be 0600", field=str(path), rule="key-file-mode")


class TokenAuthority:
    """Issues and verifies console tokens with one Ed25519 key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key: Ed25519PublicKey = key.public_key()

    @classmethod
    def load_or_create(cls, path: Path) -> TokenAuthority:
        """Load the key file (refusing one others can read), creating it 0600 if absent."""
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(path.parent, 0o700)
            return cls(keys.new_signing_key(path))
        _check_private(path)
        return cls(keys.load_signing_key(path))

    @classmethod
    def for_pki(cls, pki_dir: Path) -> TokenAuthority:
        return cls.load_or_create(key_path(pki_dir))

    def issue(self, user: str, role: str, *, ttl: int = DEFAULT_TTL, now: float | None = None) -> str:
        if role not in ROLES:
            raise PsvnError(Code.BAD_REQUEST, f"role {role!r} is not one of {', '.join(ROLES)}",
                            field="role", rule="console-role")
        if not 0 < ttl <= MAX_TTL:
            raise PsvnError(Code.BAD_REQUEST, f"token lifetime must be 1..{MAX_TTL} seconds, not {ttl}",
                            field="ttl", rule="token-lifetime")
        iat = int(time.time() if now is None else now)
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": normalise_user(user), "role": role,
                  "iat": iat, "exp": iat + ttl, "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str, *, now: float | None = None) -> Principal:
        """The principal a token names; :class:`PsvnError` ``unauthenticated`` otherwise."""
        try:
            options: dict[str, object] = {"require": ["exp", "iat", "sub", "aud", "iss", "role", "jti"]}
            if now is not None:
                # pyjwt checks exp against the wall clock; tests pass ``now`` to move time
                options["verify_exp"] = False
            claims = jwt.decode(token, self.public_key, algorithms=[ALGORITHM], audience=AUDIENCE,
                                issuer=ISSUER, leeway=LEEWAY, options=options)  # type: ignore[arg-type]
        except jwt.ExpiredSignatureError:
            raise _unauth("the token has expired; ask for a new one", "token-expired") from None
        except jwt.InvalidTokenError as exc:
            raise _unauth(f"the token is not valid: {_why(exc)}", "token-invalid") from None
        t = time.time() if now is None else now
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int):
            raise _unauth("the token's exp and iat must be integers", "token-invalid")
        if now is not None and t > exp + LEEWAY:
            raise _unauth("the token has expired; ask for a new one", "token-expired")
        if exp - iat > MAX_TTL:
            raise _unauth(f"the token lives longer than {MAX_TTL} s; ask for a new one", "token-lifetime")
        role, sub = claims.get("role"), claims.get("sub")
        if role not in ROLES:
            raise _unauth("the token names no console role", "console-role")
        if not isinstance(sub, str) or not _USER.fullmatch(sub):
            raise _unauth("the token names no valid user", "token-invalid")
        return Principal(user=sub, role=str(role), expires=exp, token_id=str(claims.get("jti", "")))


def _why(exc: jwt.InvalidTokenError) -> str:
    """What a person can do about a refused token, not the library's exception name."""
    if isinstance(exc, jwt.DecodeError) and not isinstance(exc, jwt.InvalidSignatureError):
        return ("it is not a console token (paste the whole line `psvn console token --user NAME --role ROLE` "
                "printed, nothing more or less)")
    if isinstance(exc, jwt.InvalidSignatureError | jwt.InvalidAlgorithmError):
        return ("this console did not issue it (a token from another devnet, or the console's signing key was "
                "rotated): ask for a new one with `psvn console token`")
    if isinstance(exc, jwt.InvalidAudienceError | jwt.InvalidIssuerError):
        return "it was issued for something other than the psvn console: ask for a new one"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "it is not valid yet (check this machine's clock)"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"it lacks the {exc.claim!r} claim a console token carries: ask for a new one"
    return "ask for a new one with `psvn console token`"


def _unauth(detail: str, rule: str) -> PsvnError:
    return PsvnError(Code.UNAUTHENTICATED, detail, field="Authorization", rule=rule)
