"""Property tests: random mutations of valid messages never crash a validator.

Whatever arrives, the answer is a list of violations (possibly empty), never an exception: the
gateway turns it into a 422 problem, never a 500. The safety net in PayloadValidator would hide
a crash as rule ``validator-error``, so these tests also assert that rule never appears.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psvn.core.errors import Violation
from psvn.policies.bundle import load_dir
from psvn.policies.catalogue import Catalogue
from psvn.policies.validation import PayloadValidator

CORPUS = Path(__file__).parent / "corpus"
CASES = tomllib.loads((CORPUS / "manifest.toml").read_text())["case"]
DOC = load_dir()
V = PayloadValidator(Catalogue.from_document(DOC), DOC["schemas"])
VALID_JSON = [(c["type"], json.loads((CORPUS / c["file"]).read_text())) for c in CASES
              if not c["violations"] and c["file"].endswith(".json")]
VALID_HL7 = [(c["type"], (CORPUS / c["file"]).read_text()) for c in CASES
             if not c["violations"] and c["file"].endswith(".hl7")]
ALL_TYPES = sorted({c["type"] for c in CASES})
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12) | st.sampled_from(["", " ", "9434765919", "urn:uuid:x", "#", "Patient/1", "2024-13-45",
                                              "resourceType", "Bundle", "male", "1.0"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["resourceType", "id", "identifier", "system", "value", "reference", "coding", "code",
                         "extension", "url", "valueString", "_birthDate", "contained", "entry", "resource",
                         "fullUrl", "data", "type", "specversion", "x"]) | st.text(max_size=6),
        children, max_size=4),
    max_leaves=12)


def assert_answer(out: Any) -> None:
    assert isinstance(out, list)
    for v in out:
        assert isinstance(v, Violation) and isinstance(v.path, str) and v.rule and v.message
        assert v.rule != "validator-error", v


def _containers(node: Any, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            found += _containers(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _containers(v, (*path, i))
    return found


def _mutate(doc: Any, data: st.DataObject) -> Any:
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 4))):
        paths = _containers(doc)
        path = data.draw(st.sampled_from(paths))
        if not path:
            if data.draw(st.booleans()):
                doc = data.draw(json_values)
            continue
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        action = data.draw(st.sampled_from(["replace", "delete", "insert", "wrap", "dup"]))
        if action == "replace":
            parent[key] = data.draw(json_values)
        elif action == "delete":
            del parent[key]
        elif action == "insert":
            if isinstance(parent, dict):
                parent[data.draw(st.text(max_size=8))] = data.draw(json_values)
            else:
                parent.insert(key, data.draw(json_values))
        elif action == "wrap":
            parent[key] = [parent[key]]
        else:
            parent[key] = copy.deepcopy(doc) if len(json.dumps(doc)) < 20_000 else None
    return doc


@SETTINGS
@given(st.data())
def test_structural_mutations_of_valid_json_messages_never_crash(data: st.DataObject) -> None:
    type_, doc = data.draw(st.sampled_from(VALID_JSON))
    mutated = _mutate(doc, data)
    assert_answer(V.validate(type_, json.dumps(mutated).encode()))


def mutate_bytes(data: st.DataObject, original: bytes, inserts: list[bytes]) -> bytes:
    """1-6 random byte edits (flip, delete, insert, truncate); ``inserts`` are the format's own
    syntax characters, which reach deeper into a parser than random bytes do. Shared with the XML tests."""
    body = bytearray(original)
    for _ in range(data.draw(st.integers(1, 6))):
        if not body:
            break
        pos = data.draw(st.integers(0, len(body) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if action == "flip":
            body[pos] = data.draw(st.integers(0, 255))
        elif action == "delete":
            del body[pos:pos + data.draw(st.integers(1, 20))]
        elif action == "insert":
            body[pos:pos] = data.draw(st.binary(max_size=8) | st.sampled_from(inserts))
        else:
            del body[pos:]
    return bytes(body)


@SETTINGS
@given(st.data())
def test_byte_mutations_of_any_message_never_crash(data: st.DataObject) -> None:
    case = data.draw(st.sampled_from([c for c in CASES if not c["violations"]]))
    body = mutate_bytes(data, (CORPUS / case["file"]).read_bytes(),
                        [b"{", b"[", b'"', b"\\", b"|", b"^", b"~", b"\r", b"\rPID|", b"\rZZ1|", b"null", b"\xff\xfe"])
    type_ = data.draw(st.sampled_from([case["type"], *ALL_TYPES]))
    assert_answer(V.validate(type_, body))


@SETTINGS
@given(st.data())
def test_segment_and_field_mutations_of_hl7_never_crash(data: st.DataObject) -> None:
    type_, text = data.draw(st.sampled_from(VALID_HL7))
    segs = [s for s in text.replace("\n", "\r").split("\r") if s]
    for _ in range(data.draw(st.integers(1, 5))):
        action = data.draw(st.sampled_from(["drop", "dup", "swap", "field", "seg"]))
        i = data.draw(st.integers(0, len(segs) - 1)) if segs else 0
        if not segs:
            segs = ["MSH|^~\\&|"]
        elif action == "drop":
            segs.pop(i)
        elif action == "dup":
            segs.insert(i, segs[i])
        elif action == "swap":
            j = data.draw(st.integers(0, len(segs) - 1))
            segs[i], segs[j] = segs[j], segs[i]
        elif action == "field":
            fields = segs[i].split("|")
            k = data.draw(st.integers(0, len(fields)))
            fields[k:k + 1] = [data.draw(st.text(alphabet="^~\\&|ADT019NHSPIDMSH \t.", max_size=12))]
            segs[i] = "|".join(fields)
        else:
            segs.insert(i, data.draw(st.sampled_from(["ZPI|1", "OBX|1|ST|x||y", "QQQ|", "PID", "MSH|^~\\&",
                                                      "PV1|1|I", "EVN||", "pid|1", "|||"])))
    sep = data.draw(st.sampled_from(["\r", "\n", "\r\n"]))
    assert_answer(V.validate(type_, sep.join(segs).encode()))
