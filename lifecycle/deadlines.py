"""When time alone changes a person: the inactivity window and the stage SLAs.

decide() applies these when an event arrives; the sweeper uses `next_deadline` to know when
to publish an `inactivity_timeout` tick so the decision is recorded even if nothing arrives.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from lifecycle.policy import Policy
from lifecycle.state import PersonState


def inactivity_deadline(state: PersonState, policy: Policy) -> datetime | None:
    """End of the inactivity window, if the person's stage times out under this policy."""
    if state.last_activity is None or state.stage not in policy.compiled.timeout_stages:
        return None
    return state.last_activity + policy.inactivity_window


def sla_deadline(state: PersonState, policy: Policy) -> datetime | None:
    """When the current stage's SLA is due, unless already breached for this entry."""
    days = policy.sla_days.get(state.stage)  # type: ignore[call-overload]
    if days is None or state.stage in state.sla_breached:
        return None
    entered = state.entered_at.get(state.stage)
    return None if entered is None else entered + timedelta(days=days)


def next_deadline(state: PersonState, policy: Policy) -> datetime | None:
    """The earliest time at which an event-less tick would change something for this person.

    Never for an alias (a person merged into another): its survivor's clocks run instead.
    """
    if state.merged_into is not None:
        return None
    times = [t for t in (inactivity_deadline(state, policy), sla_deadline(state, policy)) if t]
    return min(times) if times else None
