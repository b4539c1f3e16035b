"""Every identifier pattern matches the whole string: ``$`` also matches before a final ``\\n``,
so ``re.match(r"^ods:[A-Z]+$", "ods:RYR\\n")`` succeeds. These inputs, each with a trailing
newline, must be refused wherever an identifier is checked."""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from psvn.core import addresses
from psvn.core.errors import PsvnError
from psvn.protocol.envelope import SendRequest, check_free_id, check_request, check_topic

ROOT = Path(__file__).resolve().parents[2]


def good_request(**over: object) -> SendRequest:
    fields: dict[str, object] = {"to": "ods:RYR", "type": "fhir.r4.ServiceRequest", "payload": {},
                                 "purpose": "direct-care", "subject": "nhs:9434765919", "correlation_id": "c-1"}
    fields.update(over)
    return SendRequest(**fields)  # type: ignore[arg-type]


def test_addresses() -> None:
    assert addresses.parse("ods:RYR") == ("ods:RYR", None)
    for bad in ("ods:RYR\n", "gss:E06000043/adult-social-care\n", "ods:RYR\r\n"):
        with pytest.raises(PsvnError) as err:
            addresses.parse(bad)
        assert (err.value.field, err.value.rule) == ("to", "address-format")


def test_envelope_fields() -> None:
    check_request(good_request())
    cases = {"to": "ods:RYR\n", "type": "fhir.r4.ServiceRequest\n", "purpose": "direct-care\n",
             "subject": "nhs:9434765919\n", "correlation_id": "c-1\n", "workflow_id": "w\n",
             "local_id": "l\n", "idempotency_key": "k\n"}
    for field, value in cases.items():
        with pytest.raises(PsvnError) as err:
            check_request(good_request(**{field: value}))
        assert err.value.field == field, field
    with pytest.raises(PsvnError) as err:
        check_free_id("key\n", "Idempotency-Key")
    assert (err.value.field, err.value.rule) == ("Idempotency-Key", "id-format")


def test_topics() -> None:
    assert check_topic("sensors.brighton.air") == "sensors.brighton.air"
    with pytest.raises(PsvnError) as err:
        check_topic("sensors.brighton.air\n")
    assert (err.value.field, err.value.rule) == ("topic", "topic-format")


def test_gateway_message_ids_from_the_backbone() -> None:
    from psvn.gateway.service import _MSG_ID

    assert _MSG_ID.fullmatch("8dde6669-aaaa")
    assert not _MSG_ID.fullmatch("8dde6669-aaaa\n")
    assert _MSG_ID.fullmatch("rcpt.8dde6669-aaaa.acknowledged") and _MSG_ID.fullmatch("a" * 128)
    for bad in ("a..b", "a.", ".a", "a" * 129, "a.*", "a.>", "a b", ""):
        assert not _MSG_ID.fullmatch(bad), bad


def test_certificate_names() -> None:
    from psvn.certs.ca import _NAME, _SYSTEM, _check_name

    assert _check_name("pas", "system", _SYSTEM) == "pas"
    for pattern in (_SYSTEM, _NAME):
        with pytest.raises(PsvnError):
            _check_name("pas\n", "system", pattern)


def test_console_user_names_in_tokens() -> None:
    from psvn.broker.auth import ALGORITHM, AUDIENCE, ISSUER, TokenAuthority

    key = Ed25519PrivateKey.generate()
    authority = TokenAuthority(key)
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "role": "compliance-officer", "iat": now, "exp": now + 60,
              "jti": "x"}
    assert authority.verify(jwt.encode({**claims, "sub": "alice"}, key, algorithm=ALGORITHM)).user == "alice"
    with pytest.raises(PsvnError) as err:
        authority.verify(jwt.encode({**claims, "sub": "alice\n"}, key, algorithm=ALGORITHM))
    assert err.value.rule == "token-invalid"


def test_policy_admin_ids_and_toml_keys() -> None:
    import tomllib

    from psvn.broker.policy_admin import _ID, rules_to_toml

    assert _ID.fullmatch("p0123abcd") and not _ID.fullmatch("p0123abcd\n")
    # a key with a newline is quoted: no line of TOML is smuggled into the regenerated rules
    for key in ("bare", "bare\nx = 1", "bare\n"):
        text = rules_to_toml({"purposes": {key: {"description": "d"}}})
        assert tomllib.loads(text) == {"purposes": {key: {"description": "d"}}}
        assert "\nx = 1" not in text


def test_policy_rule_ids_and_globs() -> None:
    from psvn.policies.engine import Glob, Rule, _check_rule

    assert _check_rule("rule", Rule(id="care-referrals", effect="allow")) is None
    assert _check_rule("rule", Rule(id="care-referrals\n", effect="allow")) is not None
    assert Glob(["fhir.r4.*"]).match("fhir.r4.Patient")
    assert not Glob(["fhir.r4.*"]).match("fhir.r4.Patient\n")


def test_policy_lint_mailboxes() -> None:
    from psvn.policies.lint import _MAILBOX

    assert _MAILBOX.fullmatch("adult-social-care") and not _MAILBOX.fullmatch("adult-social-care\n")


def test_consent_subjects() -> None:
    from psvn.policies.consent import ConsentChange, ConsentRegistry

    registry = ConsentRegistry()
    change = ConsentChange(subject="nhs:9434765919", seq=1, opt_outs=["research"], effective="2026-01-01T00:00:00Z")
    assert registry.apply(change)
    with pytest.raises(PsvnError) as err:
        registry.apply(ConsentChange(subject="nhs:9434765919\n", seq=2, opt_outs=[],
                                     effective="2026-01-01T00:00:00Z"))
    assert err.value.rule == "subject-format"


# Patterns that parse text (error messages, TOML lines), not identifiers: anchors there are fine.
NOT_IDENTIFIERS = {("psvn/core/config.py", "_AT"), ("policies/lint.py", "_TABLE"), ("policies/lint.py", "_HEADER")}


def test_no_identifier_pattern_in_the_tree_relies_on_dollar() -> None:
    """A guard for the next pattern someone writes: a compiled pattern ending in ``$`` and used
    with ``.match`` is exactly the bug; use ``fullmatch`` (and no anchors) or ``\\Z``."""
    offenders = []
    for folder in ("psvn", "gateway", "broker", "certs", "policies", "clients/python"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                        and getattr(node.value.func, "attr", None) == "compile" and node.value.args \
                        and isinstance(node.value.args[0], ast.Constant) \
                        and isinstance(node.value.args[0].value, str):
                    name = getattr(node.targets[0], "id", "?")
                    if node.value.args[0].value.endswith("$") and (rel, name) not in NOT_IDENTIFIERS:
                        offenders.append(f"{rel}:{node.lineno} {name}")
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                        and isinstance(node.value.value, str) and re.fullmatch(r"\^.*\$", node.value.value) \
                        and rel != "policies/consent.py":  # JSON Schema patterns (ECMA: $ is end of text)
                    offenders.append(f"{rel}:{node.lineno} {getattr(node.targets[0], 'id', '?')}")
    assert offenders == []
