"""psvn/core/config.py: a bad key in a config file names itself."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from psvn.core import config
from psvn.core.errors import Code, PsvnError
from psvn.gateway.config import GatewayConfig, WebhookSection, load

GOOD = """
[gateway]
org = "ods:RYR"
listen_port = 8443
[tls]
cert = "https.crt"
key = "https.key"
ca = "ca.crt"
[nats]
servers = ["tls://127.0.0.1:4222"]
cert = "nats.crt"
key = "nats.key"
ca = "ca.crt"
creds = "nats.creds"
[keys]
signing = "sign.key"
hpke = "hpke.key"
policy_authority = "pa.pub"
registry_authority = "ra.pub"
"""


def test_good_config_round_trips(tmp_path: Path) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(GOOD)
    cfg = load(p)
    assert cfg.gateway.org == "ods:RYR" and cfg.nats.servers == ["tls://127.0.0.1:4222"]
    p.write_text(config.dump(cfg))
    assert load(p) == cfg


def test_dump_round_trips_every_kind_of_setting(tmp_path: Path) -> None:
    """Keys that need quoting, a table of lists, an optional section, a None left out, and
    strings with quotes, backslashes and non-ASCII letters all come back as they went in."""
    p = tmp_path / "gw.toml"
    p.write_text(GOOD)
    base = load(p)
    cfg = msgspec.structs.replace(
        base,
        gateway=msgspec.structs.replace(base.gateway, name='Ysbyty "Gwynedd" \\ Bangor — Ŵ',
                                        system_mailboxes={"ods:RYR/epr": ["", "referrals"], "lab": []}),
        keys=msgspec.structs.replace(base.keys, hpke_hybrid=None, retired_dir="retired keys"),
        webhook=WebhookSection(url="https://127.0.0.1:9/hook", secret_file="hook.secret", timeout_seconds=2.5))
    text = config.dump(cfg)
    assert "None" not in text and "hpke_hybrid" not in text
    assert tomllib.loads(text)["gateway"]["system_mailboxes"] == {"ods:RYR/epr": ["", "referrals"], "lab": []}
    p.write_text(text)
    assert load(p) == cfg


@pytest.mark.parametrize("text,field", [
    (GOOD.replace("listen_port = 8443", 'listen_port = "eighty"'), "gateway.listen_port"),
    (GOOD.replace("listen_port = 8443", "listen_prot = 8443"), "gateway.listen_prot"),
    (GOOD.replace('signing = "sign.key"\n', ""), "keys.signing"),
    (GOOD.replace("listen_port = 8443", "listen_port = 8443\ngc_threshold = -1"), "gateway.gc_threshold"),
    (GOOD.replace("listen_port = 8443", "listen_port = 8443\nheap_trim_seconds = -1"), "gateway.heap_trim_seconds"),
    (GOOD.replace("listen_port = 8443", "listen_port = 8443\nheap_trim_seconds = 0.001"), "gateway.heap_trim_seconds"),
    (GOOD.replace("listen_port = 8443", "listen_port = 8443\nseal_data_key_uses = 0"), "gateway.seal_data_key_uses"),
    (GOOD.replace("listen_port = 8443", "listen_port = 8443\nseal_data_key_uses = 4294967297"),
     "gateway.seal_data_key_uses"),  # past 2^32 random nonces under one key
    (GOOD.replace("listen_port = 8443", "listen_port = 8443\nseal_data_key_seconds = 0"),
     "gateway.seal_data_key_seconds"),
    (GOOD.replace("listen_port = 8443", "listen_port = 8443\nseal_opened_keys = 0"), "gateway.seal_opened_keys"),
    (GOOD.replace("listen_port = 8443", "listen_port = 8443\nseal_data_keys = 0"), "gateway.seal_data_keys"),
    (GOOD.replace("listen_port = 8443", "listen_port = 8443\nseal_data_key_seconds = 86401"),
     "gateway.seal_data_key_seconds"),
    # (with nats.creds present, so this case names the missing trust anchor and nothing else)
    (GOOD.replace('ca = "ca.crt"\n[keys]', 'ca = "ca.crt"\ncreds = "gw.creds"\n[keys]')
     .replace('registry_authority = "ra.pub"\n', ""), "keys.registry_authority"),
])
def test_bad_key_is_named(tmp_path: Path, text: str, field: str) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(text)
    with pytest.raises(PsvnError) as err:
        load(p)
    assert err.value.code is Code.CONFIG_INVALID
    assert err.value.field == field, err.value.detail
    assert field in err.value.detail


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(PsvnError) as err:
        load(tmp_path / "nope.toml")
    assert err.value.rule == "config-file"
    (tmp_path / "bad.toml").write_text("[gateway\n")
    with pytest.raises(PsvnError) as err:
        config.load(tmp_path / "bad.toml", GatewayConfig)
    assert err.value.rule == "toml-syntax"
