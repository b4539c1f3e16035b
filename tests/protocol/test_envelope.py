"""psvn/protocol/envelope.py and psvn/core/addresses.py: envelope rules name the field and the rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from psvn.core import addresses
from psvn.core.errors import Code, PsvnError
from psvn.protocol.envelope import SendRequest, build, check_request, is_expired, payload_bytes


def req(**over: object) -> SendRequest:
    base: dict[str, object] = {"to": "ods:RYR", "type": "fhir.r4.ServiceRequest", "payload": {},
                               "purpose": "direct-care"}
    base.update(over)
    return SendRequest(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("address,org,mailbox", [
    ("ods:RYR", "ods:RYR", None),
    ("gss:E06000043/adult-social-care", "gss:E06000043", "adult-social-care"),
    ("ccn:1123456", "ccn:1123456", None),
    ("ch:01234567", "ch:01234567", None),
    ("oda:brighton", "oda:brighton", None),
])
def test_addresses_parse(address: str, org: str, mailbox: str | None) -> None:
    assert addresses.parse(address) == (org, mailbox)


@pytest.mark.parametrize("bad", ["RYR", "xyz:RYR", "ods:", "ods:RYR/", "ods:RYR/Bad Box", "ods:R.Y", ""])
def test_bad_addresses_name_the_field(bad: str) -> None:
    with pytest.raises(PsvnError) as err:
        addresses.parse(bad, field="to")
    assert err.value.code is Code.INVALID_ENVELOPE and err.value.field == "to"
    assert err.value.rule == "address-format"


def test_token_round_trip() -> None:
    assert addresses.token("gss:E06000043") == "gss_E06000043"
    assert addresses.from_token("gss_E06000043") == "gss:E06000043"
    assert addresses.parse_system_uri("urn:psvn:system:ods:RYR/pas") == ("ods:RYR", "pas")
    assert addresses.parse_system_uri("urn:psvn:org:ods:RYR") is None


@pytest.mark.parametrize("over,field,rule", [
    ({"type": "ServiceRequest"}, "type", "type-format"),
    ({"purpose": "Direct Care"}, "purpose", "purpose-format"),
    ({"subject": "9434765919"}, "subject", "subject-format"),
    ({"correlation_id": "has space"}, "correlation_id", "id-format"),
    ({"ttl_seconds": 0}, "ttl_seconds", "ttl-range"),
    ({"to": "nobody"}, "to", "address-format"),
])
def test_request_rules(over: dict[str, object], field: str, rule: str) -> None:
    with pytest.raises(PsvnError) as err:
        check_request(req(**over))
    assert (err.value.field, err.value.rule) == (field, rule)


def test_build_stamps_and_expires() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    env = build(req(ttl_seconds=60, workflow_id="MESH-WF-1"), source="gss:E06000043", source_system="asc",
                policy_version=3, datacontenttype="application/fhir+json", now=now, message_id="m-1")
    assert (env.id, env.source, env.time, env.policy_version) == ("m-1", "gss:E06000043", "2026-11-25T12:00:00.000Z", 3)
    assert env.expires == "2026-11-25T12:01:00.000Z" and env.workflow_id == "MESH-WF-1"
    assert not is_expired(env, now + timedelta(seconds=59))
    assert is_expired(env, now + timedelta(seconds=60))
    assert env.sender_org == "gss:E06000043" and env.recipient_org == "ods:RYR"


def test_payload_bytes() -> None:
    assert payload_bytes({"a": 1}) == b'{"a":1}'
    assert payload_bytes("MSH|^~\\&|") == b"MSH|^~\\&|"


@pytest.mark.parametrize("ns", [0, 1_700_000_000_000_000_000, 1_700_000_000_999_999_999, 1_700_000_001_000_000_000,
                                4_102_444_799_999_000_000, 1_814_400_000_123_456_789])
def test_now_rfc3339_reads_the_clock_as_isoformat_would(monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    """The clock's reading, formatted from the cached text of its second, is exactly what
    ``datetime.isoformat`` gives at millisecond precision, within a second, across a second's
    end (the cache moves on) and back to one formatted earlier."""
    from psvn.protocol import envelope

    for at in (ns, ns + 1, ns + 999_999, ns + 1_000_000_000, ns):
        monkeypatch.setattr(envelope.time, "time_ns", lambda at=at: at)
        exact = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=at // 1_000)
        assert envelope.now_rfc3339() == exact.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    monkeypatch.undo()
    before = datetime.now(UTC)
    before = before.replace(microsecond=before.microsecond // 1000 * 1000)
    stamp = envelope.parse_time(envelope.now_rfc3339())
    assert before <= stamp <= datetime.now(UTC)
    given = datetime(2026, 12, 7, 13, 26, 42, 123_999, tzinfo=UTC)
    assert envelope.now_rfc3339(given) == "2026-12-07T13:26:42.123Z"


@pytest.mark.parametrize("given", [
    datetime(2026, 12, 7, 13, 26, 42, 123_999, tzinfo=UTC),
    datetime(2026, 12, 7, 13, 26, 42, 999_999, tzinfo=UTC),
    datetime(2026, 12, 7, 13, 26, 43, 0, tzinfo=UTC),
    datetime(2026, 12, 8, 13, 26, 42, 0, tzinfo=UTC),   # the same time of day, another day
    datetime(999, 1, 2, 3, 4, 5, 6_000, tzinfo=UTC),    # isoformat pads the year: so must the cache
    datetime(1969, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),
    datetime(2099, 12, 31, 23, 59, 59, 1_000, tzinfo=UTC),
    datetime(2026, 12, 7, 13, 26, 42, 500_000, tzinfo=timezone(timedelta(hours=1))),  # another zone: kept
    datetime(2026, 12, 7, 13, 26, 42, 500_000, tzinfo=timezone(timedelta(0), "GMT")),  # zero offset, not UTC
])
def test_now_rfc3339_formats_a_given_datetime_as_isoformat_would(given: datetime) -> None:
    """A given UTC datetime (a gateway's injected clock, the backbone's timestamp) is formatted
    from its second's cached text, exactly as ``isoformat`` would; the same call twice and in
    turn with another second gives the same text (the cache moves on and back)."""
    from psvn.protocol import envelope

    exact = given.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    other = given + timedelta(seconds=1)
    for _ in range(2):
        assert envelope.now_rfc3339(given) == exact
        assert envelope.now_rfc3339(other) == other.isoformat(timespec="milliseconds").replace("+00:00", "Z")
