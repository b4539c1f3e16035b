"""HL7 v2 (ER7, pipe-delimited) structural validation from hl7apy's HL7 reference structures.

hl7apy carries the HL7 v2.1-2.8 message structures, segment definitions and tables; psvn
compiles what it needs from them once per (version, structure) and checks the message with a
small splitter of its own. Why not hl7apy's parser on the hot path: it parses an ADT^A01 at
~60 messages/s on this class of machine, drops unknown segments silently and stops at the
first error; the compiled check runs at thousands per second and reports every problem.

Checks: MSH first with sane encoding characters, segment syntax, segment order and
cardinality against the message structure (groups included; Z-segments allowed anywhere),
required fields, repetitions, unknown fields, date/time/number formats, HL7-defined (ID) table
values, MSH-9 against the catalogue type (and MSH-9.3 against the structure the trigger uses),
MSH-12 against the accepted versions, and the NHS number in PID-3 (format + modulus 11).
Paths are ``SEG-n`` (``PID-3``, ``MSH-9``), ``SEG-n.c`` for a component, or the segment id.
:meth:`Hl7v2Validator.check` also names the message's data subjects (each valid PID-3 NHS
number, every PID segment, as ``nhs:<number>``) for the consent check, from the same parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from psvn.core.errors import Violation

from .common import NHS_EXPECTED, NO_SUBJECTS, nhs_number_problem, nhs_subject

SUPPORTED = ("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.1", "2.8.2")

# HL7 table 0354: the message structure each ADT trigger event uses.
_STRUCTURE = {"A01": "ADT_A01", "A02": "ADT_A02", "A03": "ADT_A03", "A04": "ADT_A01", "A05": "ADT_A05",
              "A06": "ADT_A06", "A07": "ADT_A06", "A08": "ADT_A01"}
_OLD_STRUCTURE = {"A05": "ADT_A01"}  # before v2.4, A05 used the A01 structure

_SEG_ID = re.compile(r"[A-Z][A-Z0-9]{2}", re.ASCII)
_FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    "DT": (re.compile(r"[0-9]{4}(?:[0-9]{2}(?:[0-9]{2})?)?", re.ASCII), "a date YYYY[MM[DD]]"),
    "DTM": (re.compile(r"[0-9]{4}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,4})?)?)?)?)?)?"
                       r"(?:[+-][0-9]{4})?", re.ASCII), "a timestamp YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]"),
    "NM": (re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII), "a number"),
    "SI": (re.compile(r"[0-9]{1,4}", re.ASCII), "a sequence id (positive integer)"),
}
_FORMATS["TS"] = _FORMATS["DTM"]
NHS_AUTHORITIES = frozenset({"NHS", "NHSNBR", "NHSNMBR", "2.16.840.1.113883.2.1.4.1"})


@dataclass(frozen=True, slots=True)
class _Comp:
    datatype: str
    table: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class _Field:
    number: int
    name: str  # long name, e.g. PATIENT_IDENTIFIER_LIST
    min: int
    max: int  # -1 = unbounded
    datatype: str
    table: tuple[str, ...] | None  # only for HL7-defined (ID) tables
    components: tuple[_Comp, ...]
    checked: tuple[tuple[int, str], ...] = ()  # (component number, datatype) with a format to check


_Item = tuple[str, int, int, "tuple[Any, ...] | None"]  # name, min, max, children (group)


def _table(version: str, datatype: str, table: str | None) -> tuple[str, ...] | None:
    if datatype != "ID" or not table:
        return None
    from hl7apy import load_reference
    from hl7apy.exceptions import ChildNotFound

    try:
        ref = load_reference(table, "Table", version)
    except (ChildNotFound, KeyError):
        return None
    codes = tuple(str(c) for c in ref[1]) if isinstance(ref, tuple) and len(ref) > 1 else ()
    return codes or None


@lru_cache(maxsize=512)
def _segment(version: str, seg: str) -> tuple[_Field, ...] | None:
    from hl7apy import load_library

    lib = load_library(version)
    if seg not in lib.SEGMENTS:
        return None
    from hl7apy import load_reference

    fields = []
    for i, (_name, ref, (mn, mx), _cls) in enumerate(load_reference(seg, "Segment", version)[1], start=1):
        kind, children, datatype, longname, table = ref[0], ref[1], ref[2], ref[3], ref[4]
        comps: tuple[_Comp, ...] = ()
        if kind == "sequence" and children:
            # component tables are often site- or coding-system-specific: formats only
            comps = tuple(_Comp(c[1][2], None) for c in children)
        checked = tuple((c, comp.datatype) for c, comp in enumerate(comps, start=1) if comp.datatype in _FORMATS)
        fields.append(_Field(i, str(longname), int(mn), int(mx), str(datatype),
                             _table(version, str(datatype), table) if kind == "leaf" else None, comps, checked))
    return tuple(fields)


@lru_cache(maxsize=512)
def _required(version: str, seg: str) -> tuple[_Field, ...]:
    return tuple(f for f in _segment(version, seg) or () if f.min > 0)


@lru_cache(maxsize=64)
def _structure(version: str, structure: str) -> tuple[_Item, ...] | None:
    from hl7apy import load_library

    lib = load_library(version)
    ref = lib.MESSAGES.get(structure)
    if ref is None:
        return None

    def conv(children: Any) -> tuple[_Item, ...]:
        items = []
        for name, sub, (mn, mx), cls in children:
            items.append((name, int(mn), int(mx), conv(sub[1]) if cls == "GRP" else None))
        return tuple(items)

    return conv(ref[1])


@lru_cache(maxsize=64)
def _segments_known(version: str) -> frozenset[str]:
    from hl7apy import load_library

    return frozenset(load_library(version).SEGMENTS)


@lru_cache(maxsize=1024)
def _first_set(items: tuple[_Item, ...]) -> frozenset[str]:
    out: set[str] = set()
    for name, mn, _mx, children in items:
        out |= _first_set(children) if children is not None else {name}
        if mn > 0:
            break
    return frozenset(out)


def _first_required(items: tuple[_Item, ...]) -> str:
    for name, mn, _mx, children in items:
        if mn > 0:
            return _first_required(children) if children is not None else name
    return items[0][0] if items else "?"


@dataclass(slots=True)
class _Seg:
    index: int  # 1-based position in the message
    name: str
    fields: list[str]  # fields[n] = SEG-n (fields[0] = the id)


class Hl7v2Validator:
    """Validates one ER7 message of the catalogue's declared type (e.g. ``ADT^A01``)."""

    def __init__(self, message_type: str, *, versions: list[str] | None = None,
                 require_nhs_number: bool = False) -> None:
        code, _, trigger = message_type.partition("^")
        if not code or not trigger:
            raise KeyError(f"HL7 v2 message type {message_type!r} is not CODE^TRIGGER, e.g. ADT^A01")
        self.code, self.trigger = code, trigger
        self.message_type = message_type
        self.versions = tuple(versions or SUPPORTED)
        bad = [v for v in self.versions if v not in SUPPORTED]
        if bad:
            raise KeyError(f"HL7 v2 versions {bad} are not supported (supported: {', '.join(SUPPORTED)})")
        self.require_nhs_number = require_nhs_number

    def expected_structure(self, version: str) -> str:
        if version in ("2.1", "2.2", "2.3", "2.3.1") and self.trigger in _OLD_STRUCTURE:
            return _OLD_STRUCTURE[self.trigger]
        return _STRUCTURE.get(self.trigger, f"{self.code}_{self.trigger}")

    def validate(self, body: bytes) -> list[Violation]:
        return self.check(body)[0]

    def check(self, body: bytes) -> tuple[list[Violation], frozenset[str]]:
        """(every violation, the data subjects: ``nhs:<number>`` of each valid NHS number in any
        PID segment's PID-3), from one parse; the subjects mean something only without violations."""
        found: set[str] = set()
        violations = self._check(body, found)
        return violations, frozenset(found) if found else NO_SUBJECTS

    def _check(self, body: bytes, found: set[str]) -> list[Violation]:
        out: list[Violation] = []
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return [Violation(path="", rule="hl7v2-encoding", message=f"not UTF-8 at byte {exc.start}",
                              expected="an ER7 message in UTF-8")]
        text = text.strip("\x0b\x1c\r\n\ufeff ")
        if not text.startswith("MSH"):
            return [Violation(path="MSH", rule="hl7v2-msh-first", message="an HL7 v2 message starts with "
                              "an MSH segment", expected="MSH|^~\\&|...")]
        if len(text) < 8 or text[3].isalnum() or text[3] in "\r\n":
            return [Violation(path="MSH-1", rule="hl7v2-encoding-characters",
                              message="MSH-1 (field separator) is missing or alphanumeric", expected="|")]
        fs = text[3]
        enc = text[4:].split(fs, 1)[0]
        if len(enc) < 3 or len(set(enc)) != len(enc) or any(c.isalnum() or c.isspace() or c == fs for c in enc):
            return [Violation(path="MSH-2", rule="hl7v2-encoding-characters",
                              message=f"MSH-2 encoding characters {enc!r} are not 3-4 distinct separators",
                              expected="^~\\&")]
        comp, rep = enc[0], enc[1]
        sub = enc[3] if len(enc) > 3 else None
        lines = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
        segs: list[_Seg] = []
        for i, line in enumerate(lines, start=1):
            name = line[:3]
            if not _SEG_ID.fullmatch(name) or (len(line) > 3 and line[3] != fs):
                out.append(Violation(path=f"#{i}", rule="hl7v2-segment-syntax",
                                     message=f"segment {i} {line[:20]!r} does not start with a segment id "
                                     f"and {fs!r}", expected=f"SEG{fs}field{fs}field..., SEG three upper-case "
                                     "letters or digits"))
                continue
            parts = line.split(fs)
            fields = ["MSH", fs, *parts[1:]] if i == 1 else parts
            segs.append(_Seg(i, name, fields))
        msh = segs[0].fields

        def field(f: list[str], n: int) -> str:
            return f[n] if n < len(f) else ""

        # MSH-12 version, MSH-9 type
        version = field(msh, 12).split(comp)[0]
        if version not in self.versions:
            out.append(Violation(path="MSH-12", rule="hl7v2-version",
                                 message=f"HL7 version {version!r} is not accepted for this message type",
                                 expected="one of " + ", ".join(self.versions)))
            return out
        msg_type = field(msh, 9).split(comp)
        declared = "^".join(msg_type[:2])
        if declared != self.message_type:
            out.append(Violation(path="MSH-9", rule="hl7v2-message-type",
                                 message=f"MSH-9 declares {declared or 'nothing'!s} but the catalogue type "
                                 f"carries {self.message_type}", expected=self.message_type))
            return out
        structure = self.expected_structure(version)
        if len(msg_type) > 2 and msg_type[2] and msg_type[2] != structure:
            out.append(Violation(path="MSH-9.3", rule="hl7v2-message-structure",
                                 message=f"MSH-9.3 names structure {msg_type[2]!r}; {self.message_type} in "
                                 f"v{version} uses {structure}", expected=structure))
        items = _structure(version, structure)
        if items is None:
            out.append(Violation(path="MSH-9", rule="hl7v2-message-type",
                                 message=f"no {structure} structure in HL7 v{version}", expected=structure))
            return out
        self._order(items, segs, version, structure, out)
        known = _segments_known(version)
        for seg in segs:
            if seg.name in known:
                self._fields(seg, version, comp, rep, sub, out)
        self._nhs_number(segs, comp, rep, sub, out, found)
        return out

    # -- segment order ---------------------------------------------------------------------------
    def _order(self, items: tuple[_Item, ...], segs: list[_Seg], version: str, structure: str,
               out: list[Violation]) -> None:
        known = _segments_known(version)
        body = []
        for s in segs:
            if s.name.startswith("Z"):
                continue
            if s.name not in known:
                out.append(Violation(path=s.name, rule="hl7v2-segment-unknown",
                                     message=f"segment {s.index} {s.name} is not an HL7 v{version} segment",
                                     expected=f"a segment of {structure}, or a Z-segment"))
                continue
            body.append(s)

        def match(items: tuple[_Item, ...], i: int, within: str) -> int:
            for name, mn, mx, children in items:
                count = 0
                first = _first_set(children) if children is not None else None
                while (mx == -1 or count < mx) and i < len(body):
                    if children is None:
                        if body[i].name != name:
                            break
                        i += 1
                    else:
                        if first is None or body[i].name not in first:
                            break
                        j = match(children, i, name)
                        if j == i:
                            break
                        i = j
                    count += 1
                if count < mn:
                    seg = name if children is None else _first_required(children)
                    where = f" after {body[i - 1].name} (segment {body[i - 1].index})" if i > 0 else ""
                    out.append(Violation(path=seg, rule="hl7v2-segment-required",
                                         message=f"{structure} requires {seg}{where}"
                                         + (f" in group {name}" if children is not None else ""),
                                         expected=f"{seg} segment"))
            return i

        i = match(items, 0, structure)
        order = " ".join(_flat(items)) if i < len(body) else ""
        for seg in body[i:]:
            out.append(Violation(path=seg.name, rule="hl7v2-segment-order",
                                 message=f"segment {seg.index} {seg.name} is out of order or not allowed "
                                 f"here in {structure}", expected=f"segment order {order}"))

    # -- fields ------------------------------------------------------------------------------------
    def _fields(self, seg: _Seg, version: str, comp: str, rep: str, sub: str | None,
                out: list[Violation]) -> None:
        defs = _segment(version, seg.name)
        if defs is None:
            return
        values = seg.fields
        for fd in _required(version, seg.name):
            n = fd.number
            if (n >= len(values) or not values[n]) and not (seg.name == "MSH" and n <= 2):
                path = f"{seg.name}-{n}"
                out.append(Violation(path=path, rule="hl7v2-field-required",
                                     message=f"{path} ({_words(fd.name)}) is required in segment {seg.index}",
                                     expected=f"a {fd.datatype} value"))
        start = 3 if seg.name == "MSH" else 1
        for n in range(start, min(len(values), len(defs) + 1)):
            raw = values[n]
            if not raw or raw == '""':  # empty, or an explicit null
                continue
            fd = defs[n - 1]
            path = f"{seg.name}-{n}"
            reps = raw.split(rep) if rep in raw else [raw]
            if fd.max != -1 and len(reps) > fd.max:
                out.append(Violation(path=path, rule="hl7v2-field-repetition",
                                     message=f"{path} repeats {len(reps)} times", expected=f"at most {fd.max}"))
            if fd.checked or fd.table is not None or fd.datatype in _FORMATS or len(fd.components) > 0:
                for r in reps:
                    self._value(path, fd, r, comp, sub, out)
        if len(values) - 1 > len(defs) and any(values[len(defs) + 1:]):
            out.append(Violation(path=f"{seg.name}-{len(defs) + 1}", rule="hl7v2-field-unknown",
                                 message=f"{seg.name} in v{version} has {len(defs)} fields; segment {seg.index} "
                                 f"has {len(values) - 1}", expected=f"at most {len(defs)} fields"))

    def _value(self, path: str, fd: _Field, value: str, comp: str, sub: str | None,
               out: list[Violation]) -> None:
        if not fd.components:
            self._check_leaf(path, fd.datatype, fd.table, value.split(comp, 1)[0], out)
            return
        if comp not in value:
            parts = [value]
        else:
            parts = value.split(comp)
            if len(parts) > len(fd.components) and any(parts[len(fd.components):]):
                out.append(Violation(path=f"{path}.{len(fd.components) + 1}", rule="hl7v2-component-unknown",
                                     message=f"{path} ({fd.datatype}) has {len(fd.components)} components, "
                                     f"got {len(parts)}", expected=f"at most {len(fd.components)} components"))
        if fd.datatype in ("TS", "DTM") and not (fd.checked and fd.checked[0][0] == 1):
            self._check_leaf(f"{path}.1", "DTM", None, parts[0], out)
        for c, datatype in fd.checked:
            if c <= len(parts) and parts[c - 1]:
                part = parts[c - 1]
                leaf = part.split(sub, 1)[0] if sub and sub in part else part
                self._check_leaf(f"{path}.{c}", datatype, None, leaf, out)

    @staticmethod
    def _check_leaf(path: str, datatype: str, table: tuple[str, ...] | None, value: str,
                    out: list[Violation]) -> None:
        if not value or value == '""':
            return
        fmt = _FORMATS.get(datatype)
        if fmt is not None and not fmt[0].fullmatch(value):
            out.append(Violation(path=path, rule="hl7v2-datatype", message=f"{path} value {value[:40]!r} is "
                                 f"not a valid {datatype}", expected=fmt[1]))
        elif table is not None and value not in table:
            out.append(Violation(path=path, rule="hl7v2-table", message=f"{path} value {value[:40]!r} is not in "
                                 "its HL7 table", expected="one of " + ", ".join(table[:20])))

    # -- NHS number --------------------------------------------------------------------------------
    def _nhs_number(self, segs: list[_Seg], comp: str, rep: str, sub: str | None,
                    out: list[Violation], subjects: set[str]) -> None:
        found = False
        for seg in segs:
            if seg.name != "PID" or len(seg.fields) < 4:
                continue
            for r_no, r in enumerate(seg.fields[3].split(rep), start=1):
                parts = r.split(comp)
                authority = parts[3].split(sub)[0] if len(parts) > 3 and sub else (parts[3] if len(parts) > 3 else "")
                id_type = parts[4] if len(parts) > 4 else ""
                if id_type != "NH" and authority.upper() not in NHS_AUTHORITIES:
                    continue
                found = True
                problem = nhs_number_problem(parts[0])
                if problem is not None:
                    out.append(Violation(path="PID-3", rule=problem[0],
                                         message=f"PID-3 repetition {r_no}: {problem[1]}", expected=NHS_EXPECTED))
                else:  # the patient this event is about: their opt-outs apply to it
                    subjects.add(nhs_subject(parts[0]))
        if self.require_nhs_number and not found and any(s.name == "PID" for s in segs):
            out.append(Violation(path="PID-3", rule="uk-required-identifier",
                                 message="PID-3 carries no NHS number (identifier type NH or authority NHS)",
                                 expected="a PID-3 repetition like 9434765919^^^NHS^NH"))


def _flat(items: tuple[_Item, ...]) -> list[str]:
    names: list[str] = []
    for name, _mn, _mx, children in items:
        if children is None:
            names.append(name)
        else:
            names.append("[" + " ".join(_flat(children)) + "]")
    return names


def _words(name: str) -> str:
    return name.replace("_", " ").lower()
