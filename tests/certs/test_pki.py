"""certs.pki and certs.revocation with real keys and certificates, plus the ``psvn certs`` CLI."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from psvn.certs import pki, revocation
from psvn.cli.main import main
from psvn.core.errors import Code, PsvnError

ORG = "gss:E06000043"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> pki.CA:
    return pki.init_ca(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> pki.CA:
    return pki.init_ca(tmp_path_factory.mktemp("other") / "ca", common_name="someone else")


@pytest.fixture(scope="module")
def gateway(ca: pki.CA, tmp_path_factory: pytest.TempPathFactory) -> pki.GatewayFiles:
    return pki.issue_gateway(ca, ORG, tmp_path_factory.mktemp("gw") / "gss_E06000043")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# ------------------------------------------------------------------------------------------- CA


def test_init_ca_files_modes_and_ca_extensions(ca: pki.CA) -> None:
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


def test_load_ca_round_trip(ca: pki.CA) -> None:
    loaded = pki.load_ca(ca.directory)
    assert loaded.cert == ca.cert
    assert loaded.key.private_numbers() == ca.key.private_numbers()


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = pki.init_ca(tmp_path)
    with pytest.raises(PsvnError) as err:
        pki.init_ca(tmp_path)
    assert err.value.code is Code.CONFIG_INVALID
    assert str(tmp_path / "ca.crt") in err.value.detail
    assert pki.load_ca(tmp_path).cert == first.cert  # untouched
    second = pki.init_ca(tmp_path, force=True)
    assert second.cert != first.cert
    assert pki.load_ca(tmp_path).cert == second.cert


def test_init_refuses_when_only_the_key_exists(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_bytes(b"precious")
    with pytest.raises(PsvnError) as err:
        pki.init_ca(tmp_path)
    assert str(tmp_path / "ca.key") in err.value.detail
    assert (tmp_path / "ca.key").read_bytes() == b"precious"


def test_load_ca_missing_and_mismatched(tmp_path: Path, ca: pki.CA, other_ca: pki.CA) -> None:
    with pytest.raises(PsvnError) as err:
        pki.load_ca(tmp_path)
    assert err.value.code is Code.CONFIG_INVALID and "ca.crt" in err.value.detail
    (tmp_path / "ca.crt").write_bytes(ca.cert_path.read_bytes())
    (tmp_path / "ca.key").write_bytes((other_ca.directory / "ca.key").read_bytes())
    with pytest.raises(PsvnError, match="does not match"):
        pki.load_ca(tmp_path)


# --------------------------------------------------------------------------------------- leaves


def test_gateway_files_and_modes(gateway: pki.GatewayFiles) -> None:
    d = gateway.directory
    assert (gateway.nats_cert, gateway.nats_key) == (d / "nats.crt", d / "nats.key")
    assert (gateway.https_cert, gateway.https_key) == (d / "https.crt", d / "https.key")
    assert (gateway.sign_key, gateway.hpke_key) == (d / "sign.key", d / "hpke.key")
    for key in (gateway.nats_key, gateway.https_key, gateway.sign_key, gateway.hpke_key):
        assert mode(key) == 0o600, key
    for cert in (gateway.nats_cert, gateway.https_cert):
        assert mode(cert) == 0o644
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]  # no temp files left


def test_gateway_nats_cert_has_only_the_org_uri(ca: pki.CA, gateway: pki.GatewayFiles) -> None:
    cert = pki.load_cert(gateway.nats_cert)
    # verify_and_map tries email, DNS, then URI: anything but the URI would change the user.
    assert sans(cert) == [x509.UniformResourceIdentifier("urn:psvn:org:gss:E06000043")]
    assert pki.cert_uris(cert) == ["urn:psvn:org:gss:E06000043"]
    assert eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ORG
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "psvn"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False
    assert pki.verify_cert(ca, cert) == ["urn:psvn:org:gss:E06000043"]


def test_gateway_https_cert_is_a_server_cert(ca: pki.CA, gateway: pki.GatewayFiles) -> None:
    cert = pki.load_cert(gateway.https_cert)
    assert eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    names = sans(cert)
    assert x509.DNSName("localhost") in names
    assert {str(n.value) for n in names if isinstance(n, x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert pki.cert_uris(cert) == ["urn:psvn:org:gss:E06000043"]
    pki.verify_cert(ca, cert, server_name="localhost")
    pki.verify_cert(ca, cert, server_name="127.0.0.1")
    with pytest.raises(PsvnError) as err:
        pki.verify_cert(ca, cert, server_name="evil.example")
    assert err.value.code is Code.CERTIFICATE_INVALID


def test_gateway_message_keys_load_and_differ(gateway: pki.GatewayFiles) -> None:
    sign = pki.load_signing_key(gateway.sign_key)
    hpke = pki.load_hpke_key(gateway.hpke_key)
    assert isinstance(sign, Ed25519PrivateKey) and isinstance(hpke, X25519PrivateKey)
    assert gateway.sign_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    raw_sign, raw_hpke = pki.raw_public(sign), pki.raw_public(hpke)
    assert len(raw_sign) == 32 and len(raw_hpke) == 32
    assert pki.raw_public(sign.public_key()) == raw_sign
    msg = b"referral"
    pki.ed25519_public(raw_sign).verify(sign.sign(msg), msg)  # raises if wrong
    assert pki.raw_public(pki.x25519_public(raw_hpke)) == raw_hpke
    # each key type refuses the other's file
    with pytest.raises(PsvnError) as err:
        pki.load_signing_key(gateway.hpke_key)
    assert err.value.code is Code.CONFIG_INVALID
    with pytest.raises(PsvnError):
        pki.load_hpke_key(gateway.sign_key)
    with pytest.raises(PsvnError):
        pki.ed25519_public(b"short")


def test_gateway_rejects_bad_org(ca: pki.CA, tmp_path: Path) -> None:
    for bad in ("E06000043", "xx:E06000043", "gss:E06000043/adult-social-care", ""):
        with pytest.raises(PsvnError) as err:
            pki.issue_gateway(ca, bad, tmp_path)
        assert err.value.field == "org"
    assert list(tmp_path.iterdir()) == []


def test_reissue_replaces_files_with_fresh_keys(ca: pki.CA, tmp_path: Path) -> None:
    first = pki.issue_gateway(ca, "ods:RYR", tmp_path)
    old_cert, old_sign = first.nats_cert.read_bytes(), first.sign_key.read_bytes()
    second = pki.issue_gateway(ca, "ods:RYR", tmp_path)
    assert second.nats_cert.read_bytes() != old_cert
    assert second.sign_key.read_bytes() != old_sign
    assert mode(second.sign_key) == 0o600


def test_system_cert(ca: pki.CA, tmp_path: Path) -> None:
    crt, key = pki.issue_system(ca, ORG, "case-mgmt", tmp_path / "systems")
    assert (crt, key) == (tmp_path / "systems/case-mgmt.crt", tmp_path / "systems/case-mgmt.key")
    assert mode(key) == 0o600
    cert = pki.load_cert(crt)
    assert sans(cert) == [x509.UniformResourceIdentifier("urn:psvn:system:gss:E06000043/case-mgmt")]
    assert eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert pki.verify_cert(ca, cert) == ["urn:psvn:system:gss:E06000043/case-mgmt"]
    for bad in ("../etc", "Case", "", "a/b"):
        with pytest.raises(PsvnError) as err:
            pki.issue_system(ca, ORG, bad, tmp_path)
        assert err.value.field == "system"


def test_server_and_client_certs(ca: pki.CA, tmp_path: Path) -> None:
    crt, key = pki.issue_server(ca, "nats-1", tmp_path, hosts=["nats-1.internal", "127.0.0.1"])
    cert = pki.load_cert(crt)
    assert eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert pki.cert_uris(cert) == []
    pki.verify_cert(ca, cert, server_name="nats-1.internal")
    assert mode(key) == 0o600

    crt, key = pki.issue_client(ca, "urn:psvn:broker", "broker", tmp_path)
    cert = pki.load_cert(crt)
    assert sans(cert) == [x509.UniformResourceIdentifier("urn:psvn:broker")]
    assert pki.verify_cert(ca, cert) == ["urn:psvn:broker"]
    with pytest.raises(PsvnError):
        pki.issue_client(ca, "not a uri", "x", tmp_path)


def test_chain_fails_against_another_ca(other_ca: pki.CA, gateway: pki.GatewayFiles) -> None:
    cert = pki.load_cert(gateway.nats_cert)
    with pytest.raises(PsvnError) as err:
        pki.verify_cert(other_ca, cert)
    assert err.value.code is Code.CERTIFICATE_INVALID
    assert not pki.is_issued_by(other_ca.cert, cert)


def test_chain_verifies_directly(ca: pki.CA, gateway: pki.GatewayFiles) -> None:
    pki.load_cert(gateway.https_cert).verify_directly_issued_by(ca.cert)


def test_fingerprint_matches_openssl_style_digest(gateway: pki.GatewayFiles) -> None:
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    cert = pki.load_cert(gateway.nats_cert)
    fp = pki.fingerprint(cert)
    assert fp == hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    assert len(fp) == 64 and fp == fp.lower() and ":" not in fp


def test_load_cert_errors(tmp_path: Path) -> None:
    with pytest.raises(PsvnError) as err:
        pki.load_cert(tmp_path / "missing.crt")
    assert err.value.code is Code.CONFIG_INVALID
    pem = "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
    (tmp_path / "junk.crt").write_text(pem)
    with pytest.raises(PsvnError) as err:
        pki.load_cert(tmp_path / "junk.crt")
    assert err.value.code is Code.CERTIFICATE_INVALID


def test_write_private_creates_parents_and_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "secret.key"
    pki.write_private(path, b"one")
    assert path.read_bytes() == b"one" and mode(path) == 0o600
    path.chmod(0o644)
    pki.write_private(path, b"two")  # replacing also lands 0600
    assert path.read_bytes() == b"two" and mode(path) == 0o600


def test_new_signing_key_writes_loadable_key(tmp_path: Path) -> None:
    key = pki.new_signing_key(tmp_path / "policy-authority.key")
    assert mode(tmp_path / "policy-authority.key") == 0o600
    loaded = pki.load_signing_key(tmp_path / "policy-authority.key")
    assert pki.raw_public(loaded) == pki.raw_public(key)


# ----------------------------------------------------------------------------------- revocation


def test_revocation_round_trip(tmp_path: Path) -> None:
    ca = pki.init_ca(tmp_path / "ca")
    a = pki.load_cert(pki.issue_system(ca, ORG, "a", tmp_path)[0])
    b = pki.load_cert(pki.issue_system(ca, ORG, "b", tmp_path)[0])
    assert not revocation.is_revoked(ca.directory, a)
    revocation.revoke(ca, a, reason=x509.ReasonFlags.key_compromise)
    revocation.revoke(ca, a)  # idempotent
    assert revocation.revoked_serials(ca.directory) == {a.serial_number}
    assert revocation.is_revoked(ca.directory, a)
    assert not revocation.is_revoked(ca.directory, b)
    revocation.revoke(ca, b)
    assert revocation.revoked_serials(ca.directory) == {a.serial_number, b.serial_number}
    crl = revocation.load_crl(ca.directory)
    entry = crl.get_revoked_certificate_by_serial_number(a.serial_number)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    assert crl.next_update_utc is not None
    assert 6 <= (crl.next_update_utc - crl.last_update_utc).days <= 7
    before = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    refreshed = revocation.refresh_crl(ca)
    assert refreshed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > before
    assert revocation.revoked_serials(ca.directory) == {a.serial_number, b.serial_number}


def test_revoke_refuses_foreign_certificate(
    ca: pki.CA, other_ca: pki.CA, gateway: pki.GatewayFiles
) -> None:
    before = other_ca.crl_path.read_bytes()
    with pytest.raises(PsvnError) as err:
        revocation.revoke(other_ca, pki.load_cert(gateway.nats_cert))
    assert err.value.code is Code.CERTIFICATE_INVALID
    assert other_ca.crl_path.read_bytes() == before
    assert not revocation.is_revoked(other_ca.directory, pki.load_cert(gateway.nats_cert))


def test_forged_crl_is_an_error_not_an_empty_list(tmp_path: Path, other_ca: pki.CA) -> None:
    ca = pki.init_ca(tmp_path)
    (tmp_path / "ca.crl").write_bytes(other_ca.crl_path.read_bytes())
    with pytest.raises(PsvnError) as err:
        revocation.revoked_serials(tmp_path)
    assert err.value.code is Code.CERTIFICATE_INVALID
    (tmp_path / "ca.crl").unlink()
    with pytest.raises(PsvnError) as err:
        revocation.revoked_serials(ca.directory)
    assert err.value.code is Code.CONFIG_INVALID


# ------------------------------------------------------------------------------------------ CLI


def test_cli_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["certs", "init"]) == 0
    pki_dir = tmp_path / ".devnet" / "pki"
    assert (pki_dir / "ca.crt").exists() and mode(pki_dir / "ca.key") == 0o600

    assert main(["certs", "init"]) == 1
    err = capsys.readouterr().err
    assert "config-invalid" in err and "ca.crt" in err

    assert main(["certs", "issue", "gateway", "--org", ORG]) == 0
    gw = pki_dir / "orgs" / "gss_E06000043"
    assert {p.name for p in gw.iterdir()} == {
        "nats.crt", "nats.key", "https.crt", "https.key", "sign.key", "hpke.key"
    }
    assert pki.cert_uris(pki.load_cert(gw / "nats.crt")) == ["urn:psvn:org:gss:E06000043"]

    assert main(["certs", "issue", "system", "--org", ORG, "--system", "case-mgmt"]) == 0
    system_crt = gw / "systems" / "case-mgmt.crt"
    assert mode(gw / "systems" / "case-mgmt.key") == 0o600

    capsys.readouterr()
    assert main(["certs", "show", str(system_crt)]) == 0
    out = capsys.readouterr().out
    assert "urn:psvn:system:gss:E06000043/case-mgmt" in out
    assert pki.fingerprint(pki.load_cert(system_crt)) in out
    assert "revoked      no" in out

    assert main(["certs", "revoke", str(system_crt), "--reason", "keyCompromise"]) == 0
    capsys.readouterr()
    assert main(["certs", "show", "--json", str(system_crt)]) == 0
    import json

    shown = json.loads(capsys.readouterr().out)
    assert shown["revoked"] is True
    assert shown["uris"] == ["urn:psvn:system:gss:E06000043/case-mgmt"]
    assert revocation.is_revoked(pki_dir, pki.load_cert(system_crt))


def test_cli_custom_dir_and_bad_org(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "elsewhere"
    assert main(["certs", "init", "--dir", str(d)]) == 0
    assert main(["certs", "issue", "gateway", "--org", "nhs:RYR", "--dir", str(d)]) == 1
    err = capsys.readouterr().err
    assert "[field org]" in err and "nhs:RYR" in err
    assert not (d / "orgs").exists()
    assert main(["certs", "issue", "gateway", "--org", "ods:RYR", "--dir", str(d),
                 "--host", "gw.example.nhs.uk"]) == 0
    https = pki.load_cert(d / "orgs" / "ods_RYR" / "https.crt")
    assert sans(https)[0] == x509.DNSName("gw.example.nhs.uk")
    # a post-quantum gateway also gets a hybrid ML-KEM-768 + X25519 key (0600) that loads back
    assert main(["certs", "issue", "gateway", "--org", "ods:G81001", "--dir", str(d), "--post-quantum"]) == 0
    hybrid = d / "orgs" / "ods_G81001" / "hpke-hybrid.key"
    assert mode(hybrid) == 0o600 and "ML-KEM-768" in capsys.readouterr().out
    assert len(pki.hybrid_public_raw(*pki.load_hybrid_hpke_key(hybrid))) == 1184 + 32
    # issuing without a CA names the missing file
    missing = str(tmp_path / "no")
    assert main(["certs", "issue", "gateway", "--org", "ods:RYR", "--dir", missing]) == 1
    assert "ca.crt" in capsys.readouterr().err


def test_cli_server_cert_and_crl_refresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "pki"
    assert main(["certs", "init", "--dir", str(d)]) == 0
    assert main(["certs", "issue", "server", "--name", "nats-1", "--dir", str(d),
                 "--host", "127.0.0.1", "--host", "nats-1"]) == 0
    ca = pki.load_ca(d)
    cert = pki.load_cert(d / "servers" / "nats-1.crt")
    pki.verify_cert(ca, cert, server_name="nats-1")
    assert mode(d / "servers" / "nats-1.key") == 0o600
    revocation.revoke(ca, cert)
    before = revocation.load_crl(d)
    assert main(["certs", "crl", "--dir", str(d)]) == 0
    after = revocation.load_crl(d)
    assert after.next_update_utc is not None and before.next_update_utc is not None
    assert after.next_update_utc >= before.next_update_utc
    assert revocation.revoked_serials(d) == {cert.serial_number}  # entries kept
    assert "revoked certificates  1" in capsys.readouterr().out


def test_cli_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["certs", "--help"], ["certs", "issue", "gateway", "--help"],
                 ["certs", "revoke", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "urn:psvn:org:ORG" in out and "--org" in out and "CRL" in out
    assert main(["certs"]) == 2


def test_hybrid_hpke_key_file(tmp_path: Path) -> None:


    path = tmp_path / "k" / "hpke-hybrid.key"
    pq, classic = pki.new_hybrid_hpke_key(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    pq2, classic2 = pki.load_hybrid_hpke_key(path)
    assert pki.hybrid_public_raw(pq, classic) == pki.hybrid_public_raw(pq2, classic2)
    assert len(pki.hybrid_public_raw(pq, classic)) == 1184 + 32
    path.write_bytes(b"not a key")
    with pytest.raises(PsvnError) as err:
        pki.load_hybrid_hpke_key(path)
    assert err.value.rule == "key-format"


# ------------------------------------------------------------------------------------- rotation


def test_rotation_retires_message_keys_and_writes_fresh_ones(ca: pki.CA, tmp_path: Path) -> None:
    files = pki.issue_gateway(ca, "ods:RYR", tmp_path / "gw", post_quantum=True)
    before = {p: p.read_bytes() for p in (files.sign_key, files.hpke_key, files.hpke_hybrid) if p}
    certs_before = files.nats_cert.read_bytes(), files.https_cert.read_bytes()
    assert pki.load_retired_keys(tmp_path / "gw" / pki.RETIRED_DIR) == pki.RetiredKeys([], [], [])

    rotated = pki.rotate_gateway_keys(tmp_path / "gw")
    assert rotated.hpke_hybrid is not None  # a post-quantum gateway stays post-quantum
    for path, old in before.items():
        assert path.read_bytes() != old and mode(path) == 0o600
    assert (files.nats_cert.read_bytes(), files.https_cert.read_bytes()) == certs_before  # keys only
    retired_dir = tmp_path / "gw" / pki.RETIRED_DIR
    assert mode(retired_dir) == 0o700 and all(mode(p) == 0o600 for p in retired_dir.iterdir())
    retired = pki.load_retired_keys(retired_dir)
    old_signing = serialization.load_pem_private_key(before[files.sign_key], None)
    assert [pki.raw_public(k) for k in retired.signing] == [pki.raw_public(old_signing)]  # type: ignore[arg-type]
    assert len(retired.hpke) == 1 and len(retired.hybrid) == 1

    pki.rotate_gateway_keys(tmp_path / "gw")  # twice: newest retired key first
    again = pki.load_retired_keys(retired_dir)
    assert len(again.signing) == 2 and pki.raw_public(again.signing[1]) == pki.raw_public(retired.signing[0])

    with pytest.raises(PsvnError) as err:
        pki.rotate_gateway_keys(tmp_path / "empty")
    assert err.value.code is Code.CONFIG_INVALID and err.value.rule == "gateway-keys"
