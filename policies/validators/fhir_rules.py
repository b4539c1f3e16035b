"""Rules of the FHIR walk shared by its three paths (the reporting walk, the compiled fast path
and the typed path), beyond what the definitions' regexes and cardinalities say."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")

#: An Identifier whose system says its value is itself a URI.
URI_SYSTEM = "urn:ietf:rfc:3986"
_UUID = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
_TAG = re.compile(r"<[^>]*>")


def uri_problem(tcode: str, val: str) -> tuple[str, str] | None:
    """A uri/url/canonical beyond its regex: a urn:uuid or urn:oid must be well formed (lower-case
    UUID, dotted OID), and a canonical is absolute unless it is a '#' fragment."""
    if val.startswith("urn:uuid:") and not _UUID.fullmatch(val):
        return "is not a valid urn:uuid (a lower-case UUID)", "urn:uuid: and a lower-case UUID"
    if val.startswith("urn:oid:") and not _OID.fullmatch(val):
        return "is not a valid urn:oid", "urn:oid: and a dotted OID"
    if tcode == "canonical" and val[0] != "#" and not _ABSOLUTE.match(val):
        return "is not an absolute URL (a canonical is absolute unless a '#' fragment)", "an absolute canonical URL"
    return None


def narrative_has_content(div: str) -> bool:
    """txt-2: a narrative has some non-whitespace text, or an image."""
    return "<img" in div or bool(_TAG.sub("", div).strip())


def attachment_size_problem(att: dict[str, Any]) -> str | None:
    """An Attachment with both data and size: the size is the decoded data's."""
    data, size = att.get("data"), att.get("size")
    if not (isinstance(data, str) and type(size) is int):
        return None
    try:
        actual = len(base64.b64decode("".join(data.split()), validate=False))
    except (binascii.Error, ValueError):
        return None  # not base64: the format check reports it
    return None if actual == size else f"Attachment.size is {size} but the data is {actual} bytes"




def uri_extra(tcode: str) -> Callable[[str], bool]:
    """For the fast paths: true when :func:`uri_problem` finds nothing (a value not starting with '#')."""
    if tcode == "canonical":
        return lambda v: _ABSOLUTE.match(v) is not None and (v[:4] != "urn:" or uri_problem(tcode, v) is None)
    return lambda v: v[:4] != "urn:" or uri_problem(tcode, v) is None


def extension_url_absolute(url: Any) -> bool:
    return isinstance(url, str) and _ABSOLUTE.match(url) is not None


#: Elements whose uri must be absolute (a code system is named by its canonical URL, never by a
#: relative or local reference), as the reference validator holds.
ABSOLUTE_ELEMENTS = frozenset({"Coding.system", "ValueSet.compose.include.system",
                               "ValueSet.compose.exclude.system"})


def absolute(v: Any) -> bool:
    return isinstance(v, str) and _ABSOLUTE.match(v) is not None
