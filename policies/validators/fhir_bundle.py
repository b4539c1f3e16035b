"""FHIR Bundle rules: the Bundle invariants and how references resolve inside a Bundle.

Why apart from the walk (:mod:`.fhir`): these rules look at a Bundle as a whole, after the walk
has checked every entry as a resource and noted every reference under it, so they need only the
entries, those references and the catalogue type's Bundle settings; the walk needs none of them
to check a single resource. :meth:`.fhir.FhirValidator._resource` calls :func:`check_bundle` at
the end of each Bundle, the inner one first when Bundles nest.
"""

from __future__ import annotations

import re
from typing import Any

from psvn.core.errors import Violation

from .common import describe_codes
from .fhir_definitions import R4Definitions
from .fhir_rules import absolute
from .fhir_signature import signature_problem

_REL_REF = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")
# a RESTful URL: (base/)(Type)/(id), e.g. https://fhir.example.nhs.uk/R4/Patient/123
_RESTFUL = re.compile(r"(.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")


def check_bundle(bundle: dict[str, Any], ptr: str, *, defs: R4Definitions, bundle_types: list[str],
                 resolve_urn: bool, refs: list[tuple[str, str] | None], ref_start: int,
                 index: dict[str, dict[str, Any]], out: list[Violation], resolve_all: bool = False) -> None:
    """The Bundle invariants (bdl-1..12) and FHIR's rules for resolving references inside a
    Bundle (https://hl7.org/fhir/R4/bundle.html#references): a relative reference is read
    against the base of its entry's fullUrl when that is a RESTful URL (and cannot resolve in
    the Bundle when the entry has a urn: fullUrl or none); an absolute one must equal a fullUrl;
    a version-specific one (``/_history/v``) must also match the target's ``meta.versionId``.
    Which references must resolve depends on the Bundle type: in a document every reference
    to a urn: or a relative URL; in a message or transaction every urn: reference (a relative
    one names a resource on the receiving server); in other types none, unless the catalogue
    type asks for every urn: reference to resolve (``resolve_urn_references``). ``resolve_all``
    (the type's ``resolve_references`` mode): every reference must resolve in the Bundle.

    ``refs`` holds the (pointer, reference) pairs the walk noted, those under this Bundle from
    ``ref_start`` on: each under an entry is judged here and set to ``None``, so an enclosing
    Bundle does not judge it again. ``index`` gets each entry's resource by fullUrl and by
    Type/id, for the UK identifier rules that follow references. ``bundle_types`` applies to the
    outermost Bundle only (``ptr == ""``)."""
    btype = bundle.get("type")
    if bundle_types and ptr == "" and isinstance(btype, str) and btype not in bundle_types:
        out.append(Violation(path=f"{ptr}/type", rule="fhir-bundle-type",
                             message=f"Bundle type {btype!r} is not accepted for this message type",
                             expected=describe_codes(bundle_types)))
    if "total" in bundle and btype not in ("searchset", "history"):
        out.append(Violation(path=f"{ptr}/total", rule="fhir-bundle-invariant",
                             message=f"total is only for a searchset or history Bundle, not {btype!r} (bdl-1)",
                             expected="no total"))
    if "signature" in bundle:  # a JWS over the Bundle verifies against the certificate it carries
        problem = signature_problem(bundle, ptr)
        if problem is not None:
            out.append(problem)
    links = bundle.get("link")
    if isinstance(links, list):
        relations: dict[str, int] = {}
        for i, link in enumerate(links):
            rel = link.get("relation") if isinstance(link, dict) else None
            if isinstance(rel, str) and rel != "stylesheet":
                if rel in relations:
                    out.append(Violation(path=f"{ptr}/link/{i}/relation", rule="fhir-bundle-link",
                                         message=f"link relation {rel!r} is also link {relations[rel]}'s",
                                         expected="each link relation (self, next, ...) at most once"))
                relations.setdefault(rel, i)
    entries = bundle.get("entry")
    entries = [e if isinstance(e, dict) else {} for e in entries] if isinstance(entries, list) else []
    if btype == "searchset":
        _search_results(defs, links if isinstance(links, list) else [], entries, ptr, out)
    # fullUrl -> [(entry number, meta.versionId, resource)]
    by_url: dict[str, list[tuple[int, str | None, dict[str, Any] | None]]] = {}
    seen_versions: dict[tuple[str, str | None], int] = {}
    wants_request = btype in ("batch", "transaction", "history")
    wants_response = btype in ("batch-response", "transaction-response", "history")
    for i, e in enumerate(entries):
        ep = f"{ptr}/entry/{i}"
        fu = e.get("fullUrl")
        res = e.get("resource") if isinstance(e.get("resource"), dict) else None
        if res is None and "request" not in e and "response" not in e:
            out.append(Violation(path=ep, rule="fhir-bundle-invariant",
                                 message="a Bundle entry must have a resource, a request or a response (bdl-5)",
                                 expected="entry.resource, entry.request or entry.response"))
        if isinstance(fu, str):
            _full_url(defs, fu, res, f"{ep}/fullUrl", out)
            vid = _version_id(res)
            key = (fu, vid)
            if key in seen_versions and btype != "history":
                what = f"fullUrl {fu!r}" + (f" with meta.versionId {vid!r}" if vid is not None else "")
                out.append(Violation(path=f"{ep}/fullUrl", rule="fhir-bundle-fullurl-unique",
                                     message=f"{what} is also entry {seen_versions[key]}'s (bdl-7)",
                                     expected="a fullUrl unique within the Bundle, or a different "
                                     "meta.versionId for each entry that shares one"))
            else:
                seen_versions.setdefault(key, i)
                by_url.setdefault(fu, []).append((i, vid, res))
                if res is not None:
                    index.setdefault(fu, res)
        if res is not None and isinstance(res.get("id"), str) and isinstance(res.get("resourceType"), str):
            index.setdefault(f"{res['resourceType']}/{res['id']}", res)  # for the UK identifier rules
        if "search" in e and btype != "searchset":
            out.append(Violation(path=f"{ep}/search", rule="fhir-bundle-invariant",
                                 message=f"entry.search is only for a searchset Bundle, not {btype!r} (bdl-2)",
                                 expected="no entry.search"))
        if ("request" in e) != wants_request and isinstance(btype, str):
            out.append(Violation(path=f"{ep}/request", rule="fhir-bundle-entry",
                                 message=f"a {btype} Bundle entry " + ("needs a request (bdl-3)" if wants_request
                                                                      else "must not have a request (bdl-3)"),
                                 expected="entry.request with method and url" if wants_request
                                 else "no entry.request"))
        if ("response" in e) != wants_response and isinstance(btype, str):
            out.append(Violation(path=f"{ep}/response", rule="fhir-bundle-entry",
                                 message=f"a {btype} Bundle entry " + ("needs a response (bdl-4)" if wants_response
                                                                      else "must not have a response (bdl-4)"),
                                 expected="entry.response with status" if wants_response
                                 else "no entry.response"))
    first = entries[0].get("resource") if entries else None
    first_rt = first.get("resourceType") if isinstance(first, dict) else None
    for btype_, rt, inv in (("document", "Composition", "bdl-11"), ("message", "MessageHeader", "bdl-12")):
        if btype == btype_ and first_rt != rt:
            out.append(Violation(path=f"{ptr}/entry/0/resource" if entries else f"{ptr}/entry",
                                 rule="fhir-bundle-first-entry",
                                 message=f"a {btype} Bundle must start with a {rt} ({inv})", expected=rt))
    if btype == "document":
        ident = bundle.get("identifier")
        if not (isinstance(ident, dict) and "system" in ident and "value" in ident):
            out.append(Violation(path=f"{ptr}/identifier", rule="fhir-required",
                                 message="a document Bundle needs an identifier with system and value (bdl-9)",
                                 expected="Bundle.identifier.system and .value"))
        if "timestamp" not in bundle:
            out.append(Violation(path=f"{ptr}/timestamp", rule="fhir-required",
                                 message="a document Bundle needs a timestamp (bdl-10)",
                                 expected="Bundle.timestamp"))
        _stylesheets(bundle, ptr, entries, by_url, out)
    must_urn = btype in ("document", "message", "transaction") or resolve_urn
    must_relative = btype == "document"
    entry_prefix = f"{ptr}/entry/"
    for i in range(ref_start, len(refs)):
        item = refs[i]
        if item is None or not item[0].startswith(entry_prefix):
            continue
        refs[i] = None
        p, ref = item
        entry_no = p[len(entry_prefix):].split("/", 1)[0]
        n = int(entry_no) if entry_no.isdigit() else -1
        source = entries[n].get("fullUrl") if 0 <= n < len(entries) else None
        status, why = _resolve(ref, source if isinstance(source, str) else None, by_url)
        if status == "found":
            continue
        if status == "type":
            out.append(Violation(path=f"{p}/reference", rule="fhir-bundle-reference-type",
                                 message=f"reference {ref!r} names entry {why}",
                                 expected="a reference whose type is the resourceType of the entry it names"))
            continue
        if status == "ambiguous":
            out.append(Violation(path=f"{p}/reference", rule="fhir-bundle-reference-ambiguous",
                                 message=f"reference {ref!r} matches {why} in the Bundle",
                                 expected="a version-specific reference (.../_history/<versionId>)"))
            continue
        urn = ref.startswith(("urn:uuid:", "urn:oid:"))
        if (urn and must_urn) or (status == "relative" and must_relative) or (resolve_all and "?" not in ref):
            where = f"a {btype} Bundle" if isinstance(btype, str) else "the Bundle"
            out.append(Violation(path=f"{p}/reference", rule="fhir-bundle-reference-unresolved",
                                 message=f"reference {ref!r} resolves to no entry of {where}{why}",
                                 expected="the fullUrl of an entry in this Bundle (a relative reference "
                                 "is read against the base of its entry's RESTful fullUrl)"))


