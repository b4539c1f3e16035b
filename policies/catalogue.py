"""The message catalogue: each message type names its open standard and how it is validated.

Data, not code: entries come from the policy set's ``catalogue.toml``, so a compliance officer can
add a JSON Schema type without a release.
"""

from __future__ import annotations

from typing import Any

import msgspec

from psvn.errors import Code, PsvnError


class CatalogueEntry(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    type: str
    standard: str  # e.g. "FHIR R4", "HL7 v2.4", "CloudEvents 1.0", "JSON Schema 2020-12"
    validator: str  # "fhir-r4" | "hl7v2" | "cloudevents" | "jsonschema" | ...
    description: str
    owner: str
    version: str = ""
    profile: str = ""
    resource: str = ""  # FHIR resourceType, HL7 v2 message type, ...
    schema: str = ""  # name of a schema in the policy set's schemas/ (without .json)
    datacontenttype: str = "application/json"
    retention_days: int = 30
    max_bytes: int = 1_048_576


class Catalogue:
    """Lookup by type, with an error that names the type when it is not in the catalogue."""

    def __init__(self, entries: dict[str, CatalogueEntry]) -> None:
        self.entries = entries

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Catalogue:
        entries: dict[str, CatalogueEntry] = {}
        for name, raw in (doc.get("catalogue") or {}).items():
            try:
                entries[name] = msgspec.convert({"type": name, **raw}, CatalogueEntry)
            except msgspec.ValidationError as exc:
                raise PsvnError(Code.CONFIG_INVALID, f"catalogue.{name}: {exc}", field=f"catalogue.{name}",
                                rule="catalogue-entry") from exc
        return cls(entries)

    def get(self, type_: str, *, message_id: str | None = None) -> CatalogueEntry:
        entry = self.entries.get(type_)
        if entry is None:
            raise PsvnError(Code.UNKNOWN_TYPE,
                            f"type: {type_!r} is not in the network's message catalogue",
                            field="type", rule="catalogue", message_id=message_id)
        return entry

    def __contains__(self, type_: str) -> bool:
        return type_ in self.entries

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.entries.values())
