"""decide(): every business rule, applied to one event for one person. Pure and deterministic.

Order of the rules for one event:
1. an event id the person already applied changes nothing: a redelivery returns what it
   produced the first time, the same id with other content is a conflict (`lifecycle.dedup`;
   the runtime looks up what it saw of the id and passes it as `seen`);
1b. identity (`lifecycle.merge`): an alias (a person merged into another) only forwards
   every event to its survivor; `person_merged` and the hand-off `person_absorbed` have their
   own decisions;
2. the current stage's SLA, if the event arrives after it was due, is recorded as breached;
3. if the event arrives after the inactivity window, the person is first recycled as of the
   window's end (time comes only from `occurred_at`, never from a clock);
4. the event's own trigger (from the policy's lists, or the fixed sales-feedback map) is
   looked up in the machine's table and its guards are checked;
5. with scoring, a score that reaches the threshold is a move to mql on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from events.inbound import KNOWN_TYPES, SALES_TYPES, Event, EventType
from lifecycle import merge
from lifecycle.dedup import Seen, repeated
from lifecycle.guards import GuardInput, check
from lifecycle.machine import TABLE
from lifecycle.policy import Policy
from lifecycle.records import Decision, Reason, SlaBreach, StageChange
from lifecycle.stages import passed_through
from lifecycle.state import PersonState
from lifecycle.state import entered as entered_at
from lifecycle.temperature import temperature

_ERASED = EventType.PERSON_ERASED.value

#: Events that are not a marketing touch even when they carry a source (attribution).
_NOT_TOUCHES = SALES_TYPES | {
    EventType.INACTIVITY_TIMEOUT.value,
    EventType.PERSON_ERASED.value,
    EventType.PROFILE_UPDATED.value,
    EventType.UNSUBSCRIBED.value,
}

_SALES_RULES = {
    "accept": ("sales.accepted", "sales accepted the lead"),
    "reject": ("sales.rejected", "sales rejected the lead"),
    "open_opportunity": ("sales.opportunity", "sales opened an opportunity"),
    "win": ("sales.won", "the deal was won"),
    "lose": ("sales.lost", "the deal was lost"),
}


def decide(
    state: PersonState | None,
    event: Event,
    policy: Policy,
    seen: Seen | None = None,
    *,
    content: Mapping[str, Any] | None = None,
    recorded: Mapping[str, str] | None = None,
) -> Decision:
    """What `event` does to the person in `state` under `policy`. Never mutates `state`.

    `seen` is what the runtime's dedup store holds for (person, event id): None for an id
    the person never applied. `content` is the event as history stores it (personal fields
    sealed, `lifecycle.shredding.stored_body`) when it differs from the event as received.
    `recorded` are the outcomes a history record kept of the personal fields its decision
    read (replay and verify of a person whose fields are unreadable).

    Most events move no one (page views, clicks); they take the short path through this
    function. Anything that may move the person goes through `_Deciding`.
    """
    if state is None:
        state = PersonState(event.person_id)
    compiled = policy.compiled
    if seen is not None:
        decision = repeated(
            state.person_id, compiled.version, event, seen, content, erased=state.erased
        )
        if state.merged_into is not None and decision.conflict is None:
            decision.follow_up = merge.repeated_follow_up(state, event, seen)
        return decision
    event_type = event.type
    if state.merged_into is not None:  # an alias: its survivor takes everything
        return merge.forward(state, event, policy)
    if event_type in merge.IDENTITY_TYPES:
        return _IDENTITY[event_type](state, event, policy)

    now = event.occurred_at
    stage = state.stage
    breaches: tuple[SlaBreach, ...] = ()
    if stage in compiled.sla_days and stage not in state.sla_breached:
        breaches = _sla_breaches(state, event, compiled.sla_days[stage])

    last = state.last_activity
    timed_out = (
        last is not None
        and stage in compiled.timeout_stages
        and now > last + compiled.inactivity_window
    )
    activity = event_type in compiled.activity
    last_activity = now if activity and (last is None or now > last) else last

    score, score_at, scored = state.score, state.score_at, False
    weight = compiled.weights.get(event_type)
    if weight:
        # Exponential decay since the last scored event (late events do not decay it), inline
        # because it runs on most events; same operations in the same order as ever.
        half_life = compiled.half_life_days
        if score and score_at is not None and half_life is not None and now > score_at:
            days = (now - score_at).total_seconds() / 86400
            score = score * math.pow(0.5, days / half_life)
        score += weight
        scored = score >= compiled.threshold
        if score_at is None or now > score_at:
            score_at = now

    first_touch = state.first_touch_source or event.source
    first_touch_at = state.first_touch_at
    if state.first_touch_source is None and event.source is not None:
        first_touch_at = now  # this event is the first touch
    touches, last_touch = state.touches, state.last_touch_source
    if event.source is not None and event_type not in _NOT_TOUCHES:
        touches, last_touch = touches + 1, event.source
    trigger = compiled.triggers.get(event_type)
    note: Reason | None = None
    erased = False
    outcomes: dict[str, str] | None = None
    changes: tuple[StageChange, ...] = ()
    lead_source = state.lead_source
    if timed_out or scored or (trigger is not None and (stage, trigger) in TABLE):
        deciding = _Deciding(state, event, policy, score, first_touch, recorded)
        deciding.touches, deciding.last_touch = touches, last_touch
        if timed_out:
            deciding.time_out(last)  # type: ignore[arg-type]
        if trigger is not None:
            note = deciding.trigger(trigger)
        if scored and (deciding.stage, "reach_score") in TABLE:
            blocked = deciding.move("reach_score", "mql.score", f"{event_type} raised the score")
            note = note or blocked
        changes = tuple(deciding.changes)
        lead_source = deciding.lead_source
        outcomes = deciding.outcomes or None
    elif trigger is None:
        if event_type == _ERASED:
            erased = True
        elif event_type in compiled.not_a_lead:
            note = Reason("not_a_lead", f"{event_type} is not a lead action under {compiled.name}")
        elif event_type not in KNOWN_TYPES:
            note = Reason("unknown_type", f"unknown event type {event_type!r}: recorded, no effect")

    return Decision(
        state.person_id,
        state.sequence + 1,
        compiled.version,
        event,
        changes,
        breaches,
        note,
        activity,
        last_activity,
        score,
        score_at,
        first_touch,
        lead_source,
        erased,
        False,  # duplicate; positional to the end: ~40 % cheaper a call than by keyword
        last_touch,
        touches,
        None,  # conflict
        outcomes,
        first_touch_at,
    )


_IDENTITY = {merge.MERGED: merge.merge, merge.ABSORBED: merge.absorb}


def _sla_breaches(state: PersonState, event: Event, days: float) -> tuple[SlaBreach, ...]:
    """The current stage's SLA, if this event arrives after it was due."""
    entered = entered_at(state, state.stage)  # `state.entered_at.get(…)`, held packed
    if entered is None:
        return ()
    due = entered + timedelta(days=days)
    if event.occurred_at <= due:
        return ()
    breach = SlaBreach(
        state.person_id, state.stage, entered, due, event.occurred_at, days, event.event_id
    )
    return (breach,)


