"""Identity merges: one person, however the CRM names them. Pure rules, like decide().

A CRM merges two contacts: `person_merged` arrives keyed by the *absorbed* person, with
`merged_into` naming the *survivor*. Three decisions follow, each recorded in the history of
the person it is about, so replaying and verifying history reproduces every step:

1. at the absorbed person (`merge`): the id becomes an alias of the survivor (refused with a
   reason for a merge into oneself, a merge into an id this person absorbed — a cycle — or
   a second merge of an alias); the decision's `follow_up` is the hand-off, a
   `person_absorbed` event keyed by the survivor that carries the absorbed lifecycle, with a
   deterministic event id (`handoff_id`), so a redelivered merge hands off the very same
   event and the survivor's dedup drops it;
2. at the survivor (`absorb`): the two lifecycles fold into one (`fold` has every rule:
   furthest stage, earliest entries, the earlier first touch, the lead source of whoever
   reached mql first, profiles with the survivor winning, SLA and inactivity from the
   merged facts). A merge that advances the survivor is a stage change (`identity.merged`);
3. at an alias, any later event (`forward`): recorded, then re-keyed to the survivor with
   `forwarded_via` naming the aliases it passed. Chains (a into b, b into c) resolve hop by
   hop; a hop that would return to an id already passed is a cycle and is refused, except
   for two merges in opposite directions at once (`_crossing`): the smaller id survives.

The runtime only routes a follow-up: the worker publishes it to the events topic at the
survivor's partition; offline replays of inbound events apply it at once.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import orjson

from events.inbound import Absorbed, Event, EventType, Profile
from events.limits import MAX_ID
from lifecycle.dedup import Seen
from lifecycle.policy import Policy
from lifecycle.records import Decision, Merged, Reason, StageChange
from lifecycle.shredding import clear_profile
from lifecycle.stages import NEW, RANK, higher, passed_through
from lifecycle.state import PersonState
from lifecycle.temperature import temperature

MERGED = EventType.PERSON_MERGED.value
ABSORBED = EventType.PERSON_ABSORBED.value
ERASED = EventType.PERSON_ERASED.value
#: Event types with their own decision (see `decide`).
IDENTITY_TYPES = frozenset({MERGED, ABSORBED})


def rank(stage: str) -> int:
    """How far along a stage is for a merge: unknown < recycled < subscriber … customer."""
    if stage == NEW:
        return -2
    return RANK.get(stage, -1)


def returned_id(event_id: str) -> str:
    """The id of an event that comes back to the winner of a crossing (`_crossing`)."""
    plain = f"returned:{event_id}"
    if len(plain) <= MAX_ID:
        return plain
    return f"returned:{hashlib.blake2b(event_id.encode(), digest_size=16).hexdigest()}"


def handoff_id(absorbed: str, merge_event_id: str) -> str:
    """The hand-off's event id: the same for every redelivery of the merge."""
    plain = f"handoff:{absorbed}:{merge_event_id}"
    if len(plain) <= MAX_ID:
        return plain
    digest = hashlib.blake2b(f"{absorbed}\0{merge_event_id}".encode(), digest_size=16)
    return f"handoff:{digest.hexdigest()}"


def _unchanged(state: PersonState, event: Event, version: str, note: Reason) -> Decision:
    """A recorded decision that changes nothing but the sequence (and the last reason)."""
    return Decision(
        state.person_id,
        state.sequence + 1,
        version,
        event,
        note=note,
        last_activity=state.last_activity,
        score=state.score,
        score_at=state.score_at,
        first_touch_source=state.first_touch_source,
        lead_source=state.lead_source,
        last_touch_source=state.last_touch_source,
        touches=state.touches,
        first_touch_at=state.first_touch_at,
    )


