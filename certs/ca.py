"""The network's X.509 certificate authority: one CA, the certificates it issues, and its CRL.

Certificates are ECDSA P-256 / SHA-256 because both nats-server (Go) and Python's ``ssl``
accept them everywhere and they are fast to verify. Identities live in the SAN **URI** only
(``urn:psvn:org:<org>``, ``urn:psvn:system:<org>/<system>``): nats-server's ``verify_and_map``
tries email, then DNS, then URI SANs and the first match wins, so a gateway's NATS client
certificate carries no email or DNS SAN at all.

Message keys (signing, HPKE) are not certificates and live in :mod:`psvn.certs.keys`;
:func:`issue_gateway` asks that module for a new gateway's keys so that one command gives a
gateway everything it needs.

Signing the CRL (:func:`write_crl`) is here, not in :mod:`psvn.certs.revocation`, because
creating a CA publishes its first (empty) CRL: revocation builds on this module, never the
other way round.

Private keys are written 0600 from the moment they exist (:mod:`psvn.certs.files`). Issuing over
existing files replaces them atomically (re-issue is a normal operation); only :func:`init_ca`
refuses to overwrite, because replacing a CA breaks the network.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from psvn.certs.files import GatewayFiles, load_private, pem_private, read_named, write_private, write_public
from psvn.certs.keys import write_gateway_keys
from psvn.core import addresses
from psvn.core.errors import Code, PsvnError

__all__ = [
    "CA",
    "CA_CERT",
    "CA_CRL",
    "CA_KEY",
    "CRL_DAYS",
    "DEFAULT_HOSTS",
    "cert_uris",
    "check_org",
    "fingerprint",
    "init_ca",
    "is_issued_by",
    "issue_client",
    "issue_gateway",
    "issue_server",
    "issue_system",
    "load_ca",
    "load_cert",
    "verify_cert",
    "write_crl",
]

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
ORGANISATION = "psvn"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_CRL = "ca.crl"
CRL_DAYS = 7
# Accept certificates a few minutes "from the future": clocks on members' machines drift.
_BACKDATE = dt.timedelta(minutes=5)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_SYSTEM = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


# ------------------------------------------------------------------------------- certificate files


def load_cert(path: Path) -> x509.Certificate:
    """Load a PEM (or DER) certificate; a bad file raises CERTIFICATE_INVALID naming it."""
    data = read_named(path, "certificate")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise PsvnError(
            Code.CERTIFICATE_INVALID, f"{path} is not a certificate: {exc}", field=str(path)
        ) from None


# ------------------------------------------------------------------------------------------ CA


@dataclass(frozen=True)
class CA:
    """The network CA: certificate, private key, and the directory that holds them and the CRL."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    directory: Path

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @property
    def key_path(self) -> Path:
        return self.directory / CA_KEY

    @property
    def crl_path(self) -> Path:
        return self.directory / CA_CRL


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
        ]
    )


