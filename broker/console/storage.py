"""What the console reads and writes, all on the backbone: the policy workflow, the registry,
the audit stream and the policy bucket's watchers.

Which version does each gateway enforce? A gateway watches the policy bucket through an ordered
consumer whose deliver subject starts with its own reply prefix (``_INBOX_<org>.``). The broker
sees every such consumer and how far the server has delivered it; the gateway then enforces the
newest *accepted* version at or below that point (it refuses what the broker's history marks as
refused, exactly as the history verifies it). So the overview answers from the backbone, without
the console holding any member's credentials. The last audit event of each member (which names
the version it decided under) is shown beside it as a second witness.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import secrets
import ssl
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from psvn.backbone import auditlog
from psvn.backbone.connect import connect
from psvn.backbone.natsraw import RawReads
from psvn.backbone.registry_view import RegistryView
from psvn.broker import policy_admin
from psvn.broker.policy_admin import Current, PolicyAdmin, Proposal
from psvn.core.errors import Code, PsvnError
from psvn.policies import bundle
from psvn.policies.review import load_suite
from psvn.protocol.subjects import BROKER_AUDIT, audit_stream

log = structlog.get_logger("psvn.broker.console")

AUDIT_WINDOW = 1000  # recent audit events the overview and the traffic replay read


class EditorSource(msgspec.Struct, kw_only=True, frozen=True):
    """What the editor starts from: the published version's rules and examples as text."""

    version: int
    proposer: str
    approver: str
    published_at: str
    rules_text: str
    tests_text: str
    source: str  # where the text came from: "proposal p…", "folder …" or "regenerated"


