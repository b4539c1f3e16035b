"""Payload validation against the open standard the catalogue names for a type.

Pure functions over bytes: the gateway calls them on send and on receive, ``psvn validate``
calls them offline, so both give the same errors. One compiled validator per catalogue type is
built on first use and cached. Every violation is reported (not just the first), each with a
path (JSON pointer, or ``SEG-n`` for HL7 v2), a rule, a message and what was expected.

Order of work for every payload, cheapest first: size, then complexity (depth and element
count, measured on the raw bytes without parsing), then parsing, then the standard's rules.
The validators live in :mod:`policies.validators`; this module is the façade.

Data subjects: :meth:`PayloadValidator.check` returns, with the violations, the people a valid
payload is about (``nhs:<number>``), which each validator notes during the walk it does anyway
(FHIR: every NHS-number Identifier, Bundles and contained resources included; HL7 v2: PID-3;
JSON Schema and CloudEvents data: members with an NHS-number format). The gateway binds the
envelope's ``subject`` to them and checks every one's consent, so an opt-out cannot be dodged by
naming someone else in the envelope or no one. No extra parse, no extra pass.

Media types: a FHIR type's payload may also arrive as FHIR XML (``content_type`` one of
:data:`XML_TYPES`); it is read into the FHIR JSON form and checked by the same rules, with the
same paths. Any other content type (or none) means the type's own format, as before; an XML
content type for a type whose standard psvn reads only as JSON or ER7 is a ``content-type``
violation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from psvn.core.errors import Code, PsvnError, Violation
from psvn.policies.catalogue import Catalogue, CatalogueEntry
from psvn.policies.validators.common import NO_SUBJECTS, parse_json
from psvn.policies.validators.limits import Limits, check_er7, check_json, check_size, check_xml

log = logging.getLogger(__name__)

__all__ = ["XML_TYPES", "Checked", "PayloadValidator", "invalid_payload_error", "media_type"]

#: Media types that mean "FHIR XML" for a FHIR catalogue type.
XML_TYPES: frozenset[str] = frozenset({"application/fhir+xml", "application/xml", "text/xml"})


def media_type(content_type: str | None) -> str | None:
    """``"application/fhir+xml; charset=utf-8"`` -> ``"application/fhir+xml"``; ``None`` stays ``None``."""
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


Result = tuple[list[Violation], frozenset[str]]  # (violations, data subjects)


class Checked(msgspec.Struct, frozen=True, gc=False):
    """A payload's violations (``[]`` = valid) and, if valid, the data subjects it names.

    A frozen msgspec Struct, not a frozen dataclass: one is built for every message the gateway
    validates, and a frozen dataclass's ``__init__`` (``object.__setattr__`` per field) cost
    more than a tenth of a valid referral's whole validation."""

    violations: list[Violation]
    subjects: frozenset[str] = NO_SUBJECTS

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass(frozen=True, slots=True)
class _Compiled:
    entry: CatalogueEntry
    limits: Limits
    precheck: Callable[[bytes, Limits], list[Violation]]
    check: Callable[[bytes], Result]
    xml_check: Callable[[bytes], Result] | None = None  # FHIR types: the XML form


def _json_check(fn: Callable[[Any], Result]) -> Callable[[bytes], Result]:
    def check(body: bytes) -> Result:
        data, errors = parse_json(body)
        return (errors, NO_SUBJECTS) if errors else fn(data)

    return check


def _no_subjects(fn: Callable[[Any], list[Violation]]) -> Callable[[Any], Result]:
    return lambda data: (fn(data), NO_SUBJECTS)


