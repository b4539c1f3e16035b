"""The SDK keeps its own copy of the error codes (it depends on nothing server-side); this test
keeps the two in step, so every code a gateway can answer has a name in the SDK."""

from __future__ import annotations

import psvn_client

from psvn.core.errors import HTTP_STATUS, Code

SERVER_ONLY = {Code.POLICY_SIGNATURE_INVALID, Code.POLICY_VERSION_REGRESSION, Code.CONFIG_INVALID}


def test_every_code_a_gateway_answers_is_known_to_the_sdk() -> None:
    sdk = {c.value for c in psvn_client.Code}
    missing = {c.value for c in Code if c not in SERVER_ONLY} - sdk
    assert not missing, f"add these to clients/python/psvn_client/errors.py Code: {sorted(missing)}"


def test_sdk_maps_each_code_to_a_family_with_the_servers_status() -> None:
    from psvn_client.errors import error_from_problem

    for code in Code:
        if code in SERVER_ONLY:
            continue
        status = HTTP_STATUS[code]
        err = error_from_problem(status, {"type": f"urn:psvn:problem:{code.value}", "status": status,
                                          "code": code.value, "detail": "x"})
        assert (err.code, err.status) == (code.value, status)
