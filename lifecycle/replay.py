"""Replay: fold events through decide/evolve, exactly as the live worker does."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

from events.inbound import Event
from lifecycle.decide import decide
from lifecycle.evolve import Applied, evolve
from lifecycle.policy import Policy
from lifecycle.records import Decision
from lifecycle.state import PersonState


class Replayer:
    """Holds one state per person; feed it events in arrival order."""

    __slots__ = ("policy", "states")

    def __init__(self, policy: Policy, states: dict[str, PersonState] | None = None) -> None:
        self.policy = policy
        self.states: dict[str, PersonState] = {} if states is None else states

    def apply(self, event: Event) -> Decision:
        states = self.states
        state = states.get(event.person_id)
        decision = decide(state, event, self.policy)
        if not decision.duplicate:
            states[event.person_id] = evolve(state, decision)
        return decision


def replay(events: Iterable[Event], policy: Policy) -> Iterator[Decision]:
    """Every decision, in order. Duplicates come out with `duplicate=True` and their old changes."""
    replayer = Replayer(policy)
    for event in events:
        yield replayer.apply(event)


def fold(records: Iterable[Applied]) -> dict[str, PersonState]:
    """Every person's state from history records (or decisions), with no rule re-applied."""
    states: dict[str, PersonState] = {}
    for record in records:
        if getattr(record, "duplicate", False):
            continue
        states[record.person_id] = evolve(states.get(record.person_id), record)
    return states


def state_as_of(records: Iterable[Applied], person_id: str, as_of: datetime) -> PersonState:
    """The person's state from the records of events that occurred at or before `as_of`.

    Records are taken in history order; a late event (occurred before as_of, arrived after a
    later one) still counts, as it did live.
    """
    state = PersonState(person_id)
    for record in records:
        if record.person_id != person_id or getattr(record, "duplicate", False):
            continue
        if record.event.occurred_at <= as_of:
            state = evolve(state, record)
    return state
