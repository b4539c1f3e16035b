"""Publishing the network's policy set: propose -> approve by a second person -> publish.

A proposal is a complete policy document (plus the rules.toml and tests.toml text it came
from, so the next editor starts from the words people wrote). It lives in the JetStream KV bucket
``psvn_policy_proposals``, which only the broker's NATS user can touch; every state change is a
compare-and-set on the record, so two approvers racing cannot both win.

- **propose** refuses a version that is not newer than the published one, a document with lint
  errors and a document that fails its example suite: nothing broken reaches an approver;
- **approve** refuses the proposer (the two-person rule is on user names, whatever roles a
  person holds) and a proposal that is no longer newer than what is published;
- **publish** signs with the policy authority key and puts the bundle in the policy bucket
  (``provision.publish_policy``: the version must increase). It refuses a proposal drafted on top
  of a version that is no longer current, so publishing never silently reverts someone else's
  change. The proposer, approver and proposal id go *inside* the signed document
  (``meta.approval``) as well as on the bundle's labels, so every gateway holds a signed record
  of who approved the rules it enforces.

History is read back from the policy bucket itself (what gateways actually saw), each version
verified as a gateway would: an entry with a bad signature or a version that does not increase is
listed as refused, never as published.
"""

from __future__ import annotations

import copy
import hashlib
import re
import secrets
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
import structlog
import tomlkit
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from psvn.backbone.kvwatch import StoredEntry, read_history, read_keys
from psvn.broker import provision
from psvn.broker.auth import normalise_user
from psvn.core import addresses
from psvn.core.errors import Code, PsvnError, Violation
from psvn.policies import bundle
from psvn.policies.engine import DecisionRequest, Engine
from psvn.policies.lint import Finding, LintReport, lint_document
from psvn.policies.review import CONSENTING_SUBJECT, Case, Outcome, SuiteReport, parse_suite, run_suite
from psvn.protocol.envelope import now_rfc3339
from psvn.protocol.subjects import BROKER_AUDIT, POLICY_BUCKET, POLICY_KEY, audit_subject

log = structlog.get_logger("psvn.broker.policy_admin")

PROPOSALS_BUCKET = "psvn_policy_proposals"
AUDIT_SUBJECT = audit_subject(BROKER_AUDIT)  # the broker's own audit events (metadata only)
_ID = re.compile(r"p[0-9a-f]{8}")
_TOML_LINE = re.compile(r"at line (\d+)")

Status = Literal["proposed", "approved", "published", "rejected"]


class Proposal(msgspec.Struct, kw_only=True):
    """One proposed policy version and what happened to it."""

    id: str
    version: int
    base_version: int  # the published version it was drafted on
    status: Status
    proposer: str
    proposed_at: str
    digest: str  # sha256 of the canonical proposed document: what the approver approved
    document: dict[str, Any]
    rules_text: str | None = None
    tests_text: str | None = None
    note: str = ""
    lint_counts: dict[str, int] = msgspec.field(default_factory=dict)
    suite_passed: int | None = None
    suite_failed: int | None = None
    approver: str = ""
    approved_at: str = ""
    publisher: str = ""
    published_at: str = ""
    published_revision: int = 0
    rejected_by: str = ""
    rejected_at: str = ""
    reason: str = ""

    def summary(self) -> dict[str, Any]:
        """Everything but the document and texts (for lists)."""
        out = msgspec.to_builtins(self)
        for k in ("document", "rules_text", "tests_text"):
            out.pop(k, None)
        return out  # type: ignore[no-any-return]


class HistoryEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One version put in the policy bucket, verified as a gateway verifies it."""

    version: int
    proposer: str
    approver: str
    published_at: str
    revision: int  # the policy bucket's revision
    accepted: bool  # False: gateways refuse it (bad signature, version not increasing)
    reason: str = ""
    proposal: str = ""
    digest: str = ""


class Current(msgspec.Struct, kw_only=True, frozen=True):
    signed: bundle.SignedPolicySet
    document: dict[str, Any]
    revision: int


async def enforced(js: JetStreamContext, authority_pub: Ed25519PublicKey) -> Current | None:
    """The policy version the network enforces: the newest entry in the policy bucket that
    verifies as a gateway verifies it (a forged or older entry is passed over)."""
    best: Current | None = None
    for entry in await read_history(js, POLICY_BUCKET, POLICY_KEY):
        if entry.value is None or entry.deleted:
            continue
        try:
            signed = bundle.decode(entry.value)
            doc = bundle.verify(signed, authority_pub, current_version=best.signed.version if best else 0)
        except Exception:
            continue
        best = Current(signed=signed, document=doc, revision=entry.revision)
    return best


def digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(bundle.canonical(doc)).hexdigest()


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise PsvnError(Code.CONFIG_INVALID, f"{path} is not an Ed25519 public key", field=str(path))
    return key


# --- text <-> document (pure) ------------------------------------------------------------------


def parse_rules_text(text: str, *, file: str = "rules.toml") -> tuple[dict[str, Any] | None, list[Finding]]:
    """The rules table, or a syntax finding with its line (what lint_dir reports for a file)."""
    try:
        return tomllib.loads(text), []
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_LINE.search(str(exc))
        return None, [Finding(severity="error", kind="syntax", message=f"TOML: {exc}", file=file,
                              line=int(m.group(1)) if m else None)]


def with_rules(base: dict[str, Any], rules: dict[str, Any], version: int) -> dict[str, Any]:
    """A new document: the base's catalogue, schemas and metadata with these rules and version."""
    doc = copy.deepcopy(base)
    doc["rules"] = rules
    doc["version"] = version
    meta = dict(doc.get("meta") or {})
    meta["version"] = version
    meta.pop("approval", None)  # the base's approval record is not this version's
    doc["meta"] = meta
    return doc


def lint_text(base: dict[str, Any], rules_text: str, *, version: int,
              members: Mapping[str, str] | None = None) -> tuple[dict[str, Any] | None, LintReport]:
    """Lint edited rules.toml text as the next version of ``base``."""
    rules, findings = parse_rules_text(rules_text)
    if rules is None:
        return None, LintReport(findings=findings)
    doc = with_rules(base, rules, version)
    return doc, lint_document(doc, rules_text=rules_text, members=members)


def parse_tests_text(text: str) -> list[Case]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_LINE.search(str(exc))
        raise PsvnError(Code.BAD_REQUEST, f"tests.toml: {exc}", field=f"tests.toml:{m.group(1)}" if m else
                        "tests.toml", rule="toml-syntax") from exc
    return parse_suite(raw)


def lint_error(report: LintReport) -> PsvnError:
    errs = report.errors
    return PsvnError(
        Code.BAD_REQUEST, f"lint found {len(errs)} error(s); fix them before proposing: "
        + "; ".join(f"{f.where() or 'policy'}: {f.message}" for f in errs[:3]),
        field="rules.toml", rule="policy-lint",
        violations=[Violation(path=f.where() or "policy", rule=f.kind, message=f.message) for f in errs],
        extra={"findings": msgspec.to_builtins(report.findings)})


def suite_error(report: SuiteReport) -> PsvnError:
    failed = [r for r in report.results if not r.passed]
    return PsvnError(
        Code.BAD_REQUEST, f"{report.failed} example decision(s) in tests.toml fail: "
        + "; ".join(r.name for r in failed[:3]), field="tests.toml", rule="policy-tests",
        violations=[Violation(path=r.name, rule="example", message="; ".join(r.problems)) for r in failed])


