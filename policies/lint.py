"""``psvn policy lint``: find what is wrong with a policy set before anyone signs it.

Four families of findings, each with the rule id, a severity, a message and where it is
(file and line when the folder's text is at hand):

- **syntax**: TOML that does not parse, unknown sections or fields, wrong types, duplicate ids;
- **names**: message types not in the catalogue, member types that do not exist, member
  addresses that are not addresses, purposes outside ``[purposes]``, unknown classifications,
  regions or (if a registry is given) members;
- **reachability**: a rule that decides no request in the decision space (see
  policies/review.py), e.g. an allow shadowed by a broader deny or by an earlier stage, with
  what decides those requests instead; a type or level that every request of is denied;
- **anomalies** between rules of the same kind (after Al-Shaer's firewall taxonomy): an allow and
  a deny that overlap without the deny saying it ``overrides`` the allow (a conflict: the deny
  wins there); a rule that another rule of the same effect already covers (redundant);
  retention rules that disagree for a type.

Errors make ``psvn policy lint`` fail; warnings and notes do not (``--strict`` fails on warnings).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import msgspec

from psvn.core import addresses
from psvn.core.addresses import MEMBER_TYPES
from psvn.core.errors import PsvnError
from psvn.policies import bundle
from psvn.policies.engine import (
    BUILTIN_IDS,
    SECTIONS,
    AudienceRule,
    ClassificationRule,
    Engine,
    FeedRule,
    Glob,
    Party,
    Rule,
    parse_rules,
)
from psvn.policies.review import DecisionSpace, opted_out_registry
from psvn.protocol.envelope import CLASSIFICATIONS

Severity = Literal["error", "warning", "info"]
_MAILBOX = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_TOML_LINE = re.compile(r"at line (\d+)")


class Finding(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    severity: Severity
    kind: str  # syntax, unknown-type, unknown-member, unknown-member-type, unknown-purpose, ...
    message: str
    rule_id: str | None = None
    file: str | None = None
    line: int | None = None

    def where(self) -> str:
        if self.file and self.line:
            return f"{self.file}:{self.line}"
        return self.file or ""


class LintReport(msgspec.Struct, kw_only=True, frozen=True):
    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self) -> dict[str, int]:
        c = Counter(f.severity for f in self.findings)
        return {k: c.get(k, 0) for k in ("error", "warning", "info")}

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]


class _Locator:
    """Lines of ``[[section]]`` headers, ``[table.key]`` headers and values in rules.toml."""

    _HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_-]+)\s*\]\]")
    _TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_-]+)(?:\.([A-Za-z0-9_\"-]+))?\s*\]\s*(#.*)?$")

    def __init__(self, text: str | None, file: str) -> None:
        self.file = file
        self.lines = (text or "").splitlines()
        self.headers: dict[str, list[int]] = {}
        self.tables: dict[str, int] = {}
        self._starts: list[int] = []
        for n, line in enumerate(self.lines, 1):
            m = self._HEADER.match(line)
            if m:
                self.headers.setdefault(m.group(1), []).append(n)
                self._starts.append(n)
                continue
            m = self._TABLE.match(line)
            if m:
                key = m.group(1) + (f".{m.group(2).strip(chr(34))}" if m.group(2) else "")
                self.tables[key] = n
                self._starts.append(n)

    def line(self, section: str, index: int | None = None, value: str | None = None) -> int | None:
        if not self.lines:
            return None
        if index is None:
            if section in self.tables:
                return self.tables[section]
            heads = self.headers.get(section)
            return heads[0] if heads else None
        starts = self.headers.get(section, [])
        if index >= len(starts):
            return None
        start = starts[index]
        if value is None:
            return start
        end = next((s for s in self._starts if s > start), len(self.lines) + 1)
        quoted = json.dumps(value)
        for n in range(start, end):
            if quoted in self.lines[n - 1]:
                return n
        return start


class _Linter:
    def __init__(self, doc: dict[str, Any], *, rules_text: str | None, file: str,
                 members: Mapping[str, str] | None) -> None:
        self.doc = doc
        self.loc = _Locator(rules_text, file)
        self.file = file
        self.members = members
        self.findings: list[Finding] = []
        self.catalogue: set[str] = set((doc.get("catalogue") or {}).keys())
        raw = doc.get("rules") or {}
        self.rules, self.problems = parse_rules(raw)
        # where each id sits: (section, index in the raw list)
        self.index: dict[str, tuple[str, int]] = {}
        if isinstance(raw, dict):
            for section in SECTIONS:
                for i, r in enumerate(raw.get(section) or []):
                    if isinstance(r, dict) and isinstance(r.get("id"), str):
                        self.index.setdefault(r["id"], (section, i))

    # --- output ---------------------------------------------------------------------------------

    def add(self, severity: Severity, kind: str, message: str, rule_id: str | None = None, *,
            value: str | None = None, section: str | None = None, index: int | None = None) -> None:
        line = None
        if rule_id is not None and rule_id in self.index and section is None:
            section, index = self.index[rule_id]
        if section is not None:
            line = self.loc.line(section, index, value)
        self.findings.append(Finding(severity=severity, kind=kind, message=message,
                                     rule_id=rule_id, file=self.file, line=line))

    # --- the checks -----------------------------------------------------------------------------

    def run(self) -> list[Finding]:
        for p in self.problems:
            self.add("error", "syntax", p.message, p.rule_id, section=p.section, index=p.index)
        self.check_names()
        self.check_coverage()
        engine = Engine(self.rules, version=int(self.doc.get("version", 0)))
        space = DecisionSpace(self.doc)
        self.check_anomalies(space)
        self.check_reachability(engine, space)
        return self.findings

    def _types(self, rid: str, patterns: list[str]) -> None:
        if not self.catalogue:
            return
        for t in patterns:
            if t == "*":
                continue
            if "*" in t:
                if not any(Glob([t]).match(c) for c in self.catalogue):
                    self.add("warning", "unknown-type",
                             f"type pattern {t!r} matches no type in the catalogue", rid, value=t)
            elif t not in self.catalogue:
                near = _nearest(t, self.catalogue)
                self.add("error", "unknown-type",
                         f"type {t!r} is not in the message catalogue" +
                         (f" (did you mean {near!r}?)" if near else ""), rid, value=t)

    def _purposes(self, rid: str, patterns: list[str]) -> None:
        vocab = self.rules.purposes
        if not vocab:
            return
        for p in patterns:
            if p == "*":
                continue
            if "*" in p:
                if not any(Glob([p]).match(v) for v in vocab):
                    self.add("warning", "unknown-purpose",
                             f"purpose pattern {p!r} matches no purpose in [purposes]", rid, value=p)
            elif p not in vocab:
                near = _nearest(p, set(vocab))
                self.add("error", "unknown-purpose", f"purpose {p!r} is not in [purposes]" +
                         (f" (did you mean {near!r}?)" if near else ""), rid, value=p)

    def _levels(self, rid: str, levels: list[str]) -> None:
        for c in levels:
            if c != "*" and c not in CLASSIFICATIONS:
                self.add("error", "unknown-classification",
                         f"classification {c!r} is not one of {', '.join(CLASSIFICATIONS)}", rid,
                         value=c)

    def _parties(self, rid: str, patterns: list[str], *, sender: bool) -> None:
        for p in patterns:
            if p == "*":
                continue
            if p.startswith("region:"):
                if p[len("region:"):] not in self.rules.regions:
                    self.add("error", "unknown-region", f"{p!r}: no such region in [regions]", rid,
                             value=p)
                continue
            head, _, mailbox = p.partition("/")
            if mailbox and sender:
                self.add("error", "mailbox-on-sender",
                         f"{p!r}: a sender is a member, not a mailbox", rid, value=p)
            if "/" in p and not _MAILBOX.fullmatch(mailbox):
                self.add("error", "bad-mailbox", f"{p!r}: {mailbox!r} is not a mailbox name", rid,
                         value=p)
            if ":" in head:
                self._member(rid, head, p)
            elif head not in MEMBER_TYPES:
                near = _nearest(head, set(MEMBER_TYPES))
                self.add("error", "unknown-member-type",
                         f"{head!r} is neither a member type ({', '.join(MEMBER_TYPES)}) nor a "
                         "member address" + (f" (did you mean {near!r}?)" if near else ""), rid,
                         value=p)

    def _member(self, rid: str | None, org: str, value: str, *, section: str | None = None) -> None:
        try:
            addresses.parse(org, field="member")
        except PsvnError as exc:
            self.add("error", "unknown-member", f"{value!r}: {exc.detail}", rid, value=value,
                     section=section)
            return
        if self.members is not None and org not in self.members:
            self.add("warning", "unknown-member", f"{org!r} is not a member in the registry", rid,
                     value=value, section=section)

    def check_names(self) -> None:
        r = self.rules
        for section, rule in r.all_rules():
            rid = rule.id
            if isinstance(rule, Rule):
                self._parties(rid, rule.from_, sender=True)
                self._parties(rid, rule.to, sender=False)
            if isinstance(rule, FeedRule):
                self._parties(rid, rule.publishers, sender=True)
                self._parties(rid, rule.subscribers, sender=False)
            if isinstance(rule, ClassificationRule):
                self._parties(rid, rule.recipients, sender=False)
                self._levels(rid, [rule.level])
            if isinstance(rule, AudienceRule):
                for t in rule.member_types:
                    if t not in MEMBER_TYPES:
                        self.add("error", "unknown-member-type",
                                 f"{t!r} is not a member type ({', '.join(MEMBER_TYPES)})", rid,
                                 value=t)
            if hasattr(rule, "types"):
                self._types(rid, rule.types)
            if hasattr(rule, "purposes"):
                self._purposes(rid, rule.purposes)
            if hasattr(rule, "classifications"):
                self._levels(rid, rule.classifications)
            if section in ("rule", "feed"):
                for target in rule.overrides:
                    other = r.by_id().get(target)
                    if other is None or other[0] != section or other[1].effect != "allow":
                        self.add("error", "bad-override",
                                 f"overrides {target!r}, which is not an allow [[{section}]] rule",
                                 rid, value=target)
        for name, members in r.regions.items():
            for m in members:
                self._member(None, m.partition("/")[0], m, section="regions")
            if not members:
                self.add("warning", "empty-region", f"region {name!r} has no members",
                         section="regions")

    def check_coverage(self) -> None:
        r = self.rules
        if not r.purposes:
            self.add("warning", "stage-off", "no [purposes]: any purpose string is accepted")
        if not r.legal_basis:
            self.add("warning", "stage-off",
                     "no [[legal_basis]] rules: any purpose goes for any type")
        else:
            bare = [t for t in sorted(self.catalogue)
                    if not any(Glob(lb.types).match(t) for lb in r.legal_basis)]
            if bare:
                self.add("warning", "no-legal-basis",
                         f"no [[legal_basis]] names {len(bare)} catalogue type(s), so every message "
                         f"of them is denied: {', '.join(bare)}", section="legal_basis", index=0)
            lawful = Glob(sorted({p for lb in r.legal_basis for p in lb.purposes}))
            for p in sorted(r.purposes):
                if not lawful.match(p):
                    self.add("info", "unused-purpose",
                             f"purpose {p!r} is lawful for no type", section=f"purposes.{p}")
        if not r.classification:
            self.add("warning", "stage-off",
                     "no [[classification]] rules: every member receives every level")
        else:
            for level in CLASSIFICATIONS:
                if not any(c.level == level for c in r.classification):
                    self.add("warning", "no-classification",
                             f"no [[classification]] rule for {level}: every {level} message is "
                             "denied", section="classification", index=0)
        if not r.consent:
            self.add("info", "stage-off",
                     "no [[consent]] rules: recorded opt-outs block every purpose they name")
        for c in r.consent:
            if c.effect == "override" and "*" in c.purposes and "*" in c.types:
                self.add("warning", "consent-overridden",
                         "overrides opt-outs for every purpose and type: no opt-out ever blocks "
                         "anything", c.id)
        for f in r.feeds:
            if f.same_region and not r.regions:
                self.add("warning", "no-regions",
                         "same_region needs [regions] (or regions from the registry); without "
                         "them no subscription matches", f.id)
        self._check_retention()

    def _check_retention(self) -> None:
        r = self.rules
        catalogue = self.doc.get("catalogue") or {}
        bare: list[str] = []
        for t in sorted(self.catalogue):
            matching = [x for x in r.retention if Glob(x.types).match(t)]
            if r.retention and not matching:
                bare.append(t)
            days = {x.retention_days for x in matching}
            ttls = {x.max_ttl_seconds for x in matching}
            if len(days) > 1 or len(ttls) > 1:
                ids = ", ".join(x.id for x in matching)
                self.add("warning", "conflict",
                         f"retention rules {ids} disagree for {t}: the strictest applies "
                         f"({min(days)} days)", matching[-1].id)
            entry = catalogue.get(t)
            if matching and isinstance(entry, dict) and "retention_days" in entry \
                    and entry["retention_days"] != min(days):
                self.add("warning", "retention-mismatch",
                         f"{t}: retention rules keep {min(days)} days but the catalogue says "
                         f"{entry['retention_days']}", matching[0].id)
        if bare:
            self.add("info", "no-retention", f"no [[retention]] rule for {len(bare)} type(s), so "
                     f"the catalogue's retention_days applies: {', '.join(bare)}",
                     section="retention", index=0)

    # --- anomalies between rules of one kind -----------------------------------------------------

    def _dims(self, rule: Rule | FeedRule, space: DecisionSpace,
              region_of: dict[str, frozenset[str]]) -> list[set[Any]]:
        explicit_types = {t for a in self.rules.audience for t in a.member_types}
        allow = rule.effect == "allow"

        def party_set(patterns: list[str], with_mailboxes: bool, recipient: bool) -> set[Any]:
            party = Party(patterns)
            pool = space.recipients if with_mailboxes else [(o, t, None) for o, t in space.parties]
            return {(o, t, mb) for o, t, mb in pool
                    if party.match(o, t, mb, region_of.get(o, frozenset()),
                                   explicit=recipient and allow and t in explicit_types) is not None}

        types = {t for t in space.types if Glob(rule.types).match(t)}
        purposes = {p for p in space.purposes if Glob(rule.purposes).match(p)}
        levels = {c for c in space.levels if Glob(rule.classifications).match(c)}
        if isinstance(rule, Rule):
            return [party_set(rule.from_, False, False), party_set(rule.to, True, True), types,
                    purposes, levels]
        topics = {t for t in space.topics if Glob(rule.topics).match(t)}
        return [topics, party_set(rule.publishers, False, False),
                party_set(rule.subscribers, False, True), types, purposes, levels]

    def check_anomalies(self, space: DecisionSpace) -> None:
        region_of = self._region_of()
        kinds: tuple[list[Rule | FeedRule], ...] = (list(self.rules.routing), list(self.rules.feeds))
        for rules in kinds:
            dims = {r.id: self._dims(r, space, region_of) for r in rules}
            for i, a in enumerate(rules):
                for b in rules[i + 1:]:
                    da, db = dims[a.id], dims[b.id]
                    if not all(x & y for x, y in zip(da, db, strict=True)):
                        continue
                    if a.effect != b.effect:
                        allow, deny = (a, b) if a.effect == "allow" else (b, a)
                        self._conflict(allow, deny, dims[allow.id], dims[deny.id])
                    else:
                        self._redundant(a, b, da, db)
            for d in rules:
                for target in d.overrides:
                    if target in dims and not all(
                            x & y for x, y in zip(dims[d.id], dims[target], strict=True)):
                        self.add("warning", "stale-override",
                                 f"overrides {target!r} but the two rules match no request in "
                                 "common", d.id, value=target)

    def _conflict(self, allow: Rule | FeedRule, deny: Rule | FeedRule, da: list[set[Any]],
                  dd: list[set[Any]]) -> None:
        if all(x <= y for x, y in zip(da, dd, strict=True)):
            return  # the allow is shadowed: reachability reports it, with what decides instead
        if allow.id in deny.overrides:
            return  # an exception the deny declares
        n = 1
        for x, y in zip(da, dd, strict=True):
            n *= len(x & y)
        example = [sorted(x & y, key=str)[0] for x, y in zip(da, dd, strict=True)]
        self.add("warning", "conflict",
                 f"allow {allow.id} and deny {deny.id} both match {n} request(s), e.g. "
                 f"{_example(allow, example)}; there the deny wins. If that exception is "
                 f"intended, add overrides = [\"{allow.id}\"] to {deny.id}", deny.id)

    def _redundant(self, a: Rule | FeedRule, b: Rule | FeedRule, da: list[set[Any]],
                   db: list[set[Any]]) -> None:
        if isinstance(a, FeedRule) and isinstance(b, FeedRule) and a.same_region != b.same_region:
            narrower, wider = (a, b) if a.same_region else (b, a)
            dn, dw = (da, db) if a.same_region else (db, da)
            if all(x <= y for x, y in zip(dn, dw, strict=True)):
                self.add("warning", "redundant",
                         f"{narrower.id} adds nothing: {wider.id} already matches every request it "
                         "does, in any region", narrower.id)
            return
        if all(x <= y for x, y in zip(db, da, strict=True)):
            self.add("warning", "redundant", f"{b.id} adds nothing: {a.id} already matches every "
                     f"request it does ({b.effect})", b.id)
        elif all(x <= y for x, y in zip(da, db, strict=True)):
            self.add("warning", "redundant", f"{a.id} adds nothing: {b.id} already matches every "
                     f"request it does ({a.effect})", a.id)

    # --- reachability ---------------------------------------------------------------------------

    def check_reachability(self, engine: Engine, space: DecisionSpace) -> None:
        """A rule is reachable if some request in the space is decided by it (or, for the kinds
        that support an allow, allowed relying on it). Only requests the rule could match are
        tried (for supporting kinds: that an allow rule could match too), and the search stops
        at the first request it decides."""
        registry = opted_out_registry()
        region_of = self._region_of()
        allows = [(sec, r) for sec, r in self.rules.all_rules()
                  if sec in ("rule", "feed") and r.effect == "allow"]
        for section, rule in self.rules.all_rules():
            own = self._filters(section, rule, region_of)
            if section in ("rule", "feed"):
                scans = [own]
            elif section == "audience":  # decides only where an allow reaches through a wildcard
                scans = [_both(own, self._filters(s, a, region_of, explicit=False))
                         for s, a in allows if _has_wildcard(a)]
            else:
                scans = [_both(own, self._filters(s, a, region_of)) for s, a in allows]
            matched = 0
            deciders: Counter[str] = Counter()
            reachable = False
            for f in scans:
                for req, _ in space.points(f.keep, sender=f.sender, recipient=f.recipient,
                                           level=f.level):
                    if not engine.rule_matches(rule.id, req):
                        continue
                    matched += 1
                    d = engine.decide(req, consent=registry)
                    if rule.id in d.rule_ids or rule.id in d.supporting_rule_ids:
                        reachable = True
                        break
                    deciders.update(d.rule_ids)
                if reachable:
                    break
            if reachable:
                continue
            severity: Severity = "warning"
            if isinstance(rule, Rule | FeedRule) and rule.effect == "allow":
                severity = "error"
            elif isinstance(rule, AudienceRule):
                severity = "info"
            self.add(severity, "unreachable",
                     _unreachable_text(section, rule, matched, deciders), rule.id)

    def _region_of(self) -> dict[str, frozenset[str]]:
        region_of: dict[str, frozenset[str]] = {}
        for name, members in self.rules.regions.items():
            for m in members:
                region_of[m] = region_of.get(m, frozenset()) | {name}
        return region_of

    def _filters(self, section: str, rule: Any, region_of: dict[str, frozenset[str]], *,
                 explicit: bool = True) -> _Filters:
        """Filters on the decision space that keep what the rule's own fields do not rule out."""
        actions = {"rule": ("send",), "feed": ("publish", "subscribe"),
                   "classification": ("send", "subscribe"), "consent": ("send", "subscribe"),
                   "audience": ("send", "subscribe")}.get(section, ("send", "publish", "subscribe"))
        types = Glob(rule.types) if hasattr(rule, "types") else None
        purposes = Glob(rule.purposes) if hasattr(rule, "purposes") else None

        def keep(action: str, t: str, p: str) -> bool:
            return (action in actions and (types is None or t == "*" or types.match(t))
                    and (purposes is None or purposes.match(p)))

        def regions(org: str) -> frozenset[str]:
            return region_of.get(org, frozenset())

        named_only = {t for a in self.rules.audience for t in a.member_types} if explicit else set()
        if isinstance(rule, Rule | FeedRule):
            frm = Party(rule.from_ if isinstance(rule, Rule) else rule.publishers)
            to = Party(rule.to if isinstance(rule, Rule) else rule.subscribers)
            allow = rule.effect == "allow"
            return _Filters(
                keep,
                lambda o, t: frm.match(o, t, None, regions(o)) is not None,
                lambda o, t, mb: to.match(o, t, mb, regions(o),
                                          explicit=allow and t in named_only) is not None,
                Glob(rule.classifications).match)
        if isinstance(rule, ClassificationRule):
            cleared = Party(rule.recipients)
            return _Filters(keep, None,
                            lambda o, t, mb: cleared.match(o, t, mb, regions(o)) is not None,
                            rule.level.__eq__)
        if isinstance(rule, AudienceRule):
            return _Filters(keep, None, lambda o, t, mb: t in rule.member_types, None)
        return _Filters(keep, None, None, None)


