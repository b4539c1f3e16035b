"""TLS contexts for every psvn endpoint: TLS 1.2 minimum, forward-secret AEAD ciphers only.

TLS 1.2 suites are limited to ECDHE with AES-GCM or ChaCha20-Poly1305 (TLS 1.3 suites are all
AEAD + ECDHE already). The server trusts only the network CA and, given the CA's CRL, refuses
a revoked client certificate during the handshake rather than after it.

Note for callers: under TLS 1.3 the client finishes its side of the handshake before the server
has checked the client certificate, so a refused client sees the failure on its first read
(an ``ssl.SSLError`` alert or EOF), not in ``connect``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

__all__ = ["TLS12_CIPHERS", "client_context", "peer_uris", "server_context"]

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE


def server_context(
    cert: Path,
    key: Path,
    ca: Path,
    *,
    require_client_cert: bool = True,
    crl: Path | None = None,
) -> ssl.SSLContext:
    """Server side of mutual TLS.

    ``require_client_cert=False`` makes the client certificate optional (CERT_OPTIONAL): one
    that is presented must still chain to ``ca`` (and pass the CRL), so the application can
    authorise per request from ``getpeercert()``.
    ``crl``: the CA's PEM CRL; enables VERIFY_CRL_CHECK_LEAF. A missing or expired CRL then
    makes every client certificate fail, which is deliberate (fail closed).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    if crl is not None:
        if not Path(crl).is_file():
            raise FileNotFoundError(f"CRL not found: {crl}")
        ctx.load_verify_locations(cafile=str(crl))  # OpenSSL reads CRLs from a PEM file too
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


def client_context(
    ca: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """Client side: trust only the network CA, check the server's host name, present
    ``cert``/``key`` when given (mutual TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    _harden(ctx)
    ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    elif key is not None:
        raise ValueError("a client key was given without its certificate")
    return ctx


def peer_uris(peercert: dict[str, Any] | None) -> list[str]:
    """SAN URIs from an ``SSLSocket.getpeercert()`` dict (empty if there is no peer cert)."""
    if not peercert:
        return []
    return [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
