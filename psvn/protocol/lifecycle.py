"""A message's lifecycle as one explicit state table (sans-IO, like h11).

Sender side: accepted -> sent -> delivered -> acknowledged; or rejected / expired.
Recipient side: delivered -> acknowledged; or quarantined.
Receipts can overtake one another on a busy network, so a move may skip forward
(accepted -> delivered) but never go back.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    ACCEPTED = "accepted"
    SENT = "sent"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    REJECTED = "rejected"
    EXPIRED = "expired"
    QUARANTINED = "quarantined"


FINAL = frozenset({State.ACKNOWLEDGED, State.REJECTED, State.EXPIRED, State.QUARANTINED})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.ACCEPTED: frozenset({State.SENT, State.DELIVERED, State.ACKNOWLEDGED, State.REJECTED, State.EXPIRED}),
    State.SENT: frozenset({State.DELIVERED, State.ACKNOWLEDGED, State.REJECTED, State.EXPIRED}),
    State.DELIVERED: frozenset({State.ACKNOWLEDGED, State.EXPIRED}),
    State.ACKNOWLEDGED: frozenset(),
    State.REJECTED: frozenset(),
    State.EXPIRED: frozenset(),
    State.QUARANTINED: frozenset(),
}


class InvalidTransition(ValueError):
    def __init__(self, current: State, new: State) -> None:
        super().__init__(f"a message cannot move from {current} to {new}")
        self.current = current
        self.new = new


def can_move(current: State, new: State) -> bool:
    return new in TRANSITIONS[current]


def advance(current: State | None, new: State) -> State:
    """The state after ``new`` is reported; raise :class:`InvalidTransition` if not allowed."""
    if current is None or current == new:
        return new
    if not can_move(current, new):
        raise InvalidTransition(current, new)
    return new
