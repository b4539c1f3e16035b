"""The backbone's tenancy: one NATS account per member, the operator's account owning the streams.

Why accounts (see ``docs/backbone-accounts.md``): inside one account NATS does not apply publish
permissions to a reply subject, so a member that may make *any* JetStream request can aim
JetStream's answer at ``$JS.API.STREAM.DELETE.<x>`` or a KV key and have it acted on with the
server's own rights. Between accounts a reply can only come back into the requester's account,
so each member lives in its own account and reaches the operator's account ("network") only
through what the network exports to it by name:

- its mail and receipts to others: ``psvn.msg.*.<me>``, ``psvn.rcpt.*.<me>`` (its own sender token);
- its audit records: ``psvn.audit.<me>``;
- its own inbox: the pull of its durable consumer, acks, direct reads and retention deletes;
- its own feed subscriptions (``$KV.psvn_feeds.s.<me>.>``); the operator's member: consent records;
- read-only: direct reads, stream info and change notifications of the shared buckets, except
  consent: of that bucket only the by-subject direct get (``$JS.API.DIRECT.GET.KV_psvn_consent.>``),
  so a member can read the record of a subject it names and cannot list the bucket (no stream
  info, no notifications, and no by-sequence or next-by-subject read, which the body form of
  ``$JS.API.DIRECT.GET.<stream>`` would allow: measured, it walks every key).

Each private export needs an activation token the network account signs for one member account,
so no member can import another's. Members have JetStream of their own (their state bucket) within
account limits, so no member can fill the backbone. Members are added and revoked at run time by
pushing account JWTs to the full resolver (``$SYS.REQ.CLAIMS.UPDATE``): no restart, no reload.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from psvn.broker import natsjwt
from psvn.core.addresses import token
from psvn.core.errors import Code, PsvnError
from psvn.protocol.subjects import (
    CONSENT_BUCKET,
    CONSUMER,
    FEEDS_BUCKET,
    OPERATOR,
    OPERATOR_JS_PREFIX,
    POLICY_BUCKET,
    REGISTRY_BUCKET,
    inbox_stream,
    quarantine_subject,
)

SHARED_BUCKETS = (REGISTRY_BUCKET, POLICY_BUCKET, CONSENT_BUCKET, FEEDS_BUCKET)
# Buckets every member may follow (stream info, change notifications, any direct read). Consent is
# not one: members read a subject's record by name only (see gateway/consent.py).
LISTED_BUCKETS = (REGISTRY_BUCKET, POLICY_BUCKET, FEEDS_BUCKET)
GIB = 1024 ** 3
MIB = 1024 ** 2


@dataclass(frozen=True)
class MemberLimits:
    """What one member account may hold on the backbone (its own JetStream: the state bucket)."""

    disk_storage: int = 1 * GIB
    mem_storage: int = 64 * MIB
    streams: int = 4
    consumers: int = 64
    connections: int = 32
    payload: int = 4 * MIB
    subscriptions: int = 10_000  # a gateway holds a handful; unbounded, 300k took nats-server to 1.3 GiB

    def jetstream(self) -> dict[str, int]:
        return {"disk_storage": self.disk_storage, "mem_storage": self.mem_storage, "streams": self.streams,
                "consumer": self.consumers, "max_ack_pending": natsjwt.UNLIMITED,
                "mem_max_stream_bytes": natsjwt.UNLIMITED, "disk_max_stream_bytes": natsjwt.UNLIMITED}


def _service(subject: str, *, private: bool = True, stream_response: bool = False) -> dict[str, Any]:
    e: dict[str, Any] = {"name": subject, "subject": subject, "type": "service"}
    if private:
        e["token_req"] = True
    if stream_response:
        e["response_type"] = "Stream"
    return e


def member_services(org: str) -> list[tuple[str, bool]]:
    """The network's private service subjects one member imports: (subject, stream response)."""
    t, stream = token(org), inbox_stream(org)
    out = [(f"psvn.msg.*.{t}", False), (f"psvn.rcpt.*.{t}", False), (f"psvn.audit.{t}", False),
           (f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{CONSUMER}", True), (f"$JS.ACK.{stream}.{CONSUMER}.>", False),
           (f"$JS.API.DIRECT.GET.{stream}", False), (f"$JS.API.DIRECT.GET.{stream}.>", False),
           (f"$JS.API.STREAM.MSG.DELETE.{stream}", False), (f"$KV.{FEEDS_BUCKET}.s.{t}.>", False),
           (quarantine_subject(org), False)]
    if org == OPERATOR:
        out.append((f"$KV.{CONSENT_BUCKET}.>", False))
    return out


def shared_services() -> list[str]:
    """Public, read-only: direct reads and stream info of the listed buckets; of the consent
    bucket only the by-subject direct get (the subject in the request subject, no body options)."""
    out: list[str] = []
    for b in LISTED_BUCKETS:
        out += [f"$JS.API.DIRECT.GET.KV_{b}", f"$JS.API.DIRECT.GET.KV_{b}.>", f"$JS.API.STREAM.INFO.KV_{b}"]
    out.append(f"$JS.API.DIRECT.GET.KV_{CONSENT_BUCKET}.$KV.{CONSENT_BUCKET}.>")
    return out


def local_name(subject: str) -> str:
    """Where a member sees an imported subject: the network's JetStream API under its own prefix
    (its own ``$JS.API`` is its own JetStream), everything else under the same name."""
    if subject.startswith("$JS.API."):
        return OPERATOR_JS_PREFIX + subject[len("$JS.API"):]
    return subject


class BackboneAccounts:
    """The operator's keys and every account's JWT, kept under ``<pki>/backbone`` (0600 seeds).

    Member account seeds are held here too: the operator issues its members' backbone users."""

    def __init__(self, pki_dir: Path, *, member_limits: MemberLimits | None = None) -> None:
        self.dir = Path(pki_dir) / "backbone"
        self.limits = member_limits or MemberLimits()
        self.operator_seed = natsjwt.load_or_create_seed(self.dir / "operator.nk", "operator")
        self.system_seed = natsjwt.load_or_create_seed(self.dir / "system.nk", "account")
        self.network_seed = natsjwt.load_or_create_seed(self.dir / "network.nk", "account")

    # -- keys -----------------------------------------------------------------------------
    @property
    def system_account(self) -> str:
        return natsjwt.public_key(self.system_seed)

    @property
    def network_account(self) -> str:
        return natsjwt.public_key(self.network_seed)

    def member_seed(self, org: str) -> bytes:
        return natsjwt.load_or_create_seed(self.dir / "accounts" / f"{token(org)}.nk", "account")

    def member_account(self, org: str) -> str:
        return natsjwt.public_key(self.member_seed(org))

    def _state_path(self, org: str) -> Path:
        return self.dir / "accounts" / f"{token(org)}.json"

    def _state(self, org: str) -> dict[str, Any]:
        p = self._state_path(org)
        return dict(json.loads(p.read_text())) if p.exists() else {"revocations": {}}

    # -- JWTs -----------------------------------------------------------------------------
    def operator_jwt(self) -> str:
        return natsjwt.operator_jwt(self.operator_seed, name="psvn", system_account=self.system_account)

    def system_jwt(self) -> str:
        return natsjwt.account_jwt(self.operator_seed, self.system_seed, name="SYS",
                                   exports=[{"name": "account-monitoring-services", "subject": "$SYS.REQ.ACCOUNT.*.*",
                                             "type": "service", "response_type": "Stream",
                                             "account_token_position": 4}])

    def network_jwt(self, members: list[str]) -> str:
        """The operator's account: JetStream (every stream and bucket), the exports members need."""
        exports = [_service(s, private=False) for s in shared_services()]
        exports += [{"name": f"$KV.{b}.>", "subject": f"$KV.{b}.>", "type": "stream"} for b in LISTED_BUCKETS]
        for org in sorted(set(members)):
            exports += [_service(s, stream_response=sr) for s, sr in member_services(org)]
        js = {"disk_storage": natsjwt.UNLIMITED, "mem_storage": natsjwt.UNLIMITED, "streams": natsjwt.UNLIMITED,
              "consumer": natsjwt.UNLIMITED, "max_ack_pending": natsjwt.UNLIMITED,
              "mem_max_stream_bytes": natsjwt.UNLIMITED, "disk_max_stream_bytes": natsjwt.UNLIMITED}
        return natsjwt.account_jwt(self.operator_seed, self.network_seed, name="network", jetstream=js,
                                   exports=exports)

    def member_jwt(self, org: str) -> str:
        me = self.member_account(org)
        imports: list[dict[str, Any]] = []
        for subject, _ in member_services(org):
            imports.append({"name": subject, "subject": subject, "account": self.network_account, "type": "service",
                            "local_subject": local_name(subject),
                            "token": natsjwt.activation_jwt(self.network_seed, importer=me, subject=subject,
                                                            kind="service")})
        for subject in shared_services():
            imports.append({"name": subject, "subject": subject, "account": self.network_account, "type": "service",
                            "local_subject": local_name(subject)})
        for b in LISTED_BUCKETS:
            imports.append({"name": f"$KV.{b}.>", "subject": f"$KV.{b}.>", "account": self.network_account,
                            "type": "stream"})
        return natsjwt.account_jwt(self.operator_seed, self.member_seed(org), name=org,
                                   jetstream=self.limits.jetstream(), imports=imports,
                                   revocations=self._state(org)["revocations"] or None,
                                   conn=self.limits.connections, payload=self.limits.payload,
                                   subs=self.limits.subscriptions)

    # -- users ----------------------------------------------------------------------------
    def write_member_creds(self, org: str, path: Path) -> Path:
        """A fresh backbone user for a member's gateway (a ``.creds`` file, 0600)."""
        seed = natsjwt.new_seed("user")
        jwt = natsjwt.user_jwt(self.member_seed(org), seed, name=f"gateway {org}")
        natsjwt.write_private(path, natsjwt.creds(jwt, seed))
        return path

    def _operator_creds(self, name: str, account_seed: bytes) -> Path:
        path = self.dir / f"{name}.creds"
        if not path.exists():
            seed = natsjwt.new_seed("user")
            natsjwt.write_private(path, natsjwt.creds(natsjwt.user_jwt(account_seed, seed, name=name), seed))
        return path

    @property
    def broker_creds(self) -> Path:
        """The broker's user in the network account (provisioning, registry, console)."""
        return self._operator_creds("broker", self.network_seed)

    @property
    def system_creds(self) -> Path:
        """A user of the system account: pushes account JWTs to the resolver."""
        return self._operator_creds("system", self.system_seed)

    # -- revocation -----------------------------------------------------------------------
    def revoke_users(self, org: str, *, at: int | None = None) -> None:
        """Every backbone user of the member issued up to now stops working (``*``: all keys)."""
        state = self._state(org)
        state["revocations"]["*"] = int(time.time()) if at is None else at
        natsjwt.write_private(self._state_path(org), json.dumps(state))

    def reinstate_users(self, org: str) -> None:
        state = self._state(org)
        state["revocations"].pop("*", None)
        natsjwt.write_private(self._state_path(org), json.dumps(state))

    def preload(self, members: list[str]) -> dict[str, str]:
        """Account JWTs a server loads at its first start (later changes are pushed)."""
        out = {self.system_account: self.system_jwt(), self.network_account: self.network_jwt(members)}
        for org in members:
            out[self.member_account(org)] = self.member_jwt(org)
        return out


async def push(nc_system: NATS, jwt: str, *, timeout: float = 5.0) -> None:
    """Hand an account JWT to the full resolver of every node (takes effect at once, no reload)."""
    claims = natsjwt.decode_claims(jwt)
    reply = await nc_system.request("$SYS.REQ.CLAIMS.UPDATE", jwt.encode(), timeout=timeout)
    answer = json.loads(reply.data or b"{}")
    if answer.get("error"):
        raise PsvnError(Code.BACKBONE_UNAVAILABLE,
                        f"the backbone refused account {claims.get('name')!r}: {answer['error']}",
                        rule="account-push")


async def push_all(nc_system: NATS, accounts: BackboneAccounts, members: list[str]) -> None:
    """Push the network account and every member account (idempotent: newer JWTs replace older)."""
    await push(nc_system, accounts.network_jwt(members))
    for org in members:
        await push(nc_system, accounts.member_jwt(org))
