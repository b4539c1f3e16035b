"""A constraint StructureDefinition's element paths name elements of the type it constrains.

Why: a profile (``derivation: constraint``) can only constrain what its base type has; an element
path that names nothing in it (``Observation.valueBla``) makes the profile unusable, and the
reference validator refuses it when it generates the snapshot ("The path must be
'Observation.value[x]' not 'Observation.valueBla'"). Each path of the differential and the
snapshot is resolved against the R4 definitions of the constrained type: a segment is an element
name, a choice as ``value[x]``, or a choice narrowed to one of its types (``valueQuantity``).
Profiles of types psvn does not define (logical models, other IGs' types) and specialisations
(which add elements) are not checked; below a choice of several types, or a primitive, the rest
of the path is not resolved.
"""

from __future__ import annotations

from typing import Any

Problem = tuple[str, str]  # (pointer suffix, message)


def _resolve(defs: Any, path: str) -> str | None:
    """Why ``path`` names no element of its root type; ``None``: it does (or cannot be told)."""
    root, *segments = path.split(".")
    node = defs.nodes.get(root)
    at = root
    for seg in segments:
        if node is None:  # below a primitive: not resolved
            return None
        ent = node.lookup.get(seg)  # an element's JSON name, or a choice narrowed to a type (valueQuantity)
        if ent is not None:
            tcode = ent[1]
        else:
            types = {t for c, t, _f in node.lookup.values() if c.name == seg}  # a choice: value[x]
            if not types:
                return f"{at} has no element {seg!r}"
            if len(types) > 1:  # of several types: the rest is not resolved
                return None
            tcode = next(iter(types))
        at = f"{at}.{seg}"
        if tcode == "Resource" or defs.is_resource(tcode):
            return None
        node = defs.nodes.get(tcode.lstrip("@"))
    return None


def structure_definition_problems(sd: dict[str, Any], defs: Any) -> list[Problem]:
    """Every element path of a constraint StructureDefinition that names no element of its type."""
    if sd.get("derivation") != "constraint":
        return []
    rt = sd.get("type")
    if not isinstance(rt, str) or rt not in defs.nodes:
        return []
    out: list[Problem] = []
    for part in ("differential", "snapshot"):
        block = sd.get(part)
        elements = block.get("element") if isinstance(block, dict) else None
        if not isinstance(elements, list):
            continue
        for i, el in enumerate(elements):
            path = el.get("path") if isinstance(el, dict) else None
            if not isinstance(path, str):
                continue
            if path.split(".", 1)[0] != rt:
                out.append((f"/{part}/element/{i}/path", f"element path {path!r} does not start with the "
                            f"constrained type {rt!r}"))
                continue
            why = _resolve(defs, path)
            if why is not None:
                out.append((f"/{part}/element/{i}/path", f"element path {path!r} names no element of {rt}: {why} "
                            "(a constraint profile constrains only its type's elements; a choice is "
                            "value[x], or narrowed to one type as e.g. valueQuantity)"))
    return out