def snapshot(state: PersonState) -> Absorbed:
    """The absorbed lifecycle as the hand-off carries it.

    Without personal fields (`lifecycle.shredding`): they are sealed with the absorbed
    person's key, and the hand-off travels the events topic and the survivor's history, where
    erasing the alias (its key destroyed) could not reach them. The survivor keeps its own
    email, title and company; the clear firmographics are merged."""
    profile = clear_profile(state.profile)
    return Absorbed(
        person_id=state.person_id,
        stage=state.current_stage,
        highest=state.highest,
        entered_at=state.entered_at,
        last_activity=state.last_activity,
        first_touch_source=state.first_touch_source,
        first_touch_at=state.first_touch_at,
        lead_source=state.lead_source,
        score=state.score,
        score_at=state.score_at,
        profile=Profile(**profile) if profile else None,
        sla_breached=state.sla_breached,
        last_touch_source=state.last_touch_source,
        touches=state.touches,
        aliases=state.aliases,
        erased=state.erased,
    )


def handoff(state: PersonState, merge_event: Event) -> Event:
    """The `person_absorbed` event for the survivor (`state` is the absorbed person's)."""
    survivor = merge_event.merged_into
    assert survivor is not None
    return Event(
        event_id=handoff_id(state.person_id, merge_event.event_id),
        type=ABSORBED,
        person_id=survivor,
        occurred_at=merge_event.occurred_at,
        absorbed=snapshot(state),
    )


# -- 1. at the absorbed person ---------------------------------------------------------------
def merge(state: PersonState, event: Event, policy: Policy) -> Decision:
    """`person_merged` for a person who is not an alias: become one and hand off, or refuse."""
    version = policy.compiled.version
    me, survivor = state.person_id, event.merged_into
    if survivor is None:
        why = "person_merged without merged_into: nothing to merge into; recorded, no effect"
        return _unchanged(state, event, version, Reason("identity.merge_refused", why))
    if survivor == me:
        why = f"merge of {me} into itself refused: merged_into names the same person"
        return _unchanged(state, event, version, Reason("identity.merge_refused", why))
    if survivor in state.aliases:
        why = (
            f"merge of {me} into {survivor} refused: {survivor} was merged into {me} before "
            "(a cycle); unmerge is not supported"
        )
        return _unchanged(state, event, version, Reason("identity.merge_refused", why))
    why = (
        f"merged into {survivor}: the lifecycle is handed to {survivor}, and later events "
        f"for {me} apply to {survivor}"
    )
    decision = _unchanged(state, event, version, Reason("identity.merged_into", why))
    decision.merged_into = survivor
    decision.follow_up = handoff(state, event)
    return decision


# -- 3. at an alias ----------------------------------------------------------------------------
def forward(state: PersonState, event: Event, policy: Policy) -> Decision:
    """Any event for an alias: recorded, and re-keyed to the survivor unless that is a cycle.

    A crossing (the hand-off of the very person this alias was merged into) resolves here.
    """
    other = event.absorbed
    if event.type == ABSORBED and other is not None and other.person_id == state.merged_into:
        return _crossing(state, event, other, policy)
    follow_up, note = _route(state, event)
    decision = _unchanged(state, event, policy.compiled.version, note)
    decision.follow_up = follow_up
    # Erasure reaches the survivor, and the alias's own copy of what it handed off goes too.
    decision.erased = event.type == ERASED
    return decision


def _crossing(state: PersonState, event: Event, other: Absorbed, policy: Policy) -> Decision:
    """Two merges in opposite directions at once: a into b on a's partition while b into a on
    b's. Each id became an alias of the other and handed itself off; each hand-off now
    reaches an alias of its sender. Both ends apply the same rule, with no coordination:
    the smaller id (in code-point order) is the survivor. There the hand-off is folded and
    the id stops being an alias; at the other end it is refused, and that id stays an alias
    of the survivor. Events either one forwarded meanwhile reach the survivor (`_route`).
    """
    me, them = state.person_id, other.person_id
    why = (
        f"{me} and {them} were merged into each other at once (two merges in opposite "
        f"directions): {min(me, them)}, the smaller id, is the survivor"
    )
    if me < them:
        return fold(state, other, event, policy, crossed=f"; {why}")
    note = Reason("identity.merge_crossed", f"{why}; {me} stays its alias")
    return _unchanged(state, event, policy.compiled.version, note)