class ConsoleStore:
    """The console's storage: one broker NATS connection and what hangs off it."""

    def __init__(self, nc: NATS, admin: PolicyAdmin, registry: RegistryView, policy_dir: Path) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.admin = admin
        self.registry = registry
        self.policy_dir = Path(policy_dir)

    @classmethod
    async def open(cls, *, nats_url: str | list[str], tls: ssl.SSLContext, creds: str, authority_pub: Ed25519PublicKey,
                   signing_key: Ed25519PrivateKey | None, registry_pub: Ed25519PublicKey,
                   policy_dir: Path = bundle.DEFAULT_DIR) -> ConsoleStore:
        nc = await connect(nats_url, tls, name="psvn-broker console", user_credentials=creds)
        try:
            js = nc.jetstream()
            registry = RegistryView(registry_pub)  # member types the simulation uses: verified entries only
            await registry.start(js)
            suite = load_suite(policy_dir) if (Path(policy_dir) / "tests.toml").exists() else None
            admin = await PolicyAdmin.open(js, authority_pub=authority_pub, signing_key=signing_key,
                                           members=lambda: {a: m.type for a, m in registry.members.items()},
                                           suite=suite)
        except BaseException:
            await nc.close()
            raise
        return cls(nc, admin, registry, Path(policy_dir))

    async def close(self) -> None:
        await self.registry.stop()
        with contextlib.suppress(Exception):
            await self.nc.close()

    def member_types(self) -> dict[str, str]:
        return {a: m.type for a, m in self.registry.members.items()}

    # -- the policy text --------------------------------------------------------------------
    async def current(self) -> Current:
        cur = await self.admin.current()
        if cur is None:
            raise PsvnError(Code.NOT_FOUND, "no policy set has been published yet", rule="policy-published")
        return cur

    def _folder_text(self, name: str) -> str | None:
        f = self.policy_dir / name
        return f.read_text() if f.is_file() else None

    async def source_for(self, cur: Current) -> EditorSource:
        """The words behind a published version: its proposal's text, else the policy folder's
        text if it folds to the same rules, else TOML regenerated from the document."""
        version = cur.signed.version
        proposal = await self.admin.latest_published_proposal(version)
        tests = self._folder_text("tests.toml") or ""
        rules_text: str | None = None
        source = "regenerated"
        if proposal is not None and proposal.rules_text is not None:
            rules_text, source = proposal.rules_text, f"proposal {proposal.id}"
        else:
            folder_rules = self._folder_text("rules.toml")
            if folder_rules is not None:
                parsed, _ = policy_admin.parse_rules_text(folder_rules)
                if parsed is not None and bundle.canonical(parsed) == bundle.canonical(cur.document["rules"]):
                    rules_text, source = folder_rules, f"folder {self.policy_dir.name}"
        if rules_text is None:
            rules_text = policy_admin.rules_to_toml(
                cur.document["rules"],
                header=f"rules of published version {version}, regenerated from the signed document\n"
                "(the text it was written in is not on record, so its comments are not shown)")
        for p in await self.admin.proposals(status="published"):  # newest first: the latest examples
            if p.tests_text is not None and p.version <= version:
                tests = p.tests_text
                break
        return EditorSource(version=version, proposer=cur.signed.proposer, approver=cur.signed.approver,
                            published_at=cur.signed.published_at, rules_text=rules_text, tests_text=tests,
                            source=source)

    async def editor_source(self) -> EditorSource:
        return await self.source_for(await self.current())

    async def text_of_version(self, version: int) -> str | None:
        cur = await self.admin.current()
        if cur is not None and cur.signed.version == version:
            return (await self.source_for(cur)).rules_text
        p = await self.admin.latest_published_proposal(version)
        return p.rules_text if p is not None else None

    async def version_source(self, version: int) -> EditorSource:
        """The rules text of any accepted version still in the bucket (as the editor shows it)."""
        return await self.source_for(await self.admin.published(version))

    async def versions_diff(self, old: int, new: int) -> str:
        """rules.toml of version ``old`` against version ``new`` (unified diff, '' if the same)."""
        a, b = await asyncio.gather(self.version_source(old), self.version_source(new))
        return "".join(difflib.unified_diff(a.rules_text.splitlines(keepends=True),
                                            b.rules_text.splitlines(keepends=True),
                                            fromfile=f"rules.toml (version {old})",
                                            tofile=f"rules.toml (version {new})", n=3))

    async def rules_diff(self, p: Proposal) -> str:
        """The proposal's rules.toml against the text of the version it was drafted on."""
        base_text = await self.text_of_version(p.base_version) or ""
        new_text = p.rules_text if p.rules_text is not None else policy_admin.rules_to_toml(p.document["rules"])
        return "".join(difflib.unified_diff(base_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                            fromfile=f"rules.toml (version {p.base_version})",
                                            tofile=f"rules.toml (proposal {p.id}, version {p.version})", n=3))

    # -- the audit streams ------------------------------------------------------------------
    async def recent_audit(self, limit: int = AUDIT_WINDOW) -> list[dict[str, Any]]:
        """The last ``limit`` audit events of each member, oldest first. Each member writes to a
        stream of its own, so the stream, not the ``org`` field inside a record, says who wrote it:
        a record claiming another organisation is shown as its writer's, with the claim kept."""
        events: list[dict[str, Any]] = []
        for org in [BROKER_AUDIT, *sorted(self.registry.members)]:
            try:
                recent = await self._recent(audit_stream(org), limit)
            except Exception as exc:  # one writer's unreadable stream must not hide everyone else's
                log.error("audit stream unreadable", stream=audit_stream(org), error=repr(exc))
                continue
            for ev in recent:
                claimed = ev.get("org")
                if claimed != org:
                    ev["claimed_org"] = claimed
                ev["org"] = org
                events.append(ev)
        events.sort(key=lambda ev: str(ev.get("time", "")))
        return events

    async def _recent(self, stream: str, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` records of one writer's audit stream (a short-lived consumer, no
        acks), read so that a record's own headers cannot stop the view (``broker.natsraw``)."""
        try:
            info = await self.js.stream_info(stream)
        except NotFoundError:
            return []
        state = info.state
        if not state.messages:
            return []
        start = max(state.first_seq, state.last_seq - limit + 1)
        name = f"console-{secrets.token_hex(6)}"
        await self.js.add_consumer(stream, ConsumerConfig(
            name=name, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
            ack_policy=AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True, num_replicas=1))
        events: list[dict[str, Any]] = []
        puller = await RawReads(self.nc).puller(self.js, stream, name)
        try:
            done = False
            while not done:
                msgs = await puller.fetch(min(256, limit), timeout=1)
                if not msgs:
                    break
                for m in msgs:
                    events += auditlog.records(m.data)
                    if m.metadata.sequence.stream >= state.last_seq:
                        done = True
        finally:
            await puller.close()
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(stream, name)
        return events[-limit:]

    async def overview(self) -> dict[str, Any]:
        history, events = await asyncio.gather(self.admin.history(), self.recent_audit())
        accepted = sorted((h.revision, h.version) for h in history if h.accepted)
        published = accepted[-1][1] if accepted else 0
        last_event: dict[str, dict[str, Any]] = {}
        by_org: dict[str, Counter[str]] = defaultdict(Counter)
        totals: Counter[str] = Counter()
        for ev in events:
            org, kind = str(ev.get("org", "?")), str(ev.get("event", "?"))
            by_org[org][kind] += 1
            totals[kind] += 1
            if "policy_version" in ev and org in self.registry.members:
                last_event[org] = ev
        members = []
        for org, m in sorted(self.registry.members.items()):
            # a gateway audits each policy version it applies ("policy-applied"), and every
            # decision it records names the version it enforced: its latest record says which
            ev = last_event.get(org)
            enforced = ev.get("policy_version") if ev else None
            members.append({
                "address": org, "name": m.name, "type": m.type, "status": m.status,
                "watching_policy": enforced is not None, "policy_version": enforced,
                "in_step": enforced == published if enforced is not None else False,
                "last_audit_policy_version": ev.get("policy_version") if ev else None,
                "last_audit_time": ev.get("time") if ev else None,
                "audit_counts": dict(by_org.get(org, {})),
            })
        return {"published_version": published, "members": members,
                "audit": {"window": len(events), "totals": dict(totals),
                          "by_org": {o: dict(c) for o, c in sorted(by_org.items())}}}
