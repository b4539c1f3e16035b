"""The policy set as one signed document.

On disk a policy set is a reviewable folder (``policyset.toml``, ``catalogue.toml``,
``rules.toml``, ``schemas/*.json``, ``tests.toml``). :func:`load_dir` folds it into one plain
document; :func:`canonical` gives the exact bytes that are signed (sorted-key compact JSON), so
the signature does not depend on file layout or TOML formatting.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from psvn.core.errors import Code, PsvnError

DEFAULT_DIR = Path(__file__).parent / "default"


class SignedPolicySet(msgspec.Struct, kw_only=True, frozen=True):
    """What the broker puts in the KV bucket and every gateway verifies before use."""

    version: int
    document: bytes  # canonical JSON of the policy document
    signature: bytes  # Ed25519 by the policy authority over ``document``
    proposer: str = ""
    approver: str = ""
    published_at: str = ""


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PsvnError(Code.CONFIG_INVALID, f"{path.name}: {exc}", field=path.name, rule="toml-syntax") from exc


def load_dir(path: Path | str = DEFAULT_DIR) -> dict[str, Any]:
    """Fold a policy-set folder into one document."""
    root = Path(path)
    meta = _toml(root / "policyset.toml")
    doc: dict[str, Any] = {
        "version": int(meta.get("version", 0)),
        "meta": meta,
        "catalogue": _toml(root / "catalogue.toml").get("types", {}) if (root / "catalogue.toml").exists() else {},
        "rules": _toml(root / "rules.toml") if (root / "rules.toml").exists() else {},
        "schemas": {},
    }
    schema_dir = root / "schemas"
    if schema_dir.is_dir():
        for f in sorted(schema_dir.glob("*.json")):
            doc["schemas"][f.stem] = json.loads(f.read_text())
    return doc


def canonical(doc: dict[str, Any]) -> bytes:
    return msgspec.json.encode(doc, order="sorted")


def sign(doc: dict[str, Any], key: Ed25519PrivateKey, *, proposer: str = "", approver: str = "",
         published_at: str = "") -> SignedPolicySet:
    body = canonical(doc)
    return SignedPolicySet(version=int(doc["version"]), document=body, signature=key.sign(body),
                           proposer=proposer, approver=approver, published_at=published_at)


def verify(signed: SignedPolicySet, authority: Ed25519PublicKey, *, current_version: int = 0) -> dict[str, Any]:
    """Check the signature and that the version moves forward; return the document."""
    try:
        authority.verify(signed.signature, signed.document)
    except InvalidSignature as exc:
        raise PsvnError(Code.POLICY_SIGNATURE_INVALID,
                        f"policy set version {signed.version}: signature does not verify against the "
                        "policy authority key",
                        rule="policy-signature") from exc
    doc: dict[str, Any] = msgspec.json.decode(signed.document)
    if int(doc.get("version", -1)) != signed.version:
        raise PsvnError(Code.POLICY_SIGNATURE_INVALID, "signed document version differs from its label",
                        rule="policy-version-label")
    if signed.version <= current_version:
        raise PsvnError(Code.POLICY_VERSION_REGRESSION,
                        f"policy set version {signed.version} is not newer than the enforced version {current_version}",
                        rule="policy-version-increase")
    return doc


def encode(signed: SignedPolicySet) -> bytes:
    return msgspec.msgpack.encode(signed)


def decode(data: bytes) -> SignedPolicySet:
    return msgspec.msgpack.decode(data, type=SignedPolicySet)
