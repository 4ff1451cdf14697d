"""Exact idempotency: a redelivered event id changes nothing however old it is, and the same
id with other content is a conflict (`lifecycle.dedup`)."""

from __future__ import annotations

import random
from datetime import timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.inbound import Event
from events.outbound import HistoryRecord
from lifecycle.dedup import SeenIndex, body, fingerprint, key, stored, unpack
from lifecycle.replay import Replayer, replay
from lifecycle.verify import verify
from tests.fixtures.core import T0, fit_profile, preset
from tests.unit.test_properties import CONTENT, GAPS_HOURS, policies


def _history(decisions) -> list[HistoryRecord]:
    return [
        HistoryRecord.model_validate_json(orjson.dumps(d.to_wire()))
        for d in decisions
        if not d.duplicate
    ]


def test_redelivery_after_1000_events_changes_nothing(make_event, run):
    first = make_event("content_download", profile=fit_profile())
    others = [make_event("page_viewed") for _ in range(1000)]

    result = run([first, *others, first])

    again = result.last
    assert again.duplicate and again.conflict is None
    assert again.sequence == 1
    assert again.changes == result.decisions[0].changes
    state = result.states["p1"]
    assert state.sequence == 1001
    assert state == run([first, *others]).states["p1"]


def test_redelivery_re_emits_the_first_changes_with_the_same_change_ids(make_event, run):
    hand_raise = make_event("demo_requested", profile=fit_profile())
    later = [make_event("webinar_attended") for _ in range(50)]

    result = run([hand_raise, *later, hand_raise, hand_raise])

    first = result.decisions[0]
    assert [c.change_id for c in first.changes] == ["p1:1:0"]
    for again in result.decisions[-2:]:
        assert again.duplicate
        assert again.changes == first.changes
    assert len(result.changes) == len([c for d in result.decisions[:51] for c in d.changes])


def test_redelivery_scores_nothing_and_writes_no_sequence(make_event, run):
    scored = make_event("intent_signal")
    views = [make_event("page_viewed") for _ in range(20)]

    result = run([scored, *views, scored])

    without = run([scored, *views]).states["p1"]
    assert result.states["p1"].score == without.score > 0
    assert result.states["p1"].sequence == without.sequence == 21


def test_reused_event_id_with_other_body_is_a_conflict(make_event, run):
    first = make_event("content_download", profile=fit_profile())
    between = [make_event("page_viewed") for _ in range(6)]
    reused = make_event("demo_requested", event_id=first.event_id)

    result = run([first, *between, reused])

    conflict = result.last
    assert conflict.duplicate and conflict.changes == ()
    assert conflict.conflict == (
        "event_id e1 reused with different content; first seen at history sequence 1"
    )
    assert result.states["p1"] == run([first, *between]).states["p1"]


def test_conflict_names_the_sequence_the_id_first_got(make_event, run):
    events = [make_event("page_viewed") for _ in range(6)]
    reused = events[4].model_copy(update={"source": "paid_search"})

    result = run([*events, reused])

    assert result.last.conflict.endswith("first seen at history sequence 5")


def test_same_content_in_another_form_is_a_duplicate(make_event):
    event = make_event("content_download", profile=fit_profile())
    raw = orjson.loads(event.model_dump_json())
    reordered = dict(reversed(list(raw.items())))
    plus_five = timezone(timedelta(hours=5))
    reordered["occurred_at"] = event.occurred_at.astimezone(plus_five).isoformat()
    reordered["unknown_extra_field"] = 1  # ignored by the envelope
    again = Event.model_validate(reordered)

    assert fingerprint(body(again)) == fingerprint(body(event))
    assert run_pair(event, again).duplicate


def run_pair(first: Event, second: Event):
    replayer = Replayer(preset("default"))
    replayer.apply(first)
    return replayer.apply(second)


def test_any_field_of_other_value_is_a_conflict(make_event):
    event = make_event("content_download", profile=fit_profile(), campaign="spring")
    changes = {
        "type": "page_viewed",
        "occurred_at": event.occurred_at + timedelta(seconds=1),
        "source": "paid_search",
        "campaign": "autumn",
        "reason": "why not",
        "schema_version": 2,
        "profile": event.profile.model_copy(update={"employees": 301}),
    }
    for field, value in changes.items():
        other = event.model_copy(update={field: value})
        assert run_pair(event, other).conflict is not None, field


def test_sweeper_tick_redelivered_at_another_time_is_a_duplicate(make_event, run):
    content = make_event("content_download", at=T0, profile=fit_profile())
    tick = Event(
        event_id="timeout:p1:2026-04-01T00:00:00+00:00",
        type="inactivity_timeout",
        person_id="p1",
        occurred_at=T0 + timedelta(days=91),
        source="leadflow.sweeper",
    )
    later_sweep = tick.model_copy(update={"occurred_at": T0 + timedelta(days=92)})

    result = run([content, tick, later_sweep])

    assert result.decisions[1].changes  # recycled
    assert result.last.duplicate and result.last.conflict is None
    assert result.last.changes == result.decisions[1].changes


def test_same_event_id_for_another_person_is_neither_duplicate_nor_conflict(make_event, run):
    a = make_event("content_download", person_id="a", profile=fit_profile())
    b = make_event("page_viewed", person_id="b", event_id=a.event_id)

    assert not run([a, b]).last.duplicate


def test_store_keys_never_collide_across_person_and_event_id():
    assert key("ab", "c") != key("a", "bc")
    assert key("a", "") != key("", "a")


