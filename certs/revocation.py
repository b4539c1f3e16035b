"""Certificate revocation: the CA's signed CRL (``ca.crl``, PEM) is the source of truth.

TLS servers load it (``certs.tls.server_context(crl=...)``) so a revoked client certificate is
refused at the handshake. A CRL has a *next update* time (7 days); OpenSSL rejects every client
once it has passed, so the operator re-signs it (:func:`refresh_crl`, or any revoke) at least
weekly. Reading a CRL verifies its signature against the CA: a forged list is an error, not
an empty set.

Signing a CRL (:func:`psvn.certs.ca.write_crl`) belongs to the CA, which publishes an empty one
when it is created; this module only reads, checks and amends the list, so it depends on
:mod:`psvn.certs.ca` and never the reverse.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509

from psvn.certs.ca import (
    CA,
    CA_CERT,
    CA_CRL,
    CRL_DAYS,
    fingerprint,
    is_issued_by,
    load_cert,
    write_crl,
)
from psvn.core.errors import Code, PsvnError

__all__ = ["is_revoked", "load_crl", "refresh_crl", "revoke", "revoked_serials"]


def load_crl(ca_dir: Path) -> x509.CertificateRevocationList:
    """Load ``ca_dir/ca.crl`` and check it is signed by ``ca_dir/ca.crt``."""
    ca_dir = Path(ca_dir)
    path = ca_dir / CA_CRL
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PsvnError(Code.CONFIG_INVALID, f"CRL not found: {path}", field=str(path)) from None
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise PsvnError(
            Code.CONFIG_INVALID, f"{path} is not a PEM CRL: {exc}", field=str(path)
        ) from None
    ca_cert = load_cert(ca_dir / CA_CERT)
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise PsvnError(
            Code.CERTIFICATE_INVALID,
            f"{path} is not signed by the CA in {ca_dir / CA_CERT}",
            field=str(path),
            rule="crl-signature",
        )
    return crl


@contextlib.contextmanager
def _locked(ca: CA) -> Iterator[None]:
    """Serialise read-modify-write of the CRL between processes (two revokes at once)."""
    lock = ca.directory / ".crl.lock"
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def revoke(
    ca: CA,
    cert: x509.Certificate,
    *,
    reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
) -> None:
    """Add ``cert`` to the CA's CRL and re-sign it (next update +7 days). Idempotent.

    Refuses (CERTIFICATE_INVALID) a certificate this CA did not issue: its serial would
    otherwise revoke nothing, or worse, an unrelated certificate with the same serial.
    """
    if not is_issued_by(ca.cert, cert):
        raise PsvnError(
            Code.CERTIFICATE_INVALID,
            f"certificate {fingerprint(cert)[:16]} ({cert.subject.rfc4514_string()}) was not "
            f"issued by the CA in {ca.directory}",
            rule="issuer",
        )
    with _locked(ca):
        entries = list(load_crl(ca.directory)) if ca.crl_path.exists() else []
        if not any(e.serial_number == cert.serial_number for e in entries):
            builder = (
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(dt.datetime.now(dt.UTC))
            )
            if reason is not x509.ReasonFlags.unspecified:  # RFC 5280 5.3.1: omit unspecified
                builder = builder.add_extension(x509.CRLReason(reason), critical=False)
            entries.append(builder.build())
        write_crl(ca, entries)


def refresh_crl(ca: CA, *, days: int = CRL_DAYS) -> x509.CertificateRevocationList:
    """Re-sign the CRL with the same entries and a new next-update time."""
    with _locked(ca):
        entries = list(load_crl(ca.directory)) if ca.crl_path.exists() else []
        return write_crl(ca, entries, days=days)


def revoked_serials(ca_dir: Path) -> set[int]:
    """Serial numbers on the CA's (signature-checked) CRL."""
    return {entry.serial_number for entry in load_crl(Path(ca_dir))}


def is_revoked(ca_dir: Path, cert: x509.Certificate) -> bool:
    """True if the CA in ``ca_dir`` issued ``cert`` and lists its serial on its CRL."""
    ca_dir = Path(ca_dir)
    crl = load_crl(ca_dir)
    if cert.issuer != crl.issuer:
        return False
    return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
