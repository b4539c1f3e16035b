"""``psvn bench``: end-to-end msg/s and latency through the devnet, against raw nats-py JetStream
on the same server, plus local crypto / validation / policy figures (see psvn.bench)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from psvn.core.errors import Code, PsvnError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bench", help="measure msg/s and latency end to end, against raw nats-py JetStream",
        description="Send N realistic ~1 KiB FHIR R4 ServiceRequests, each about its own patient, from the "
        "council (gss:E06000043) to the trust (ods:RYR) through a running devnet (SDK -> gateway -> JetStream -> "
        "gateway -> mailbox), then the "
        "same count of raw nats-py JetStream publishes + pull-consumes on the same nats-server as the baseline. "
        "Prints msg/s, p50/p99 latency and psvn/raw ratios, CPU ms per message per process, each gateway's RSS "
        "before and after the runs, the sender gateway's restart time, issue 9's targets beside the figures "
        "(information, not pass/fail), then one-core crypto, validation and policy-engine figures. "
        "Bounded by --count and --time-limit; about 30 s with the defaults.")
    p.add_argument("--devnet", default=".devnet", help="state folder of a running devnet (default .devnet)")
    p.add_argument("--start", action="store_true",
                   help="bring up a temporary devnet (temp folder, free ports), bench it, tear it down")
    p.add_argument("--count", type=int, default=2000,
                   help="messages in the throughput run and in the baseline (default 2000)")
    p.add_argument("--concurrency", type=int, default=8,
                   help="SDK sends in flight, one TLS connection each (default 8)")
    p.add_argument("--batch-size", type=int, default=500,
                   help="messages per POST /v1/messages:batch in the batch run through send_many (default 500)")
    p.add_argument("--latency-samples", type=int, default=100,
                   help="messages sent one at a time for latency without queueing (default 100; 0 skips)")
    p.add_argument("--time-limit", type=float, default=20.0,
                   help="seconds a send phase may take; then only what was accepted is awaited (default 20)")
    p.add_argument("--local-seconds", type=float, default=1.0,
                   help="seconds per local (one-core) figure (default 1; 0 skips them)")
    p.add_argument("--keep", action="store_true",
                   help="leave the bench messages unacknowledged in the trust's inbox (without it they are "
                   "acknowledged afterwards; a --start devnet is thrown away anyway)")
    p.add_argument("--cluster", type=int, metavar="{1,3}",
                   help="with --start: the temporary devnet's backbone has this many nats-servers (3: every "
                   "stream and bucket R3, and the raw baseline's stream R3 too, so the ratio compares like with "
                   "like). Without --start the running devnet is benched as it is; if given, it must match")
    p.add_argument("--no-restart", action="store_true",
                   help="skip the last step: stopping the sender's gateway and starting it again, timed until its "
                   "/readyz answers 200 (by default it is restarted as the devnet starts it and left running)")
    p.add_argument("--memory-messages", type=int, default=0, metavar="N",
                   help="after the other runs: N more messages through send_many in ten rounds, the trust "
                   "acknowledging each round, each gateway's RSS read after every round (memory over history, "
                   "not open work; 100000 judges issue 9's RSS target, ~2 minutes; default 0 skips it)")
    p.add_argument("--runs", type=int, default=1, metavar="N",
                   help="run the latency, single-send, batch and raw runs N times against the same devnet and "
                   "read each target over all of them: its median, each run's figure, and whether most runs "
                   "met it (this machine's speed swings from one minute to the next; default 1; take N odd: "
                   "the median then meets a target exactly when most runs do, if every run measured it). The "
                   "restart, the memory run and the local figures come once, in the last run; the exit status "
                   "says whether every run delivered every message")
    p.add_argument("--json", action="store_true", help="print the report as JSON (progress still on stderr)")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from psvn import bench, devnet

    opts = bench.Options(count=args.count, concurrency=args.concurrency, latency_samples=args.latency_samples,
                         batch_size=args.batch_size, restart=not args.no_restart,
                         time_limit=args.time_limit, local_seconds=args.local_seconds, cleanup=not args.keep,
                         memory_messages=args.memory_messages, runs=args.runs)
    opts.check()
    if args.cluster is not None:
        devnet.check_cluster(args.cluster)
    if args.start:
        report = bench.run_with_temporary_devnet(opts, progress=bench.progress_to_stderr, cluster=args.cluster or 1)
    else:
        layout = devnet.Layout(Path(args.devnet))
        state = devnet.read_state(layout)
        if state is None or not devnet.running(state):
            raise PsvnError(Code.BAD_REQUEST,
                            f"no devnet running in {layout.root}: start one with `psvn devnet --dir {layout.root} "
                            "up --detach`, or run `psvn bench --start` to bench a temporary one",
                            field="--devnet", rule="devnet-running")
        nodes = len(devnet.nats_nodes(state))
        if args.cluster is not None and args.cluster != nodes:
            raise PsvnError(Code.BAD_REQUEST,
                            f"the devnet in {layout.root} runs {nodes} nats-server(s), not {args.cluster}: bench it "
                            f"as it is (drop --cluster), or add --start to bench a temporary {args.cluster}-node one",
                            field="--cluster", rule="cluster-size")
        report = bench.run(layout, opts, progress=bench.progress_to_stderr)
    if args.json:
        sys.stdout.write(bench.to_json(report).decode() + "\n")
    else:
        print(bench.format_report(report))
    ok = bench.delivered(report) and not report.incomplete_runs  # every run, with --runs
    ok = ok and (report.restart is None or report.restart.ready)  # a gateway that did not come back; targets never
    return 0 if ok else 1