def _search_types(defs: R4Definitions, links: list[Any]) -> list[str]:
    """The resource types a searchset's ``self`` link searched for: ``.../Type?...`` or
    ``?_type=A,B`` (none when the link says neither: then any type may match)."""
    url = next((link.get("url") for link in links
                if isinstance(link, dict) and link.get("relation") == "self"), None)
    if not isinstance(url, str):
        return []
    head, _, query = url.partition("?")
    last = head.rsplit("/", 1)[-1]
    if last in defs.resources:
        return [last]
    return [t for part in query.split("&") if part.startswith("_type=") for t in part[6:].split(",")]


def _search_results(defs: R4Definitions, links: list[Any], entries: list[dict[str, Any]], ptr: str,
                    out: list[Violation]) -> None:
    """A searchset's entries as the search says (https://hl7.org/fhir/R4/bundle.html#searchset,
    and the reference validator's rules): once its entries carry ``search.mode``, a ``match``
    has an id (a client reads it back by Type/id) and is of a type the search asked for, an
    ``include`` has an id, and an ``outcome`` is an OperationOutcome. A searchset none of whose
    entries says its mode is not judged by mode."""
    modes = [e.get("search", {}).get("mode") if isinstance(e.get("search"), dict) else None for e in entries]
    if not any(isinstance(m, str) for m in modes):
        return
    types = _search_types(defs, links)
    for i, (e, mode) in enumerate(zip(entries, modes, strict=True)):
        res = e.get("resource")
        if not isinstance(mode, str) or not isinstance(res, dict):
            continue
        rp, rt = f"{ptr}/entry/{i}/resource", res.get("resourceType")
        if mode in ("match", "include") and not isinstance(res.get("id"), str):
            out.append(Violation(path=rp, rule="fhir-bundle-search", message=f"a search result ({mode}) must "
                                 "have an id", expected=f"{rt}.id"))
        if mode == "match" and types and rt not in types:
            out.append(Violation(path=f"{rp}/resourceType", rule="fhir-bundle-search",
                                 message=f"{rt} is not a type the search (self link) asked for",
                                 expected=describe_codes(types)))
        elif mode == "outcome" and rt != "OperationOutcome":
            out.append(Violation(path=f"{rp}/resourceType", rule="fhir-bundle-search",
                                 message=f"a search outcome entry must be an OperationOutcome, not {rt}",
                                 expected="OperationOutcome"))