class _Deciding:
    """The working set of a decision that may move the person (the slow, rarer path)."""

    __slots__ = (
        "changes",
        "event",
        "first_touch",
        "last_touch",
        "lead_source",
        "outcomes",
        "policy",
        "profile",
        "recorded",
        "refusal",
        "score",
        "sequence",
        "stage",
        "state",
        "touches",
    )

    def __init__(
        self,
        state: PersonState,
        event: Event,
        policy: Policy,
        score: float,
        first_touch: str | None,
        recorded: Mapping[str, str] | None = None,
    ) -> None:
        self.state = state
        self.recorded = recorded
        self.outcomes: dict[str, str] | None = None
        self.event = event
        self.policy = policy
        self.sequence = state.sequence + 1
        self.stage = state.stage
        self.changes: list[StageChange] = []
        self.first_touch = first_touch
        self.lead_source = state.lead_source
        self.score = score
        self.profile: dict[str, Any] | None = None
        self.refusal: str | None = None
        # Attribution up to and including this event (decide() sets both).
        self.touches = state.touches
        self.last_touch = state.last_touch_source

    def time_out(self, last: datetime) -> None:
        """Recycle as of the end of the inactivity window (the caller checked it elapsed)."""
        deadline = last + self.policy.inactivity_window
        move = TABLE.get((self.stage, "time_out"))
        if move is None:
            return
        days = f"{self.policy.inactivity_days:g}"
        text = f"no activity for {days} days since {last:%Y-%m-%d}; {self.stage} times out"
        self._append(move.dest, deadline, Reason("inactivity", text), before_event=True)

    def trigger(self, trigger: str) -> Reason | None:
        event = self.event
        if trigger in _SALES_RULES:
            rule, text = _SALES_RULES[trigger]
            if event.reason:
                text = f"{text}: {event.reason}"
            move = TABLE.get((self.stage, trigger))
            if move is not None:
                self._append(move.dest, event.occurred_at, Reason(rule, text))
            return None
        if trigger == "subscribe":
            move = TABLE.get((self.stage, trigger))
            if move is not None:
                text = f"{event.type} opted in; no interest action yet"
                self._append(move.dest, event.occurred_at, Reason("subscribe", text))
            return None
        if trigger == "raise_hand":
            if (self.stage, trigger) not in TABLE:
                return None
            blocked = self.move(trigger, "mql.hand_raise", f"{event.type} is a hand-raise")
            if blocked is None or blocked.rule != "blocked.source_not_gated":
                return blocked
            if (self.stage, "show_interest") in TABLE:
                why = f"{event.type} is a hand-raise but {self.refusal}"
                return self.move("show_interest", "lead.interest", why)
            return blocked
        if (self.stage, trigger) not in TABLE:
            return None
        return self.move(trigger, "lead.interest", f"{event.type} is an interest action")

    def move(self, trigger: str, rule: str, why: str) -> Reason | None:
        """Check the guards of (stage, trigger); move and return None, or return the note."""
        move = TABLE.get((self.stage, trigger))
        if move is None:
            return None
        if self.profile is None:
            self.profile = _merged_profile(self.state, self.event)
            # What the guards read of personal fields, kept in the history record so the
            # decision survives their erasure (`lifecycle.shredding`).
            self.outcomes = {}
        g = GuardInput(
            self.event,
            self.profile,
            self.policy,
            self.stage,
            self.score,
            self.outcomes,  # type: ignore[arg-type]
            self.recorded,
        )
        failed, sentences = check(move.guards, g)
        if failed is not None:
            self.refusal = sentences[-1]  # the failing guard's own sentence
            return Reason(f"blocked.{failed}", "; ".join([why, *sentences]))
        self._append(move.dest, self.event.occurred_at, Reason(rule, "; ".join([why, *sentences])))
        return None

    def _append(
        self, dest: str, at: datetime, reason: Reason, *, before_event: bool = False
    ) -> None:
        """Record a move. `before_event`: it happened before this event (a time-out), so
        the event's own touch is not yet part of its attribution."""
        state, event = self.state, self.event
        touched = (state.last_touch_source, state.touches) if before_event else None
        skipped = passed_through(self.stage, dest)
        if dest == "mql" or "mql" in skipped:
            if event.type in SALES_TYPES:
                self.lead_source = self.lead_source or self.first_touch
            else:
                self.lead_source = event.source or self.lead_source
        index = len(self.changes)
        self.changes.append(
            StageChange(
                f"{state.person_id}:{self.sequence}:{index}",
                state.person_id,
                self.sequence,
                None if self.stage == "new" else self.stage,
                dest,
                skipped,
                at,
                event.event_id,
                reason,
                self.lead_source,
                self.first_touch,
                temperature(self.policy, self.lead_source or event.source),
                self.policy.version,
                *(touched or (self.last_touch, self.touches)),
            )
        )
        self.stage = dest


def _merged_profile(state: PersonState, event: Event) -> dict[str, Any]:
    if event.profile is None:
        return state.profile
    return {**state.profile, **event.profile.given()}
