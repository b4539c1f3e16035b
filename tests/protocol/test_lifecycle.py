"""psvn/protocol/lifecycle.py: the state table allows forward moves only."""

from __future__ import annotations

import pytest

from psvn.protocol.lifecycle import FINAL, InvalidTransition, State, advance, can_move


def test_happy_path() -> None:
    s = advance(None, State.ACCEPTED)
    for nxt in (State.SENT, State.DELIVERED, State.ACKNOWLEDGED):
        s = advance(s, nxt)
    assert s is State.ACKNOWLEDGED


def test_receipts_may_overtake() -> None:
    assert advance(State.ACCEPTED, State.DELIVERED) is State.DELIVERED
    assert advance(State.SENT, State.ACKNOWLEDGED) is State.ACKNOWLEDGED


@pytest.mark.parametrize("final", sorted(FINAL))
def test_final_states_stay(final: State) -> None:
    for other in State:
        if other != final:
            assert not can_move(final, other)
            with pytest.raises(InvalidTransition):
                advance(final, other)


def test_no_going_back() -> None:
    with pytest.raises(InvalidTransition) as err:
        advance(State.DELIVERED, State.SENT)
    assert err.value.current is State.DELIVERED and err.value.new is State.SENT
    assert advance(State.SENT, State.SENT) is State.SENT
