"""Cheap size and complexity limits, checked before any full parse (JSON, HL7 v2 ER7, XML).

A hostile payload (a megabyte of ``[[[[``, a million tiny array items, a million HL7 segments)
must cost the gateway a few linear C-speed passes over the bytes, not a parse tree. The JSON
check never builds objects: it removes escaped quotes, keeps only structural bytes, drops what
lies inside strings and counts; depth is measured by peeling innermost bracket pairs, and only
when the bracket count could exceed the limit at all.
"""

from __future__ import annotations

import re

import msgspec

from psvn.core.errors import Violation


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_bytes: int = 1_048_576
    max_depth: int = 64
    max_elements: int = 50_000  # JSON values, or HL7 v2 fields


_KEEP = b'"[]{},'
_DELETE = bytes(b for b in range(256) if b not in _KEEP)
_INNERMOST = re.compile(rb"\[\]|\{\}")
#: every byte but the openers: ``len(body.translate(None, _NOT_OPENERS))`` counts ``[`` and ``{``
#: in one pass (two ``bytes.count`` calls are two passes, ~20% slower on a 1-2 KiB payload)
_NOT_OPENERS = bytes(b for b in range(256) if b not in b"[{")


def check_size(body: bytes, limits: Limits) -> list[Violation]:
    if len(body) > limits.max_bytes:
        return [Violation(path="", rule="max-bytes", message=f"payload is {len(body)} bytes",
                          expected=f"at most {limits.max_bytes} bytes")]
    return []


def check_json(body: bytes, limits: Limits) -> list[Violation]:
    """Size, element count and nesting depth of a JSON text, without parsing it.

    Malformed text (an unterminated string) passes here and is rejected by the parser.
    """
    n = len(body)
    if n > limits.max_bytes:
        return check_size(body, limits)
    # upper bounds from the raw bytes (strings included): a text with no more bytes than the
    # element limit cannot hold more values, nor one with fewer brackets than the depth limit nest
    # deeper, so the common small payload costs two byte counts
    if n <= limits.max_elements and len(body.translate(None, _NOT_OPENERS)) <= limits.max_depth:
        return []
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = body.translate(None, _DELETE)
    if b'"' in skeleton:
        skeleton = b"".join(skeleton.split(b'"')[0::2])
    containers = skeleton.count(b"[") + skeleton.count(b"{")
    elements = 1 + skeleton.count(b",") + containers
    if elements > limits.max_elements:
        return [Violation(path="", rule="max-elements",
                          message=f"payload has about {elements} JSON values",
                          expected=f"at most {limits.max_elements} values")]
    if containers > limits.max_depth:
        brackets = skeleton.replace(b",", b"")
        for _ in range(limits.max_depth):
            brackets, n = _INNERMOST.subn(b"", brackets)
            if not brackets or n == 0:
                break
        else:
            if brackets:
                return [Violation(path="", rule="max-depth",
                                  message=f"payload nests deeper than {limits.max_depth} levels",
                                  expected=f"at most {limits.max_depth} levels of objects and arrays")]
    return []


def check_er7(body: bytes, limits: Limits) -> list[Violation]:
    """Size and field count of an HL7 v2 ER7 message (segments x fields), before splitting."""
    size = check_size(body, limits)
    if size:
        return size
    fields = body.count(b"|") + body.count(b"~") + body.count(b"\r") + body.count(b"\n")
    if fields > limits.max_elements:
        return [Violation(path="", rule="max-elements", message=f"message has about {fields} fields",
                          expected=f"at most {limits.max_elements} fields and repetitions")]
    return []


def check_xml(body: bytes, limits: Limits) -> list[Violation]:
    """Size, DOCTYPE and element count of an XML text, before parsing it.

    Cheap refusals only: a ``<!DOCTYPE`` or ``<!ENTITY`` anywhere (even inside a comment) is
    refused outright, since DTDs are what entity-expansion and external-entity attacks need and
    FHIR XML never uses them; start tags are counted as ``<`` minus ``</`` (comments and
    processing instructions make it an upper bound). Depth needs the parser: the FHIR XML reader
    enforces it, and the exact element count, while parsing, and refuses a DOCTYPE again there
    (this byte search cannot see one in a UTF-16 document).
    """
    size = check_size(body, limits)
    if size:
        return size
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        return [Violation(path="", rule="xml-dtd",
                          message="the document has a DOCTYPE or entity declaration; DTDs are refused "
                          "(they allow entity-expansion and external-entity attacks, and FHIR XML never uses them)",
                          expected="FHIR XML without <!DOCTYPE>")]
    tags = body.count(b"<") - body.count(b"</")
    if tags > limits.max_elements:
        return [Violation(path="", rule="max-elements", message=f"payload has about {tags} XML elements",
                          expected=f"at most {limits.max_elements} elements")]
    return []
