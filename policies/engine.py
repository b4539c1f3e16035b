"""The policy engine: decides allow/deny for one message or feed action, with the rules that decided.

A small declarative format (``rules.toml``, see policies/README.md) compiled once per policy
version into set lookups and one regex per glob list; decisions are memoised per request shape,
so the common case is one tuple build and one dict lookup. Pure: no I/O, so egress and ingress
(and ``psvn policy explain``) run exactly the same code.

A decision passes through stages in a fixed order; the first stage that fails decides a deny:

1. purpose vocabulary and legal basis: the purpose must be one the policy knows and one the
   ``[[legal_basis]]`` rules list for the message type;
2. classification: the recipient must be cleared for the level (``[[classification]]``);
3. routing (``[[rule]]``, for ``send``) or feeds (``[[feed]]``, for ``publish``/``subscribe``):
   any matching deny wins, else a matching allow allows, else "no rule permits ...". Recipients of
   an ``[[audience]]`` member type (charities, businesses) count only allows that name them;
4. consent: a subject's recorded opt-out blocks the purposes it covers, unless a ``[[consent]]``
   override applies (e.g. safeguarding); ``require_subject`` rules insist on a subject reference;
5. retention: the strictest matching ``[[retention]]`` rule bounds the message's time to live.

A stage without any rules is not in force (``psvn policy lint`` warns). Data flows from
``sender`` to ``recipient`` in every action: for ``subscribe`` the sender is the publisher whose
feed is asked for (``""`` = any) and the recipient is the subscriber.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from psvn.core.errors import Code, PsvnError
from psvn.policies.consent import mask_subject

if TYPE_CHECKING:
    from psvn.policies.consent import ConsentRegistry

Action = Literal["send", "publish", "subscribe"]

# Built-in rule ids: they appear in decisions where no rule of the policy decided.
DEFAULT_DENY = "default-deny"
PURPOSE_UNKNOWN = "purpose-unknown"
LEGAL_BASIS_UNDECLARED = "legal-basis-undeclared"
CLASSIFICATION_UNDECLARED = "classification-undeclared"
CONSENT_DEFAULT = "consent-default-honour"
# the deny for a subject whose stored consent record could not be read or verified (fail closed)
CONSENT_UNREADABLE = "consent-record-unreadable"
BUILTIN_IDS = frozenset({DEFAULT_DENY, PURPOSE_UNKNOWN, LEGAL_BASIS_UNDECLARED,
                         CLASSIFICATION_UNDECLARED, CONSENT_DEFAULT})

_CACHE_MAX = 100_000


class DecisionRequest(msgspec.Struct, kw_only=True, frozen=True):
    sender: str  # organisation address, e.g. gss:E06000043 ("" for subscribe: any publisher)
    sender_type: str  # member type, e.g. council
    recipient: str = ""  # organisation address ("" for publish)
    recipient_type: str = ""
    type: str  # message type; "*" allowed for subscribe (all types on the topic)
    purpose: str
    classification: str = "OFFICIAL"
    mailbox: str | None = None
    subject: str | None = None  # e.g. nhs:9434765919, for consent checks
    direction: Literal["egress", "ingress"] = "egress"
    action: Action = "send"
    topic: str | None = None  # for publish / subscribe
    ttl_seconds: int | None = None  # requested time to live, checked against retention rules
    sender_region: str | None = None  # from the registry if known; else the policy's [regions]
    recipient_region: str | None = None


class Decision(msgspec.Struct, kw_only=True, frozen=True):
    allow: bool
    rule_ids: list[str]
    reason: str
    policy_version: int = 0
    stage: str = ""  # which stage decided: legal-basis, classification, routing, feed, consent, retention
    retention_days: int | None = None  # how long a recipient keeps it (strictest matching rule)
    max_ttl_seconds: int | None = None  # the longest time to live the policy allows
    # on an allow: the other rules it relied on (legal basis, classification, retention)
    supporting_rule_ids: list[str] = msgspec.field(default_factory=list)


# --- the document: one Struct per rule kind -------------------------------------------------

_STAR: list[str] = ["*"]


def _star() -> list[str]:
    return list(_STAR)


class Rule(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True,
           rename={"from_": "from"}):
    """``[[rule]]``: who may send which types to whom, for which purposes, at which levels."""

    id: str
    effect: Literal["allow", "deny"]
    description: str = ""
    from_: list[str] = msgspec.field(default_factory=_star)
    to: list[str] = msgspec.field(default_factory=_star)
    types: list[str] = msgspec.field(default_factory=_star)
    purposes: list[str] = msgspec.field(default_factory=_star)
    classifications: list[str] = msgspec.field(default_factory=_star)
    overrides: list[str] = msgspec.field(default_factory=list)  # deny only: allows it carves from


class PurposeDef(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[purposes.NAME]``: the vocabulary of purposes, each with its legal basis in words."""

    description: str = ""
    legal_basis: str = ""


