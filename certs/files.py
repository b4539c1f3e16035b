"""The PKI's files on disk, shared by :mod:`psvn.certs.ca` and :mod:`psvn.certs.keys`.

One place writes every key and certificate so that the guarantees hold everywhere: a private key
is 0600 from the moment it exists (``os.open`` with the mode, never a chmod afterwards), and every
file is replaced atomically (temp file + rename), so a crash never leaves a half-written key and
re-issuing over existing files is safe. Reads name the missing or unreadable file in the error,
because an operator fixes a path, not a stack trace.

:class:`GatewayFiles` lives here too: issuing (certificates and keys) and rotation (keys only)
both write into a gateway's directory, and must agree on its file names.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from psvn.core.errors import Code, PsvnError

__all__ = [
    "GatewayFiles",
    "load_private",
    "pem_private",
    "read_named",
    "write_private",
    "write_public",
]


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # exact mode whatever the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private(path: Path, data: bytes) -> None:
    """Write secret bytes 0600 via temp file + rename: never world-readable, never half-written."""
    _write(Path(path), data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Write a certificate or CRL 0644, atomically."""
    _write(Path(path), data, 0o644)


def read_named(path: Path, what: str) -> bytes:
    """Read a PKI file; a missing or unreadable one raises CONFIG_INVALID naming ``what`` and the path."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PsvnError(Code.CONFIG_INVALID, f"{what} not found: {path}", field=str(path)) from None
    except OSError as exc:
        raise PsvnError(
            Code.CONFIG_INVALID, f"{what} unreadable: {path}: {exc.strerror}", field=str(path)
        ) from None


def pem_private(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    """Unencrypted PKCS8 PEM: what nats-server, Python's ``ssl`` and :func:`load_private` read.

    Unencrypted because the keys are used by unattended services; the 0600 mode protects them."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private(path: Path, what: str) -> object:
    """Load an unencrypted PEM private key of any type; the caller checks it is the type it needs."""
    data = read_named(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PsvnError(
            Code.CONFIG_INVALID, f"{what} {path} is not an unencrypted PEM private key: {exc}",
            field=str(path),
        ) from None


@dataclass(frozen=True)
class GatewayFiles:
    """Everything a gateway needs from the PKI, as paths inside one directory."""

    directory: Path
    nats_cert: Path
    nats_key: Path
    https_cert: Path
    https_key: Path
    sign_key: Path
    hpke_key: Path
    hpke_hybrid: Path | None = None  # ML-KEM-768 + X25519, when issued post-quantum

    @classmethod
    def in_directory(cls, directory: Path, *, hybrid: bool) -> GatewayFiles:
        """The fixed file names in a gateway's directory (``hybrid``: it has a post-quantum key)."""
        directory = Path(directory)
        return cls(
            directory=directory,
            nats_cert=directory / "nats.crt",
            nats_key=directory / "nats.key",
            https_cert=directory / "https.crt",
            https_key=directory / "https.key",
            sign_key=directory / "sign.key",
            hpke_key=directory / "hpke.key",
            hpke_hybrid=directory / "hpke-hybrid.key" if hybrid else None,
        )
