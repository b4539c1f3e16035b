"""Prometheus metrics, one registry per gateway (several gateways can share a process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        r = self.registry
        self.sent = Counter("psvn_messages_sent_total", "Messages sealed and published", ["type"], registry=r)
        self.rejected = Counter("psvn_messages_rejected_total", "Messages refused at egress", ["code"], registry=r)
        self.received = Counter("psvn_messages_received_total", "Messages taken off the backbone",
                                ["outcome"], registry=r)
        self.receipts = Counter("psvn_receipts_total", "Receipts received", ["status"], registry=r)
        self.decisions = Counter("psvn_policy_decisions_total", "Policy decisions",
                                 ["direction", "effect"], registry=r)
        self.policy_version = Gauge("psvn_policy_version", "Policy set version enforced", registry=r)
        self.send_seconds = Histogram("psvn_send_seconds", "Time to accept a message (validate, decide, seal, publish)",
                                      registry=r, buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1))
        self.audit_lost = Counter("psvn_audit_records_lost_total",
                                  "Audit records the AUDIT stream never acknowledged (each is logged in full)",
                                  registry=r)
        self.values_refused = Counter(
            "psvn_backbone_values_refused_total",
            "Values read from a shared bucket (registry, policy set, consent) and refused: empty, deleted, "
            "undecryptable, unsigned or badly signed; each is logged with its key, and the previous good "
            "value stays in force (consent: the subject's consent-dependent purposes are refused)",
            ["bucket"], registry=r)
        self.consent_lookup_seconds = Histogram(
            "psvn_consent_lookup_seconds", "Time to read and verify the consent records a decision names "
            "(one backbone round trip, the records fetched concurrently)", registry=r,
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2))
        self.batch_items = Histogram(
            "psvn_batch_items", "Messages per POST /v1/messages:batch request", registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000))
        self.open_mail = Gauge("psvn_state_open_mail", "Mail delivered here and not yet acknowledged: what the "
                               "gateway keeps in memory of its mailbox (closed mail is read by key)", registry=r)
        self.tracked_expiries = Gauge("psvn_state_tracked_expiries", "Sent messages with an expiry this instance "
                                      "watches until a receipt settles them (bounded by gateway.max_tracked_expiries)",
                                      registry=r)
        self.record_cache = Gauge("psvn_state_record_cache", "Sent-message records this instance keeps from its "
                                  "own writes, so a receipt needs no read (bounded by gateway.record_cache_size)",
                                  registry=r)
        self.sent_steps_pending = Gauge("psvn_sent_steps_pending", "Sends published whose record says accepted and "
                                        "whose sent step waits for a receipt to write it (bounded by "
                                        "gateway.max_pending_sent_steps)", registry=r)
        self.sent_steps = Counter("psvn_sent_steps_total", "Sent steps written on their own, no receipt having come "
                                  "within gateway.sent_step_delay_seconds", ["outcome"], registry=r)
        self.seal_data_keys = Gauge("psvn_seal_data_keys", "Data keys this gateway seals messages under, one per "
                                    "recipient key it sends to (bounded by gateway.seal_data_keys; each serves "
                                    "gateway.seal_data_key_uses messages or seal_data_key_seconds at most)",
                                    registry=r)
        self.seal_opened_keys = Gauge("psvn_seal_opened_keys", "Data keys senders sealed to this gateway, kept "
                                      "unsealed (bounded by gateway.seal_opened_keys)", registry=r)
        self.state_loaded = Gauge("psvn_state_entries_loaded_at_start", "State entries read while starting: the "
                                  "open mail, never the history", registry=r)
        self.backbone_up = Gauge("psvn_backbone_connected", "1 while connected to the backbone", registry=r)
        # the process's garbage collector (python_gc_*: collections and objects collected per
        # generation) and how the gateway set it once started (gateway.gc_threshold)
        GCCollector(registry=r)
        self.gc_threshold = Gauge("psvn_gc_threshold", "The garbage collector's threshold per generation, as "
                                  "the gateway set it once started (gateway.gc_threshold)", ["generation"], registry=r)
        self.gc_frozen = Gauge("psvn_gc_frozen_objects", "Objects start-up built that the garbage collector no "
                               "longer walks (gc.freeze once started)", registry=r)
        self.heap_trim_interval = Gauge("psvn_heap_trim_interval_seconds", "How often the C allocator's free "
                                        "pages go back to the system (gateway.heap_trim_seconds); 0: never, "
                                        "or the C library cannot", registry=r)
        self.heap_trims = Counter("psvn_heap_trims_total", "Calls that handed the C allocator's free pages back to "
                                  "the system, by whether any memory went back", ["released"], registry=r)
        self.heap_trim_seconds = Histogram("psvn_heap_trim_seconds", "How long the event loop waited on one "
                                           "trim of the C allocator", registry=r,
                                           buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1))

    def count(self, counter: Counter, *labels: str) -> None:
        """``counter.labels(*labels).inc()``, the labelled child kept: ``labels`` checks and
        joins its values on every call (1.3 us a count, against 0.5 here), and the hot path
        counts about three times a message. Holds nothing the registry does not: it keeps every
        child it ever made."""
        key = (counter, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels)
        child.inc()

    def heap_settled(self, thresholds: tuple[int, int, int], frozen: int) -> None:
        for generation, value in enumerate(thresholds):
            self.gc_threshold.labels(str(generation)).set(value)
        self.gc_frozen.set(frozen)

    def heap_trimmed(self, seconds: float, released: bool) -> None:
        self.heap_trims.labels("yes" if released else "no").inc()
        self.heap_trim_seconds.observe(seconds)
