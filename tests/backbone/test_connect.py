"""psvn/backbone/connect.py: what provisioning rides out, and what it does not."""

from __future__ import annotations

import pytest
from nats.js.errors import BadRequestError, NotFoundError

from psvn.backbone.connect import NO_PEERS_FOR_PLACEMENT, patiently


async def test_a_placement_while_a_peer_is_counted_offline_is_tried_again() -> None:
    tries: list[int] = []

    async def step() -> str:
        tries.append(1)
        if len(tries) < 3:  # what a forming cluster's meta leader answers for a moment
            raise BadRequestError(code=400, err_code=NO_PEERS_FOR_PLACEMENT,
                                  description="no suitable peers for placement, peer offline")
        return "placed"

    assert await patiently(step, what="stream X", patience=10) == "placed"
    assert len(tries) == 3


async def test_any_other_refusal_is_raised_at_once() -> None:
    tries: list[int] = []

    async def step() -> None:
        tries.append(1)
        raise NotFoundError(code=404, err_code=10059, description="stream not found")

    with pytest.raises(NotFoundError):
        await patiently(step, what="stream X", patience=10)
    assert len(tries) == 1
