"""Payload validation against the open standard the catalogue names for a type.

Pure functions over bytes: the gateway calls them on send and on receive, ``psvn validate``
calls them offline, so both give the same errors. Compiled validators are cached per type.
Every violation is reported (not just the first), each with a JSON pointer and a rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema_rs
import msgspec

from policies.catalogue import Catalogue, CatalogueEntry
from psvn.errors import Violation

Validator = Callable[[bytes], list[Violation]]


def _pointer(loc: tuple[Any, ...] | list[Any]) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in loc) if loc else ""


def _parse_json(body: bytes) -> tuple[Any, list[Violation]]:
    try:
        return msgspec.json.decode(body), []
    except msgspec.DecodeError as exc:
        return None, [Violation(path="", rule="json-syntax", message=str(exc))]


def _fhir_r4(entry: CatalogueEntry) -> Validator:
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    model = get_fhir_model_class(entry.resource)

    def validate(body: bytes) -> list[Violation]:
        data, errors = _parse_json(body)
        if errors:
            return errors
        if not isinstance(data, dict):
            return [Violation(path="", rule="fhir-resource", message="a FHIR resource must be a JSON object")]
        if data.get("resourceType") != entry.resource:
            return [Violation(path="/resourceType", rule="fhir-resource-type",
                              message=f"resourceType is {data.get('resourceType')!r} but type {entry.type} carries a {entry.resource}",
                              expected=entry.resource)]
        try:
            model.model_validate(data)
        except ValidationError as exc:
            return [Violation(path=_pointer(e["loc"]), rule=f"fhir-{e['type']}", message=e["msg"])
                    for e in exc.errors()]
        return []

    return validate


def _jsonschema(entry: CatalogueEntry, schemas: dict[str, Any]) -> Validator:
    schema = schemas.get(entry.schema)
    if schema is None:
        raise KeyError(f"catalogue type {entry.type} names schema {entry.schema!r}, not in the policy set")
    compiled = jsonschema_rs.validator_for(schema, validate_formats=True)

    def validate(body: bytes) -> list[Violation]:
        data, errors = _parse_json(body)
        if errors:
            return errors
        return [Violation(path=_pointer(list(err.instance_path)), rule=f"schema-{err.kind.name}",
                          message=err.message)
                for err in compiled.iter_errors(data)]

    return validate


class PayloadValidator:
    """Builds and caches one compiled validator per catalogue type."""

    def __init__(self, catalogue: Catalogue, schemas: dict[str, Any]) -> None:
        self.catalogue = catalogue
        self.schemas = schemas
        self._cache: dict[str, Validator] = {}

    def _build(self, entry: CatalogueEntry) -> Validator:
        if entry.validator == "fhir-r4":
            return _fhir_r4(entry)
        if entry.validator == "jsonschema":
            return _jsonschema(entry, self.schemas)
        raise KeyError(f"catalogue type {entry.type} names unknown validator {entry.validator!r}")

    def validate(self, type_: str, body: bytes) -> list[Violation]:
        fn = self._cache.get(type_)
        if fn is None:
            fn = self._cache[type_] = self._build(self.catalogue.get(type_))
        if len(body) > self.catalogue.get(type_).max_bytes:
            return [Violation(path="", rule="max-bytes", message=f"payload is {len(body)} bytes",
                              expected=f"at most {self.catalogue.get(type_).max_bytes} bytes")]
        return fn(body)