def _route(state: PersonState, event: Event) -> tuple[Event | None, Reason]:
    """Where an alias sends `event` (None: nowhere), and why."""
    me, survivor = state.person_id, state.merged_into
    assert survivor is not None
    if event.type == MERGED:
        why = (
            f"merge of {me} into {event.merged_into} refused: {me} was merged into "
            f"{survivor} already; unmerge is not supported"
        )
        return None, Reason("identity.merge_refused", why)
    via = event.forwarded_via or ()
    passed = {*via}
    if event.absorbed is not None:
        passed.update((event.absorbed.person_id, *event.absorbed.aliases))
    if survivor in passed and via and via[-1] == survivor and survivor < me:
        # Forwarded by the alias this one was merged into: a crossing (`_crossing`), which
        # `survivor` won; its hand-off reached it before this event (same partitions, in
        # order), so it is no alias any more there.
        # `survivor` recorded this event id as an alias's note: the copy that comes back
        # has an id of its own (deterministic, so a redelivery still dedups there).
        why = (
            f"{me} and {survivor} were merged into each other at once; {survivor}, the "
            f"survivor, takes it: forwarded back to {survivor} as {returned_id(event.event_id)}"
        )
        back = forwarded(event, me, survivor)
        back = back.model_copy(update={"event_id": returned_id(event.event_id)})
        return back, Reason("identity.forwarded", why)
    if survivor in passed:
        path = " -> ".join((*via, me, survivor))
        why = f"not forwarded: {path} is a cycle of merges (two merges in opposite directions)"
        return None, Reason("identity.merge_cycle", why)
    why = f"{me} was merged into {survivor}: forwarded to {survivor}"
    return forwarded(event, me, survivor), Reason("identity.forwarded", why)


def forwarded(event: Event, alias: str, survivor: str) -> Event:
    """`event` re-keyed from `alias` to `survivor`; same event id, so a redelivery dedups."""
    return event.model_copy(
        update={"person_id": survivor, "forwarded_via": (*(event.forwarded_via or ()), alias)}
    )


def repeated_follow_up(state: PersonState, event: Event, seen: Seen) -> Event | None:
    """What a redelivered event hands on again: what its first application handed on.

    A redelivery changes nothing, but the first application's follow-up may never have
    reached the broker (a crash between the history record and the hand-off): publishing
    the same event again (same id) is harmless, as the survivor's dedup drops a copy.
    """
    survivor = state.merged_into
    if survivor is None or seen.sequence < state.merged_sequence:
        return None
    if seen.sequence == state.merged_sequence:
        if state.erased:  # what it handed off is erased here (and at the survivor)
            return None
        return handoff(state, event) if event.merged_into == survivor else None
    return _route(state, event)[0]


# -- 2. at the survivor --------------------------------------------------------------------------
def absorb(state: PersonState, event: Event, policy: Policy) -> Decision:
    """`person_absorbed` at the survivor: fold the absorbed lifecycle into this one."""
    version = policy.compiled.version
    other = event.absorbed
    me = state.person_id
    if other is None:
        why = "person_absorbed without the absorbed lifecycle: recorded, no effect"
        return _unchanged(state, event, version, Reason("identity.merge_refused", why))
    if me == other.person_id or me in other.aliases:
        why = (
            f"merge of {other.person_id} into {me} refused: {me} was merged into "
            f"{other.person_id} before (a cycle); unmerge is not supported"
        )
        return _unchanged(state, event, version, Reason("identity.merge_cycle", why))
    if other.person_id in state.aliases:
        why = f"{other.person_id} was merged into {me} already: nothing more to fold"
        return _unchanged(state, event, version, Reason("identity.merged", why))
    return fold(state, other, event, policy)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    return a if b is None or a <= b else b


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    return a if b is None or a >= b else b


