"""certs.revocation with a real CA: revoking, refreshing and reading back its signed CRL."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from psvn.certs import revocation
from psvn.certs.ca import CA, init_ca, issue_system, load_cert
from psvn.certs.files import GatewayFiles
from psvn.core.errors import Code, PsvnError
from tests.certs.conftest import ORG


def test_revocation_round_trip(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca")
    a = load_cert(issue_system(ca, ORG, "a", tmp_path)[0])
    b = load_cert(issue_system(ca, ORG, "b", tmp_path)[0])
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
    ca: CA, other_ca: CA, gateway: GatewayFiles
) -> None:
    before = other_ca.crl_path.read_bytes()
    with pytest.raises(PsvnError) as err:
        revocation.revoke(other_ca, load_cert(gateway.nats_cert))
    assert err.value.code is Code.CERTIFICATE_INVALID
    assert other_ca.crl_path.read_bytes() == before
    assert not revocation.is_revoked(other_ca.directory, load_cert(gateway.nats_cert))


def test_forged_crl_is_an_error_not_an_empty_list(tmp_path: Path, other_ca: CA) -> None:
    ca = init_ca(tmp_path)
    (tmp_path / "ca.crl").write_bytes(other_ca.crl_path.read_bytes())
    with pytest.raises(PsvnError) as err:
        revocation.revoked_serials(tmp_path)
    assert err.value.code is Code.CERTIFICATE_INVALID
    (tmp_path / "ca.crl").unlink()
    with pytest.raises(PsvnError) as err:
        revocation.revoked_serials(ca.directory)
    assert err.value.code is Code.CONFIG_INVALID