def test_store_value_rebuilt_from_history_json_equals_the_live_one(make_event, run):
    """The worker writes an entry from the decision, recovery rebuilds it from the history
    record's JSON without validating: both must be the same bytes."""
    result = run(
        [
            make_event("content_download", profile=fit_profile(), campaign="x"),
            make_event("page_viewed", reason="ü ☃ \u2028 \x1f"),
            make_event("demo_requested"),
            make_event("deal_won", source="crm"),
        ]
    )
    for decision in result.decisions:
        wire = decision.to_wire()
        live = stored(decision.sequence, wire["event"], decision.changes)
        data = orjson.loads(orjson.dumps(wire))
        rebuilt = stored(data["sequence"], data["event"], data["changes"])
        assert live == rebuilt
        seen = unpack(live)
        assert (seen.sequence, seen.changes) == (decision.sequence, decision.changes)


def test_replay_of_history_knows_every_applied_event_id(make_event, run):
    events = [make_event("page_viewed") for _ in range(30)]
    result = run(events)
    index = SeenIndex()
    for record in _history(result.decisions):
        index.remember(record)

    assert len(index) == 30
    assert index.get("p1", "e17").sequence == 17
    assert index.get("p1", "nope") is None


def test_verify_reports_a_conflict_found_in_history(make_event, run):
    first = make_event("content_download", profile=fit_profile())
    result = run([first, make_event("page_viewed")])
    history = _history(result.decisions)
    reused = make_event("demo_requested", event_id=first.event_id)
    forged = history[-1].model_copy(update={"sequence": 3, "event": reused})
    policy = preset("default")

    report = verify([*history, forged], {policy.version: policy})

    [mismatch] = report.mismatches
    assert (mismatch.sequence, mismatch.field) == (3, "conflict")
    assert "first seen at history sequence 1" in mismatch.recomputed


# -- the property: redeliveries at any distance change nothing ------------------------------

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _unique_events(steps: list[tuple[int, tuple]]) -> list[Event]:
    events, at = [], T0
    for n, (hours, (type_, person, source, profile, reason)) in enumerate(steps):
        at += timedelta(hours=hours)
        events.append(
            Event(
                event_id=f"e{n}",
                type=type_,
                person_id=person,
                occurred_at=at,
                source=source,
                profile=profile,
                reason=reason,
            )
        )
    return events


streams = st.lists(
    st.tuples(st.sampled_from(GAPS_HOURS), st.sampled_from(CONTENT)), min_size=1, max_size=60
).map(_unique_events)


@PROPERTY
@given(streams, policies, st.randoms(use_true_random=False), st.integers(1, 30))
def test_redeliveries_at_any_distance_fold_to_the_stream_without_them(
    events: list[Event], policy, rng: random.Random, copies: int
):
    with_copies = list(events)
    for _ in range(copies):
        original = rng.randrange(len(events))
        at = rng.randrange(with_copies.index(events[original]) + 1, len(with_copies) + 1)
        with_copies.insert(at, events[original])

    plain = list(replay(events, policy))
    replayer = Replayer(policy)
    mixed = [replayer.apply(e) for e in with_copies]

    applied = [d for d in mixed if not d.duplicate]
    assert [d.to_wire() for d in applied] == [d.to_wire() for d in plain]
    first = {(d.person_id, d.event.event_id): d for d in plain}
    for decision in mixed:
        if decision.duplicate:
            assert decision.conflict is None
            assert decision.changes == first[(decision.person_id, decision.event.event_id)].changes
    change_ids = {c.change_id for d in mixed for c in d.changes}
    assert change_ids == {c.change_id for d in plain for c in d.changes}
    fresh = Replayer(policy)
    for event in events:
        fresh.apply(event)
    assert replayer.states == fresh.states


@pytest.mark.parametrize("distance", [1, 16, 17, 1000])
def test_old_redeliveries_do_not_change_the_final_state(make_event, run, distance):
    first = make_event("webinar_attended", profile=fit_profile())
    rest = [make_event("intent_signal") for _ in range(distance)]

    assert run([first, *rest, first]).states == run([first, *rest]).states


def test_simulate_counts_conflicts_and_applies_redeliveries_once(make_event):
    from lifecycle.simulate import simulate

    first = make_event("demo_requested", profile=fit_profile())
    views = [make_event("page_viewed") for _ in range(30)]
    reused = make_event("deal_won", event_id=first.event_id, source="crm")

    result = simulate([first, *views, first, reused], preset("default"), preset("seed"))

    assert result.conflicts == 1
    assert (
        result.funnel_a.to_dict()
        == simulate([first, *views], preset("default"), preset("seed")).funnel_a.to_dict()
    )


def test_shadow_re_emits_its_own_first_changes_and_skips_conflicts(make_event):
    from streams.worker.shadow import Shadow

    shadow = Shadow(preset("seed"), "shadow-topic")
    first = make_event("content_download")  # a lead under seed, nothing under default
    live = Replayer(preset("default"))
    emitted = shadow.apply(first, live.apply(first))
    assert [c.to_stage for c in emitted] == ["lead"]
    for _ in range(20):
        view = make_event("page_viewed")
        shadow.apply(view, live.apply(view))

    assert shadow.apply(first, live.apply(first)) == emitted
    reused = make_event("demo_requested", event_id=first.event_id)
    conflict = live.apply(reused)
    assert conflict.conflict is not None
    assert shadow.apply(reused, conflict) == ()
    assert shadow.states["p1"].sequence == 21