class LegalBasisRule(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[[legal_basis]]``: the purposes for which a message type may be shared at all."""

    id: str
    types: list[str]
    purposes: list[str]
    description: str = ""
    legal_basis: str = ""


class ClassificationRule(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[[classification]]``: which recipients are cleared to receive a level."""

    id: str
    level: str
    recipients: list[str]
    description: str = ""


class AudienceRule(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[[audience]]``: member types that receive only what a rule addresses to them by name."""

    id: str
    member_types: list[str]
    description: str = ""


class ConsentRule(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[[consent]]``: how recorded opt-outs apply (honour, or a lawful override)."""

    id: str
    effect: Literal["honour", "override"]
    types: list[str] = msgspec.field(default_factory=_star)
    purposes: list[str] = msgspec.field(default_factory=_star)
    require_subject: bool = False
    description: str = ""
    legal_basis: str = ""


class FeedRule(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[[feed]]``: who may publish and who may subscribe to which topics."""

    id: str
    effect: Literal["allow", "deny"]
    topics: list[str]
    description: str = ""
    publishers: list[str] = msgspec.field(default_factory=_star)
    subscribers: list[str] = msgspec.field(default_factory=_star)
    types: list[str] = msgspec.field(default_factory=_star)
    purposes: list[str] = msgspec.field(default_factory=_star)
    classifications: list[str] = msgspec.field(default_factory=_star)
    same_region: bool = False
    overrides: list[str] = msgspec.field(default_factory=list)  # deny only: allows it carves from


class RetentionRule(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[[retention]]``: how long a type is kept, and the longest time to live it may ask for."""

    id: str
    types: list[str]
    retention_days: int
    max_ttl_seconds: int | None = None
    description: str = ""


SECTIONS: dict[str, type[msgspec.Struct]] = {
    "rule": Rule,
    "legal_basis": LegalBasisRule,
    "classification": ClassificationRule,
    "audience": AudienceRule,
    "consent": ConsentRule,
    "feed": FeedRule,
    "retention": RetentionRule,
}
TABLES = ("purposes", "regions")


class ParseProblem(msgspec.Struct, kw_only=True, frozen=True):
    """A structural fault in the rules document; the engine refuses it, lint reports it."""

    section: str
    index: int | None
    rule_id: str | None
    message: str


class PolicyRules:
    """The parsed rules of one policy document, grouped by kind (document order kept)."""

    def __init__(self) -> None:
        self.routing: list[Rule] = []
        self.legal_basis: list[LegalBasisRule] = []
        self.classification: list[ClassificationRule] = []
        self.audience: list[AudienceRule] = []
        self.consent: list[ConsentRule] = []
        self.feeds: list[FeedRule] = []
        self.retention: list[RetentionRule] = []
        self.purposes: dict[str, PurposeDef] = {}
        self.regions: dict[str, list[str]] = {}

    _ATTR = {"rule": "routing", "legal_basis": "legal_basis", "classification": "classification",
             "audience": "audience", "consent": "consent", "feed": "feeds", "retention": "retention"}

    def of(self, section: str) -> list[Any]:
        return getattr(self, self._ATTR[section])  # type: ignore[no-any-return]

    def all_rules(self) -> Iterable[tuple[str, Any]]:
        for section in SECTIONS:
            for r in self.of(section):
                yield section, r

    def by_id(self) -> dict[str, tuple[str, Any]]:
        return {r.id: (section, r) for section, r in self.all_rules()}


def parse_rules(section: Any) -> tuple[PolicyRules, list[ParseProblem]]:
    """Parse the ``rules`` part of a policy document, collecting every structural problem."""
    out = PolicyRules()
    problems: list[ParseProblem] = []
    if not isinstance(section, dict):
        return out, [ParseProblem(section="rules", index=None, rule_id=None,
                                  message="the rules document must be a table")]
    seen: dict[str, str] = {}
    for key, value in section.items():
        if key in TABLES:
            continue
        if key not in SECTIONS:
            problems.append(ParseProblem(
                section=key, index=None, rule_id=None,
                message=f"unknown section {key!r} (known: {', '.join([*SECTIONS, *TABLES])})"))
            continue
        if not isinstance(value, list):
            problems.append(ParseProblem(section=key, index=None, rule_id=None,
                                         message=f"{key} must be an array of tables ([[{key}]])"))
            continue
        for i, raw in enumerate(value):
            rid = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
            try:
                rule = msgspec.convert(raw, SECTIONS[key])
            except msgspec.ValidationError as exc:
                problems.append(ParseProblem(section=key, index=i, rule_id=rid, message=str(exc)))
                continue
            msg = _check_rule(key, rule)
            if msg:
                problems.append(ParseProblem(section=key, index=i, rule_id=rid, message=msg))
                continue
            if rule.id in seen or rule.id in BUILTIN_IDS:  # type: ignore[attr-defined]
                where = f"also used by a [[{seen[rule.id]}]]" if rule.id in seen else "reserved"  # type: ignore[attr-defined]
                problems.append(ParseProblem(section=key, index=i, rule_id=rid,
                                             message=f"duplicate rule id {rid!r} ({where})"))
                continue
            seen[rule.id] = key  # type: ignore[attr-defined]
            out.of(key).append(rule)
    purposes = section.get("purposes", {})
    try:
        out.purposes = msgspec.convert(purposes, dict[str, PurposeDef])
    except msgspec.ValidationError as exc:
        problems.append(ParseProblem(section="purposes", index=None, rule_id=None, message=str(exc)))
    try:
        out.regions = msgspec.convert(section.get("regions", {}), dict[str, list[str]])
    except msgspec.ValidationError as exc:
        problems.append(ParseProblem(section="regions", index=None, rule_id=None, message=str(exc)))
    return out, problems


_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def _check_rule(section: str, rule: Any) -> str | None:
    """Structural checks msgspec cannot express: id format, empty lists, positive numbers."""
    if not _ID.fullmatch(rule.id):
        return f"rule id {rule.id!r} must be lower-case letters, digits and '-'"
    if getattr(rule, "overrides", None) and rule.effect != "deny":
        return f"{rule.id}: only a deny rule can name the allows it overrides"
    for field in rule.__struct_fields__:
        value = getattr(rule, field)
        if isinstance(value, list) and not value and field != "overrides":
            name = "from" if field == "from_" else field
            return f"{rule.id}: {name} must not be empty (use [\"*\"] for any)"
    if section == "retention":
        if rule.retention_days < 0:
            return f"{rule.id}: retention_days must be 0 or more"
        if rule.max_ttl_seconds is not None and rule.max_ttl_seconds <= 0:
            return f"{rule.id}: max_ttl_seconds must be positive"
    return None


# --- compiled matchers --------------------------------------------------------------------------


def glob_regex(pattern: str) -> str:
    """A type/topic/purpose glob: ``*`` matches any run of characters; nothing else is special."""
    return ".*".join(re.escape(part) for part in pattern.split("*"))


class Glob:
    """A compiled list of globs: a set for exact names plus one regex for the rest."""

    __slots__ = ("any", "exact", "patterns", "rx")

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = list(patterns)
        self.any = "*" in patterns
        self.exact = frozenset(p for p in patterns if "*" not in p)
        globs = [glob_regex(p) for p in patterns if "*" in p and p != "*"]
        self.rx = re.compile("(?:" + "|".join(globs) + ")") if globs else None

    def match(self, value: str) -> bool:
        return self.any or value in self.exact or (self.rx is not None and self.rx.fullmatch(value) is not None)


class Party:
    """A compiled list of party patterns.

    ``*``; a member type (``council``); a member type's mailbox (``council/adult-social-care``);
    a member (``gss:E06000043``); a member's mailbox (``gss:E06000043/adult-social-care``);
    a region of the policy (``region:sussex``).
    """

    __slots__ = ("any", "org_mailboxes", "orgs", "patterns", "regions", "type_mailboxes", "types")

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = list(patterns)
        self.any = False
        self.types: set[str] = set()
        self.orgs: set[str] = set()
        self.type_mailboxes: set[tuple[str, str]] = set()
        self.org_mailboxes: set[tuple[str, str]] = set()
        self.regions: set[str] = set()
        for p in patterns:
            if p == "*":
                self.any = True
            elif p.startswith("region:"):
                self.regions.add(p[len("region:"):])
            elif "/" in p:
                head, _, mailbox = p.partition("/")
                (self.org_mailboxes if ":" in head else self.type_mailboxes).add((head, mailbox))
            elif ":" in p:
                self.orgs.add(p)
            else:
                self.types.add(p)

    def match(self, org: str, member_type: str, mailbox: str | None, regions: frozenset[str],
              *, explicit: bool = False) -> str | None:
        """The pattern that matched, or None. ``explicit``: only patterns that name the party."""
        if org in self.orgs:
            return org
        if mailbox is not None:
            if (org, mailbox) in self.org_mailboxes:
                return f"{org}/{mailbox}"
            if (member_type, mailbox) in self.type_mailboxes:
                return f"{member_type}/{mailbox}"
        if member_type in self.types:
            return member_type
        if explicit:
            return None
        for r in regions:
            if r in self.regions:
                return f"region:{r}"
        return "*" if self.any else None


def _fmt(patterns: list[str]) -> str:
    return "[" + ", ".join(patterns) + "]"


def _who(org: str, member_type: str, mailbox: str | None = None) -> str:
    if not org:
        return f"any {member_type}" if member_type else "any member"
    return f"{member_type} {org}{'/' + mailbox if mailbox else ''}"


class Step(msgspec.Struct, kw_only=True, frozen=True):
    """One rule's part in a decision, for ``explain``."""

    stage: str
    rule_id: str
    effect: str
    matched: bool
    why: str


class _Verdict:
    """A stage's outcome: ok, or a deny with the rules that decided and why."""

    __slots__ = ("ids", "ok", "reason")

    def __init__(self, ok: bool, ids: list[str], reason: str = "") -> None:
        self.ok, self.ids, self.reason = ok, ids, reason


class _Compiled:
    """A rule with its list fields compiled (kept beside the rule for explain)."""

    __slots__ = ("classifications", "frm", "publishers", "purposes", "rule", "subscribers", "to",
                 "topics", "types")

    def __init__(self, rule: Any) -> None:
        self.rule = rule
        self.frm = Party(rule.from_) if hasattr(rule, "from_") else None
        self.to = Party(rule.to) if hasattr(rule, "to") else None
        self.publishers = Party(rule.publishers) if hasattr(rule, "publishers") else None
        self.subscribers = Party(rule.subscribers) if hasattr(rule, "subscribers") else None
        self.types = Glob(rule.types) if hasattr(rule, "types") else None
        self.topics = Glob(rule.topics) if hasattr(rule, "topics") else None
        self.purposes = Glob(rule.purposes) if hasattr(rule, "purposes") else None
        self.classifications = (Glob(rule.classifications) if hasattr(rule, "classifications")
                                else None)


class Engine:
    """Decides requests against one policy version. Build once per version; thread-compatible."""

    def __init__(self, rules: list[Rule] | PolicyRules, *, version: int = 0) -> None:
        if isinstance(rules, PolicyRules):
            self.policy = rules
        else:
            self.policy = PolicyRules()
            self.policy.routing = list(rules)
        p = self.policy
        self.version = version
        self.rules = p.routing  # the routing rules (kept for callers of the first engine)
        self._routing = [_Compiled(r) for r in p.routing]
        self._legal = [_Compiled(r) for r in p.legal_basis]
        self._classification = [(r, Party(r.recipients)) for r in p.classification]
        self._levels = {r.level for r in p.classification}
        self._explicit: dict[str, AudienceRule] = {}
        for a in p.audience:
            for t in a.member_types:
                self._explicit.setdefault(t, a)
        self._consent = [_Compiled(r) for r in p.consent]
        self._feeds = [_Compiled(r) for r in p.feeds]
        self._retention = [_Compiled(r) for r in p.retention]
        self._region_of: dict[str, frozenset[str]] = {}
        for name, members in p.regions.items():
            for m in members:
                self._region_of[m] = self._region_of.get(m, frozenset()) | {name}
        self._cache: dict[tuple[Any, ...], Decision] = {}
        self._legal_cache: dict[tuple[str, str], _Verdict] = {}
        self._slice_cache: dict[tuple[Any, ...], list[_Compiled]] = {}
        self._subject_cache: dict[tuple[str, str], Decision | None] = {}
        self._class_cache: dict[tuple[Any, ...], _Verdict] = {}
        self._needs_subject = any(r.require_subject for r in p.consent if r.effect == "honour")
        self._consent_cache: dict[tuple[str, str], tuple[list[ConsentRule], list[ConsentRule]]] = {}

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Engine:
        """Compile a policy document; refuse it (PsvnError) if its rules are malformed."""
        rules, problems = parse_rules(doc.get("rules") or {})
        if problems:
            p = problems[0]
            where = f"rules.{p.section}" + (f"[{p.index}]" if p.index is not None else "")
            rid = f" ({p.rule_id})" if p.rule_id else ""
            more = f" (and {len(problems) - 1} more; run psvn policy lint)" if len(problems) > 1 else ""
            raise PsvnError(Code.CONFIG_INVALID, f"{where}{rid}: {p.message}{more}", field=where,
                            rule="rule-syntax")
        return cls(rules, version=int(doc.get("version", 0)))

    # --- the hot path ---------------------------------------------------------------------------

    def decide(self, req: DecisionRequest, *, consent: ConsentRegistry | None = None) -> Decision:
        """Allow or deny ``req``; ``consent`` holds the network's recorded opt-outs, if any."""
        key = (req.action, req.sender, req.sender_type, req.recipient, req.recipient_type,
               req.mailbox, req.type, req.purpose, req.classification, req.topic,
               req.sender_region, req.recipient_region)
        base = self._cache.get(key)
        if base is None:
            base = self._compute(req, None)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = base
        if not base.allow:
            return base
        if req.subject is None and self._needs_subject and req.action != "publish":
            missing = self._subject_required(req)
            if missing is not None:
                return missing
        if consent is not None and req.subject is not None:
            blocked = self._consent_check(req, consent, base, None)
            if blocked is not None:
                return blocked
        if req.ttl_seconds is not None and base.max_ttl_seconds is not None \
                and req.ttl_seconds > base.max_ttl_seconds:
            return self._ttl_deny(req, base)
        return base

    def matches(self, rule: Rule, req: DecisionRequest) -> bool:
        """Whether a routing rule matches a request (ignoring every other stage)."""
        return self._routing_why_not(_Compiled(rule), req, explicit=False)[0] is not None

    def legal_check(self, type_: str, purpose: str) -> tuple[bool, list[str]]:
        """The first stage alone (it depends on nothing else): (lawful?, deciding ids).
        Lint and diff use it to skip requests that this stage decides the same way."""
        v = self._stage_legal(DecisionRequest(sender="", sender_type="", type=type_,
                                              purpose=purpose), "", None, None)
        return v.ok, list(v.ids)

    def rule_matches(self, rule_id: str, req: DecisionRequest) -> bool:
        """Whether one rule's own conditions match ``req`` (what lint and explain ask of a rule
        that never decides). Allow rules use the named-only audience semantics."""
        recipient, mailbox = req.recipient, req.mailbox
        if "/" in recipient and mailbox is None:
            recipient, _, mailbox = recipient.partition("/")
        explicit = req.recipient_type in self._explicit
        for c in self._routing:
            if c.rule.id == rule_id:
                return req.action == "send" and not self._routing_why_not(
                    c, req, explicit=explicit and c.rule.effect == "allow", recipient=recipient,
                    mailbox=mailbox)[1]
        for c in self._feeds:
            if c.rule.id == rule_id:
                return req.action != "send" and self._feed_why_not(
                    c, req, recipient, mailbox,
                    explicit=explicit and c.rule.effect == "allow" and req.action == "subscribe")[0]
        for c in self._legal:
            if c.rule.id == rule_id:
                return c.types.match(req.type) and c.purposes.match(req.purpose)  # type: ignore[union-attr]
        for r, party in self._classification:
            if r.id == rule_id:
                return (r.level == req.classification and req.action != "publish" and party.match(
                    recipient, req.recipient_type, mailbox,
                    self._regions(recipient, req.recipient_region)) is not None)
        for c in (*self._consent, *self._retention):
            if c.rule.id == rule_id:
                return c.types.match(req.type) and (  # type: ignore[union-attr]
                    c.purposes is None or c.purposes.match(req.purpose))
        a = next((a for a in self.policy.audience if a.id == rule_id), None)
        return a is not None and req.recipient_type in a.member_types and req.action != "publish"

    # --- explain --------------------------------------------------------------------------------

    def explain(self, req: DecisionRequest, *, consent: ConsentRegistry | None = None,
                ) -> tuple[Decision, list[Step]]:
        """The decision, and every rule's part in it: matched or not, and why (not)."""
        trace: list[Step] = []
        base = self._compute(req, trace)
        decision = base
        if req.action != "publish" and consent is not None and req.subject is not None:
            checked = self._consent_check(req, consent, base, trace)
            if checked is not None and base.allow:
                decision = checked
        elif req.action != "publish" and self._consent:
            trace.append(Step(stage="consent", rule_id="-", effect="check", matched=False,
                              why="no subject reference: no opt-out to check" if req.subject is None
                              else "no consent registry given: no opt-out to check"))
        if decision.allow and req.ttl_seconds is not None and base.max_ttl_seconds is not None \
                and req.ttl_seconds > base.max_ttl_seconds:
            decision = self._ttl_deny(req, base)
        return decision, trace

    # --- stages ---------------------------------------------------------------------------------

    def _regions(self, org: str, given: str | None) -> frozenset[str]:
        if given is not None:
            return frozenset({given})
        return self._region_of.get(org, frozenset())

    def _compute(self, req: DecisionRequest, trace: list[Step] | None) -> Decision:
        """Every stage but the consent registry and the time-to-live check (those vary per
        message and run after the memoised part)."""
        if req.action not in ("send", "publish", "subscribe"):
            return self._deny([DEFAULT_DENY], "routing", f"unknown action {req.action!r}")
        if req.action != "send" and not req.topic:
            return self._deny([DEFAULT_DENY], "feed", f"a {req.action} needs a topic")
        recipient, mailbox = req.recipient, req.mailbox
        if "/" in recipient and mailbox is None:
            recipient, _, mailbox = recipient.partition("/")
        stages: list[tuple[str, _Verdict]] = []
        first_fail: tuple[str, _Verdict] | None = None
        plan = [("legal-basis", self._stage_legal),
                ("classification", self._stage_classification),
                ("routing" if req.action == "send" else "feed", self._stage_route)]
        if trace is not None:  # decide() checks the subject after the memoised part
            plan.append(("consent", self._stage_subject))
        for stage, fn in plan:
            verdict = fn(req, recipient, mailbox, trace)
            stages.append((stage, verdict))
            if not verdict.ok and first_fail is None:
                first_fail = (stage, verdict)
                if trace is None:
                    return self._deny(verdict.ids, stage, verdict.reason)
        days, max_ttl, retention_ids = self._stage_retention(req, trace)
        if first_fail is not None:
            stage, verdict = first_fail
            return self._deny(verdict.ids, stage, verdict.reason)
        route = stages[2][1]
        supporting = list(dict.fromkeys((*stages[0][1].ids, *stages[1][1].ids, *retention_ids)))
        reason = route.reason
        if stages[0][1].reason:
            reason += f"; legal basis: {stages[0][1].reason}"
        return Decision(allow=True, rule_ids=list(route.ids), reason=reason,
                        policy_version=self.version, stage=stages[2][0], retention_days=days,
                        max_ttl_seconds=max_ttl, supporting_rule_ids=supporting)

    def _deny(self, ids: list[str], stage: str, reason: str) -> Decision:
        return Decision(allow=False, rule_ids=ids, reason=reason, policy_version=self.version,
                        stage=stage)

    def _stage_legal(self, req: DecisionRequest, recipient: str, mailbox: str | None,
                     trace: list[Step] | None) -> _Verdict:
        p = self.policy
        if p.purposes and req.purpose not in p.purposes:
            if trace is not None:
                trace.append(Step(stage="legal-basis", rule_id=PURPOSE_UNKNOWN, effect="deny",
                                  matched=True, why=f"{req.purpose!r} is not in [purposes]"))
            return _Verdict(False, [PURPOSE_UNKNOWN],
                            f"purpose {req.purpose!r} is not a purpose the policy recognises "
                            f"(known: {', '.join(sorted(p.purposes))})")
        if not self._legal or (req.action == "subscribe" and req.type == "*"):
            return _Verdict(True, [])
        if trace is None:
            key = (req.type, req.purpose)
            hit = self._legal_cache.get(key)
            if hit is None:
                hit = self._legal_verdict(req, None)
                if len(self._legal_cache) >= _CACHE_MAX:
                    self._legal_cache.clear()
                self._legal_cache[key] = hit
            return hit
        return self._legal_verdict(req, trace)

    def _legal_verdict(self, req: DecisionRequest, trace: list[Step] | None) -> _Verdict:
        p = self.policy
        for_type = [c for c in self._legal if c.types.match(req.type)]  # type: ignore[union-attr]
        granting = [c for c in for_type if c.purposes.match(req.purpose)]  # type: ignore[union-attr]
        if trace is not None:
            for c in self._legal:
                r = c.rule
                if c not in for_type:
                    why = f"type {req.type} is not in {_fmt(r.types)}"
                elif c in granting:
                    why = f"{req.type} may be shared for {req.purpose}"
                else:
                    why = f"{req.type} may be shared only for {_fmt(r.purposes)}"
                trace.append(Step(stage="legal-basis", rule_id=r.id, effect="requires",
                                  matched=c in granting, why=why))
        if not for_type:
            return _Verdict(False, [LEGAL_BASIS_UNDECLARED],
                            f"no legal basis is declared for sharing {req.type} (no [[legal_basis]] "
                            "rule names the type)")
        if not granting:
            allowed = sorted({pp for c in for_type for pp in c.rule.purposes})
            return _Verdict(False, [c.rule.id for c in for_type],
                            f"{req.type} may be shared only for {', '.join(allowed)}, "
                            f"not {req.purpose}")
        basis = p.purposes.get(req.purpose)
        text = "; ".join(dict.fromkeys(
            [c.rule.legal_basis for c in granting if c.rule.legal_basis]
            or ([basis.legal_basis] if basis and basis.legal_basis else [])))
        return _Verdict(True, [c.rule.id for c in granting], text)

    def _stage_classification(self, req: DecisionRequest, recipient: str, mailbox: str | None,
                              trace: list[Step] | None) -> _Verdict:
        if not self._classification:
            return _Verdict(True, [])
        if trace is None:
            key = (recipient, req.recipient_type, mailbox, req.classification,
                   req.recipient_region, req.action == "publish")
            hit = self._class_cache.get(key)
            if hit is None:
                hit = self._classification_verdict(req, recipient, mailbox, None)
                if len(self._class_cache) >= _CACHE_MAX:
                    self._class_cache.clear()
                self._class_cache[key] = hit
            return hit
        return self._classification_verdict(req, recipient, mailbox, trace)

    def _classification_verdict(self, req: DecisionRequest, recipient: str, mailbox: str | None,
                                trace: list[Step] | None) -> _Verdict:
        level = req.classification
        rules = [(r, party) for r, party in self._classification if r.level == level]
        if req.action == "publish":
            ok = level in self._levels
            if trace is not None:
                trace.append(Step(stage="classification", rule_id=",".join(r.id for r, _ in rules) or
                                  CLASSIFICATION_UNDECLARED, effect="level", matched=ok,
                                  why=f"{level} is {'a declared' if ok else 'not a declared'} level; "
                                  "subscribers are checked when they subscribe"))
            if not ok:
                return _Verdict(False, [CLASSIFICATION_UNDECLARED],
                                f"classification {level!r} is not declared by the policy")
            return _Verdict(True, [])
        regions = self._regions(recipient, req.recipient_region)
        cleared = [r for r, party in rules
                   if party.match(recipient, req.recipient_type, mailbox, regions) is not None]
        if trace is not None:
            for r, _ in self._classification:
                if r.level != level:
                    why, matched = f"applies to {r.level}, not {level}", False
                elif r in cleared:
                    why, matched = f"{_who(recipient, req.recipient_type)} is cleared for {level}", True
                else:
                    why, matched = (f"{level} goes only to {_fmt(r.recipients)}, not to "
                                    f"{_who(recipient, req.recipient_type)}"), False
                trace.append(Step(stage="classification", rule_id=r.id, effect="clears",
                                  matched=matched, why=why))
        if not rules:
            return _Verdict(False, [CLASSIFICATION_UNDECLARED],
                            f"classification {level!r} is not declared by the policy")
        if not cleared:
            desc = "; ".join(r.description for r, _ in rules if r.description)
            return _Verdict(False, [r.id for r, _ in rules],
                            f"{_who(recipient, req.recipient_type)} may not receive {level}"
                            + (f": {desc}" if desc else ""))
        return _Verdict(True, [r.id for r in cleared])

    def _routing_why_not(self, c: _Compiled, req: DecisionRequest, *, explicit: bool,
                         recipient: str | None = None, mailbox: str | None = None,
                         texts: bool = True) -> tuple[str | None, list[str]]:
        """(the recipient pattern that matched, or None; why not, one entry per failed condition).

        Without ``texts`` the entries are empty: the hot path needs only their number."""
        r = c.rule
        recipient = req.recipient if recipient is None else recipient
        mailbox = req.mailbox if mailbox is None else mailbox
        why: list[str] = []
        assert c.frm is not None and c.to is not None
        assert c.types is not None and c.purposes is not None and c.classifications is not None
        if c.frm.match(req.sender, req.sender_type, None,
                       self._regions(req.sender, req.sender_region)) is None:
            why.append(f"from {_fmt(r.from_)} does not include {_who(req.sender, req.sender_type)}"
                       if texts else "")
        to = c.to.match(recipient, req.recipient_type, mailbox,
                        self._regions(recipient, req.recipient_region), explicit=explicit)
        if to is None:
            named = " by name" if explicit else ""
            why.append(f"to {_fmt(r.to)} does not include{named} "
                       f"{_who(recipient, req.recipient_type, mailbox)}" if texts else "")
        if not c.types.match(req.type):
            why.append(f"types {_fmt(r.types)} do not include {req.type}" if texts else "")
        if not c.purposes.match(req.purpose):
            why.append(f"purposes {_fmt(r.purposes)} do not include {req.purpose}" if texts else "")
        if not c.classifications.match(req.classification):
            why.append(f"classifications {_fmt(r.classifications)} do not include "
                       f"{req.classification}" if texts else "")
        return (to if not why else None), why

    def _feed_why_not(self, c: _Compiled, req: DecisionRequest, recipient: str,
                      mailbox: str | None, *, explicit: bool, texts: bool = True,
                      ) -> tuple[bool, list[str]]:
        """(whether a feed rule matches; why not, as for :meth:`_routing_why_not`)."""
        r = c.rule
        why: list[str] = []
        assert c.topics is not None and c.publishers is not None and c.subscribers is not None
        assert c.types is not None and c.purposes is not None and c.classifications is not None
        if not c.topics.match(req.topic or ""):
            why.append(f"topics {_fmt(r.topics)} do not include {req.topic}" if texts else "")
        sender_regions = self._regions(req.sender, req.sender_region)
        if req.sender and c.publishers.match(req.sender, req.sender_type, None,
                                             sender_regions) is None:
            why.append(f"publishers {_fmt(r.publishers)} do not include "
                       f"{_who(req.sender, req.sender_type)}" if texts else "")
        if req.action == "subscribe":
            sub_regions = self._regions(recipient, req.recipient_region)
            if c.subscribers.match(recipient, req.recipient_type, mailbox, sub_regions,
                                   explicit=explicit) is None:
                named = " by name" if explicit else ""
                why.append(f"subscribers {_fmt(r.subscribers)} do not include{named} "
                           f"{_who(recipient, req.recipient_type)}" if texts else "")
            if r.same_region and not req.sender:
                why.append("a regional feed is subscribed per publisher (name the publisher)")
            elif r.same_region and not (sender_regions & sub_regions):
                why.append(f"publisher {req.sender} (region {_regions_text(sender_regions)}) and "
                           f"subscriber {recipient} (region {_regions_text(sub_regions)}) are not "
                           "in the same region" if texts else "")
        if not (req.action == "subscribe" and req.type == "*") and not c.types.match(req.type):
            why.append(f"types {_fmt(r.types)} do not include {req.type}" if texts else "")
        if not c.purposes.match(req.purpose):
            why.append(f"purposes {_fmt(r.purposes)} do not include {req.purpose}" if texts else "")
        if not c.classifications.match(req.classification):
            why.append(f"classifications {_fmt(r.classifications)} do not include "
                       f"{req.classification}" if texts else "")
        return not why, why

    def _stage_route(self, req: DecisionRequest, recipient: str, mailbox: str | None,
                     trace: list[Step] | None) -> _Verdict:
        send = req.action == "send"
        stage = "routing" if send else "feed"
        rules = (self._routing if send else self._feeds) if trace is not None else self._slice(req)
        audience = None
        if req.action != "publish":
            audience = self._explicit.get(req.recipient_type)
        denies: list[_Compiled] = []
        allows: list[_Compiled] = []
        wildcard_only: list[_Compiled] = []
        nearest: tuple[int, _Compiled] | None = None  # (misses, rule) of the closest allow
        texts = trace is not None
        for c in rules:
            if send:
                m, why = self._routing_why_not(c, req, explicit=False, recipient=recipient,
                                               mailbox=mailbox, texts=texts)
                ok = m is not None
            else:
                ok, why = self._feed_why_not(c, req, recipient, mailbox, explicit=False, texts=texts)
            named = ok
            if ok and audience is not None and c.rule.effect == "allow":
                if send:
                    named = self._routing_why_not(c, req, explicit=True, recipient=recipient,
                                                  mailbox=mailbox, texts=False)[0] is not None
                else:
                    named = self._feed_why_not(c, req, recipient, mailbox, explicit=True,
                                               texts=False)[0]
            if not ok and c.rule.effect == "allow" and (nearest is None or len(why) < nearest[0]):
                nearest = (len(why), c)
            if ok and c.rule.effect == "deny":
                denies.append(c)
            elif ok and named:
                allows.append(c)
            elif ok:
                wildcard_only.append(c)
            if trace is not None:
                if ok and not named:
                    text = (f"matches only through a wildcard; {req.recipient_type} receives only "
                            f"what a rule names ({audience.id if audience else ''})")
                elif ok:
                    text = c.rule.description or "matches"
                else:
                    text = "; ".join(why)
                trace.append(Step(stage=stage, rule_id=c.rule.id, effect=c.rule.effect,
                                  matched=ok and named, why=text))
        if denies:
            return _Verdict(False, [c.rule.id for c in denies],
                            "; ".join(c.rule.description or f"denied by {c.rule.id}" for c in denies))
        if allows:
            return _Verdict(True, [c.rule.id for c in allows],
                            "; ".join(c.rule.description or f"allowed by {c.rule.id}" for c in allows))
        what = self._describe(req, recipient, mailbox)
        if wildcard_only and audience is not None:
            rest = audience.description or f"{req.recipient_type} receives only what a rule names"
            return _Verdict(False, [audience.id], f"no rule permits {what}: "
                            f"{', '.join(c.rule.id for c in wildcard_only)} match only through a "
                            f"wildcard, and {rest}")
        hint = ""
        if nearest is not None and nearest[0] == 1:
            c = nearest[1]
            why = (self._routing_why_not(c, req, explicit=False, recipient=recipient, mailbox=mailbox)[1]
                   if send else self._feed_why_not(c, req, recipient, mailbox, explicit=False)[1])
            hint = f" (closest: {c.rule.id}, but {'; '.join(why)})"
        return _Verdict(False, [DEFAULT_DENY],
                        f"no {'rule' if send else 'feed rule'} permits {what}{hint}")

    def _slice(self, req: DecisionRequest) -> list[_Compiled]:
        """The routing or feed rules (in order) that could match or come within one condition of
        matching, judged on the fields other than the parties; memoised per slice."""
        key = (req.action, req.type, req.purpose, req.classification, req.topic)
        hit = self._slice_cache.get(key)
        if hit is None:
            send = req.action == "send"
            hit = []
            for c in self._routing if send else self._feeds:
                assert c.types is not None and c.purposes is not None and c.classifications is not None
                misses = (not c.purposes.match(req.purpose)) + (
                    not c.classifications.match(req.classification))
                if not (req.action == "subscribe" and req.type == "*"):
                    misses += not c.types.match(req.type)
                if not send:
                    assert c.topics is not None
                    misses += not c.topics.match(req.topic or "")
                if misses == 0 or (misses == 1 and c.rule.effect == "allow"):
                    hit.append(c)
            if len(self._slice_cache) >= _CACHE_MAX:
                self._slice_cache.clear()
            self._slice_cache[key] = hit
        return hit

    def _describe(self, req: DecisionRequest, recipient: str, mailbox: str | None) -> str:
        tail = f"for {req.purpose} at {req.classification}"
        if req.action == "send":
            return (f"{_a(req.sender_type)} ({req.sender}) to send {req.type} to "
                    f"{_a(req.recipient_type)} ({recipient}{'/' + mailbox if mailbox else ''}) {tail}")
        if req.action == "publish":
            return f"{_a(req.sender_type)} ({req.sender}) to publish {req.type} on {req.topic} {tail}"
        src = f"{req.sender_type} {req.sender}" if req.sender else "any publisher"
        return (f"{_a(req.recipient_type)} ({recipient}) to subscribe to {req.topic} from {src} "
                f"({req.type}) {tail}")

    def _consent_rules(self, type_: str, purpose: str) -> tuple[list[ConsentRule], list[ConsentRule]]:
        """(overrides, honours) matching a type and purpose; memoised."""
        key = (type_, purpose)
        hit = self._consent_cache.get(key)
        if hit is None:
            matching = [c.rule for c in self._consent
                        if c.types.match(type_) and c.purposes.match(purpose)]  # type: ignore[union-attr]
            hit = ([r for r in matching if r.effect == "override"],
                   [r for r in matching if r.effect == "honour"])
            if len(self._consent_cache) >= _CACHE_MAX:
                self._consent_cache.clear()
            self._consent_cache[key] = hit
        return hit

    def _subject_required(self, req: DecisionRequest) -> Decision | None:
        """The deny for a message without a subject where a consent rule needs one; memoised."""
        key = (req.type, req.purpose)
        if key not in self._subject_cache:
            v = self._stage_subject(req, req.recipient, req.mailbox, None)
            if len(self._subject_cache) >= _CACHE_MAX:
                self._subject_cache.clear()
            self._subject_cache[key] = None if v.ok else self._deny(v.ids, "consent", v.reason)
        return self._subject_cache[key]

    def _stage_subject(self, req: DecisionRequest, recipient: str, mailbox: str | None,
                       trace: list[Step] | None) -> _Verdict:
        if req.action == "publish" or req.subject is not None or not self._consent:
            return _Verdict(True, [])
        _, honours = self._consent_rules(req.type, req.purpose)
        needing = [r for r in honours if r.require_subject]
        if trace is not None:
            for r in needing:
                trace.append(Step(stage="consent", rule_id=r.id, effect="require-subject",
                                  matched=True, why="needs a subject reference so that opt-outs "
                                  "can be checked, and the message has none"))
        if needing:
            return _Verdict(False, [r.id for r in needing],
                            f"{req.type} for {req.purpose} must name its subject (e.g. "
                            "nhs:9434765919) so that the citizen's opt-outs can be checked")
        return _Verdict(True, [])

    def _consent_check(self, req: DecisionRequest, consent: ConsentRegistry, base: Decision,
                       trace: list[Step] | None) -> Decision | None:
        """A deny if the subject's recorded opt-out covers the purpose (and no override applies);
        an allow naming the override if one does; None if no opt-out applies."""
        if req.action == "publish" or req.subject is None:
            return None
        record = consent.blocks(req.subject, req.purpose)
        if record is None and trace is None:
            return None  # the hot path: no opt-out, nothing more to look at
        overrides, honours = self._consent_rules(req.type, req.purpose)
        masked = mask_subject(req.subject)  # reasons are stored and sent on: never a full NHS number
        if trace is not None:
            for c in self._consent:
                r = c.rule
                if r in overrides or r in honours:
                    why = (f"{masked}'s consent record could not be verified: treated as an opt-out "
                           f"of everything ({record.refused})" if record and record.refused
                           else f"{masked} has opted out of {req.purpose} (seq {record.seq}"
                           f"{', via ' + record.issuer if record.issuer else ''})" if record
                           else f"no opt-out recorded for {masked} covering {req.purpose}")
                    matched = record is not None
                else:
                    why, matched = f"covers {_fmt(r.purposes)} of {_fmt(r.types)} only", False
                trace.append(Step(stage="consent", rule_id=r.id, effect=r.effect, matched=matched,
                                  why=why))
        if record is None:
            return None
        if overrides:
            ids = list(base.rule_ids) + [r.id for r in overrides if r.id not in base.rule_ids]
            text = "; ".join(r.description or r.id for r in overrides)
            return msgspec.structs.replace(
                base, rule_ids=ids,
                reason=f"{base.reason}; {masked}'s opt-out of {req.purpose} is overridden: {text}")
        ids = [r.id for r in honours] or [CONSENT_DEFAULT]
        if record.refused:
            return self._deny([CONSENT_UNREADABLE, *ids], "consent",
                              f"the consent record of {masked} could not be verified ({record.refused}); "
                              f"sharing for {req.purpose} is refused until the network operator restores a "
                              f"signed record ({CONSENT_UNREADABLE}, fail closed; honoured by {', '.join(ids)})")
        text = "; ".join(r.description for r in honours if r.description)
        via = f" via {record.issuer}" if record.issuer else ""
        return self._deny(ids, "consent",
                          f"{masked} has opted out of sharing for {req.purpose} (recorded"
                          f"{via}, seq {record.seq}); honoured by {', '.join(ids)}"
                          + (f": {text}" if text else ""))

    def _stage_retention(self, req: DecisionRequest, trace: list[Step] | None,
                         ) -> tuple[int | None, int | None, list[str]]:
        if not self._retention or req.type == "*":
            return None, None, []
        matching = [c.rule for c in self._retention if c.types.match(req.type)]  # type: ignore[union-attr]
        if trace is not None:
            for c in self._retention:
                r = c.rule
                trace.append(Step(stage="retention", rule_id=r.id, effect="limit",
                                  matched=r in matching,
                                  why=(f"keep {r.retention_days} days" +
                                       (f", live at most {r.max_ttl_seconds} s" if r.max_ttl_seconds
                                        else "")) if r in matching
                                  else f"types {_fmt(r.types)} do not include {req.type}"))
        if not matching:
            return None, None, []
        days = min(r.retention_days for r in matching)
        ttls = [r.max_ttl_seconds for r in matching if r.max_ttl_seconds is not None]
        return days, (min(ttls) if ttls else None), [r.id for r in matching]

    def _ttl_deny(self, req: DecisionRequest, base: Decision) -> Decision:
        ids = [c.rule.id for c in self._retention
               if c.types.match(req.type) and c.rule.max_ttl_seconds is not None  # type: ignore[union-attr]
               and req.ttl_seconds is not None and req.ttl_seconds > c.rule.max_ttl_seconds]
        return self._deny(ids, "retention",
                          f"{req.type} may live at most {base.max_ttl_seconds} s; the message asks "
                          f"for {req.ttl_seconds} s")


def _a(noun: str) -> str:
    """The article as spoken: "an oda", "an nhs-trust" (en-aitch-ess), "a council"."""
    spoken_vowel = noun[:1] in tuple("aeiou") or noun.startswith(("nhs", "ods"))
    return ("an " if noun and spoken_vowel else "a ") + (noun or "member")


def _regions_text(regions: frozenset[str]) -> str:
    return ", ".join(sorted(regions)) or "unknown"
