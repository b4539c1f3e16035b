"""Local figures on one core, no network: seal+sign and unseal+verify, and the validator and
policy engine micro-benchmarks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import msgspec

from psvn.bench.report import (
    CLASSIFICATION,
    COUNCIL,
    MESSAGE_TYPE,
    NHS_NUMBER,
    PURPOSE,
    TRUST,
    LocalFigure,
)


# -- local figures (no network) ---------------------------------------------------------------
def _timed(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (at least 50 calls)."""
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(50):
            fn()
        n += 50
        now = time.perf_counter()
        if now >= end:
            return round(n / (now - t0), 1)


def bench_crypto(seconds: float = 1.0, size: int = 1024) -> dict[str, float]:
    """psvn/protocol/seal.py on ``size`` bytes with a realistic envelope: what each gateway pays per
    message on send (sign then seal) and on receive (open then verify), on one core."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from psvn.protocol import seal
    from psvn.protocol.envelope import Envelope, new_message_id, now_rfc3339
    signer, recipient = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    verify_key, recipient_pub = signer.public_key(), recipient.public_key()
    env = Envelope(id=new_message_id(), source=f"{COUNCIL}/adult-social-care", to=TRUST, type=MESSAGE_TYPE,
                   time=now_rfc3339(), purpose=PURPOSE, classification=CLASSIFICATION, subject=f"nhs:{NHS_NUMBER}",
                   source_system="adult-social-care", policy_version=1)
    header, payload = msgspec.json.encode(env), os.urandom(size)
    info = seal.info_for(COUNCIL, TRUST, env.id)
    sealed = seal.seal(seal.KIND_MESSAGE, header, payload, signing_key=signer, recipient_key=recipient_pub, info=info)

    def open_verify(opened: seal.OpenedKeys | None = None) -> None:
        seal.verify(seal.unseal(sealed, private_key=recipient, info=info, opened=opened), verify_key)

    def seal_sign(keys: seal.DataKeys | None = None) -> None:
        seal.seal(seal.KIND_MESSAGE, header, payload, signing_key=signer, recipient_key=recipient_pub, info=info,
                  keys=keys)

    open_verify()  # a broken round trip must fail loudly, not be timed
    one_use = seal.DataKeys(uses=1)
    return {  # a data key kept (the steady state), and a new one each message (HPKE's full cost)
        "seal_sign_per_s": _timed(seal_sign, seconds),
        "unseal_verify_per_s": _timed(open_verify, seconds),
        "seal_sign_new_key_per_s": _timed(lambda: seal_sign(one_use), seconds),
        "unseal_verify_new_key_per_s": _timed(lambda: open_verify(seal.OpenedKeys()), seconds),
        "payload_bytes": size,
        "sealed_bytes": len(sealed),
    }


def _builtins(value: Any) -> Any:
    try:
        return msgspec.to_builtins(value)
    except TypeError:
        return repr(value)


def local_figures(seconds: float) -> list[LocalFigure]:
    """Sealing, validation and policy decisions on one core. A failure here fails the bench.

    Each validation row carries its wall-clock rate and, beside it, its rate by process CPU time
    (best of the rounds; :func:`psvn.policies.validation_bench.bench_validation`): on a busy
    machine the CPU-time figure is the one a per-core target is judged by."""
    from psvn.policies.engine_bench import bench_engine
    from psvn.policies.validation_bench import bench_validation

    return [LocalFigure(name="protocol.seal", available=True, result=bench_crypto(seconds)),
            LocalFigure(name="policies.validation_bench.bench_validation", available=True,
                        result=_builtins(bench_validation(seconds=seconds, xml=True))),
            LocalFigure(name="policies.engine_bench.bench_engine", available=True,
                        result=_builtins(bench_engine(seconds=seconds)))]
