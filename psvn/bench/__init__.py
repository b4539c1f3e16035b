"""``psvn bench``: end-to-end throughput and latency through a running devnet, against the raw
nats-py JetStream baseline on the same server, plus local (one-core) figures.

What is measured, and why this way:

* **psvn end to end**: the council's local system sends ~1 KiB FHIR R4 ServiceRequests, each about
  its own patient (so each costs a consent read at both ends, as referrals do), to the NHS trust
  through the SDK (``concurrency`` requests in flight, each through its own ``AsyncClient``
  and reused TLS connection) -> council gateway (validate, decide, sign, seal, publish) ->
  JetStream -> trust gateway (open, verify, re-decide, file in the mailbox) -> signed receipt ->
  council status ``delivered``. Delivery is observed on the backbone, not by polling the gateways:
  the bench subscribes (as the broker) to the two gateways' state-bucket updates, so every message
  gets an exact "in the trust's mailbox" and "sender sees delivered" time and the gateways serve
  no extra requests while being measured. Afterwards every message's status is read back through
  the SDK, so the delivered count is also what a local system would see.
* **Baseline**: the same payload size published with plain nats-py to a throwaway JetStream
  stream (same storage, dedupe header, durable pull consumer with ``fetch(256)`` + ack, like the
  gateway's) on the same nats-server, same count. ``ratio = psvn / raw``.
* Each side is measured twice: a throughput run (everything in flight, so its latencies include
  queueing) and a latency run (one message at a time: the pipeline's own delay).
* The batch path: the same count again through ``send_many`` (``POST /v1/messages:batch``).
* What it cost the processes (``process``, from Linux ``/proc``): CPU ms per message per process
  for each run; each gateway's RSS after the warm-up and after the runs; then, last, the sender's
  gateway stopped and started again as the devnet starts it, timed until ``/readyz`` answers 200
  (the devnet is left running, its state naming the new PID).
* Issue 9's targets beside the figures (``report.assess``): information, never pass/fail.
* Local figures (one core, no network): seal+sign and unseal+verify of 1 KiB, and, when those
  modules exist, ``policies.validation_bench`` and ``policies.engine_bench``.

Bounded in count and time: a time limit stops the send phase, and each wait has a deadline.
The parts: ``workload`` (options, the payload), ``observe`` (delivery seen on the backbone),
``paths`` (the psvn send paths), ``baseline`` (raw nats-py), ``local`` (one-core figures),
``process`` (CPU, memory, restart), ``report`` (structs, targets, the table), ``run`` (one run,
in order) and ``ports``; this package re-exports what callers use.
"""

from __future__ import annotations

from psvn.bench.observe import DeliveryObserver
from psvn.bench.ports import free_port_range, port_span
from psvn.bench.process import CpuMeter, MemoryMeter, cpu_seconds, machine_busy_seconds, memory_mib, restart_gateway
from psvn.bench.report import (
    CLASSIFICATION,
    COUNCIL,
    MESSAGE_TYPE,
    NHS_NUMBER,
    PURPOSE,
    TRUST,
    CpuUse,
    Latency,
    LocalFigure,
    Memory,
    MemoryRun,
    Percentiles,
    Ratios,
    RawThroughput,
    Report,
    Restart,
    Target,
    TargetOverRuns,
    Throughput,
    assess,
    delivered,
    format_report,
    over_runs,
    percentiles,
    to_json,
)
from psvn.bench.run import progress_to_stderr, run, run_async, run_with_temporary_devnet, runs_async
from psvn.bench.workload import Options, payload_size, service_request

__all__ = [
    "CLASSIFICATION",
    "COUNCIL",
    "MESSAGE_TYPE",
    "NHS_NUMBER",
    "PURPOSE",
    "TRUST",
    "CpuMeter",
    "CpuUse",
    "DeliveryObserver",
    "Latency",
    "LocalFigure",
    "Memory",
    "MemoryMeter",
    "MemoryRun",
    "Options",
    "Percentiles",
    "Ratios",
    "RawThroughput",
    "Report",
    "Restart",
    "Target",
    "TargetOverRuns",
    "Throughput",
    "assess",
    "cpu_seconds",
    "delivered",
    "format_report",
    "free_port_range",
    "machine_busy_seconds",
    "memory_mib",
    "over_runs",
    "payload_size",
    "percentiles",
    "port_span",
    "progress_to_stderr",
    "restart_gateway",
    "run",
    "run_async",
    "run_with_temporary_devnet",
    "runs_async",
    "service_request",
    "to_json",
]
