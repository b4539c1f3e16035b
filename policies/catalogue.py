"""The message catalogue: each message type names its open standard and how it is validated.

Data, not code: entries come from the policy set's ``catalogue.toml``, so a compliance officer can
add a JSON Schema type without a release.
"""

from __future__ import annotations

from typing import Any

import msgspec

from psvn.core.errors import Code, PsvnError
from psvn.policies.validators.fhir_modes import MODE_KEYS, FhirModes

VALIDATORS = ("fhir-r4", "hl7v2", "cloudevents", "jsonschema")


class IdentifierRequirement(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A profile's required identifier: ``resource.element`` must carry ``system``.

    ``element`` is an Identifier list (``Patient.identifier``) or a Reference
    (``ServiceRequest.subject``: its identifier, or the contained/bundled resource it names).
    """

    resource: str
    element: str
    system: str
    label: str = ""


class ProfileInvariant(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A profile's FHIRPath constraint on ``resource`` (evaluated with fhirpathpy), e.g.
    ``{resource = "Observation", key = "ukcore-obs-1", expression = "subject.exists()", human = "..."}``."""

    resource: str
    key: str
    expression: str
    human: str = ""


class CatalogueEntry(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    type: str
    standard: str  # e.g. "FHIR R4", "HL7 v2", "CloudEvents 1.0", "JSON Schema 2020-12"
    validator: str  # one of VALIDATORS
    description: str
    owner: str
    version: str = ""
    profile: str = ""
    resource: str = ""  # FHIR resourceType, HL7 v2 message type (ADT^A01), ...
    schema: str = ""  # name of a schema in the policy set's schemas/ (without .json)
    datacontenttype: str = "application/json"
    retention_days: int = 30
    # limits checked before any parsing (a hostile payload must stay cheap)
    max_bytes: int = 1_048_576
    max_depth: int = 64
    max_elements: int = 50_000
    # FHIR: identifiers each profile requires; Bundle.type values accepted
    identifiers: list[IdentifierRequirement] = msgspec.field(default_factory=list)
    bundle_types: list[str] = msgspec.field(default_factory=list)
    # FHIR: must every urn:uuid / urn:oid reference resolve inside a Bundle of any type (FHIR asks
    # it only of document, message and transaction Bundles)?
    resolve_urn_references: bool = False
    # FHIR profile as data: elements the profile makes mandatory ("Observation.subject",
    # "Observation.effective[x]") and its FHIRPath invariants
    required: list[str] = msgspec.field(default_factory=list)
    invariants: list[ProfileInvariant] = msgspec.field(default_factory=list)
    # FHIR: the validator modes (policies/validators/fhir_modes.py), e.g. reject_html_in_text;
    # None: every mode at the reference validator's default
    modes: FhirModes | None = None
    # FHIR: URL prefixes of extensions allowed without a definition psvn knows (e.g. UK Core's
    # https://fhir.hl7.org.uk/StructureDefinition/); any other extension must be an R4 core one
    extension_domains: list[str] = msgspec.field(default_factory=list)
    # CloudEvents: event type -> schema name for its data; accept unmapped event types?
    events: dict[str, str] = msgspec.field(default_factory=dict)
    open_events: bool = False
    # HL7 v2: accepted MSH-12 versions; must PID-3 carry an NHS number?
    versions: list[str] = msgspec.field(default_factory=list)
    require_nhs_number: bool = False

    def summary(self) -> dict[str, Any]:
        """What ``psvn catalogue list`` and ``GET /v1/catalogue`` show for the type."""
        return {k: v for k, v in msgspec.to_builtins(self).items()
                if v is not False and v not in ("", [], {}, None)}


class Catalogue:
    """Lookup by type, with an error that names the type when it is not in the catalogue."""

    def __init__(self, entries: dict[str, CatalogueEntry]) -> None:
        self.entries = entries

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Catalogue:
        entries: dict[str, CatalogueEntry] = {}
        schemas = doc.get("schemas") or {}
        for name, raw in (doc.get("catalogue") or {}).items():
            _check_modes(name, raw)
            try:
                entry = msgspec.convert({"type": name, **raw}, CatalogueEntry)
            except msgspec.ValidationError as exc:
                raise PsvnError(Code.CONFIG_INVALID, f"catalogue.{name}: {exc}", field=f"catalogue.{name}",
                                rule="catalogue-entry") from exc
            problem = _entry_problem(entry, schemas)
            if problem:
                raise PsvnError(Code.CONFIG_INVALID, f"catalogue.{name}: {problem}", field=f"catalogue.{name}",
                                rule="catalogue-entry")
            entries[name] = entry
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

    def __len__(self) -> int:
        return len(self.entries)


def _check_modes(name: str, raw: Any) -> None:
    """A ``modes`` table names only known modes, on a FHIR type (the error names the bad key)."""
    modes = raw.get("modes") if isinstance(raw, dict) else None
    if modes is None:
        return
    field = f"catalogue.{name}.modes"
    if not isinstance(modes, dict):
        raise PsvnError(Code.CONFIG_INVALID, f"{field}: must be a table of validator modes", field=field,
                        rule="catalogue-modes")
    if raw.get("validator") != "fhir-r4":
        raise PsvnError(Code.CONFIG_INVALID, f"{field}: validator modes apply only to fhir-r4 types",
                        field=field, rule="catalogue-modes")
    for key, value in modes.items():
        if key not in MODE_KEYS:
            raise PsvnError(Code.CONFIG_INVALID, f"{field}.{key}: unknown validator mode {key!r} (one of "
                            f"{', '.join(MODE_KEYS)})", field=f"{field}.{key}", rule="catalogue-modes")
        if type(value) is not bool:
            raise PsvnError(Code.CONFIG_INVALID, f"{field}.{key}: must be true or false, not {value!r}",
                            field=f"{field}.{key}", rule="catalogue-modes")


def _entry_problem(entry: CatalogueEntry, schemas: dict[str, Any]) -> str | None:
    """A catalogue entry that could never validate anything is a policy-set error, found at load."""
    if entry.validator not in VALIDATORS:
        return f"validator {entry.validator!r} is not one of {', '.join(VALIDATORS)}"
    if entry.validator == "jsonschema" and entry.schema not in schemas:
        return f"schema {entry.schema!r} is not in the policy set's schemas/"
    if entry.validator in ("fhir-r4", "hl7v2") and not entry.resource:
        return "resource (FHIR resourceType or HL7 v2 message type) is required"
    missing = [s for s in entry.events.values() if s not in schemas]
    if missing:
        return f"events name schemas not in the policy set: {', '.join(sorted(set(missing)))}"
    if entry.validator == "cloudevents" and not entry.events and not entry.open_events:
        return "a cloudevents type needs events (type -> schema) or open_events = true"
    if min(entry.max_bytes, entry.max_depth, entry.max_elements) < 1:
        return "max_bytes, max_depth and max_elements must be positive"
    return None
