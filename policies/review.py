"""What a proposed policy change is checked with, pure: run the example suite, explain a
decision, diff two versions.

Why "review": these are the checks a policy document goes through between an edit and its
approval (``psvn policy test | explain | diff``; ``propose`` refuses a document that fails its
suite; the console simulates a proposal with ``diff``). The propose -> approve -> publish
workflow itself, with its stored proposals, is :mod:`psvn.broker.policy_admin`; a *message's*
lifecycle is :mod:`psvn.protocol.lifecycle`.

``diff`` answers "which real decisions change?" exhaustively rather than by sampling: it
enumerates the decision space both documents can tell apart (every member type, plus every member,
mailbox and region member a rule names; every catalogue type; every purpose; every
classification; with no subject, a consenting subject and an opted-out one) and decides each
point under both versions. A rule can only tell requests apart by the values it names, so an
anonymous member of each type stands for every member no rule names. The same space drives lint's
reachability check. ``diff_requests`` replays recorded traffic metadata instead.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec

from psvn.core.addresses import MEMBER_TYPES
from psvn.core.errors import Code, PsvnError
from psvn.policies.consent import ConsentChange, ConsentRegistry
from psvn.policies.engine import Decision, DecisionRequest, Engine, PolicyRules, Step, parse_rules
from psvn.protocol.envelope import CLASSIFICATIONS

# Which member types an address scheme can belong to (an ODS code names trusts and practices).
SCHEME_TYPES: dict[str, tuple[str, ...]] = {
    "ods": ("nhs-trust", "gp"), "gss": ("council",), "ccn": ("charity",), "ch": ("business",),
    "oda": ("oda",), "pds": ("pds",), "pol": ("police",), "psvn": ("operator",),
}
ConsentCase = Literal["no-subject", "subject", "opted-out"]
CONSENTING_SUBJECT = "nhs:0000000001"
OPTED_OUT_SUBJECT = "nhs:0000000002"


def anonymous(member_type: str) -> str:
    """The stand-in for every member of a type that no rule names."""
    return f"(any {member_type})"


def opted_out_registry() -> ConsentRegistry:
    reg = ConsentRegistry()
    reg.apply(ConsentChange(subject=OPTED_OUT_SUBJECT, seq=1, opt_outs=["*"],
                            effective="2000-01-01T00:00:00Z", issuer="pds:lifecycle"))
    return reg


def rules_of(doc: dict[str, Any]) -> PolicyRules:
    """The rules that parse (lint reports the rest)."""
    return parse_rules(doc.get("rules") or {})[0]


def _party_names(patterns: Iterable[str], orgs: set[str], type_mbs: set[tuple[str, str]],
                 org_mbs: set[tuple[str, str]]) -> None:
    for p in patterns:
        if p == "*" or p.startswith("region:"):
            continue
        head, _, mailbox = p.partition("/")
        if ":" in head:
            orgs.add(head)
            if mailbox:
                org_mbs.add((head, mailbox))
        elif mailbox:
            type_mbs.add((head, mailbox))


class DecisionSpace:
    """Every request the given documents can tell apart (see the module docstring)."""

    def __init__(self, *docs: dict[str, Any]) -> None:
        orgs: set[str] = set()
        type_mbs: set[tuple[str, str]] = set()
        org_mbs: set[tuple[str, str]] = set()
        types: set[str] = set()
        purposes: set[str] = set()
        levels: set[str] = set(CLASSIFICATIONS)
        topics: set[str] = set()
        for doc in docs:
            rules = rules_of(doc)
            types.update((doc.get("catalogue") or {}).keys())
            purposes.update(rules.purposes)
            for r in rules.routing:
                _party_names([*r.from_, *r.to], orgs, type_mbs, org_mbs)
            for f in rules.feeds:
                _party_names([*f.publishers, *f.subscribers], orgs, type_mbs, org_mbs)
                topics.update(t.replace("*", "example") for t in f.topics if t != "*")
            for c in rules.classification:
                _party_names(c.recipients, orgs, type_mbs, org_mbs)
                levels.add(c.level)
            for members in rules.regions.values():
                orgs.update(m.partition("/")[0] for m in members)
            for _, rule in rules.all_rules():
                types.update(t for t in getattr(rule, "types", []) if "*" not in t)
                purposes.update(p for p in getattr(rule, "purposes", []) if "*" not in p)
                levels.update(c for c in getattr(rule, "classifications", []) if "*" not in c)
        parties = [(anonymous(t), t) for t in MEMBER_TYPES]
        for org in sorted(orgs):
            for t in SCHEME_TYPES.get(org.partition(":")[0], MEMBER_TYPES):
                parties.append((org, t))
        self.parties = parties
        self.recipients: list[tuple[str, str, str | None]] = [(o, t, None) for o, t in parties]
        for o, t in parties:
            for mb in sorted({mb for tt, mb in type_mbs if tt == t} | {mb for oo, mb in org_mbs if oo == o}):
                self.recipients.append((o, t, mb))
        self.types = sorted(types)
        self.purposes = sorted(purposes)
        self.levels = sorted(levels)
        self.topics = sorted(topics)

    def __len__(self) -> int:
        send = len(self.parties) * len(self.recipients) * len(self.types) * len(self.purposes) \
            * len(self.levels) * 3
        publish = len(self.parties) * len(self.topics) * len(self.types) * len(self.purposes) \
            * len(self.levels)
        subscribe = (len(self.parties) + 1) * len(self.parties) * len(self.topics) \
            * (len(self.types) + 1) * len(self.purposes) * len(self.levels)
        return send + publish + subscribe

    def points(self, keep: Callable[[str, str, str], bool] | None = None, *,
               sender: Callable[[str, str], bool] | None = None,
               recipient: Callable[[str, str, str | None], bool] | None = None,
               level: Callable[[str], bool] | None = None,
               ) -> Iterator[tuple[DecisionRequest, ConsentCase]]:
        """Every point, or those the filters keep: ``keep(action, type, purpose)`` prunes whole
        (type, purpose) slices; ``sender(org, type)``, ``recipient(org, type, mailbox)`` and
        ``level(classification)`` prune parties and levels (a subscribe's "any publisher" is
        always kept)."""
        cases: tuple[tuple[ConsentCase, str | None], ...] = (
            ("no-subject", None), ("subject", CONSENTING_SUBJECT), ("opted-out", OPTED_OUT_SUBJECT))
        senders = [p for p in self.parties if sender is None or sender(*p)]
        recipients = [r for r in self.recipients if recipient is None or recipient(*r)]
        subscribers = [p for p in self.parties if recipient is None or recipient(p[0], p[1], None)]
        levels = [c for c in self.levels if level is None or level(c)]
        for type_ in self.types:
            for purpose in self.purposes:
                if keep is not None and not keep("send", type_, purpose):
                    continue
                for s_org, s_type in senders:
                    for r_org, r_type, mailbox in recipients:
                        for lvl in levels:
                            for case, subject in cases:
                                yield DecisionRequest(
                                    sender=s_org, sender_type=s_type, recipient=r_org,
                                    recipient_type=r_type, mailbox=mailbox, type=type_,
                                    purpose=purpose, classification=lvl, subject=subject), case
        for topic in self.topics:
            for type_ in self.types:
                for purpose in self.purposes:
                    if keep is not None and not keep("publish", type_, purpose):
                        continue
                    for s_org, s_type in senders:
                        for lvl in levels:
                            yield DecisionRequest(action="publish", sender=s_org, sender_type=s_type,
                                                  topic=topic, type=type_, purpose=purpose,
                                                  classification=lvl), "no-subject"
            for type_ in [*self.types, "*"]:
                for purpose in self.purposes:
                    if keep is not None and not keep("subscribe", type_, purpose):
                        continue
                    for p_org, p_type in [("", ""), *senders]:
                        for r_org, r_type in subscribers:
                            for lvl in levels:
                                yield DecisionRequest(
                                    action="subscribe", sender=p_org, sender_type=p_type,
                                    recipient=r_org, recipient_type=r_type, topic=topic,
                                    type=type_, purpose=purpose, classification=lvl), "no-subject"

    def slice_size(self, action: str) -> int:
        """Points in one (type, purpose) slice of an action."""
        if action == "send":
            return len(self.parties) * len(self.recipients) * len(self.levels) * 3
        if action == "publish":
            return len(self.parties) * len(self.levels)
        return (len(self.parties) + 1) * len(self.parties) * len(self.levels)


def _lawful_somewhere(*engines: Engine) -> Callable[[str, str, str], bool]:
    """Keep a (type, purpose) slice unless every engine's legal-basis stage denies it the same
    way (then every decision in it is that same deny, in every version)."""
    memo: dict[tuple[str, str], bool] = {}

    def keep(action: str, type_: str, purpose: str) -> bool:
        if action == "subscribe" and type_ == "*":
            return True
        hit = memo.get((type_, purpose))
        if hit is None:
            verdicts = [e.legal_check(type_, purpose) for e in engines]
            hit = any(ok for ok, _ in verdicts) or len({tuple(ids) for _, ids in verdicts}) > 1
            memo[(type_, purpose)] = hit
        return hit

    return keep


def decide_all(engine: Engine, space: DecisionSpace, *, prune: bool = True,
               ) -> Iterator[tuple[DecisionRequest, ConsentCase, Decision]]:
    """Decide every point. With ``prune``, a (type, purpose) slice the legal-basis stage denies is
    represented by its first point only (every other point in it gets the same decision)."""
    registry = opted_out_registry()
    keep = _lawful_somewhere(engine) if prune else None
    if keep is not None:
        denied_pairs: dict[tuple[str, str], bool] = {}
        for req, case in space.points(lambda a, t, p: not keep(a, t, p)):
            if denied_pairs.setdefault((req.type, req.purpose), True):
                denied_pairs[(req.type, req.purpose)] = False
                yield req, case, engine.decide(req, consent=registry)
    for req, case in space.points(keep):
        yield req, case, engine.decide(req, consent=registry)


# --- the example suite (tests.toml) --------------------------------------------------------------


class Case(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True,
           rename={"from_": "from"}):
    """One example decision a compliance officer expects, kept beside the policy."""

    name: str
    from_: str
    from_type: str
    type: str
    purpose: str
    expect: Literal["allow", "deny"]
    to: str = ""
    to_type: str = ""
    classification: str = "OFFICIAL"
    subject: str | None = None
    opted_out: list[str] = msgspec.field(default_factory=list)  # the subject's recorded opt-outs
    action: Literal["send", "publish", "subscribe"] = "send"
    topic: str | None = None
    ttl_seconds: int | None = None
    from_region: str | None = None
    to_region: str | None = None
    rule: str | None = None  # must be among the deciding rule ids
    stage: str | None = None  # the stage that must decide

    def request(self) -> DecisionRequest:
        recipient, _, mailbox = self.to.partition("/")
        return DecisionRequest(
            action=self.action, sender=self.from_, sender_type=self.from_type, recipient=recipient,
            recipient_type=self.to_type, mailbox=mailbox or None, type=self.type,
            purpose=self.purpose, classification=self.classification, subject=self.subject,
            topic=self.topic, ttl_seconds=self.ttl_seconds, sender_region=self.from_region,
            recipient_region=self.to_region)

    def registry(self) -> ConsentRegistry | None:
        if not self.opted_out:
            return None
        if self.subject is None:
            raise PsvnError(Code.CONFIG_INVALID, f"case {self.name!r}: opted_out needs a subject",
                            field="subject", rule="case-syntax")
        reg = ConsentRegistry()
        reg.apply(ConsentChange(subject=self.subject, seq=1, opt_outs=list(self.opted_out),
                                effective="2000-01-01T00:00:00Z", issuer="pds:test"))
        return reg


class CaseResult(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    passed: bool
    expected: str
    decision: Decision
    problems: list[str]


class SuiteReport(msgspec.Struct, kw_only=True, frozen=True):
    policy_version: int
    passed: int
    failed: int
    results: list[CaseResult]
    uncovered: list[str]  # rules of the policy that decide no case

    @property
    def ok(self) -> bool:
        return self.failed == 0


def load_suite(path: Path | str) -> list[Case]:
    """Read tests.toml (a file, or the policy folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "tests.toml"
    if not p.exists():
        raise PsvnError(Code.NOT_FOUND, f"{p}: no test suite (tests.toml) beside the policy",
                        field=str(p), rule="suite-missing")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PsvnError(Code.CONFIG_INVALID, f"{p.name}: {exc}", field=p.name, rule="toml-syntax") from exc
    return parse_suite(raw, source=p.name)


def parse_suite(raw: dict[str, Any], *, source: str = "tests.toml") -> list[Case]:
    unknown = set(raw) - {"case"}
    if unknown:
        raise PsvnError(Code.CONFIG_INVALID, f"{source}: unknown section(s) {sorted(unknown)}; "
                        "cases are [[case]] tables", field=source, rule="case-syntax")
    cases: list[Case] = []
    for i, c in enumerate(raw.get("case", [])):
        try:
            cases.append(msgspec.convert(c, Case))
        except msgspec.ValidationError as exc:
            name = c.get("name", f"#{i}") if isinstance(c, dict) else f"#{i}"
            raise PsvnError(Code.CONFIG_INVALID, f"{source}: case[{i}] ({name}): {exc}",
                            field=f"case[{i}]", rule="case-syntax") from exc
    return cases


def run_suite(doc: dict[str, Any], cases: list[Case], *, engine: Engine | None = None) -> SuiteReport:
    """Decide every case and compare with what it expects."""
    engine = engine or Engine.from_document(doc)
    known = set(engine.policy.by_id())
    results: list[CaseResult] = []
    decided: set[str] = set()
    for case in cases:
        decision = engine.decide(case.request(), consent=case.registry())
        decided.update(decision.rule_ids, decision.supporting_rule_ids)
        problems: list[str] = []
        got = "allow" if decision.allow else "deny"
        if got != case.expect:
            problems.append(f"expected {case.expect}, got {got}: {decision.reason}")
        if case.rule is not None and case.rule not in decision.rule_ids:
            missing = "" if case.rule in known else f" (no rule {case.rule!r} in the policy)"
            problems.append(f"expected rule {case.rule} to decide, got {', '.join(decision.rule_ids)}"
                            + missing)
        if case.stage is not None and case.stage != decision.stage:
            problems.append(f"expected stage {case.stage}, got {decision.stage}")
        results.append(CaseResult(name=case.name, passed=not problems, expected=case.expect,
                                  decision=decision, problems=problems))
    failed = sum(not r.passed for r in results)
    return SuiteReport(policy_version=engine.version, passed=len(results) - failed, failed=failed,
                       results=results, uncovered=sorted(known - decided))


# --- explain ---------------------------------------------------------------------------------------


class Explanation(msgspec.Struct, kw_only=True, frozen=True):
    request: DecisionRequest
    decision: Decision
    steps: list[Step]

    def deciding(self) -> list[Step]:
        return [s for s in self.steps if s.rule_id in self.decision.rule_ids]


def explain(doc: dict[str, Any], req: DecisionRequest, *, consent: ConsentRegistry | None = None,
            engine: Engine | None = None) -> Explanation:
    engine = engine or Engine.from_document(doc)
    decision, steps = engine.explain(req, consent=consent)
    return Explanation(request=req, decision=decision, steps=steps)


# --- diff ----------------------------------------------------------------------------------------


class Outcome(msgspec.Struct, kw_only=True, frozen=True):
    allow: bool
    rule_ids: list[str]
    stage: str
    reason: str
    retention_days: int | None = None
    max_ttl_seconds: int | None = None

    @classmethod
    def of(cls, d: Decision) -> Outcome:
        return cls(allow=d.allow, rule_ids=list(d.rule_ids), stage=d.stage, reason=d.reason,
                   retention_days=d.retention_days, max_ttl_seconds=d.max_ttl_seconds)

    def same(self, other: Outcome) -> bool:
        return (self.allow, self.rule_ids, self.retention_days, self.max_ttl_seconds) == (
            other.allow, other.rule_ids, other.retention_days, other.max_ttl_seconds)


ChangeKind = Literal["now-allowed", "now-denied", "rules-changed"]


class Change(msgspec.Struct, kw_only=True, frozen=True):
    kind: ChangeKind
    request: dict[str, Any]
    consent: str
    old: Outcome
    new: Outcome


class DiffReport(msgspec.Struct, kw_only=True, frozen=True):
    old_version: int
    new_version: int
    compared: int
    changes: list[Change]
    counts: dict[str, int]

    @property
    def flips(self) -> list[Change]:
        return [c for c in self.changes if c.kind != "rules-changed"]


def describe_request(req: DecisionRequest) -> dict[str, Any]:
    """The fields that identify a request, without defaults (for reports and JSON)."""
    out: dict[str, Any] = {"action": req.action, "from": req.sender, "from_type": req.sender_type}
    if req.action != "publish":
        out["to"] = req.recipient + (f"/{req.mailbox}" if req.mailbox else "")
        out["to_type"] = req.recipient_type
    out.update(type=req.type, purpose=req.purpose, classification=req.classification)
    if req.topic:
        out["topic"] = req.topic
    if req.ttl_seconds is not None:
        out["ttl_seconds"] = req.ttl_seconds
    if req.sender_region:
        out["from_region"] = req.sender_region
    if req.recipient_region:
        out["to_region"] = req.recipient_region
    return out


def _change(req: DecisionRequest, consent: str, a: Decision, b: Decision,
            rule_changes: bool) -> Change | None:
    old, new = Outcome.of(a), Outcome.of(b)
    if old.same(new):
        return None
    if old.allow != new.allow:
        kind: ChangeKind = "now-allowed" if new.allow else "now-denied"
    elif rule_changes:
        kind = "rules-changed"
    else:
        return None
    return Change(kind=kind, request=describe_request(req), consent=consent, old=old, new=new)


def _report(old: Engine, new: Engine, compared: int, changes: list[Change]) -> DiffReport:
    counts = Counter(c.kind for c in changes)
    return DiffReport(old_version=old.version, new_version=new.version, compared=compared,
                      changes=changes, counts={k: counts.get(k, 0) for k in
                                               ("now-allowed", "now-denied", "rules-changed")})


def diff(old_doc: dict[str, Any], new_doc: dict[str, Any], *, rule_changes: bool = True) -> DiffReport:
    """Every decision in the space of both documents that differs between them."""
    old, new = Engine.from_document(old_doc), Engine.from_document(new_doc)
    space = DecisionSpace(old_doc, new_doc)
    registry = opted_out_registry()
    changes: list[Change] = []
    keep = _lawful_somewhere(old, new)
    # slices both versions deny identically at the legal-basis stage cannot change: count them
    compared = sum(space.slice_size(a) for a, t, p in _slices(space) if not keep(a, t, p))
    for req, case in space.points(keep):
        compared += 1
        c = _change(req, case, old.decide(req, consent=registry), new.decide(req, consent=registry),
                    rule_changes)
        if c is not None:
            changes.append(c)
    return _report(old, new, compared, changes)


def _slices(space: DecisionSpace) -> Iterator[tuple[str, str, str]]:
    for t in space.types:
        for p in space.purposes:
            yield "send", t, p
    for _ in space.topics:
        for t in space.types:
            for p in space.purposes:
                yield "publish", t, p
        for t in [*space.types, "*"]:
            for p in space.purposes:
                yield "subscribe", t, p


def diff_requests(old_doc: dict[str, Any], new_doc: dict[str, Any],
                  requests: Iterable[DecisionRequest], *, consent: ConsentRegistry | None = None,
                  rule_changes: bool = True) -> DiffReport:
    """What would change for these requests (e.g. recent traffic metadata from the audit)."""
    old, new = Engine.from_document(old_doc), Engine.from_document(new_doc)
    changes: list[Change] = []
    compared = 0
    for req in requests:
        compared += 1
        case = "no-subject" if req.subject is None else "recorded"
        c = _change(req, case, old.decide(req, consent=consent), new.decide(req, consent=consent),
                    rule_changes)
        if c is not None:
            changes.append(c)
    return _report(old, new, compared, changes)


class ChangeGroup(msgspec.Struct, kw_only=True, frozen=True):
    """Changes that differ only in which member (or subject case) they are about."""

    kind: ChangeKind
    action: str
    from_type: str
    to: str  # member type, with the mailbox if any ("council/adult-social-care")
    type: str
    purpose: str
    classification: str
    topic: str | None
    old_rule_ids: list[str]
    new_rule_ids: list[str]
    count: int
    example: Change


def group_changes(changes: Iterable[Change]) -> list[ChangeGroup]:
    """Fold changes that share everything but the member names and consent case."""
    groups: dict[tuple[Any, ...], list[Change]] = {}
    for c in changes:
        r = c.request
        mailbox = r.get("to", "").partition("/")[2]
        to = r.get("to_type", "") + (f"/{mailbox}" if mailbox else "")
        key = (c.kind, r["action"], r["from_type"], to, r["type"], r["purpose"],
               r["classification"], r.get("topic"), tuple(c.old.rule_ids), tuple(c.new.rule_ids))
        groups.setdefault(key, []).append(c)
    order = {"now-denied": 0, "now-allowed": 1, "rules-changed": 2}
    out = [ChangeGroup(kind=k[0], action=k[1], from_type=k[2], to=k[3], type=k[4], purpose=k[5],
                       classification=k[6], topic=k[7], old_rule_ids=list(k[8]),
                       new_rule_ids=list(k[9]), count=len(v), example=v[0])
           for k, v in groups.items()]
    out.sort(key=lambda g: (order[g.kind], -g.count, g.action, g.from_type, g.to, g.type, g.purpose))
    return out
