"""The consent registry: last writer wins by sequence, whatever order changes arrive in."""

from __future__ import annotations

import itertools

import jsonschema_rs
import pytest

from psvn.core.errors import Code, PsvnError
from psvn.policies.consent import SCHEMA, ConsentChange, ConsentRecord, ConsentRegistry

SUBJECT = "nhs:9434765919"


def change(seq: int, *opt_outs: str, subject: str = SUBJECT) -> ConsentChange:
    return ConsentChange(subject=subject, seq=seq, opt_outs=list(opt_outs),
                         effective="2025-03-01T09:00:00Z", issuer="pds:mydex")


def test_blocks_only_the_purposes_recorded() -> None:
    reg = ConsentRegistry()
    assert reg.apply(change(1, "research-consented", "aggregate-statistics"))
    rec = reg.blocks(SUBJECT, "research-consented")
    assert isinstance(rec, ConsentRecord) and rec.seq == 1 and rec.issuer == "pds:mydex"
    assert reg.blocks(SUBJECT, "direct-care") is None
    assert reg.blocks("nhs:9000000009", "research-consented") is None


def test_star_opts_out_of_everything() -> None:
    reg = ConsentRegistry()
    reg.apply(change(1, "*"))
    assert reg.blocks(SUBJECT, "direct-care") is not None
    assert reg.blocks(SUBJECT, "anything-at-all") is not None


def test_stale_and_duplicate_changes_are_ignored() -> None:
    reg = ConsentRegistry()
    assert reg.apply(change(5, "direct-care"))
    assert not reg.apply(change(5, "safeguarding"))  # same seq: a duplicate, not a change
    assert not reg.apply(change(3))  # older: ignored
    assert reg.blocks(SUBJECT, "direct-care") is not None
    assert reg.blocks(SUBJECT, "safeguarding") is None
    assert reg.apply(change(6))
    assert reg.blocks(SUBJECT, "direct-care") is None


def test_restore_is_a_tombstone_that_stops_a_late_withdrawal() -> None:
    reg = ConsentRegistry()
    reg.apply(change(2))  # restored (nothing opted out)
    assert len(reg) == 1 and reg.get(SUBJECT) is not None
    assert not reg.apply(change(1, "direct-care"))  # the withdrawal it replaced, arriving late
    assert reg.blocks(SUBJECT, "direct-care") is None


def test_any_delivery_order_converges_to_the_newest_state() -> None:
    changes = [change(1, "direct-care"), change(2, "direct-care", "safeguarding"), change(3),
               change(4, "research-consented"), change(2, "direct-care", "safeguarding")]
    for order in itertools.permutations(changes):
        reg = ConsentRegistry()
        for c in order:
            reg.apply(c)
        rec = reg.get(SUBJECT)
        assert rec is not None and rec.seq == 4 and rec.opt_outs == frozenset({"research-consented"})


def test_bad_changes_are_refused() -> None:
    reg = ConsentRegistry()
    with pytest.raises(PsvnError) as exc:
        reg.apply(change(1, subject="not a subject"))
    assert exc.value.code is Code.INVALID_PAYLOAD and exc.value.field == "/subject"
    with pytest.raises(PsvnError) as exc:
        reg.apply(change(0))
    assert exc.value.field == "/seq"
    assert len(reg) == 0


def test_payload_round_trip_takes_issuer_from_the_envelope() -> None:
    c = ConsentChange.from_payload(
        b'{"subject":"nhs:9434765919","seq":7,"opt_outs":["direct-care"],'
        b'"effective":"2025-03-01T09:00:00Z","note":"via app"}', issuer="pds:mydex")
    assert c.issuer == "pds:mydex" and c.seq == 7 and c.note == "via app"
    again = ConsentChange.from_payload(c.to_payload(), issuer="pds:mydex")
    assert again == c


@pytest.mark.parametrize(("body", "path", "rule"), [
    (b'{"subject":"nhs:1","seq":1,"opt_outs":[],"effective":"2025-03-01T09:00:00Z","issuer":"pds:x"}',
     "", "schema-AdditionalProperties"),
    (b'{"subject":"nhs:1","seq":1,"opt_outs":["direct-care","direct-care"],"effective":"2025-03-01T09:00:00Z"}',
     "/opt_outs", "schema-UniqueItems"),
    (b'{"subject":"nhs:1","seq":1.5,"opt_outs":[],"effective":"2025-03-01T09:00:00Z"}', "/seq", "schema-Type"),
    (b'{"subject":"nhs:1","opt_outs":[],"effective":"2025-03-01T09:00:00Z"}', "", "schema-Required"),
    (b'{"subject":"nhs:1","seq":1,"opt_outs":["Direct Care"],"effective":"2025-03-01T09:00:00Z"}',
     "/opt_outs/0", "schema-Pattern"),
    (b'{"subject":"nhs:1","seq":1,"opt_outs":[],"effective":"yesterday"}', "/effective", "schema-Format"),
    (b'{"subject":', "", "json-syntax"),
])
def test_invalid_payloads_name_the_field_and_rule(body: bytes, path: str, rule: str) -> None:
    with pytest.raises(PsvnError) as exc:
        ConsentChange.from_payload(body)
    assert exc.value.code is Code.INVALID_PAYLOAD
    v = exc.value.violations[0]
    assert (v.path, v.rule.lower()) == (path, rule.lower())


def test_schema_is_valid_2020_12_and_accepts_the_documented_example() -> None:
    validator = jsonschema_rs.validator_for(SCHEMA, validate_formats=True)
    assert validator.is_valid({"subject": SUBJECT, "seq": 1, "opt_outs": ["*"],
                               "effective": "2025-03-01T09:00:00Z"})


def test_snapshot_round_trip_keeps_tombstones() -> None:
    reg = ConsentRegistry()
    reg.apply(change(3, "direct-care"))
    reg.apply(change(9, subject="nhs:9000000009"))
    again = ConsentRegistry.from_snapshot(reg.snapshot())
    assert {r.subject: r.seq for r in again} == {SUBJECT: 3, "nhs:9000000009": 9}
    assert again.blocks(SUBJECT, "direct-care") is not None
    assert not again.apply(change(8, "direct-care", subject="nhs:9000000009"))


def test_catalogue_schema_file_is_this_schema() -> None:
    """The catalogue's schemas/consent-change.json must not drift from the registry's SCHEMA."""
    from psvn.policies.bundle import load_dir

    assert load_dir()["schemas"]["consent-change"] == SCHEMA
