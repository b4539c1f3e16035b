"""Member addresses: parsing, refusals naming their field, and the cache of valid ones."""

from __future__ import annotations

import pytest

from psvn.core import addresses
from psvn.core.errors import Code, PsvnError


@pytest.mark.parametrize(("address", "split"), [
    ("ods:RYR", ("ods:RYR", None)),
    ("gss:E06000043/adult-social-care", ("gss:E06000043", "adult-social-care")),
    ("psvn:operator", ("psvn:operator", None)),
])
def test_parse_splits_organisation_and_mailbox(address: str, split: tuple[str, str | None]) -> None:
    for _ in range(2):  # the first from the pattern, the second from the cache: the same
        assert addresses.parse(address) == split
    assert addresses.org_of(address) == split[0]


@pytest.mark.parametrize("bad", ["", "RYR", "xyz:RYR", "ods:", "ods:RYR/", "ods:RYR/Upper", "ods:-RYR",
                                 "ods:" + "A" * 33, "ods:RYR/" + "a" * 64, " ods:RYR", None, 7, b"ods:RYR"])
def test_a_bad_address_is_refused_naming_its_field_every_time(bad: object) -> None:
    for _ in range(2):  # refused again: a refusal is never cached as an answer
        with pytest.raises(PsvnError) as caught:
            addresses.parse(bad, field="items[3].to")  # type: ignore[arg-type]
        assert caught.value.code is Code.INVALID_ENVELOPE
        assert (caught.value.field, caught.value.rule) == ("items[3].to", "address-format")
        assert "items[3].to" in caught.value.detail


def test_only_valid_addresses_are_kept() -> None:
    """What a hostile request sends as an address (any length, any number of them) is never
    held: the cache keeps valid addresses, which are short, and no more than its bound."""
    addresses._split.cache_clear()
    for i in range(500):
        with pytest.raises(PsvnError):
            addresses.parse(f"ods:{'X' * 40}{i}" + "!" * 10_000)
    assert addresses._split.cache_info().currsize == 0
    for i in range(5_000):
        addresses.parse(f"ods:R{i}")
    assert addresses._split.cache_info().currsize == addresses._split.cache_info().maxsize == 4096
