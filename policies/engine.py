"""The policy engine: decides allow/deny for one message, with the rules that decided and why.

A small declarative format compiled once per policy version: each rule matches on sender and
recipient (member type, organisation or org/mailbox), message type (glob), purpose and
classification. Any matching ``deny`` wins; else any matching ``allow`` allows; else the
default is deny ("no rule permits this"). Pure: no I/O, so egress and ingress run the same code.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

import msgspec

from psvn.errors import Code, PsvnError


class DecisionRequest(msgspec.Struct, kw_only=True, frozen=True):
    sender: str  # organisation address, e.g. gss:E06000043
    sender_type: str  # member type, e.g. council
    recipient: str  # organisation address
    recipient_type: str
    type: str
    purpose: str
    classification: str = "OFFICIAL"
    mailbox: str | None = None
    subject: str | None = None
    direction: Literal["egress", "ingress"] = "egress"


class Decision(msgspec.Struct, kw_only=True, frozen=True):
    allow: bool
    rule_ids: list[str]
    reason: str
    policy_version: int = 0


class Rule(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, rename={"from_": "from"}):
    id: str
    effect: Literal["allow", "deny"]
    description: str = ""
    from_: list[str] = msgspec.field(default_factory=lambda: ["*"])
    to: list[str] = msgspec.field(default_factory=lambda: ["*"])
    types: list[str] = msgspec.field(default_factory=lambda: ["*"])
    purposes: list[str] = msgspec.field(default_factory=lambda: ["*"])
    classifications: list[str] = msgspec.field(default_factory=lambda: ["*"])


def _party_matches(patterns: list[str], org: str, member_type: str, mailbox: str | None) -> bool:
    for p in patterns:
        if p == "*" or p == member_type or p == org:
            return True
        if mailbox is not None and p == f"{org}/{mailbox}":
            return True
    return False


def _any_glob(patterns: list[str], value: str) -> bool:
    return any(p == "*" or fnmatch.fnmatchcase(value, p) for p in patterns)


class Engine:
    def __init__(self, rules: list[Rule], *, version: int = 0) -> None:
        self.rules = rules
        self.version = version

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Engine:
        raw = (doc.get("rules") or {}).get("rule", [])
        rules: list[Rule] = []
        for i, r in enumerate(raw):
            try:
                rules.append(msgspec.convert(r, Rule))
            except msgspec.ValidationError as exc:
                rid = r.get("id", f"#{i}") if isinstance(r, dict) else f"#{i}"
                raise PsvnError(Code.CONFIG_INVALID, f"rules.rule[{i}] ({rid}): {exc}",
                                field=f"rules.rule[{i}]", rule="rule-syntax") from exc
        return cls(rules, version=int(doc.get("version", 0)))

    def matches(self, rule: Rule, req: DecisionRequest) -> bool:
        return (
            _party_matches(rule.from_, req.sender, req.sender_type, None)
            and _party_matches(rule.to, req.recipient, req.recipient_type, req.mailbox)
            and _any_glob(rule.types, req.type)
            and _any_glob(rule.purposes, req.purpose)
            and _any_glob(rule.classifications, req.classification)
        )

    def decide(self, req: DecisionRequest) -> Decision:
        matched = [r for r in self.rules if self.matches(r, req)]
        denies = [r for r in matched if r.effect == "deny"]
        if denies:
            return Decision(allow=False, rule_ids=[r.id for r in denies], policy_version=self.version,
                            reason="; ".join(r.description or f"denied by {r.id}" for r in denies))
        allows = [r for r in matched if r.effect == "allow"]
        if allows:
            return Decision(allow=True, rule_ids=[r.id for r in allows], policy_version=self.version,
                            reason="; ".join(r.description or f"allowed by {r.id}" for r in allows))
        return Decision(allow=False, rule_ids=["default-deny"], policy_version=self.version,
                        reason=(f"no rule permits a {req.sender_type} to send {req.type} to a "
                                f"{req.recipient_type} for {req.purpose} at {req.classification}"))
