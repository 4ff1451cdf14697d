"""Invariants of the decider over arbitrary event streams, whatever the policy.

The streams mix every known type with garbage types, redeliveries and reused event ids,
out-of-order and far-apart times (so inactivity and SLAs fire), and partial profiles.
"""

from __future__ import annotations

import itertools
import random
from datetime import timedelta

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.inbound import KNOWN_TYPES, Event
from events.outbound import HistoryRecord
from lifecycle.decide import decide
from lifecycle.evolve import evolve
from lifecycle.policy import PRESETS, Policy
from lifecycle.replay import Replayer, fold, replay
from lifecycle.stages import RANK
from lifecycle.state import PersonState
from lifecycle.verify import verify
from tests.fixtures.core import T0, custom_policy, fit_profile, preset

PERSONS = ("p1", "p2", "p3")
# Every known type, plus garbage; scored types again so scores can reach the threshold.
SCORED = ("intent_signal", "webinar_attended", "event_visit", "page_viewed")
TYPES = (*sorted(KNOWN_TYPES), *SCORED * 3, "survey_completed", "DEMO_REQUESTED", "x")
SOURCES = (
    None,
    "webinar",
    "referral",
    "demo",
    "purchased_list",
    "syndication",
    "crm",
    "paid_search",
)
PROFILES = (
    None,
    fit_profile(),
    fit_profile(industry="education"),
    fit_profile(email="x@gmail.com", seniority="c_level"),
    {"seniority": "individual", "job_title": "Analyst"},
    {"industry": "software", "country": "US", "employees": 20},
    {"country": "BR"},
    {},
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# One step of a stream is three draws (drawing is most of the cost of these tests):
# what to do, how far the clock moves, and the event's content.
ACTIONS = (
    *[("new", 0)] * 40,
    *[("resend", back) for back in range(5)],  # a redelivery of a recent event
    *[("reuse_id", back) for back in range(5)],  # another event under a recent event's id
)
# Mostly minutes to days forward, sometimes back in time, sometimes months of silence.
GAPS_HOURS = (*[1, 0, 2, 5] * 3, 24, 48, -1, -30, 24 * 4, 24 * 20, 24 * 61, 24 * 91, 24 * 200)
# Shuffled, because hypothesis favours some indexes and they must not all be one type.
CONTENT = list(itertools.product(TYPES, PERSONS, SOURCES, PROFILES, (None, "no budget")))
random.Random(7).shuffle(CONTENT)
_STEPS = st.tuples(st.sampled_from(ACTIONS), st.sampled_from(GAPS_HOURS), st.sampled_from(CONTENT))


def _events(steps: list[tuple]) -> list[Event]:
    events: list[Event] = []
    at = T0
    for n, ((action, back), hours, content) in enumerate(steps):
        earlier = events[-1 - back % len(events)] if events else None
        if action == "resend" and earlier:
            events.append(earlier)
            continue
        type_, person_id, source, profile, reason = content
        at += timedelta(hours=hours)
        events.append(
            Event(
                event_id=earlier.event_id if action == "reuse_id" and earlier else f"e{n}",
                type=type_,
                person_id=person_id,
                occurred_at=at,
                source=source,
                profile=profile,
                reason=reason,
            )
        )
    return events


def event_streams() -> st.SearchStrategy[list[Event]]:
    """Up to 40 events for three persons: garbage types, redeliveries, reused ids, any order."""
    sizes = st.integers(0, 40)
    return sizes.flatmap(lambda n: st.lists(_STEPS, min_size=n, max_size=n)).map(_events)


# The presets, and the default with a low score threshold so scores often make mqls.
EAGER_SCORING = custom_policy(
    scoring={**preset("default").scoring.model_dump(), "threshold": 12, "half_life_days": 10}
)
policies = st.sampled_from([*map(preset, PRESETS), EAGER_SCORING])


@PROPERTY
@given(event_streams(), policies)
def test_replay_twice_gives_identical_output(events: list[Event], policy: Policy):
    first = list(replay(events, policy))
    second = list(replay(events, policy))

    assert first == second
    assert orjson.dumps([d.to_wire() for d in first]) == orjson.dumps([d.to_wire() for d in second])


@PROPERTY
@given(event_streams(), policies)
def test_incremental_fold_equals_batch_replay(events: list[Event], policy: Policy):
    replayer = Replayer(policy)
    decisions = [replayer.apply(event) for event in events]

    one_by_one: dict[str, PersonState] = {}
    for decision in decisions:
        if not decision.duplicate:
            one_by_one[decision.person_id] = evolve(one_by_one.get(decision.person_id), decision)

    assert one_by_one == replayer.states
    assert fold(decisions) == replayer.states
    history = [
        HistoryRecord.model_validate_json(orjson.dumps(d.to_wire()))
        for d in decisions
        if not d.duplicate
    ]
    assert fold(history) == replayer.states


@PROPERTY
@given(event_streams(), policies)
def test_stages_never_move_backward_except_into_recycled(events: list[Event], policy: Policy):
    for decision in replay(events, policy):
        if decision.duplicate:
            continue
        for change in decision.changes:
            came_from, to = change.from_stage, change.to_stage
            assert (
                to == "recycled"
                or came_from is None
                or came_from == "recycled"
                or RANK[to] > RANK[came_from]
            ), change
            assert came_from != "customer", change
            assert all(RANK[s] < RANK[to] for s in change.passed_through), change


@PROPERTY
@given(event_streams(), policies)
def test_decide_never_raises(events: list[Event], policy: Policy):
    states: dict[str, PersonState] = {}
    for event in events:
        state = states.get(event.person_id)
        decision = decide(state, event, policy)
        # Also against every other person's state: any reachable state is a valid input.
        for other in list(states.values()):
            decide(other, event, policy)
        if not decision.duplicate:
            states[event.person_id] = evolve(state, decision)


@PROPERTY
@given(event_streams(), policies)
def test_verify_of_replay_output_has_no_mismatch(events: list[Event], policy: Policy):
    decisions = list(replay(events, policy))

    report = verify(decisions, {policy.version: policy})

    assert report.mismatches == []
    assert report.checked == sum(not d.duplicate for d in decisions)


@PROPERTY
@given(event_streams(), policies)
def test_change_ids_are_unique_and_sequences_count_up(events: list[Event], policy: Policy):
    change_ids: list[str] = []
    sequences: dict[str, int] = {}
    for decision in replay(events, policy):
        if decision.duplicate:
            continue
        assert decision.sequence == sequences.get(decision.person_id, 0) + 1
        sequences[decision.person_id] = decision.sequence
        change_ids += [c.change_id for c in decision.changes]

    assert len(change_ids) == len(set(change_ids))
