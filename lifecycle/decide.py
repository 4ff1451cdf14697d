"""decide(): every business rule, applied to one event for one person. Pure and deterministic.

Order of the rules for one event:
1. a redelivered event id changes nothing and returns what it produced the first time;
2. the current stage's SLA, if the event arrives after it was due, is recorded as breached;
3. if the event arrives after the inactivity window, the person is first recycled as of the
   window's end (time comes only from `occurred_at`, never from a clock);
4. the event's own trigger (from the policy's lists, or the fixed sales-feedback map) is
   looked up in the machine's table and its guards are checked;
5. with scoring, a score that reaches the threshold is a move to mql on its own.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from events.inbound import KNOWN_TYPES, SALES_TYPES, Event, EventType
from lifecycle.guards import GuardInput, check
from lifecycle.machine import TABLE
from lifecycle.policy import Policy
from lifecycle.records import Decision, Reason, SlaBreach, StageChange
from lifecycle.stages import passed_through
from lifecycle.state import PersonState
from lifecycle.temperature import temperature

_ERASED = EventType.PERSON_ERASED.value

_SALES_RULES = {
    "accept": ("sales.accepted", "sales accepted the lead"),
    "reject": ("sales.rejected", "sales rejected the lead"),
    "open_opportunity": ("sales.opportunity", "sales opened an opportunity"),
    "win": ("sales.won", "the deal was won"),
    "lose": ("sales.lost", "the deal was lost"),
}


def decide(state: PersonState | None, event: Event, policy: Policy) -> Decision:
    """What `event` does to the person in `state` under `policy`. Never mutates `state`."""
    if state is None:
        state = PersonState(event.person_id)
    seen = state.recent.get(event.event_id)
    if seen is not None:
        sequence, changes = seen
        return Decision(
            state.person_id, sequence, policy.version, event, list(changes), duplicate=True
        )
    return _Deciding(state, event, policy).run()


class _Deciding:
    """The working set of one decide() call; a class only to avoid threading ten arguments."""

    __slots__ = (
        "changes",
        "compiled",
        "event",
        "first_touch",
        "lead_source",
        "policy",
        "profile",
        "score",
        "sequence",
        "stage",
        "state",
    )

    def __init__(self, state: PersonState, event: Event, policy: Policy) -> None:
        self.state = state
        self.event = event
        self.policy = policy
        self.compiled = policy.compiled
        self.sequence = state.sequence + 1
        self.stage = state.stage
        self.changes: list[StageChange] = []
        self.first_touch = state.first_touch_source or event.source
        self.lead_source = state.lead_source
        self.score = state.score
        self.profile: dict[str, Any] | None = None

    def run(self) -> Decision:
        event, policy, state, compiled = self.event, self.policy, self.state, self.compiled
        now = event.occurred_at
        breaches = self._sla_breaches(now) if policy.sla_days else []
        self._inactivity(now)

        activity = event.type in compiled.activity
        last_activity = state.last_activity
        if activity and (last_activity is None or now > last_activity):
            last_activity = now

        score_at = state.score_at
        scored = False
        if policy.scoring is not None:
            weight = compiled.weights.get(event.type)
            if weight:
                self.score = _decayed(state.score, score_at, now, policy.scoring.half_life_days)
                self.score += weight
                scored = self.score >= policy.scoring.threshold
                if score_at is None or now > score_at:
                    score_at = now

        note: Reason | None = None
        erased = False
        trigger = compiled.triggers.get(event.type)
        if trigger is not None:
            note = self._trigger(trigger)
        elif event.type == _ERASED:
            erased = True
        elif event.type in compiled.not_a_lead:
            note = Reason("not_a_lead", f"{event.type} is not a lead action under {policy.name}")
        elif event.type not in KNOWN_TYPES:
            note = Reason("unknown_type", f"unknown event type {event.type!r}: recorded, no effect")

        if scored and (self.stage, "reach_score") in TABLE:
            blocked = self._move("reach_score", "mql.score", f"{event.type} raised the score")
            note = note or blocked

        return Decision(
            state.person_id,
            self.sequence,
            policy.version,
            event,
            self.changes,
            breaches,
            note,
            activity,
            last_activity,
            self.score,
            score_at,
            self.first_touch,
            self.lead_source,
            erased,
        )

    def _sla_breaches(self, now: datetime) -> list[SlaBreach]:
        state = self.state
        days = self.policy.sla_days.get(state.stage)  # type: ignore[call-overload]
        if days is None or state.stage in state.sla_breached:
            return []
        entered = state.entered_at.get(state.stage)
        if entered is None:
            return []
        due = entered + timedelta(days=days)
        if now <= due:
            return []
        return [
            SlaBreach(state.person_id, state.stage, entered, due, now, days, self.event.event_id)
        ]

    def _inactivity(self, now: datetime) -> None:
        last = self.state.last_activity
        if last is None or self.stage not in self.compiled.timeout_stages:
            return
        deadline = last + self.policy.inactivity_window
        if now <= deadline:
            return
        move = TABLE.get((self.stage, "time_out"))
        if move is None:
            return
        days = f"{self.policy.inactivity_days:g}"
        text = f"no activity for {days} days since {last:%Y-%m-%d}; {self.stage} times out"
        self._append(move.dest, deadline, Reason("inactivity", text))

    def _trigger(self, trigger: str) -> Reason | None:
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
            blocked = self._move(trigger, "mql.hand_raise", f"{event.type} is a hand-raise")
            if blocked is None or blocked.rule != "blocked.source_not_gated":
                return blocked
            if (self.stage, "show_interest") in TABLE:
                why = f"{event.type} is a hand-raise but {blocked.text}"
                return self._move("show_interest", "lead.interest", why)
            return blocked
        if (self.stage, trigger) not in TABLE:
            return None
        return self._move(trigger, "lead.interest", f"{event.type} is an interest action")

    def _move(self, trigger: str, rule: str, why: str) -> Reason | None:
        """Check the guards of (stage, trigger); move and return None, or return the note."""
        move = TABLE.get((self.stage, trigger))
        if move is None:
            return None
        if self.profile is None:
            self.profile = _merged_profile(self.state, self.event)
        g = GuardInput(self.event, self.profile, self.policy, self.stage, self.score)
        failed, sentences = check(move.guards, g)
        if failed is not None:
            return Reason(f"blocked.{failed}", "; ".join([why, *sentences]))
        self._append(move.dest, self.event.occurred_at, Reason(rule, "; ".join([why, *sentences])))
        return None

    def _append(self, dest: str, at: datetime, reason: Reason) -> None:
        state, event = self.state, self.event
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
            )
        )
        self.stage = dest


def _merged_profile(state: PersonState, event: Event) -> dict[str, Any]:
    if event.profile is None:
        return state.profile
    return {**state.profile, **event.profile.model_dump(exclude_none=True)}


def _decayed(
    score: float, since: datetime | None, now: datetime, half_life_days: float | None
) -> float:
    """Score after exponential decay from `since` to `now`; late events do not decay it."""
    if not score or since is None or half_life_days is None or now <= since:
        return score
    days = (now - since).total_seconds() / 86400
    return score * math.pow(0.5, days / half_life_days)
