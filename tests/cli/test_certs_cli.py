"""The ``psvn certs`` CLI end to end: CA, gateway/system/server certificates, revocation, CRL refresh."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from psvn.certs import revocation
from psvn.certs.ca import cert_uris, fingerprint, load_ca, load_cert, verify_cert
from psvn.certs.keys import hybrid_public_raw, load_hybrid_hpke_key
from psvn.cli.main import main
from tests.certs.conftest import ORG, mode, sans


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
    assert cert_uris(load_cert(gw / "nats.crt")) == ["urn:psvn:org:gss:E06000043"]

    assert main(["certs", "issue", "system", "--org", ORG, "--system", "case-mgmt"]) == 0
    system_crt = gw / "systems" / "case-mgmt.crt"
    assert mode(gw / "systems" / "case-mgmt.key") == 0o600

    capsys.readouterr()
    assert main(["certs", "show", str(system_crt)]) == 0
    out = capsys.readouterr().out
    assert "urn:psvn:system:gss:E06000043/case-mgmt" in out
    assert fingerprint(load_cert(system_crt)) in out
    assert "revoked      no" in out

    assert main(["certs", "revoke", str(system_crt), "--reason", "keyCompromise"]) == 0
    capsys.readouterr()
    assert main(["certs", "show", "--json", str(system_crt)]) == 0
    import json

    shown = json.loads(capsys.readouterr().out)
    assert shown["revoked"] is True
    assert shown["uris"] == ["urn:psvn:system:gss:E06000043/case-mgmt"]
    assert revocation.is_revoked(pki_dir, load_cert(system_crt))


def test_cli_custom_dir_and_bad_org(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "elsewhere"
    assert main(["certs", "init", "--dir", str(d)]) == 0
    assert main(["certs", "issue", "gateway", "--org", "nhs:RYR", "--dir", str(d)]) == 1
    err = capsys.readouterr().err
    assert "[field org]" in err and "nhs:RYR" in err
    assert not (d / "orgs").exists()
    assert main(["certs", "issue", "gateway", "--org", "ods:RYR", "--dir", str(d),
                 "--host", "gw.example.nhs.uk"]) == 0
    https = load_cert(d / "orgs" / "ods_RYR" / "https.crt")
    assert sans(https)[0] == x509.DNSName("gw.example.nhs.uk")
    # a post-quantum gateway also gets a hybrid ML-KEM-768 + X25519 key (0600) that loads back
    assert main(["certs", "issue", "gateway", "--org", "ods:G81001", "--dir", str(d), "--post-quantum"]) == 0
    hybrid = d / "orgs" / "ods_G81001" / "hpke-hybrid.key"
    assert mode(hybrid) == 0o600 and "ML-KEM-768" in capsys.readouterr().out
    assert len(hybrid_public_raw(*load_hybrid_hpke_key(hybrid))) == 1184 + 32
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
    ca = load_ca(d)
    cert = load_cert(d / "servers" / "nats-1.crt")
    verify_cert(ca, cert, server_name="nats-1")
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