def fold(
    state: PersonState, other: Absorbed, event: Event, policy: Policy, crossed: str = ""
) -> Decision:
    """Every rule of a merge: the survivor's and the absorbed facts, one lifecycle.

    * stage: the furthest of the two (unknown < recycled < subscriber … customer); the
      survivor never moves back, and a move is a stage change with rule `identity.merged`;
    * `highest` the higher, `entered_at` the earliest per stage (so the current stage's SLA
      clock and time in stage count from the first entry of either);
    * the first touch with the earlier `first_touch_at` (a known time wins over none; with
      neither known, the survivor's); the lead source of whoever entered mql first;
    * profile: both, the survivor's fields winning on conflicts;
    * last activity the later (the inactivity window runs from it), touches added up, the
      last touch of whoever was active last, scores added up (from the later score time);
    * an SLA breach stands for the merged stage if either recorded it there.
    """
    me = state.person_id
    now = event.occurred_at
    other_stage = other.stage or NEW
    stage = state.stage
    target = other_stage if rank(other_stage) > rank(stage) else stage

    entered = dict(state.entered_at)
    for name, when in other.entered_at.items():
        entered[name] = _earliest(entered.get(name), when)  # type: ignore[assignment]
    skipped = passed_through(stage, target) if target != stage else ()
    for name in (*skipped, target):
        if target != NEW:
            entered.setdefault(name, now)
    highest = state.highest
    for name in (other.highest, *skipped, target if target != NEW else None):
        if name is not None:
            highest = higher(highest, name)

    # The earlier first touch; unknown times lose to known ones, and the survivor breaks ties.
    first_touch, first_touch_at = state.first_touch_source, state.first_touch_at
    if other.first_touch_source is not None and (
        first_touch is None
        or (
            other.first_touch_at is not None
            and (first_touch_at is None or other.first_touch_at < first_touch_at)
        )
    ):
        first_touch, first_touch_at = other.first_touch_source, other.first_touch_at

    mine, theirs = state.entered_at.get("mql"), other.entered_at.get("mql")
    if theirs is not None and (mine is None or theirs < mine):
        lead_source = other.lead_source or state.lead_source
    else:
        lead_source = state.lead_source or other.lead_source

    last_activity = _latest(state.last_activity, other.last_activity)
    last_touch = state.last_touch_source
    if other.last_touch_source is not None and (
        last_touch is None
        or (
            other.last_activity is not None
            and (state.last_activity is None or other.last_activity > state.last_activity)
        )
    ):
        last_touch = other.last_touch_source
    profile = {**(other.profile.model_dump(exclude_none=True) if other.profile else {})}
    profile.update(state.profile)
    if state.erased:
        profile = {}
    breached = tuple(
        s for s in dict.fromkeys((*state.sla_breached, *other.sla_breached)) if s == target
    )
    aliases = tuple(dict.fromkeys((*state.aliases, other.person_id, *other.aliases)))

    sequence = state.sequence + 1
    touches = state.touches + other.touches
    changes: tuple[StageChange, ...] = ()
    if target != stage:
        text = (
            f"merged with {other.person_id}, who was at {other_stage}: the survivor takes "
            f"the furthest stage of the two{crossed}"
        )
        changes = (
            StageChange(
                f"{me}:{sequence}:0",
                me,
                sequence,
                None if stage == NEW else stage,
                target,
                skipped,
                now,
                event.event_id,
                Reason("identity.merged", text),
                lead_source,
                first_touch,
                temperature(policy, lead_source),
                policy.compiled.version,
                last_touch,
                touches,
                merged=(other.person_id, *other.aliases),
            ),
        )
        note = None
    else:
        note = Reason(
            "identity.merged",
            f"merged with {other.person_id}, who was at {other.stage}; {me} stays at "
            f"{state.current_stage} (the furthest of the two){crossed}",
        )
    return Decision(
        me,
        sequence,
        policy.compiled.version,
        event,
        changes,
        note=note,
        last_activity=last_activity,
        score=state.score + other.score,
        score_at=_latest(state.score_at, other.score_at),
        first_touch_source=first_touch,
        lead_source=lead_source,
        erased=False,
        last_touch_source=last_touch,
        touches=touches,
        first_touch_at=first_touch_at,
        merged=Merged(entered, highest, profile, breached, aliases),
    )


def alias_records(decision: Decision) -> list[tuple[bytes, bytes]]:
    """`events.outbound.PersonAliased` records (key, value) for every alias of a survivor's
    fold: its new alias and the ones that alias already had (a chain resolves to the end).
    What a fold publishes is the core's rule; the worker only sends it."""
    event = decision.event
    return [
        (
            alias.encode(),
            orjson.dumps(
                {
                    "alias": alias,
                    "survivor": decision.person_id,
                    "merged_at": event.occurred_at,
                    "event_id": event.event_id,
                    "sequence": decision.sequence,
                }
            ),
        )
        for alias in (decision.merged.aliases if decision.merged is not None else ())
    ]