def _full_url(defs: R4Definitions, fu: str, res: dict[str, Any] | None, p: str, out: list[Violation]) -> None:
    if not absolute(fu):
        out.append(Violation(path=p, rule="fhir-bundle-fullurl",
                             message=f"fullUrl {_short(fu)} is not an absolute URL",
                             expected="an absolute URL (http(s)://.../Type/id) or urn:uuid: / urn:oid:"))
        return
    if "/_history/" in fu:
        out.append(Violation(path=p, rule="fhir-bundle-fullurl",
                             message=f"fullUrl {_short(fu)} is version specific (bdl-8)",
                             expected="a fullUrl without /_history/"))
        return
    m = _RESTFUL.fullmatch(fu) if fu.startswith(("http:", "https:")) else None
    if m is None or res is None or not defs.is_resource(m.group(2)):
        return
    rid = res.get("id")
    if not isinstance(rid, str):
        out.append(Violation(path=p, rule="fhir-bundle-fullurl",
                             message=f"fullUrl {_short(fu)} is a RESTful URL but the resource has no id",
                             expected=f"resource.id {m.group(3)!r}"))
    elif (m.group(2), m.group(3)) != (res.get("resourceType"), rid):
        out.append(Violation(path=p, rule="fhir-bundle-fullurl",
                             message=f"fullUrl {_short(fu)} is a RESTful URL that does not end with the "
                             "resource's type and id", expected=f".../{res.get('resourceType')}/{rid}"))


