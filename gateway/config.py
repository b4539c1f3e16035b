"""Gateway configuration: one TOML file, one typed class per section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import structlog

from psvn.core import config


class GatewaySection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    org: str
    name: str = ""
    listen_host: str = "127.0.0.1"
    listen_port: int = 8443
    max_body_bytes: int = 2 * 1024 * 1024
    fetch_batch: int = 256
    # POST /v1/messages:batch: at most this many messages per request (the whole body stays
    # within max_body_bytes), sent through Gateway.send at most batch_concurrency at a time.
    # Measured (1,000 ServiceRequests in batches of 500, gateways and client in one process on
    # 2 busy cores, accepted msg/s): 1: 124, 8: 196, 32: 326-389, 64: 394, 128: 497-523,
    # 256: 524, 500: 477 -- the items wait on backbone round trips that overlap and share writes.
    max_batch_items: int = 500
    batch_concurrency: int = 128
    expiry_sweep_seconds: float = 5.0
    # how often the retention sweep walks closed (acknowledged) mail, streamed from the state
    # bucket; open mail is swept every expiry_sweep_seconds from memory
    retention_scan_seconds: float = 600.0
    # sent messages with an expiry that this instance watches until a receipt settles them; past
    # it (or after a restart) expiry is still applied when the status is read and by the recipient
    max_tracked_expiries: int = 100_000
    # the sent-message records this instance wrote last, kept so a receipt's status move needs no
    # read (a stale one costs only a compare-and-set retry): a bound on memory, not on correctness
    record_cache_size: int = 2_000
    # A send is answered once the backbone has the message; its record says `accepted` until a
    # receipt moves it on, and that move writes the `sent` step too. A message no receipt has
    # answered after this many seconds gets `sent` written on its own (gateway.sent_step). 0:
    # at once, still after the answer. At most max_pending_sent_steps wait; past that the
    # oldest is written at once.
    sent_step_delay_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    max_pending_sent_steps: Annotated[int, msgspec.Meta(ge=0)] = 20_000
    # The garbage collector's young-generation threshold, set once the gateway has started
    # (what start-up built is frozen: the collector never walks it again). Python's default,
    # 700, had the collector walking the long-lived heap all the time; 100,000 cut each
    # gateway's CPU per message on the batch path by about a quarter (psvn.core.heap).
    # 0 keeps Python's defaults.
    gc_threshold: Annotated[int, msgspec.Meta(ge=0)] = 100_000
    # Every this many seconds the C allocator's whole free pages go back to the system
    # (glibc's malloc_trim): without it a busy gateway's RSS crept up ~5 MiB per 100,000
    # messages with no object kept (psvn.core.heap). Each call holds the event loop ~2 ms.
    # Whole seconds, at most an hour; 0 never trims.
    heap_trim_seconds: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 10
    # How long the audit writer lets records gather before it writes a batch (gateway.audit):
    # nothing waits for the audit, and at a trickle each record otherwise cost a stored message
    # and an acknowledgement of its own. 0: write at once (batches then form only while a write
    # is in flight).
    audit_linger_seconds: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.01
    # Sealing (psvn.protocol.seal): a message is encrypted under a data key that is sealed with
    # HPKE to its recipient; this gateway seals at most seal_data_key_uses messages under one
    # data key, for at most seal_data_key_seconds, and keeps at most seal_data_keys of them (one
    # per recipient key it sends to), and at most seal_opened_keys of the data keys senders
    # sealed to it (each unsealed once, not once per message). Bounds on memory and on how
    # much one data key covers, not on correctness: a key not kept is made or unsealed again.
    seal_data_key_uses: Annotated[int, msgspec.Meta(ge=1, le=2**32)] = 10_000
    seal_data_key_seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 60.0
    seal_data_keys: Annotated[int, msgspec.Meta(ge=1)] = 1_024
    seal_opened_keys: Annotated[int, msgspec.Meta(ge=1)] = 1_024
    policy_wait_seconds: float = 10.0  # at start: how long to wait for an acceptable policy set
    # One sender's share of this member's inbox: bytes of its mail delivered and not yet
    # acknowledged. Past it, new mail from that sender is refused (the sender is told
    # `rejected`, rule sender-share) and moved out of the inbox, so one sender cannot fill the
    # inbox for the others. (The backbone itself caps each sender's message count.)
    sender_share_bytes: int = 128 * 1024 * 1024
    # Which mailboxes each local system may read and acknowledge ("" = the organisation's own,
    # un-named mailbox). A system not listed here sees every mailbox.
    system_mailboxes: dict[str, list[str]] = msgspec.field(default_factory=dict)


class TLSSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The HTTPS server local systems connect to (mutual TLS)."""

    cert: str
    key: str
    ca: str
    crl: str | None = None
    crl_reload_seconds: float = 30.0  # how often to look for a new CRL (revocations apply without restart)


class NatsSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    servers: list[str]
    cert: str
    key: str
    ca: str
    creds: str  # the gateway's backbone user: a JWT for its member account and the user's nkey seed (0600)
    replicas: int = 1  # of its state bucket (in its own account): 3 on a 3-node backbone


class KeysSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    signing: str
    hpke: str
    policy_authority: str  # the policy authority's Ed25519 public key (PEM)
    # the network operator's registry authority (Ed25519 public key, PEM): every registry entry
    # must verify against it, wherever it lies; required, so a gateway cannot run trusting the bucket
    registry_authority: str
    hpke_hybrid: str | None = None  # ML-KEM-768 + X25519 key: senders then seal post-quantum
    retired_dir: str | None = None  # former message keys (psvn devnet rotate / certs.keys.rotate_gateway_keys)


class WebhookSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Optional push to the local system when a message is delivered (metadata only, HMAC-signed)."""

    url: str
    secret_file: str  # at least 32 bytes, mode 0600
    ca: str | None = None  # CA for the local system's HTTPS server, if not a public one
    attempts: int = 6
    timeout_seconds: float = 5.0


class GatewayConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    gateway: GatewaySection
    tls: TLSSection
    nats: NatsSection
    keys: KeysSection
    webhook: WebhookSection | None = None


def load(path: Path | str) -> GatewayConfig:
    cfg = config.load(path, GatewayConfig)
    if cfg.tls.crl is None:
        # allowed (a CA without a CRL yet), but then a revoked system certificate still gets in
        structlog.get_logger("psvn.core.config").warning(
            "tls.crl is not set: revoked client certificates will NOT be refused", config=str(path))
    return cfg
