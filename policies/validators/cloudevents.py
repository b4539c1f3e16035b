"""CloudEvents 1.0 structured JSON mode, with ``data`` validated by the schema its type names.

The catalogue entry maps each accepted CloudEvents ``type`` to a schema in the policy set
(``events = {"uk.psvn.air-quality.reading.v1" = "air-quality-reading"}``); an event of a type
not in the map is rejected unless the entry sets ``open_events`` (then only the envelope is
checked). If the event names a ``dataschema``, it must be the mapped schema's ``$id``.
Where an event's schema marks an NHS number (see :mod:`.jsonschema`), :meth:`CloudEventValidator.check`
names it as a data subject.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from psvn.core.errors import Violation

from .common import NO_SUBJECTS, describe_codes, escape
from .jsonschema import SubjectFinder, schema_violations

_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
                   r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})", re.ASCII)
_ABS_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+", re.ASCII)
_NO_SPACE = re.compile(r"\S+", re.ASCII)
_EXT_NAME = re.compile(r"[a-z0-9]{1,20}", re.ASCII)
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+\-]+/[A-Za-z0-9!#$&^_.+\-]+(?:\s*;.*)?", re.ASCII)
REQUIRED = ("specversion", "id", "source", "type")
OPTIONAL = ("datacontenttype", "dataschema", "subject", "time")


def _is_json_media(ct: str) -> bool:
    base = ct.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json") or base == "text/json"


class CloudEventValidator:
    """Checks the event envelope, then its data against the schema its type names."""

    def __init__(self, events: dict[str, tuple[Any, str | None]], *, open_events: bool = False,
                 finders: dict[str, SubjectFinder] | None = None) -> None:
        self.events = events  # CE type -> (compiled schema, schema $id)
        self.open_events = open_events
        self.finders = {t: f for t, f in (finders or {}).items() if f.finds_any}  # CE type -> its data's NHS numbers

    def check(self, data: Any) -> tuple[list[Violation], frozenset[str]]:
        """(every violation, the data subjects its data names where the event's schema marks an
        NHS number); the subjects mean something only when there is no violation."""
        out = self.validate(data)
        if out or not self.finders:
            return out, NO_SUBJECTS
        finder = self.finders.get(data.get("type"))
        return out, finder.subjects(data.get("data")) if finder is not None else NO_SUBJECTS

    def validate(self, data: Any) -> list[Violation]:
        if not isinstance(data, dict):
            return [Violation(path="", rule="cloudevents-structured", message="a structured CloudEvent is a JSON "
                              "object", expected="{specversion, id, source, type, ...}")]
        out: list[Violation] = []
        for attr in REQUIRED:
            val = data.get(attr)
            if val is None:
                out.append(Violation(path=f"/{attr}", rule="cloudevents-required",
                                     message=f"CloudEvents attribute {attr!r} is required",
                                     expected="1.0" if attr == "specversion" else "a non-empty string"))
            elif not isinstance(val, str) or not val:
                out.append(Violation(path=f"/{attr}", rule="cloudevents-type", message=f"{attr} must be a "
                                     "non-empty string", expected="a non-empty string"))
        sv = data.get("specversion")
        if isinstance(sv, str) and sv and sv != "1.0":
            out.append(Violation(path="/specversion", rule="cloudevents-specversion",
                                 message=f"specversion {sv!r} is not supported", expected="1.0"))
        src = data.get("source")
        if isinstance(src, str) and src and not _NO_SPACE.fullmatch(src):
            out.append(Violation(path="/source", rule="cloudevents-format", message="source is not a URI-reference",
                                 expected="a URI-reference, e.g. urn:psvn:sensor:brighton-aq-17"))
        for attr in OPTIONAL:
            val = data.get(attr)
            if val is None:
                continue
            if not isinstance(val, str) or not val:
                out.append(Violation(path=f"/{attr}", rule="cloudevents-type", message=f"{attr} must be a "
                                     "non-empty string", expected="a non-empty string"))
                continue
            if attr == "time" and not _TIME.fullmatch(val):
                out.append(Violation(path="/time", rule="cloudevents-format", message=f"time {val[:40]!r} is not "
                                     "an RFC 3339 timestamp", expected="e.g. 2024-05-13T10:15:00Z"))
            elif attr == "dataschema" and not _ABS_URI.fullmatch(val):
                out.append(Violation(path="/dataschema", rule="cloudevents-format", message="dataschema is not "
                                     "an absolute URI", expected="an absolute URI"))
            elif attr == "datacontenttype" and not _MEDIA_TYPE.fullmatch(val):
                out.append(Violation(path="/datacontenttype", rule="cloudevents-format",
                                     message=f"datacontenttype {val[:40]!r} is not a media type (RFC 2046)",
                                     expected="e.g. application/json"))
        for key, val in data.items():
            if key in REQUIRED or key in OPTIONAL or key in ("data", "data_base64"):
                continue
            if not _EXT_NAME.fullmatch(key):
                out.append(Violation(path=f"/{escape(key)}", rule="cloudevents-extension-name",
                                     message=f"extension attribute name {key[:40]!r} is not lower-case letters "
                                     "and digits (at most 20)", expected="[a-z0-9]{1,20}"))
            elif val is not None and not isinstance(val, (str, int, bool)):
                out.append(Violation(path=f"/{key}", rule="cloudevents-extension-type",
                                     message=f"extension attribute {key!r} must be a string, integer or boolean",
                                     expected="a string, integer or boolean"))
        if "data" in data and "data_base64" in data:
            out.append(Violation(path="/data_base64", rule="cloudevents-data", message="an event carries data or "
                                 "data_base64, not both", expected="only one of data, data_base64"))
        b64 = data.get("data_base64")
        if b64 is not None:
            try:
                if not isinstance(b64, str):
                    raise TypeError
                base64.b64decode(b64, validate=True)
            except (binascii.Error, TypeError, ValueError):
                out.append(Violation(path="/data_base64", rule="cloudevents-format", message="data_base64 is not "
                                     "base64", expected="base64 (RFC 4648)"))
        self._data(data, out)
        return out

    def _data(self, data: dict[str, Any], out: list[Violation]) -> None:
        ce_type = data.get("type")
        if not isinstance(ce_type, str) or not ce_type:
            return
        mapped = self.events.get(ce_type)
        if mapped is None:
            if not self.open_events:
                out.append(Violation(path="/type", rule="cloudevents-event-type",
                                     message=f"event type {ce_type[:80]!r} has no data schema in the catalogue",
                                     expected=describe_codes(list(self.events))))
            return
        compiled, schema_id = mapped
        ds = data.get("dataschema")
        if isinstance(ds, str) and schema_id and ds != schema_id:
            out.append(Violation(path="/dataschema", rule="cloudevents-dataschema",
                                 message=f"dataschema {ds[:80]!r} is not the schema the catalogue names for "
                                 f"{ce_type}", expected=schema_id))
        ct = data.get("datacontenttype")
        if isinstance(ct, str) and not _is_json_media(ct):
            out.append(Violation(path="/datacontenttype", rule="cloudevents-datacontenttype",
                                 message=f"{ce_type} data is JSON; datacontenttype is {ct[:40]!r}",
                                 expected="application/json"))
            return
        if "data" not in data:
            out.append(Violation(path="/data", rule="cloudevents-data", message=f"a {ce_type} event must carry "
                                 "its reading in data (JSON)", expected="a data member valid against the schema"))
            return
        out.extend(schema_violations(compiled, data["data"], prefix="/data"))
