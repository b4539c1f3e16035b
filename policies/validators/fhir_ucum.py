"""UCUM unit codes in Quantities (``system`` http://unitsofmeasure.org), as the reference checks them.

Why: a Quantity that names UCUM as its unit system claims its ``code`` is a UCUM expression; the
reference validator refuses one that is not ("Unknown code 'fmm[Hg]' in the CodeSystem
'http://unitsofmeasure.org'"), and a receiver converting units would choke on it. UCUM is a
grammar over prefixes, atoms, exponents and annotations, not a list, so the check is a parse:
``ucumvert`` (MIT, a lark grammar generated from the official ucum-essence.xml, UCUM 2.2),
built once on first use (about a second: it is not on the path of payloads without a UCUM
Quantity) and each distinct code parsed once (cached), so the three paths of the walk share it.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from . import budget

UCUM = "http://unitsofmeasure.org"
#: the data types whose value is a Quantity (R4: Quantity and its profiles)
QUANTITY_TYPES = frozenset({"Quantity", "Age", "Count", "Distance", "Duration", "MoneyQuantity", "SimpleQuantity"})
_lock = threading.Lock()


@lru_cache(maxsize=1)
def _parser() -> Any:
    from ucumvert.parser import get_ucum_parser  # lazy: a lark grammar of every UCUM atom

    return get_ucum_parser()


# Parsed codes and their verdicts, bounded (a real network sees a few hundred units): a code
# seen before costs a dict lookup instead of a parse (an Earley parser: up to ~0.2 ms a
# character, ~27 budget units), but the payload's work budget is charged alike.
_seen: dict[str, bool] = {}
_SEEN_MAX = 4096
UCUM_COST_PER_CHAR = 27


def ucum_valid(code: str) -> bool:
    """Is ``code`` a valid UCUM expression (e.g. ``mm[Hg]``, ``kg/m2``, ``{beats}/min``)? A new
    code past the payload's work budget (:mod:`.budget`) is not judged (True)."""
    if not code or not code.isprintable() or " " in code:
        return False
    if not budget.spend(UCUM_COST_PER_CHAR * len(code)):  # a known code pays too: a payload's verdict
        return True                                         # must not depend on what came before it
    known = _seen.get(code)
    if known is not None:
        return known
    parser = _parser()
    with _lock:
        try:
            parser.parse(code)
            valid = True
        except Exception:  # lark's UnexpectedInput and friends: not UCUM
            valid = False
    if len(_seen) >= _SEEN_MAX:
        _seen.clear()
    _seen[code] = valid
    return valid


def ucum_problem(quantity: dict[str, Any]) -> str | None:
    """Why a Quantity's UCUM code is not UCUM; ``None``: it is, or the Quantity is not UCUM."""
    code = quantity.get("code")
    if quantity.get("system") != UCUM or type(code) is not str or ucum_valid(code):
        return None
    return f"unknown code {code!r} in the code system {UCUM} (not a valid UCUM unit expression)"


def quantity_ok(quantity: Any) -> bool:
    """For the fast paths: true when :func:`ucum_problem` finds nothing."""
    if type(quantity) is not dict or quantity.get("system") != UCUM:
        return True
    code = quantity.get("code")
    return type(code) is not str or ucum_valid(code)
