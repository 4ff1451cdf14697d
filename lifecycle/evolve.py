"""evolve(): apply one decision (or a stored history record) to a person's state.

It only assigns what decide() already worked out and never re-checks a rule, so folding
evolve over the history topic rebuilds exactly the state the live worker had.
"""

from __future__ import annotations

from typing import Any, Protocol

from lifecycle.records import Merged, Reason
from lifecycle.shredding import WITHHELD
from lifecycle.stages import higher
from lifecycle.state import PersonState, enter


class Applied(Protocol):
    """What evolve reads: a `lifecycle.records.Decision` or an `events.outbound.HistoryRecord`."""

    person_id: str
    sequence: int
    event: Any
    changes: Any
    sla_breaches: Any
    note: Any
    last_activity: Any
    score: float
    score_at: Any
    first_touch_source: str | None
    lead_source: str | None
    erased: bool
    last_touch_source: str | None
    touches: int
    first_touch_at: Any
    merged_into: str | None
    merged: Any


def evolve(state: PersonState | None, decision: Applied) -> PersonState:
    """The state after `decision`. Updates `state` in place and returns it (copy() to keep one).

    Never give it a duplicate decision (`decision.duplicate`): a duplicate changes nothing.
    Which event ids were applied is not part of the state (see `lifecycle.dedup`).

    In place because the worker and every replay hold one state per person and drop the old
    one; a copy per event would double the cost of the fold for nothing.
    """
    if state is None:
        state = PersonState(decision.person_id)
    state.sequence = decision.sequence
    changes = decision.changes
    if changes:  # most events move no one: skip the loop and its checks
        for change in changes:
            state.stage = change.to_stage
            for stage in change.passed_through:
                enter(state, stage, change.occurred_at)  # entered_at[stage] = …, held packed
                state.highest = higher(state.highest, stage)
            enter(state, change.to_stage, change.occurred_at)
            state.highest = higher(state.highest, change.to_stage)
            if change.to_stage in state.sla_breached:
                state.sla_breached = tuple(s for s in state.sla_breached if s != change.to_stage)
            state.last_reason = Reason.shared(change.reason)
    elif decision.note is not None:
        state.last_reason = Reason.shared(decision.note)
    if decision.sla_breaches:
        state.sla_breached += tuple(b.stage for b in decision.sla_breaches)
    state.last_activity = decision.last_activity
    state.score = decision.score
    state.score_at = decision.score_at
    state.first_touch_source = decision.first_touch_source
    state.lead_source = decision.lead_source
    state.last_touch_source = decision.last_touch_source
    state.touches = decision.touches
    state.first_touch_at = decision.first_touch_at
    if decision.merged_into is not None:
        state.merged_into = decision.merged_into
        state.merged_sequence = decision.sequence
    merged = decision.merged
    if merged is not None:
        # A fold makes a survivor: the winner of a crossing was an alias (`merge._crossing`).
        state.merged_into, state.merged_sequence = None, 0
        merged = Merged.of(merged)
        state.entered_at = dict(merged.entered_at)
        state.highest = merged.highest
        state.profile = dict(merged.profile)
        state.sla_breached = merged.sla_breached
        state.aliases = merged.aliases
    event = decision.event
    if decision.erased:  # what an erased person keeps: stage facts, no profile, no sentence
        state.profile = {}
        state.erased = True
        if state.last_reason is not None:
            state.last_reason = Reason(state.last_reason.rule, WITHHELD)
    elif event.profile is not None and state.merged_into is None:
        # An alias's events belong to its survivor (`lifecycle.merge`): its own record only
        # notes them, and its profile stays what it handed off.
        # assigned only when it changes: the state holds it packed (most events repeat it)
        profile = state.profile
        merged = {**profile, **event.profile.given()}
        if merged != profile:  # equal dicts here have their keys in the same order too
            state.profile = merged
    return state