def _stylesheets(bundle: dict[str, Any], ptr: str, entries: list[dict[str, Any]],
                 by_url: dict[str, list[tuple[int, str | None, dict[str, Any] | None]]],
                 out: list[Violation]) -> None:
    """A document's stylesheet link: an absolute URL, or a relative one that resolves to an
    entry (read against the Composition's fullUrl, like any relative reference)."""
    links = bundle.get("link")
    if not isinstance(links, list):
        return
    base = entries[0].get("fullUrl") if entries else None
    for i, link in enumerate(links):
        if not isinstance(link, dict) or link.get("relation") != "stylesheet":
            continue
        url = link.get("url")
        if not isinstance(url, str) or absolute(url):
            continue
        status, _why = _resolve(url, base if isinstance(base, str) else None, by_url)
        if status != "found":
            out.append(Violation(path=f"{ptr}/link/{i}/url", rule="fhir-bundle-stylesheet-unresolved",
                                 message=f"the document's stylesheet {url!r} resolves to no entry of the Bundle",
                                 expected="an absolute URL, or a Binary in this document Bundle"))


def _version_id(res: dict[str, Any] | None) -> str | None:
    meta = res.get("meta") if res is not None else None
    vid = meta.get("versionId") if isinstance(meta, dict) else None
    return vid if isinstance(vid, str) else None


def _resolve(ref: str, source: str | None,
             by_url: dict[str, list[tuple[int, str | None, dict[str, Any] | None]]]) -> tuple[str, str]:
    """Resolve ``ref`` inside a Bundle: ("found"|"ambiguous"|"relative"|"absolute", detail)."""
    version = None
    target = ref
    if "/_history/" in ref:
        target, version = ref.split("/_history/", 1)
    if absolute(target):
        kind = "absolute"
    else:
        kind = "relative"
        if _REL_REF.fullmatch(ref) is None:
            return kind, ""
        m = _RESTFUL.fullmatch(source) if source is not None and source.startswith(("http:", "https:")) else None
        if m is None and source is not None and source.startswith("urn:") and version is None:
            mismatch = _urn_type_mismatch(ref, source, by_url)
            if mismatch is not None:
                return "type", mismatch
        if m is None:
            return kind, (" (a relative reference cannot resolve against its entry's fullUrl "
                          f"{source!r})" if source else " (its entry has no fullUrl to resolve it against)")
        target = (m.group(1) or "") + target
    matches = by_url.get(target, ())
    if version is not None:
        matches = [x for x in matches if x[1] == version]
    if len(matches) == 1:
        return "found", ""
    if len(matches) > 1:
        return "ambiguous", f"{len(matches)} entries (fullUrl {target!r})"
    return kind, f" (looked for fullUrl {target!r}" + (f" with meta.versionId {version!r})" if version else ")")


def _urn_type_mismatch(ref: str, source: str,
                       by_url: dict[str, list[tuple[int, str | None, dict[str, Any] | None]]]) -> str | None:
    """A ``Type/id`` reference from an entry with a ``urn:`` fullUrl whose id is another entry's
    urn (``Practitioner/5d95...`` beside ``urn:uuid:5d95...``): the reference validator reads it as
    naming that entry (the fullUrl's urn prefix and the id), so when that entry is of another
    type the reference is wrong whatever the Bundle type. A match of the same type is left to
    the usual rules (a relative reference does not resolve against a urn: fullUrl)."""
    rtype, _, rid = ref.partition("/")
    matches = by_url.get(source[:source.rfind(":") + 1] + rid, ())
    if len(matches) != 1 or matches[0][2] is None:
        return None
    n, _vid, res = matches[0]
    got = res.get("resourceType") if res is not None else None
    if not isinstance(got, str) or got == rtype:
        return None
    return f"{n} (fullUrl {source[:source.rfind(':') + 1] + rid!r}), whose resourceType is {got}, not {rtype}"


def _short(val: str, n: int = 60) -> str:
    return repr(val if len(val) <= n else val[:n] + "...")