class _Filters(NamedTuple):
    keep: Callable[[str, str, str], bool] | None
    sender: Callable[[str, str], bool] | None
    recipient: Callable[[str, str, str | None], bool] | None
    level: Callable[[str], bool] | None


def _both(a: _Filters, b: _Filters) -> _Filters:
    """Keep what both keep."""
    def join(f: Any, g: Any) -> Any:
        if f is None or g is None:
            return f or g
        return lambda *x: f(*x) and g(*x)
    return _Filters(*(join(f, g) for f, g in zip(a, b, strict=True)))


def _has_wildcard(rule: Rule | FeedRule) -> bool:
    to = rule.to if isinstance(rule, Rule) else rule.subscribers
    return any(p == "*" or p.startswith("region:") for p in to)


def _unreachable_text(section: str, rule: Any, matched: int, deciders: Counter[str]) -> str:
    if isinstance(rule, AudienceRule):
        return ("changes no decision today: no allow reaches "
                f"{', '.join(rule.member_types)} through a wildcard (a guard for future rules)")
    if section not in ("rule", "feed"):
        if not matched:
            return "no allow rule covers any request it applies to, so no decision relies on it"
        top = ", ".join(f"{k} ({n})" for k, n in deciders.most_common(4))
        return (f"no allowed request relies on it: the {matched} request(s) where it and an allow "
                f"rule both apply are decided by {top}")
    if not matched:
        return "matches no request: no combination of the values it names can occur"
    top = ", ".join(f"{k} ({n})" for k, n in deciders.most_common(4))
    verb = {"allow": "allows", "deny": "denies"}.get(getattr(rule, "effect", ""), "decides")
    return (f"never {verb}: the {matched} request(s) it matches are all decided by other rules: "
            f"{top}")