def rules_to_toml(rules: dict[str, Any], *, header: str = "") -> str:
    """rules.toml text for a rules table (when no written text is at hand; comments are lost).

    tomlkit rather than tomli-w: it lays the text out as people write rules.toml (arrays on one
    line, ``[[rule]]`` tables), so the console's diff of a regenerated version against a written
    one shows the rules that changed, not every array re-wrapped."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return (comments + "\n" + tomlkit.dumps(rules)).strip() + "\n"


# --- replaying recorded traffic (pure) ----------------------------------------------------------


class TrafficChange(msgspec.Struct, kw_only=True, frozen=True):
    kind: Literal["now-allowed", "now-denied", "rules-changed"]
    message_id: str
    time: str
    sender: str
    to: str
    type: str
    purpose: str
    classification: str
    recorded: str  # what the gateway did then: sent or rejected
    old: Outcome
    new: Outcome


class TrafficReport(msgspec.Struct, kw_only=True, frozen=True):
    """Recent real decisions (from the audit stream) decided again under both versions."""

    events: int  # audit events read
    replayed: int  # egress policy decisions among them
    skipped: int  # decisions whose sender or recipient is no longer in the registry
    changes: list[TrafficChange]
    counts: dict[str, int]


def traffic_requests(events: Iterable[dict[str, Any]], member_types: Mapping[str, str],
                     ) -> tuple[list[tuple[dict[str, Any], DecisionRequest]], int, int]:
    """The egress decisions among audit events, as requests: (pairs, replayed, skipped).

    Audit events carry no subject reference (metadata only), so a replayed request names a
    stand-in subject with no recorded opt-out: consent rules that need a subject still see one,
    opt-outs are not replayed."""
    pairs: list[tuple[dict[str, Any], DecisionRequest]] = []
    replayed = skipped = 0
    sent_ids: set[tuple[object, object]] = set()
    for ev in events:
        if ev.get("direction", "egress") != "egress" or ev.get("event") not in ("sent", "rejected"):
            continue
        if ev["event"] == "sent":  # each message once: a repeat may audit its send again
            if (ev.get("org"), ev.get("message_id")) in sent_ids:    # (found_on_backbone)
                continue
            sent_ids.add((ev.get("org"), ev.get("message_id")))
        if ev["event"] == "rejected" and ev.get("code") != Code.POLICY_DENIED.value:
            continue  # rejected before the policy decided (bad envelope or payload)
        to, org = ev.get("to"), ev.get("org")
        if not (isinstance(to, str) and isinstance(org, str) and ev.get("type") and ev.get("purpose")):
            continue
        replayed += 1
        try:
            recipient, mailbox = addresses.parse(to)
        except PsvnError:
            skipped += 1
            continue
        if org not in member_types or recipient not in member_types:
            skipped += 1
            continue
        pairs.append((ev, DecisionRequest(
            sender=org, sender_type=member_types[org], recipient=recipient,
            recipient_type=member_types[recipient], mailbox=mailbox, type=str(ev["type"]),
            purpose=str(ev["purpose"]), classification=str(ev.get("classification") or "OFFICIAL"),
            subject=CONSENTING_SUBJECT)))
    return pairs, replayed, skipped


def replay(old_doc: dict[str, Any], new_doc: dict[str, Any], events: list[dict[str, Any]],
           member_types: Mapping[str, str]) -> TrafficReport:
    """Which recent messages would now be decided differently."""
    old, new = Engine.from_document(old_doc), Engine.from_document(new_doc)
    pairs, replayed, skipped = traffic_requests(events, member_types)
    changes: list[TrafficChange] = []
    for ev, req in pairs:
        a, b = Outcome.of(old.decide(req)), Outcome.of(new.decide(req))
        if a.same(b):
            continue
        kind: Literal["now-allowed", "now-denied", "rules-changed"] = (
            "rules-changed" if a.allow == b.allow else ("now-allowed" if b.allow else "now-denied"))
        changes.append(TrafficChange(
            kind=kind, message_id=str(ev.get("message_id", "")), time=str(ev.get("time", "")), sender=req.sender,
            to=str(ev["to"]), type=req.type, purpose=req.purpose, classification=req.classification,
            recorded=str(ev["event"]), old=a, new=b))
    counts = {k: sum(c.kind == k for c in changes) for k in ("now-denied", "now-allowed", "rules-changed")}
    return TrafficReport(events=len(events), replayed=replayed, skipped=skipped, changes=changes, counts=counts)


# --- the workflow over NATS ---------------------------------------------------------------------


def _conflict(detail: str, rule: str, **extra: Any) -> PsvnError:
    return PsvnError(Code.CONFLICT, detail, rule=rule, extra=extra)


class PolicyAdmin:
    """Proposals, approvals, publication and history, kept on the backbone."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, *, authority_pub: Ed25519PublicKey,
                 signing_key: Ed25519PrivateKey | None = None,
                 members: Callable[[], Mapping[str, str]] | None = None,
                 suite: list[Case] | None = None) -> None:
        self.js = js
        self.kv = kv
        self.authority_pub = authority_pub
        self._signing_key = signing_key
        self._members = members
        self.suite = suite  # the example suite used when a proposal brings none

    @classmethod
    async def open(cls, js: JetStreamContext, *, authority_pub: Ed25519PublicKey,
                   signing_key: Ed25519PrivateKey | None = None,
                   members: Callable[[], Mapping[str, str]] | None = None,
                   suite: list[Case] | None = None, replicas: int = 1) -> PolicyAdmin:
        """Open the workflow, creating the proposals bucket if this is the first use."""
        try:
            kv = await js.key_value(PROPOSALS_BUCKET)
        except BucketNotFoundError:
            try:
                kv = await js.create_key_value(KeyValueConfig(
                    bucket=PROPOSALS_BUCKET, history=16, replicas=replicas, storage=StorageType.FILE,
                    max_bytes=provision.BUCKET_MAX_BYTES[POLICY_BUCKET],
                    description="psvn policy proposals: proposer, approver, status"))
            except Exception:  # another broker process created it first
                kv = await js.key_value(PROPOSALS_BUCKET)
            await provision.refuse_rollups(js, f"KV_{PROPOSALS_BUCKET}")
        return cls(js, kv, authority_pub=authority_pub, signing_key=signing_key, members=members, suite=suite)

    def members(self) -> Mapping[str, str] | None:
        return self._members() if self._members is not None else None

    # -- what is published ----------------------------------------------------------------
    async def _policy_entries(self) -> list[StoredEntry]:
        return await read_history(self.js, POLICY_BUCKET, POLICY_KEY)

    async def published(self, version: int) -> Current:
        """A version still in the policy bucket's history, verified as a gateway verifies it (in
        order, each newer than the last accepted); NOT_FOUND if it is not there or did not verify."""
        accepted = 0
        found: Current | None = None
        for entry in await self._policy_entries():
            if entry.value is None or entry.operation in ("DEL", "PURGE"):
                continue
            try:
                signed = bundle.decode(entry.value)
                doc = bundle.verify(signed, self.authority_pub, current_version=accepted)
            except Exception:
                continue
            accepted = signed.version
            if signed.version == version:
                found = Current(signed=signed, document=doc, revision=entry.revision or 0)
        if found is None:
            raise PsvnError(Code.NOT_FOUND, f"policy version {version} is not in the policy bucket's history as "
                            "an accepted version (the bucket keeps the last 64 entries)", field="version",
                            rule="policy-version-known")
        return found

    async def history(self) -> list[HistoryEntry]:
        """Every version put in the policy bucket (newest first), verified as a gateway would."""
        out: list[HistoryEntry] = []
        enforced = 0
        for entry in await self._policy_entries():
            if entry.value is None or entry.operation in ("DEL", "PURGE"):
                continue
            try:
                signed = bundle.decode(entry.value)
            except Exception as exc:
                out.append(HistoryEntry(version=-1, proposer="", approver="", published_at="",
                                        revision=entry.revision or 0, accepted=False,
                                        reason=f"undecodable bundle: {type(exc).__name__}"))
                continue
            accepted, reason, dig = True, "", ""
            approval: dict[str, Any] = {}
            try:
                doc = bundle.verify(signed, self.authority_pub, current_version=enforced)
                enforced = signed.version
                approval = (doc.get("meta") or {}).get("approval") or {}
                dig = hashlib.sha256(signed.document).hexdigest()
            except PsvnError as exc:
                accepted, reason = False, exc.detail
            # who proposed and approved: from the signed document when it verifies (the bundle's
            # own labels are not signed, so a forged entry's are shown only as its claim)
            out.append(HistoryEntry(
                version=signed.version, proposer=str(approval.get("proposer") or signed.proposer),
                approver=str(approval.get("approver") or signed.approver),
                published_at=signed.published_at, revision=entry.revision or 0, accepted=accepted,
                reason=reason, proposal=str(approval.get("proposal", "")), digest=dig))
        # the policy bucket keeps the last 64 entries; older publications live on in their records
        in_bucket = {h.version for h in out if h.accepted}
        oldest = min(in_bucket, default=0)
        for p in await self.proposals(status="published"):
            if p.version not in in_bucket and p.version < oldest:
                out.append(HistoryEntry(version=p.version, proposer=p.proposer, approver=p.approver,
                                        published_at=p.published_at, revision=p.published_revision,
                                        accepted=True, reason="from the proposal record (no longer in the "
                                        "policy bucket's history)", proposal=p.id))
        out.sort(key=lambda h: h.revision, reverse=True)
        return out

    async def current(self) -> Current | None:
        """The newest version gateways accept (a refused entry in the bucket is passed over)."""
        return await enforced(self.js, self.authority_pub)

    async def current_version(self) -> int:
        cur = await self.current()
        return cur.signed.version if cur else 0

    # -- proposals ----------------------------------------------------------------------------
    async def _get(self, proposal_id: str) -> tuple[Proposal, int]:
        if not _ID.fullmatch(proposal_id):
            raise PsvnError(Code.NOT_FOUND, f"{proposal_id!r} is not a proposal id (p + 8 hex digits)",
                            field="id", rule="proposal-id")
        try:
            entry = await self.kv.get(proposal_id)
        except KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            raise PsvnError(Code.NOT_FOUND, f"no proposal {proposal_id}", field="id", rule="proposal-exists")
        assert entry.revision is not None
        return msgspec.json.decode(entry.value, type=Proposal), entry.revision

    async def get(self, proposal_id: str) -> Proposal:
        return (await self._get(proposal_id))[0]

    async def _save(self, p: Proposal, revision: int) -> None:
        try:
            await self.kv.update(p.id, msgspec.json.encode(p), last=revision)
        except KeyWrongLastSequenceError:
            raise _conflict(f"proposal {p.id} changed while this request was handled; reload and retry",
                            "proposal-changed") from None

    async def proposals(self, *, status: str | None = None) -> list[Proposal]:
        """All proposals, newest first."""
        out: list[Proposal] = []
        for k in await read_keys(self.js, PROPOSALS_BUCKET):
            if not _ID.fullmatch(k):
                continue
            try:
                entry = await self.kv.get(k)
            except KeyNotFoundError:
                continue
            if entry.value:
                p = msgspec.json.decode(entry.value, type=Proposal)
                if status is None or p.status == status:
                    out.append(p)
        out.sort(key=lambda p: p.proposed_at, reverse=True)
        return out

    def check(self, doc: dict[str, Any], *, rules_text: str | None = None,
              cases: list[Case] | None = None) -> tuple[LintReport, SuiteReport | None]:
        """Lint (errors raise) and run the example suite (failures raise): the gate of propose."""
        report = lint_document(doc, rules_text=rules_text, members=self.members())
        if report.errors:
            raise lint_error(report)
        cases = cases if cases is not None else self.suite
        suite = run_suite(doc, cases) if cases else None
        if suite is not None and not suite.ok:
            raise suite_error(suite)
        return report, suite

    async def propose(self, doc: dict[str, Any], proposer: str, *, rules_text: str | None = None,
                      tests_text: str | None = None, note: str = "") -> Proposal:
        """Record a proposal after lint and the example suite pass; returns it (``.id``)."""
        proposer = normalise_user(proposer)
        if not isinstance(doc.get("rules"), dict) or "version" not in doc:
            raise PsvnError(Code.BAD_REQUEST, "not a policy document (no version or rules)", rule="policy-document")
        version = int(doc["version"])
        current = await self.current_version()
        if version <= current:
            raise PsvnError(Code.POLICY_VERSION_REGRESSION,
                            f"proposed version {version} is not newer than the published version {current}; "
                            f"set version = {current + 1} in policyset.toml",
                            field="version", rule="policy-version-increase")
        cases = parse_tests_text(tests_text) if tests_text is not None else None
        report, suite = await _in_thread(self.check, doc, rules_text=rules_text, cases=cases)
        p = Proposal(id="p" + secrets.token_hex(4), version=version, base_version=current, status="proposed",
                     proposer=proposer, proposed_at=now_rfc3339(), digest=digest(doc), document=doc,
                     rules_text=rules_text, tests_text=tests_text, note=note[:2000], lint_counts=report.counts(),
                     suite_passed=suite.passed if suite else None, suite_failed=suite.failed if suite else None)
        await self.kv.create(p.id, msgspec.json.encode(p))
        log.info("policy proposed", proposal=p.id, version=version, proposer=proposer)
        await self._audit("policy-proposed", p, by=proposer)
        return p

    async def approve(self, proposal_id: str, approver: str) -> Proposal:
        """Approve as a second person: never the proposer."""
        approver = normalise_user(approver)
        p, rev = await self._get(proposal_id)
        if p.status != "proposed":
            raise _conflict(f"proposal {p.id} is {p.status}; only a proposed change can be approved",
                            "proposal-status", status=p.status)
        if approver == p.proposer:
            raise PsvnError(Code.FORBIDDEN, f"{approver} proposed {p.id}; a different person must approve it "
                            "(two-person rule)", field="approver", rule="two-person-rule")
        current = await self.current_version()
        if p.version <= current:
            raise _conflict(f"proposal {p.id} (version {p.version}) is not newer than the published version "
                            f"{current}; propose again from the current version", "policy-version-increase")
        p.status, p.approver, p.approved_at = "approved", approver, now_rfc3339()
        await self._save(p, rev)
        log.info("policy approved", proposal=p.id, version=p.version, proposer=p.proposer, approver=approver)
        await self._audit("policy-approved", p, by=approver)
        return p

    async def reject(self, proposal_id: str, by: str, reason: str = "") -> Proposal:
        """Turn a proposal down (or withdraw one's own): it can no longer be approved or published."""
        by = normalise_user(by)
        p, rev = await self._get(proposal_id)
        if p.status not in ("proposed", "approved"):
            raise _conflict(f"proposal {p.id} is {p.status}; it cannot be rejected", "proposal-status",
                            status=p.status)
        p.status, p.rejected_by, p.rejected_at, p.reason = "rejected", by, now_rfc3339(), reason[:2000]
        await self._save(p, rev)
        await self._audit("policy-rejected", p, by=by)
        return p

    async def publish(self, proposal_id: str, publisher: str = "") -> Proposal:
        """Sign an approved proposal with the policy authority key and publish it to every gateway."""
        p, rev = await self._get(proposal_id)
        if p.status != "approved":
            raise _conflict(f"proposal {p.id} is {p.status}; only an approved change can be published",
                            "proposal-status", status=p.status)
        if digest(p.document) != p.digest:
            raise PsvnError(Code.CONFLICT, f"proposal {p.id}'s document does not match what was approved",
                            rule="proposal-digest")
        cur = await self.current()
        current = cur.signed.version if cur else 0
        if cur is not None and current == p.version and _approval_of(cur.document).get("proposal") == p.id:
            # published before, but the record was not updated (e.g. the broker stopped in between)
            return await self._mark_published(p, rev, publisher, cur.signed.published_at, cur.revision)
        if current != p.base_version:
            raise _conflict(f"proposal {p.id} was drafted on version {p.base_version}, but version {current} is "
                            "now published; publishing it would undo that change. Propose again from the "
                            "current version.", "proposal-stale", published_version=current)
        if self._signing_key is None:
            raise PsvnError(Code.CONFIG_INVALID, "this broker holds no policy authority key; it cannot publish",
                            rule="policy-authority-key")
        published_at = now_rfc3339()
        doc = copy.deepcopy(p.document)
        meta = dict(doc.get("meta") or {})
        meta["approval"] = {"proposal": p.id, "proposer": p.proposer, "approver": p.approver,
                            "approved_at": p.approved_at, "digest": p.digest}
        doc["meta"] = meta
        signed = bundle.sign(doc, self._signing_key, proposer=p.proposer, approver=p.approver,
                             published_at=published_at)
        try:
            revision = await provision.publish_policy(self.js, signed)
        except KeyWrongLastSequenceError:
            raise _conflict(f"another version was published while {p.id} was being published; reload",
                            "policy-published-meanwhile") from None
        except PsvnError as exc:
            if exc.code is Code.POLICY_VERSION_REGRESSION:
                raise await self._explain_regression(exc, p.version) from exc
            raise
        log.info("policy published", proposal=p.id, version=p.version, proposer=p.proposer, approver=p.approver)
        return await self._mark_published(p, rev, publisher, published_at, revision)

    async def _explain_regression(self, exc: PsvnError, version: int) -> PsvnError:
        """publish_policy compares with the bucket's last entry; say so when gateways refuse that one."""
        refused = [h for h in await self.history() if not h.accepted and h.version >= version]
        if not refused:
            return exc
        h = refused[0]
        return PsvnError(Code.POLICY_VERSION_REGRESSION,
                         f"{exc.detail}; but the bucket's version {h.version} (revision {h.revision}) is one every "
                         f"gateway refuses ({h.reason}). Investigate who wrote it; to move on, propose a version "
                         f"above {h.version}", rule="policy-bucket-refused-entry",
                         extra={"refused_version": h.version, "refused_revision": h.revision})

    async def _mark_published(self, p: Proposal, rev: int, publisher: str, published_at: str,
                              revision: int) -> Proposal:
        p.status, p.published_at, p.published_revision = "published", published_at, revision
        p.publisher = normalise_user(publisher) if publisher else p.approver
        await self._save(p, rev)
        await self._audit("policy-published", p, by=p.publisher)
        return p

    async def latest_published_proposal(self, version: int) -> Proposal | None:
        for p in await self.proposals(status="published"):
            if p.version == version:
                return p
        return None

    async def _audit(self, event: str, p: Proposal, *, by: str) -> None:
        record = {"event": event, "org": "broker", "time": now_rfc3339(), "proposal": p.id,
                  "policy_version": p.version, "by": by, "proposer": p.proposer, "approver": p.approver or None}
        try:
            await self.js.publish(AUDIT_SUBJECT, msgspec.json.encode(record), timeout=3)
        except Exception as exc:  # the proposal record stays the primary record; the log keeps this
            log.error("audit publish failed", audit_event=event, proposal=p.id, error=repr(exc))


def _approval_of(doc: dict[str, Any]) -> dict[str, Any]:
    approval = (doc.get("meta") or {}).get("approval")
    return approval if isinstance(approval, dict) else {}


async def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Lint and the suite are CPU work: keep the event loop (and the console) responsive."""
    import asyncio

    return await asyncio.to_thread(fn, *args, **kwargs)