def init_ca(
    directory: Path, *, common_name: str = "psvn network CA", days: int = 3650, force: bool = False
) -> CA:
    """Create the network CA (ca.crt 0644, ca.key 0600, empty signed ca.crl).

    Refuses to replace an existing CA unless ``force``: every certificate in the network chains
    to it, so overwriting by accident would lock every member out.
    """
    directory = Path(directory)
    if not force:
        for filename in (CA_CERT, CA_KEY):
            existing = directory / filename
            if existing.exists():
                raise PsvnError(
                    Code.CONFIG_INVALID,
                    f"a CA already exists at {existing}; refusing to overwrite it (use force / "
                    "--force to replace the CA, which invalidates every certificate it issued)",
                    field=str(existing),
                    rule="ca-exists",
                )
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(key, hashes.SHA256())
    )
    write_private(directory / CA_KEY, pem_private(key))
    write_public(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    ca = CA(cert=cert, key=key, directory=directory)
    write_crl(ca, [])
    return ca


def load_ca(directory: Path) -> CA:
    """Load the CA from ``directory``; a missing or mismatched key/cert raises CONFIG_INVALID."""
    directory = Path(directory)
    cert = load_cert(directory / CA_CERT)
    key = load_private(directory / CA_KEY, "CA key")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PsvnError(
            Code.CONFIG_INVALID,
            f"{directory / CA_KEY} is not an EC key",
            field=str(directory / CA_KEY),
        )
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise PsvnError(
            Code.CONFIG_INVALID,
            f"{directory / CA_KEY} does not match {directory / CA_CERT}",
            field=str(directory / CA_KEY),
        )
    return CA(cert=cert, key=key, directory=directory)


# ------------------------------------------------------------------------------------- leaves


def _hosts(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _leaf(
    ca: CA,
    common_name: str,
    sans: list[x509.GeneralName],
    *,
    client: bool,
    server: bool,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not sans:
        raise PsvnError(Code.BAD_REQUEST, "a certificate needs at least one SAN", field="hosts")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


def _write_pair(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, crt_path: Path, key_path: Path
) -> tuple[Path, Path]:
    # Key first: a cert without its key is useless, a key without its cert is harmless.
    write_private(key_path, pem_private(key))
    write_public(crt_path, cert.public_bytes(serialization.Encoding.PEM))
    return crt_path, key_path


def check_org(org: str) -> str:
    """Validate an organisation address (no mailbox); errors name the field ``org``."""
    try:
        parsed, mailbox = addresses.parse(org, field="org")
    except PsvnError as exc:  # not an envelope here: a bad argument
        raise PsvnError(Code.BAD_REQUEST, exc.detail, field="org", rule=exc.rule) from None
    if mailbox is not None:
        raise PsvnError(
            Code.BAD_REQUEST,
            f"org: {org!r} names a mailbox; certificates name the organisation only ({parsed})",
            field="org",
            rule="address-format",
        )
    return parsed


def _check_name(value: str, field: str, pattern: re.Pattern[str] = _NAME) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise PsvnError(
            Code.BAD_REQUEST,
            f"{field}: {value!r} is not a valid name (letters, digits, '-', must match "
            f"{pattern.pattern})",
            field=field,
            rule="name-format",
        )
    return value


def issue_gateway(
    ca: CA,
    org: str,
    directory: Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 825,
    post_quantum: bool = False,
) -> GatewayFiles:
    """Issue a gateway's certificates and message keys into ``directory``.

    * ``nats.crt/.key``: NATS client cert (clientAuth), the ONLY SAN is ``urn:psvn:org:<org>``
      so nats-server's verify_and_map maps it to exactly that user.
    * ``https.crt/.key``: server cert for the gateway's local HTTPS API (serverAuth), DNS/IP
      SANs from ``hosts`` plus the org URI.
    * ``sign.key`` (Ed25519) and ``hpke.key`` (X25519), PKCS8 PEM.
    * with ``post_quantum``, also ``hpke-hybrid.key`` (ML-KEM-768 + X25519): published in the
      registry instead of the X25519 key, so senders seal to it with the hybrid suite.

    Existing files are replaced (re-issue); keys are always fresh.
    """
    org = check_org(org)
    uri = x509.UniformResourceIdentifier(addresses.org_uri(org))
    nats_cert, nats_key = _leaf(ca, org, [uri], client=True, server=False, days=days)
    https_cert, https_key = _leaf(
        ca, org, [*_hosts(hosts), uri], client=False, server=True, days=days
    )
    files = GatewayFiles.in_directory(directory, hybrid=post_quantum)
    _write_pair(nats_cert, nats_key, files.nats_cert, files.nats_key)
    _write_pair(https_cert, https_key, files.https_cert, files.https_key)
    write_gateway_keys(files)
    return files


def issue_system(
    ca: CA, org: str, system: str, directory: Path, *, days: int = 825
) -> tuple[Path, Path]:
    """Issue a local system's client cert: only SAN ``urn:psvn:system:<org>/<system>``.

    Files ``<system>.crt`` / ``<system>.key`` in ``directory`` (replaced if present).
    """
    org = check_org(org)
    _check_name(system, "system", _SYSTEM)
    uri = x509.UniformResourceIdentifier(addresses.system_uri(org, system))
    cert, key = _leaf(ca, f"{org}/{system}", [uri], client=True, server=False, days=days)
    directory = Path(directory)
    return _write_pair(cert, key, directory / f"{system}.crt", directory / f"{system}.key")


def issue_server(
    ca: CA,
    name: str,
    directory: Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 825,
) -> tuple[Path, Path]:
    """Issue a nats-server (or other server) cert: serverAuth + clientAuth (cluster routes
    dial each other with the same cert), DNS/IP SANs from ``hosts``. Files ``<name>.crt/.key``."""
    _check_name(name, "name")
    cert, key = _leaf(ca, name, _hosts(hosts), client=True, server=True, days=days)
    directory = Path(directory)
    return _write_pair(cert, key, directory / f"{name}.crt", directory / f"{name}.key")


def issue_client(
    ca: CA, uri: str, name: str, directory: Path, *, days: int = 825
) -> tuple[Path, Path]:
    """Issue a generic client cert whose only SAN is ``uri`` (e.g. ``urn:psvn:broker``)."""
    _check_name(name, "name")
    if not isinstance(uri, str) or ":" not in uri or any(c.isspace() for c in uri):
        raise PsvnError(Code.BAD_REQUEST, f"uri: {uri!r} is not a URI", field="uri")
    cert, key = _leaf(
        ca, name, [x509.UniformResourceIdentifier(uri)], client=True, server=False, days=days
    )
    directory = Path(directory)
    return _write_pair(cert, key, directory / f"{name}.crt", directory / f"{name}.key")


def verify_cert(
    ca: CA | x509.Certificate, cert: x509.Certificate, *, server_name: str | None = None
) -> list[str]:
    """Check ``cert`` chains to the CA and is valid now, as a client cert (or, with
    ``server_name``, as a server cert for that host). Returns its SAN URIs.

    Does not check revocation (see :mod:`psvn.certs.revocation`). Raises CERTIFICATE_INVALID.
    """
    from cryptography.x509.verification import (
        DNSName,
        IPAddress,
        PolicyBuilder,
        Store,
        VerificationError,
    )

    ca_cert = ca.cert if isinstance(ca, CA) else ca
    builder = PolicyBuilder().store(Store([ca_cert]))
    try:
        if server_name is None:
            builder.build_client_verifier().verify(cert, [])
        else:
            try:
                subject: DNSName | IPAddress = IPAddress(ipaddress.ip_address(server_name))
            except ValueError:
                subject = DNSName(server_name)
            builder.build_server_verifier(subject).verify(cert, [])
    except VerificationError as exc:
        raise PsvnError(
            Code.CERTIFICATE_INVALID,
            f"certificate {fingerprint(cert)[:16]} does not verify against "
            f"{ca_cert.subject.rfc4514_string()}: {exc}",
            rule="chain",
        ) from None
    return cert_uris(cert)


# ---------------------------------------------------------------------------------- inspect


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER certificate, lowercase hex without colons."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def cert_uris(cert: x509.Certificate) -> list[str]:
    """The certificate's SAN URIs (empty if it has no SAN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def is_issued_by(ca_cert: x509.Certificate, cert: x509.Certificate) -> bool:
    """True if ``ca_cert`` signed ``cert`` (signature and issuer name; no validity/usage check)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# -------------------------------------------------------------------------------------------- CRL


def write_crl(
    ca: CA, entries: Iterable[x509.RevokedCertificate], *, days: int = CRL_DAYS
) -> x509.CertificateRevocationList:
    """Sign and write ``ca.crl`` with ``entries``; its CRL number is taken from the clock so it
    always increases (relying parties may ignore a CRL whose number did not)."""
    now = _now()
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1_000_000)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca.key, hashes.SHA256())
    write_public(ca.crl_path, crl.public_bytes(serialization.Encoding.PEM))
    return crl
