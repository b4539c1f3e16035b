"""certs.ca with real keys and certificates: the CA itself, the certificates it issues, inspection."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from psvn.certs import revocation
from psvn.certs.ca import (
    CA,
    cert_uris,
    fingerprint,
    init_ca,
    is_issued_by,
    issue_client,
    issue_gateway,
    issue_server,
    issue_system,
    load_ca,
    load_cert,
    verify_cert,
)
from psvn.certs.files import GatewayFiles
from psvn.core.errors import Code, PsvnError
from tests.certs.conftest import ORG, eku, mode, sans

# ------------------------------------------------------------------------------------------- CA


def test_init_ca_files_modes_and_ca_extensions(ca: CA) -> None:
    assert ca.cert_path == ca.directory / "ca.crt"
    assert mode(ca.directory / "ca.key") == 0o600
    assert mode(ca.directory / "ca.crt") == 0o644
    assert mode(ca.directory / "ca.crl") == 0o644
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "psvn network CA"
    assert revocation.revoked_serials(ca.directory) == set()  # empty but valid, signed CRL


def test_load_ca_round_trip(ca: CA) -> None:
    loaded = load_ca(ca.directory)
    assert loaded.cert == ca.cert
    assert loaded.key.private_numbers() == ca.key.private_numbers()


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = init_ca(tmp_path)
    with pytest.raises(PsvnError) as err:
        init_ca(tmp_path)
    assert err.value.code is Code.CONFIG_INVALID
    assert str(tmp_path / "ca.crt") in err.value.detail
    assert load_ca(tmp_path).cert == first.cert  # untouched
    second = init_ca(tmp_path, force=True)
    assert second.cert != first.cert
    assert load_ca(tmp_path).cert == second.cert


def test_init_refuses_when_only_the_key_exists(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_bytes(b"precious")
    with pytest.raises(PsvnError) as err:
        init_ca(tmp_path)
    assert str(tmp_path / "ca.key") in err.value.detail
    assert (tmp_path / "ca.key").read_bytes() == b"precious"


def test_load_ca_missing_and_mismatched(tmp_path: Path, ca: CA, other_ca: CA) -> None:
    with pytest.raises(PsvnError) as err:
        load_ca(tmp_path)
    assert err.value.code is Code.CONFIG_INVALID and "ca.crt" in err.value.detail
    (tmp_path / "ca.crt").write_bytes(ca.cert_path.read_bytes())
    (tmp_path / "ca.key").write_bytes((other_ca.directory / "ca.key").read_bytes())
    with pytest.raises(PsvnError, match="does not match"):
        load_ca(tmp_path)


# --------------------------------------------------------------------------------------- leaves


def test_gateway_files_and_modes(gateway: GatewayFiles) -> None:
    d = gateway.directory
    assert (gateway.nats_cert, gateway.nats_key) == (d / "nats.crt", d / "nats.key")
    assert (gateway.https_cert, gateway.https_key) == (d / "https.crt", d / "https.key")
    assert (gateway.sign_key, gateway.hpke_key) == (d / "sign.key", d / "hpke.key")
    for key in (gateway.nats_key, gateway.https_key, gateway.sign_key, gateway.hpke_key):
        assert mode(key) == 0o600, key
    for cert in (gateway.nats_cert, gateway.https_cert):
        assert mode(cert) == 0o644
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]  # no temp files left


def test_gateway_nats_cert_has_only_the_org_uri(ca: CA, gateway: GatewayFiles) -> None:
    cert = load_cert(gateway.nats_cert)
    # verify_and_map tries email, DNS, then URI: anything but the URI would change the user.
    assert sans(cert) == [x509.UniformResourceIdentifier("urn:psvn:org:gss:E06000043")]
    assert cert_uris(cert) == ["urn:psvn:org:gss:E06000043"]
    assert eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ORG
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "psvn"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False
    assert verify_cert(ca, cert) == ["urn:psvn:org:gss:E06000043"]


def test_gateway_https_cert_is_a_server_cert(ca: CA, gateway: GatewayFiles) -> None:
    cert = load_cert(gateway.https_cert)
    assert eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    names = sans(cert)
    assert x509.DNSName("localhost") in names
    assert {str(n.value) for n in names if isinstance(n, x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert cert_uris(cert) == ["urn:psvn:org:gss:E06000043"]
    verify_cert(ca, cert, server_name="localhost")
    verify_cert(ca, cert, server_name="127.0.0.1")
    with pytest.raises(PsvnError) as err:
        verify_cert(ca, cert, server_name="evil.example")
    assert err.value.code is Code.CERTIFICATE_INVALID


def test_gateway_rejects_bad_org(ca: CA, tmp_path: Path) -> None:
    for bad in ("E06000043", "xx:E06000043", "gss:E06000043/adult-social-care", ""):
        with pytest.raises(PsvnError) as err:
            issue_gateway(ca, bad, tmp_path)
        assert err.value.field == "org"
    assert list(tmp_path.iterdir()) == []


def test_reissue_replaces_files_with_fresh_keys(ca: CA, tmp_path: Path) -> None:
    first = issue_gateway(ca, "ods:RYR", tmp_path)
    old_cert, old_sign = first.nats_cert.read_bytes(), first.sign_key.read_bytes()
    second = issue_gateway(ca, "ods:RYR", tmp_path)
    assert second.nats_cert.read_bytes() != old_cert
    assert second.sign_key.read_bytes() != old_sign
    assert mode(second.sign_key) == 0o600


def test_system_cert(ca: CA, tmp_path: Path) -> None:
    crt, key = issue_system(ca, ORG, "case-mgmt", tmp_path / "systems")
    assert (crt, key) == (tmp_path / "systems/case-mgmt.crt", tmp_path / "systems/case-mgmt.key")
    assert mode(key) == 0o600
    cert = load_cert(crt)
    assert sans(cert) == [x509.UniformResourceIdentifier("urn:psvn:system:gss:E06000043/case-mgmt")]
    assert eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert verify_cert(ca, cert) == ["urn:psvn:system:gss:E06000043/case-mgmt"]
    for bad in ("../etc", "Case", "", "a/b"):
        with pytest.raises(PsvnError) as err:
            issue_system(ca, ORG, bad, tmp_path)
        assert err.value.field == "system"


def test_server_and_client_certs(ca: CA, tmp_path: Path) -> None:
    crt, key = issue_server(ca, "nats-1", tmp_path, hosts=["nats-1.internal", "127.0.0.1"])
    cert = load_cert(crt)
    assert eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert_uris(cert) == []
    verify_cert(ca, cert, server_name="nats-1.internal")
    assert mode(key) == 0o600

    crt, key = issue_client(ca, "urn:psvn:broker", "broker", tmp_path)
    cert = load_cert(crt)
    assert sans(cert) == [x509.UniformResourceIdentifier("urn:psvn:broker")]
    assert verify_cert(ca, cert) == ["urn:psvn:broker"]
    with pytest.raises(PsvnError):
        issue_client(ca, "not a uri", "x", tmp_path)


def test_chain_fails_against_another_ca(other_ca: CA, gateway: GatewayFiles) -> None:
    cert = load_cert(gateway.nats_cert)
    with pytest.raises(PsvnError) as err:
        verify_cert(other_ca, cert)
    assert err.value.code is Code.CERTIFICATE_INVALID
    assert not is_issued_by(other_ca.cert, cert)


def test_chain_verifies_directly(ca: CA, gateway: GatewayFiles) -> None:
    load_cert(gateway.https_cert).verify_directly_issued_by(ca.cert)


def test_fingerprint_matches_openssl_style_digest(gateway: GatewayFiles) -> None:
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    cert = load_cert(gateway.nats_cert)
    fp = fingerprint(cert)
    assert fp == hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    assert len(fp) == 64 and fp == fp.lower() and ":" not in fp


def test_load_cert_errors(tmp_path: Path) -> None:
    with pytest.raises(PsvnError) as err:
        load_cert(tmp_path / "missing.crt")
    assert err.value.code is Code.CONFIG_INVALID
    pem = "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
    (tmp_path / "junk.crt").write_text(pem)
    with pytest.raises(PsvnError) as err:
        load_cert(tmp_path / "junk.crt")
    assert err.value.code is Code.CERTIFICATE_INVALID