def _example(rule: Rule | FeedRule, point: list[Any]) -> str:
    if isinstance(rule, Rule):
        (s, st, _), (r, rt, mb), t, p, c = point
        return f"{st} {s} -> {rt} {r}{'/' + mb if mb else ''}, {t}, {p}, {c}"
    topic, (s, st, _), (r, rt, _), t, p, c = point
    return f"{rt} {r} subscribing to {topic} from {st} {s}, {t}, {p}, {c}"


def _nearest(word: str, candidates: set[str]) -> str | None:
    import difflib

    hits = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.75)
    return hits[0] if hits else None


def lint_document(doc: dict[str, Any], *, rules_text: str | None = None, file: str = "rules.toml",
                  members: Mapping[str, str] | None = None) -> LintReport:
    """Lint a folded policy document; ``rules_text`` (the rules.toml source) gives line numbers,
    ``members`` (org -> member type, from the registry) enables the unknown-member check."""
    findings = _Linter(doc, rules_text=rules_text, file=file, members=members).run()
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: (order[f.severity], f.line or 0))
    return LintReport(findings=findings)


def lint_dir(path: Path | str = bundle.DEFAULT_DIR, *,
             members: Mapping[str, str] | None = None) -> LintReport:
    """Lint a policy folder: every file's syntax first, then the folded document, then tests.toml."""
    root = Path(path)
    findings: list[Finding] = []
    if not (root / "policyset.toml").exists():
        return LintReport(findings=[Finding(severity="error", kind="syntax", file=str(root),
                                            message="not a policy folder (no policyset.toml)")])
    texts: dict[str, str] = {}
    for name in ("policyset.toml", "catalogue.toml", "rules.toml", "tests.toml"):
        f = root / name
        if not f.exists():
            continue
        texts[name] = f.read_text()
        try:
            tomllib.loads(texts[name])
        except tomllib.TOMLDecodeError as exc:
            m = _TOML_LINE.search(str(exc))
            findings.append(Finding(severity="error", kind="syntax", message=f"TOML: {exc}",
                                    file=name, line=int(m.group(1)) if m else None))
    for f in sorted((root / "schemas").glob("*.json")) if (root / "schemas").is_dir() else []:
        try:
            json.loads(f.read_text())
        except ValueError as exc:
            findings.append(Finding(severity="error", kind="syntax", message=f"JSON: {exc}",
                                    file=f"schemas/{f.name}", line=getattr(exc, "lineno", None)))
    if findings:
        return LintReport(findings=findings)
    doc = bundle.load_dir(root)
    report = lint_document(doc, rules_text=texts.get("rules.toml"), members=members)
    findings = list(report.findings)
    if "tests.toml" in texts:
        findings.extend(_lint_suite(texts["tests.toml"], doc))
    return LintReport(findings=findings)


def _lint_suite(text: str, doc: dict[str, Any]) -> list[Finding]:
    from psvn.policies.review import parse_suite

    try:
        cases = parse_suite(tomllib.loads(text))
    except PsvnError as exc:
        return [Finding(severity="error", kind="test-syntax", message=exc.detail, file="tests.toml")]
    known = set(parse_rules(doc.get("rules") or {})[0].by_id()) | BUILTIN_IDS
    loc = _Locator(text, "tests.toml")
    out: list[Finding] = []
    for i, c in enumerate(cases):
        if c.rule is not None and c.rule not in known:
            out.append(Finding(severity="error", kind="unknown-rule", file="tests.toml",
                               line=loc.line("case", i, c.rule),
                               message=f"case {c.name!r} expects rule {c.rule!r}, which the policy "
                               "does not have"))
    return out

