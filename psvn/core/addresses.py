"""Member addresses: real UK identifiers, e.g. ``ods:RYR`` or ``gss:E06000043/adult-social-care``.

The part before ``/`` names the member (one gateway); the optional part after it names a
mailbox. On the backbone an organisation is a *token* (``gss_E06000043``) because NATS subject
tokens and stream names must not contain ``:`` in file stores on every platform.
"""

from __future__ import annotations

import contextlib
import functools
import re

from psvn.core.errors import Code, PsvnError

SCHEMES: dict[str, str] = {
    "ods": "NHS Organisation Data Service code (trusts, GP practices)",
    "gss": "ONS Government Statistical Service code (councils)",
    "ccn": "Charity Commission registration number",
    "ch": "Companies House number",
    "oda": "Office of Data Analytics",
    "pds": "personal data store",
    "pol": "police force",
    "psvn": "the network operator",
}

MEMBER_TYPES = ("council", "nhs-trust", "gp", "police", "charity", "business", "oda", "pds", "operator")

_ADDRESS = re.compile(
    r"(?P<scheme>[a-z]{2,5}):(?P<id>[A-Za-z0-9][A-Za-z0-9-]{0,31})(?:/(?P<mailbox>[a-z0-9][a-z0-9-]{0,62}))?"
)
URI_PREFIX = "urn:psvn:org:"
SYSTEM_URI_PREFIX = "urn:psvn:system:"


def parse(address: str, *, field: str = "to") -> tuple[str, str | None]:
    """Split an address into (organisation, mailbox or None); raise naming ``field`` if bad."""
    if isinstance(address, str):
        with contextlib.suppress(ValueError):
            return _split(address)
    raise PsvnError(
        Code.INVALID_ENVELOPE,
        f"{field}: {address!r} is not a psvn address (scheme:id[/mailbox], scheme one of "
        f"{', '.join(sorted(SCHEMES))})",
        field=field,
        rule="address-format",
    )


@functools.lru_cache(maxsize=4096)
def _split(address: str) -> tuple[str, str | None]:
    """Valid addresses only are kept (a refusal raises, and what raises is not cached): a
    gateway parses the same few addresses several times a message (~0.8 us each)."""
    m = _ADDRESS.fullmatch(address)
    if m is None or m.group("scheme") not in SCHEMES:
        raise ValueError(address)
    return f"{m.group('scheme')}:{m.group('id')}", m.group("mailbox")


def org_of(address: str) -> str:
    return parse(address)[0]


def token(org: str) -> str:
    """Backbone token for an organisation: ``gss:E06000043`` -> ``gss_E06000043``."""
    return org.replace(":", "_")


def from_token(tok: str) -> str:
    scheme, _, ident = tok.partition("_")
    return f"{scheme}:{ident}"


def org_uri(org: str) -> str:
    """The SAN URI that names a gateway: ``urn:psvn:org:ods:RYR``."""
    return URI_PREFIX + org


def system_uri(org: str, system: str) -> str:
    """The SAN URI that names a local system of an organisation."""
    return f"{SYSTEM_URI_PREFIX}{org}/{system}"


def parse_system_uri(uri: str) -> tuple[str, str] | None:
    """``urn:psvn:system:gss:E06000043/case-mgmt`` -> (``gss:E06000043``, ``case-mgmt``)."""
    if not uri.startswith(SYSTEM_URI_PREFIX):
        return None
    org, sep, system = uri[len(SYSTEM_URI_PREFIX) :].partition("/")
    if not sep or not system:
        return None
    return org, system
