"""Decisions per second of the policy engine over a realistic mix (``psvn bench`` calls this).

The mix is what a busy gateway sees: mostly allowed care traffic between many trusts, practices
and councils, a share carrying a subject reference checked against 10,000 recorded consent
states, some denials (wrong purpose, sensitive data to a charity, a citizen's opt-out) and some
feed publishes and subscriptions. Measured on the default policy set.
"""

from __future__ import annotations

import random
import time
from typing import Any

from psvn.policies.bundle import DEFAULT_DIR, load_dir
from psvn.policies.consent import ConsentChange, ConsentRegistry
from psvn.policies.engine import DecisionRequest, Engine
from psvn.policies.review import load_suite


def _mix(rng: random.Random, registry: ConsentRegistry) -> list[DecisionRequest]:
    trusts = [f"ods:R{c}{d}" for c in "ABCDEFGHJK" for d in "ABC"]  # 30
    gps = [f"ods:G81{n:03d}" for n in range(60)]
    councils = [f"gss:E06{n:06d}" for n in range(1, 41)]
    subjects = [f"nhs:{9000000000 + n}" for n in range(10_000)]
    for n, s in enumerate(subjects):
        opt = ["research-consented"] if n % 10 == 0 else (["direct-care"] if n % 97 == 0 else [])
        registry.apply(ConsentChange(subject=s, seq=1, opt_outs=opt,
                                     effective="2025-01-01T00:00:00Z", issuer="pds:bench"))
    out: list[DecisionRequest] = []
    for _ in range(2_000):
        roll = rng.random()
        subject = rng.choice(subjects) if rng.random() < 0.4 else None
        if roll < 0.35:  # referrals and demographics between care bodies
            out.append(DecisionRequest(
                sender=rng.choice(trusts + gps), sender_type="nhs-trust", recipient=rng.choice(councils),
                recipient_type="council", mailbox=rng.choice([None, "adult-social-care"]),
                type=rng.choice(["fhir.r4.ServiceRequest", "fhir.r4.Patient", "fhir.r4.Bundle"]),
                purpose=rng.choice(["direct-care", "direct-care", "safeguarding"]),
                classification=rng.choice(["OFFICIAL", "OFFICIAL-SENSITIVE"]), subject=subject,
                ttl_seconds=rng.choice([None, 86400])))
        elif roll < 0.55:  # hospital ADT events
            out.append(DecisionRequest(
                sender=rng.choice(trusts), sender_type="nhs-trust", recipient=rng.choice(councils + gps),
                recipient_type=rng.choice(["council", "gp"]), mailbox="adult-social-care",
                type=f"hl7v2.ADT_A0{rng.randint(1, 8)}", purpose="direct-care",
                classification="OFFICIAL-SENSITIVE", subject=subject))
        elif roll < 0.65:  # research with consent: the registry decides
            out.append(DecisionRequest(
                sender=rng.choice(gps), sender_type="gp", recipient=rng.choice(trusts),
                recipient_type="nhs-trust", mailbox="research", type="fhir.r4.Patient",
                purpose="research-consented", subject=rng.choice(subjects)))
        elif roll < 0.75:  # denials: a wrong purpose, sensitive data to a charity
            out.append(DecisionRequest(
                sender=rng.choice(gps), sender_type="gp", recipient="ccn:1123456",
                recipient_type="charity", type="fhir.r4.ServiceRequest",
                purpose=rng.choice(["direct-care", "statutory-duty"]),
                classification=rng.choice(["OFFICIAL", "OFFICIAL-SENSITIVE"])))
        elif roll < 0.85:  # sensor and aggregate feeds
            council = rng.choice(["gss:E06000043", "gss:E10000011", "gss:E08000003"])
            out.append(DecisionRequest(
                action="publish", sender=council, sender_type="council",
                topic=rng.choice(["sensors.air-quality", "aggregates.adult-social-care"]),
                type=rng.choice(["cloudevents.air-quality.reading", "fhir.r4.MeasureReport"]),
                purpose=rng.choice(["environmental-monitoring", "aggregate-statistics"])))
        else:  # ODA subscriptions, in and out of region
            out.append(DecisionRequest(
                action="subscribe", sender=rng.choice(["gss:E06000043", "gss:E08000003"]),
                sender_type="council", recipient=rng.choice(["oda:brighton", "oda:greater-manchester"]),
                recipient_type="oda", topic="aggregates.adult-social-care",
                type="fhir.r4.MeasureReport", purpose="aggregate-statistics"))
    return out


def bench_engine(*, seconds: float = 1.0) -> dict[str, Any]:
    """Decisions/s, hot (memoised request shapes) and cold (first sight of each shape), plus
    compile time, explain rate and the example suite's size, on the default policy set."""
    doc = load_dir()
    rng = random.Random(5)
    registry = ConsentRegistry()
    mix = _mix(rng, registry)

    t0 = time.perf_counter()
    compiles = 0
    while compiles < 3 or time.perf_counter() - t0 < 0.05 * seconds:
        engine = Engine.from_document(doc)
        compiles += 1
    compile_ms = (time.perf_counter() - t0) / compiles * 1000

    # cold: a fresh engine decides the mix once (every distinct shape is computed)
    cold_n, cold_t = 0, 0.0
    while cold_t < 0.25 * seconds:
        fresh = Engine.from_document(doc)
        t = time.perf_counter()
        for req in mix:
            fresh.decide(req, consent=registry)
        cold_t += time.perf_counter() - t
        cold_n += len(mix)

    allowed = sum(engine.decide(req, consent=registry).allow for req in mix)
    n, t = 0, time.perf_counter()
    end = t + seconds
    decide = engine.decide
    while time.perf_counter() < end:
        for req in mix:
            decide(req, consent=registry)
        n += len(mix)
    hot = n / (time.perf_counter() - t)

    ex_n, t = 0, time.perf_counter()
    while time.perf_counter() - t < 0.15 * seconds:
        engine.explain(mix[ex_n % len(mix)], consent=registry)
        ex_n += 1
    explain_rate = ex_n / (time.perf_counter() - t)

    rules = sum(1 for _ in engine.policy.all_rules())
    return {
        "decisions_per_s": round(hot),
        "cold_decisions_per_s": round(cold_n / cold_t),
        "explain_per_s": round(explain_rate),
        "compile_ms": round(compile_ms, 2),
        "rules": rules,
        "mix_requests": len(mix),
        "mix_allowed_share": round(allowed / len(mix), 3),
        "consent_records": len(registry),
        "suite_cases": len(load_suite(DEFAULT_DIR)),
        "policy_version": engine.version,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(bench_engine(), indent=2))
