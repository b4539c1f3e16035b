"""certs.keys with real keys: Ed25519 signing, X25519 and hybrid HPKE, raw public forms, rotation."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from psvn.certs.ca import CA, issue_gateway
from psvn.certs.files import GatewayFiles
from psvn.certs.keys import (
    RETIRED_DIR,
    RetiredKeys,
    ed25519_public,
    hybrid_public_raw,
    load_hpke_key,
    load_hybrid_hpke_key,
    load_retired_keys,
    load_signing_key,
    new_hybrid_hpke_key,
    new_signing_key,
    raw_public,
    rotate_gateway_keys,
    x25519_public,
)
from psvn.core.errors import Code, PsvnError
from tests.certs.conftest import mode


def test_gateway_message_keys_load_and_differ(gateway: GatewayFiles) -> None:
    sign = load_signing_key(gateway.sign_key)
    hpke = load_hpke_key(gateway.hpke_key)
    assert isinstance(sign, Ed25519PrivateKey) and isinstance(hpke, X25519PrivateKey)
    assert gateway.sign_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    raw_sign, raw_hpke = raw_public(sign), raw_public(hpke)
    assert len(raw_sign) == 32 and len(raw_hpke) == 32
    assert raw_public(sign.public_key()) == raw_sign
    msg = b"referral"
    ed25519_public(raw_sign).verify(sign.sign(msg), msg)  # raises if wrong
    assert raw_public(x25519_public(raw_hpke)) == raw_hpke
    # each key type refuses the other's file
    with pytest.raises(PsvnError) as err:
        load_signing_key(gateway.hpke_key)
    assert err.value.code is Code.CONFIG_INVALID
    with pytest.raises(PsvnError):
        load_hpke_key(gateway.sign_key)
    with pytest.raises(PsvnError):
        ed25519_public(b"short")


def test_new_signing_key_writes_loadable_key(tmp_path: Path) -> None:
    key = new_signing_key(tmp_path / "policy-authority.key")
    assert mode(tmp_path / "policy-authority.key") == 0o600
    loaded = load_signing_key(tmp_path / "policy-authority.key")
    assert raw_public(loaded) == raw_public(key)


def test_hybrid_hpke_key_file(tmp_path: Path) -> None:
    path = tmp_path / "k" / "hpke-hybrid.key"
    pq, classic = new_hybrid_hpke_key(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    pq2, classic2 = load_hybrid_hpke_key(path)
    assert hybrid_public_raw(pq, classic) == hybrid_public_raw(pq2, classic2)
    assert len(hybrid_public_raw(pq, classic)) == 1184 + 32
    path.write_bytes(b"not a key")
    with pytest.raises(PsvnError) as err:
        load_hybrid_hpke_key(path)
    assert err.value.rule == "key-format"


# ------------------------------------------------------------------------------------- rotation


def test_rotation_retires_message_keys_and_writes_fresh_ones(ca: CA, tmp_path: Path) -> None:
    files = issue_gateway(ca, "ods:RYR", tmp_path / "gw", post_quantum=True)
    before = {p: p.read_bytes() for p in (files.sign_key, files.hpke_key, files.hpke_hybrid) if p}
    certs_before = files.nats_cert.read_bytes(), files.https_cert.read_bytes()
    assert load_retired_keys(tmp_path / "gw" / RETIRED_DIR) == RetiredKeys([], [], [])

    rotated = rotate_gateway_keys(tmp_path / "gw")
    assert rotated.hpke_hybrid is not None  # a post-quantum gateway stays post-quantum
    for path, old in before.items():
        assert path.read_bytes() != old and mode(path) == 0o600
    assert (files.nats_cert.read_bytes(), files.https_cert.read_bytes()) == certs_before  # keys only
    retired_dir = tmp_path / "gw" / RETIRED_DIR
    assert mode(retired_dir) == 0o700 and all(mode(p) == 0o600 for p in retired_dir.iterdir())
    retired = load_retired_keys(retired_dir)
    old_signing = serialization.load_pem_private_key(before[files.sign_key], None)
    assert [raw_public(k) for k in retired.signing] == [raw_public(old_signing)]  # type: ignore[arg-type]
    assert len(retired.hpke) == 1 and len(retired.hybrid) == 1

    rotate_gateway_keys(tmp_path / "gw")  # twice: newest retired key first
    again = load_retired_keys(retired_dir)
    assert len(again.signing) == 2 and raw_public(again.signing[1]) == raw_public(retired.signing[0])

    with pytest.raises(PsvnError) as err:
        rotate_gateway_keys(tmp_path / "empty")
    assert err.value.code is Code.CONFIG_INVALID and err.value.rule == "gateway-keys"