class PayloadValidator:
    """Builds and caches one compiled validator per catalogue type."""

    def __init__(self, catalogue: Catalogue, schemas: dict[str, Any]) -> None:
        self.catalogue = catalogue
        self.schemas = schemas
        self._cache: dict[str, _Compiled] = {}
        self._schema_cache: dict[str, Any] = {}

    # -- building --------------------------------------------------------------------------------
    def _schema(self, name: str, owner: str) -> Any:
        compiled = self._schema_cache.get(name)
        if compiled is None:
            from psvn.policies.validators.jsonschema import compile_schema

            schema = self.schemas.get(name)
            if not isinstance(schema, dict):
                raise PsvnError(Code.CONFIG_INVALID, f"catalogue type {owner} names schema {name!r}, "
                                "not in the policy set", field=f"catalogue.{owner}", rule="catalogue-schema")
            try:
                compiled = self._schema_cache[name] = compile_schema(schema)
            except ValueError as exc:
                raise PsvnError(Code.CONFIG_INVALID, f"schemas/{name}.json: {exc}", field=f"schemas.{name}",
                                rule="schema-compile") from exc
        return compiled

    def _build(self, entry: CatalogueEntry) -> _Compiled:
        limits = Limits(max_bytes=entry.max_bytes, max_depth=entry.max_depth, max_elements=entry.max_elements)
        try:
            if entry.validator == "fhir-r4":
                from psvn.policies.validators.fhir import FhirValidator, IdentifierRule

                fhir = FhirValidator(entry.resource, bundle_types=entry.bundle_types,
                                     resolve_urn_references=entry.resolve_urn_references,
                                     required=entry.required, extension_domains=entry.extension_domains,
                                     invariants=[(i.resource, i.key, i.expression, i.human) for i in entry.invariants],
                                     modes=entry.modes,
                                     identifier_rules=[
                    IdentifierRule(r.resource, r.element, r.system, r.label) for r in entry.identifiers])
                slow = _json_check(fhir.check)

                def fhir_json(body: bytes) -> Result:
                    subjects = fhir.check_bytes(body)  # the typed path: valid, decided from the bytes
                    return ([], subjects) if subjects is not None else slow(body)

                if entry.modes is not None and entry.modes.json_comments:  # JSON with // comments: this mode only
                    from psvn.policies.validators.fhir_modes import strip_json_comments

                    def precheck(body: bytes, lim: Limits) -> list[Violation]:
                        return check_size(body, lim) or check_json(strip_json_comments(body), lim)

                    return _Compiled(entry, limits, precheck, lambda body: fhir_json(strip_json_comments(body)),
                                     xml_check=lambda body: fhir.check_xml(body, limits))
                return _Compiled(entry, limits, check_json, fhir_json,
                                 xml_check=lambda body: fhir.check_xml(body, limits))
            if entry.validator == "hl7v2":
                from psvn.policies.validators.hl7v2 import Hl7v2Validator

                hl7 = Hl7v2Validator(entry.resource, versions=entry.versions or None,
                                     require_nhs_number=entry.require_nhs_number)
                return _Compiled(entry, limits, check_er7, hl7.check)
            if entry.validator == "cloudevents":
                from psvn.policies.validators.cloudevents import CloudEventValidator
                from psvn.policies.validators.jsonschema import SubjectFinder

                events = {t: (self._schema(s, entry.type), self.schemas[s].get("$id"))
                          for t, s in entry.events.items()}
                ce = CloudEventValidator(events, open_events=entry.open_events,
                                         finders={t: SubjectFinder(self.schemas[s]) for t, s in entry.events.items()})
                return _Compiled(entry, limits, check_json, _json_check(ce.check))
            if entry.validator == "jsonschema":
                from psvn.policies.validators.jsonschema import SubjectFinder, schema_violations

                compiled = self._schema(entry.schema, entry.type)
                finder = SubjectFinder(self.schemas[entry.schema])
                if not finder.finds_any:
                    return _Compiled(entry, limits, check_json,
                                     _json_check(_no_subjects(lambda data: schema_violations(compiled, data))))

                def schema_check(data: Any) -> Result:
                    out = schema_violations(compiled, data)
                    return out, (NO_SUBJECTS if out else finder.subjects(data))

                return _Compiled(entry, limits, check_json, _json_check(schema_check))
        except KeyError as exc:
            raise PsvnError(Code.CONFIG_INVALID, f"catalogue type {entry.type}: {exc.args[0]}",
                            field=f"catalogue.{entry.type}", rule="catalogue-entry") from exc
        raise PsvnError(Code.CONFIG_INVALID, f"catalogue type {entry.type} names unknown validator "
                        f"{entry.validator!r}", field=f"catalogue.{entry.type}", rule="catalogue-entry")

    def compiled(self, type_: str) -> _Compiled:
        c = self._cache.get(type_)
        if c is None:
            c = self._cache[type_] = self._build(self.catalogue.get(type_))
        return c

    def warm(self) -> None:
        """Compile every type now (a policy version is checked whole before it is enforced)."""
        for entry in self.catalogue:
            self.compiled(entry.type)

    # -- validating ------------------------------------------------------------------------------
    def validate(self, type_: str, body: bytes, *, content_type: str | None = None) -> list[Violation]:
        """All violations of ``body`` against the standard of ``type_``; ``[]`` means valid.

        ``content_type`` in :data:`XML_TYPES` reads a FHIR type's payload as FHIR XML; any other
        value (or none) validates the type's own format. Raises :class:`PsvnError`
        ``unknown-type`` only for a type not in the catalogue.
        """
        return self._run(type_, body, content_type)[0]

    def check(self, type_: str, body: bytes, *, content_type: str | None = None) -> Checked:
        """:meth:`validate`, plus the data subjects of a valid payload (``nhs:<number>``; none
        for an invalid one): what the gateway decides consent for."""
        violations, subjects = self._run(type_, body, content_type)
        return Checked(violations, NO_SUBJECTS if violations else subjects)

    def _run(self, type_: str, body: bytes, content_type: str | None) -> Result:
        c = self._cache.get(type_) or self.compiled(type_)
        if type(body) is not bytes and isinstance(body, str):
            body = body.encode()
        check = c.check
        if content_type is not None and media_type(content_type) in XML_TYPES:
            if c.xml_check is None:
                return [Violation(path="", rule="content-type",
                                  message=f"{type_} is {c.entry.standard}, which is not accepted as XML "
                                  f"({media_type(content_type)}); only FHIR types may be sent as FHIR XML",
                                  expected=c.entry.datacontenttype)], NO_SUBJECTS
            early = check_xml(body, c.limits)
            check = c.xml_check
        else:
            early = c.precheck(body, c.limits)
        if early:
            return early, NO_SUBJECTS
        try:
            return check(body)
        except Exception as exc:  # a validator bug must reject the payload, not crash the gateway
            log.exception("validator for %s failed", type_)
            return [Violation(path="", rule="validator-error",
                              message=f"the {c.entry.standard} validator could not process this payload "
                              f"({type(exc).__name__})", expected="a payload the validator can read")], NO_SUBJECTS

    def error(self, type_: str, violations: list[Violation], *, message_id: str | None = None) -> PsvnError:
        return invalid_payload_error(self.catalogue.get(type_), violations, message_id=message_id)


def invalid_payload_error(entry: CatalogueEntry, violations: list[Violation], *,
                          message_id: str | None = None) -> PsvnError:
    """The one ``invalid-payload`` error, so the API and ``psvn validate`` say the same words."""
    first = violations[0]
    where = first.path or "/"
    field = "payload" + (first.path if not first.path or first.path.startswith("/") else ":" + first.path)
    return PsvnError(Code.INVALID_PAYLOAD,
                     f"payload does not conform to {entry.standard} for {entry.type}: {len(violations)} "
                     f"violation(s), first at {where}: {first.message}",
                     field=field, rule=first.rule, message_id=message_id, violations=violations)
