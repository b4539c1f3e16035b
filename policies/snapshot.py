"""One compiled policy version: the engine, the catalogue and the validators built from one signed
document, immutable, so a request decided on it is decided on one version whatever is published meanwhile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psvn.policies.catalogue import Catalogue
from psvn.policies.engine import Engine
from psvn.policies.validation import PayloadValidator


@dataclass(frozen=True)
class PolicySnapshot:
    version: int
    document: dict[str, Any]
    engine: Engine
    catalogue: Catalogue
    validator: PayloadValidator

    @classmethod
    def compile(cls, doc: dict[str, Any]) -> PolicySnapshot:
        catalogue = Catalogue.from_document(doc)
        validator = PayloadValidator(catalogue, doc.get("schemas", {}))
        validator.warm()  # a policy version is compiled whole before it is enforced
        return cls(version=int(doc["version"]), document=doc, engine=Engine.from_document(doc),
                   catalogue=catalogue, validator=validator)
