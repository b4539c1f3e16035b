"""Shared pieces of the payload validators: JSON pointers, UK identifier checks, JSON parsing.

Kept free of any one standard so FHIR, HL7 v2, CloudEvents and JSON Schema validators report
NHS numbers and ODS codes with the same rules and the same words, and name the people a
payload is about (its *data subjects*, for consent checks) in the same form: ``nhs:<number>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from psvn.core.errors import Violation

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
NHS_SUBJECT_PREFIX = "nhs:"  # a data subject named by NHS number, as the envelope's subject names one
NO_SUBJECTS: frozenset[str] = frozenset()
ODS_SYSTEMS = frozenset({
    "https://fhir.nhs.uk/Id/ods-organization-code",
    "https://fhir.nhs.uk/Id/ods-site-code",
})
ODS_PATTERN = r"[A-Z0-9]{3,10}"  # the format of an ODS code (also compiled into the FHIR typed path)
_ODS = re.compile(ODS_PATTERN, re.ASCII)
_DIGITS10 = re.compile(r"[0-9]{10}", re.ASCII)
_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def escape(token: object) -> str:
    """One JSON pointer reference token (RFC 6901)."""
    s = str(token)
    return s.replace("~", "~0").replace("/", "~1") if ("~" in s or "/" in s) else s


def pointer(loc: tuple[Any, ...] | list[Any]) -> str:
    return "".join("/" + escape(p) for p in loc)


def nhs_number_problem(value: object) -> tuple[str, str] | None:
    """``None`` if ``value`` is a valid NHS number, else (rule, message).

    Format: 10 digits, no spaces; the 10th digit is the modulus-11 check digit over the first
    nine (weights 10..2; 11 -> 0; 10 -> never valid).
    """
    if not (isinstance(value, str) and len(value) == 10 and value.isascii() and value.isdigit()):
        return "uk-nhs-number-format", f"NHS number {value!r} is not 10 digits"
    d = value.encode("ascii")  # ten ASCII digits (checked above); weights 10..2 over the first nine
    total = 10 * d[0] + 9 * d[1] + 8 * d[2] + 7 * d[3] + 6 * d[4] + 5 * d[5] + 4 * d[6] + 3 * d[7] + 2 * d[8] \
        - 54 * 48
    check = 11 - total % 11
    if check == 11:
        check = 0
    if check == 10 or check != int(value[9]):
        return ("uk-nhs-number-check-digit",
                f"NHS number {value} fails the modulus-11 check digit"
                + (" (no valid check digit exists for these nine digits)" if check == 10
                   else f" (check digit should be {check})"))
    return None


def is_nhs_number(value: object) -> bool:
    return nhs_number_problem(value) is None


def _nhs_chunk(weights: tuple[int, ...]) -> dict[str, int]:
    """Each chunk of ASCII digits of ``len(weights)`` -> its weighted sum (a digit's weight, 10..2
    by position; the check digit 1), for :func:`nhs_number_ok`: only digits are keys."""
    out: dict[str, int] = {}
    for x in range(10 ** len(weights)):
        digits = f"{x:0{len(weights)}d}"
        out[digits] = sum(w * int(ch) for w, ch in zip(weights, digits, strict=True))
    return out


#: digits 1-3, 4-6 and 7-9 (weights 10..2) and the check digit (weight 1) of an NHS number
_NHS_A, _NHS_B, _NHS_C, _NHS_D = _nhs_chunk((10, 9, 8)), _nhs_chunk((7, 6, 5)), _nhs_chunk((4, 3, 2)), _nhs_chunk((1,))


def nhs_number_ok(value: object) -> bool:
    """:func:`nhs_number_problem` is ``None``, without building its message: the FHIR typed path
    runs it on every NHS-number Identifier of every valid payload (held to it by a test).

    Three-digit chunks looked up by their text (no encode, no ten products): the tables hold
    digits only, so anything else raises KeyError. The check digit is ``(-sum) % 11`` (11 -> 0;
    10 is never a digit, so never valid), i.e. the weighted sum plus the check digit is 0 mod 11.
    """
    if type(value) is not str or len(value) != 10:
        return False
    try:
        return (_NHS_A[value[:3]] + _NHS_B[value[3:6]] + _NHS_C[value[6:9]] + _NHS_D[value[9]]) % 11 == 0
    except KeyError:
        return False


def nhs_subject(number: str) -> str:
    """The subject reference of a (valid) NHS number: ``9434765919`` -> ``nhs:9434765919``."""
    return NHS_SUBJECT_PREFIX + number


def ods_code_problem(value: object) -> str | None:
    """``None`` if ``value`` looks like an ODS code (3-10 upper-case letters/digits)."""
    if isinstance(value, str) and _ODS.fullmatch(value):
        return None
    return f"ODS code {value!r} is not 3-10 upper-case letters and digits"


NHS_EXPECTED = "10 digits with a valid modulus-11 check digit, e.g. 9434765919"
ODS_EXPECTED = "an ODS code: 3-10 upper-case letters and digits, e.g. RYR or G81001"


def parse_json(body: bytes) -> tuple[Any, list[Violation]]:
    try:
        return msgspec.json.decode(body), []
    except msgspec.DecodeError as exc:
        return None, [Violation(path="", rule="json-syntax", message=f"not valid JSON: {exc}",
                                expected="a UTF-8 JSON document")]
    except UnicodeDecodeError as exc:
        return None, [Violation(path="", rule="json-syntax", message=f"not UTF-8 at byte {exc.start}",
                                expected="a UTF-8 JSON document")]
    except RecursionError:
        return None, [Violation(path="", rule="max-depth", message="JSON nesting too deep to parse")]


def describe_codes(codes: Iterable[str], limit: int = 12) -> str:
    ordered = sorted(codes)
    text = ", ".join(ordered[:limit])
    return f"one of: {text}" + (f", ... ({len(ordered)} codes)" if len(ordered) > limit else "")
