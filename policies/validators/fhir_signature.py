"""A Bundle's JWS signature checked against the certificate it carries.

FHIR R4 (https://hl7.org/fhir/R4/signatures.html) signs a Bundle with a JSON Web Signature
(RFC 7515, ``Signature.sigFormat`` ``application/jose``) over the Bundle's canonical JSON form
(https://hl7.org/fhir/R4/json.html#canonical: no whitespace, properties sorted, arrays kept in
order), less ``Bundle.signature`` itself and, for the ``#document`` canonicalization, less
``Bundle.id`` and ``Bundle.meta``. When the JWS header carries the signer's certificate
(``x5c``), the check is exact and offline, so psvn makes it as the reference validator does: it
rebuilds the signing input from the Bundle as received and verifies the signature with the
certificate's public key (``cryptography``). A Bundle altered after signing, or a signature over
other content, does not verify.

Not judged (no violation): other signature formats (XML DSig ``application/pkcs7-signature``,
images), XML canonicalizations, a JWS with no ``x5c`` (the key would have to be found elsewhere),
an algorithm outside RS/PS/ES 256-512, or a JWS this module cannot read. Whether the certificate
is trusted is not a question for payload validation. When the signature verifies over the
payload the JWS carries, and that payload is the Bundle's content as JSON values, but not byte
for byte what :func:`canonical` writes (a decimal's trailing zero, a character written as an
escape), the signer's serialisation is trusted rather than rejected.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from psvn.core.errors import Violation

from . import budget

JOSE = "application/jose"
# What a signature's verification may cost (see .budget: up to two verifies, ~1 ms with keys a CA
# issues), and the RSA keys judged at all (larger ones, or a huge public exponent, make a verify
# cost milliseconds: an attacker's lever, not a real certificate).
SIGNATURE_COST = 250
MAX_RSA_BITS = 8192
MAX_RSA_EXPONENT = 2**32
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384,
                                                   "512": hashes.SHA512}


def canonical(bundle: dict[str, Any], canon: str) -> bytes:
    """The Bundle's canonical JSON form for canonicalization ``canon`` (its signed content)."""
    drop = ("id", "meta", "signature") if canon.endswith("#document") else ("signature",)
    return _dumps({k: v for k, v in bundle.items() if k not in drop})


def signature_problem(bundle: dict[str, Any], ptr: str) -> Violation | None:
    """The violation of a ``Bundle.signature`` JWS that does not verify against its ``x5c``
    certificate over the Bundle's canonical form; ``None`` when it verifies or is not judged."""
    sig = bundle.get("signature")
    if not isinstance(sig, dict) or not isinstance(sig.get("data"), str):
        return None
    parts = _jws(sig["data"])
    if parts is None:
        return None
    header = _json(_b64url(parts[0]))
    fmt = sig.get("sigFormat")
    if not isinstance(header, dict) or (fmt != JOSE and not (fmt is None and "alg" in header)):
        return None
    key = _key(header)
    verify = _verifier(header.get("alg"), key) if key is not None else None
    canon = _canonicalization(header, sig, bundle)
    if verify is None or canon is None or not budget.spend(SIGNATURE_COST):
        return None
    to_sign = canonical(bundle, canon)
    if verify(parts[0] + "." + _b64url_encode(to_sign), parts[2]):
        return None
    signed = _b64url(parts[1]) if parts[1] else None
    if signed is not None and signed != to_sign:
        drop = ("id", "meta", "signature") if canon.endswith("#document") else ("signature",)
        if _json(signed) == {k: v for k, v in bundle.items() if k not in drop} and \
                verify(parts[0] + "." + parts[1], parts[2]):
            return None  # the same content, serialised by the signer in a way canonical() does not
        detail = (f"; the content it signs ({len(signed):,} bytes) is not the Bundle's canonical form "
                  f"({len(to_sign):,} bytes): the Bundle was changed after it was signed")
    else:
        detail = ""
    return Violation(path=f"{ptr}/signature/data", rule="fhir-bundle-signature",
                     message="the signature does not verify against the certificate it carries (x5c) over the "
                     f"Bundle's canonical form ({canon}){detail}",
                     expected="a JWS (RFC 7515) over the Bundle as sent, signed with the x5c certificate's key")


def _jws(data: str) -> list[str] | None:
    """The three parts of the compact JWS in ``Signature.data`` (base64 of the JWS, or the JWS)."""
    text: str | None
    try:
        text = base64.b64decode("".join(data.split()), validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        text = data if data.count(".") == 2 else None
    if text is None or text.count(".") != 2:
        return None
    return text.split(".")


def _canonicalization(header: dict[str, Any], sig: dict[str, Any], bundle: dict[str, Any]) -> str | None:
    """The canonicalization the signer names (JWS ``canon``, else ``targetFormat``'s parameter),
    else the default; ``None`` for an XML one (not judged)."""
    canon = header.get("canon")
    target = sig.get("targetFormat")
    xml = False
    if not isinstance(canon, str):
        canon = None
        if isinstance(target, str):
            base, _, params = target.partition(";")
            xml = "xml" in base
            for param in params.split(";"):
                name, _, value = param.strip().partition("=")
                if name == "canonicalization" and value:
                    canon = value.strip('"')
        if canon is None:
            canon = "http://hl7.org/fhir/canonicalization/" + ("xml" if xml else "json") + \
                ("#document" if bundle.get("type") == "document" else "")
    return None if "xml" in canon else canon


def _key(header: dict[str, Any]) -> Any:
    """The public key of the JWS header's first ``x5c`` certificate, or ``None``."""
    chain = header.get("x5c")
    if not (isinstance(chain, list) and chain and isinstance(chain[0], str)):
        return None
    try:
        key = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True)).public_key()
    except (binascii.Error, ValueError, UnsupportedAlgorithm):
        return None
    if isinstance(key, rsa.RSAPublicKey) and (key.key_size > MAX_RSA_BITS
                                              or key.public_numbers().e > MAX_RSA_EXPONENT):
        return None  # not judged: a verify with such a key costs milliseconds, and no CA issues one
    return key


def _verifier(alg: Any, key: Any) -> Any:
    """``verify(signing_input, b64url_signature) -> bool`` for a JWS algorithm and key (RFC 7518
    section 3), or ``None`` for an algorithm or key type not judged."""
    if not isinstance(alg, str) or len(alg) != 5 or alg[2:] not in _HASHES:
        return None
    digest = _HASHES[alg[2:]]
    family = alg[:2]

    def verify(signing_input: str, signature: str) -> bool:
        raw = _b64url(signature)
        if raw is None:
            return False
        data = signing_input.encode("ascii")
        try:
            if family == "RS" and isinstance(key, rsa.RSAPublicKey):
                key.verify(raw, data, padding.PKCS1v15(), digest())
            elif family == "PS" and isinstance(key, rsa.RSAPublicKey):
                key.verify(raw, data, padding.PSS(padding.MGF1(digest()), padding.PSS.DIGEST_LENGTH), digest())
            elif family == "ES" and isinstance(key, ec.EllipticCurvePublicKey):
                half = len(raw) // 2
                der = encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
                key.verify(der, data, ec.ECDSA(digest()))
            else:
                return False
        except InvalidSignature:
            return False
        return True

    if family == "RS" or family == "PS":
        return verify if isinstance(key, rsa.RSAPublicKey) else None
    if family == "ES":
        return verify if isinstance(key, ec.EllipticCurvePublicKey) else None
    return None


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64url(part: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        return None


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _json(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
