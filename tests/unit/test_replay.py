"""Auditors' tools: replay, verify, state as of a time, funnel analytics and what-if."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import orjson
import pytest

from events.inbound import Event
from events.outbound import HistoryRecord
from lifecycle.funnel import funnel
from lifecycle.replay import fold, replay, state_as_of
from lifecycle.simulate import simulate
from lifecycle.verify import verify
from streams.dev.demo import synthetic_events
from tests.fixtures.core import T0, days, fit_profile, preset


@pytest.fixture(scope="module")
def demo_events() -> list[Event]:
    return [
        Event.model_validate(raw)
        for raw in synthetic_events(300, 3000, duplicates=0.02, unknown_types=0.01)
    ]


@pytest.fixture(scope="module")
def demo_decisions(demo_events):
    return list(replay(demo_events, preset("default")))


def _as_history(decisions) -> list[HistoryRecord]:
    """What the worker appends to leadflow.history: applied decisions, never duplicates."""
    return [
        HistoryRecord.model_validate_json(orjson.dumps(d.to_wire()))
        for d in decisions
        if not d.duplicate
    ]


def test_verify_over_replayed_decisions_reports_no_mismatch(demo_decisions):
    policy = preset("default")

    report = verify(demo_decisions, {policy.version: policy})

    assert report.mismatches == []
    assert report.ok
    assert report.checked == sum(not d.duplicate for d in demo_decisions)
    assert any(d.duplicate for d in demo_decisions)


def test_verify_over_the_history_topic_reports_no_mismatch(demo_decisions):
    policy = preset("default")

    report = verify(_as_history(demo_decisions), {policy.version: policy})

    assert report.mismatches == []
    assert report.checked == sum(not d.duplicate for d in demo_decisions)


def test_fold_of_history_records_equals_the_live_states(demo_events, demo_decisions):
    live = fold(demo_decisions)

    assert fold(_as_history(demo_decisions)) == live


def test_verify_detects_an_edited_stage_change(make_event, run):
    result = run(
        [
            make_event("content_download", profile=fit_profile()),
            make_event("demo_requested", event_id="the-hand-raise"),
            make_event("page_viewed"),
        ]
    )
    records = list(result.decisions)
    original = records[1]
    tampered = dataclasses.replace(original.changes[0], to_stage="sql")
    records[1] = dataclasses.replace(original, changes=(tampered,))
    policy = preset("default")

    report = verify(records, {policy.version: policy})

    (mismatch,) = report.mismatches
    assert (mismatch.person_id, mismatch.sequence, mismatch.event_id) == ("p1", 2, "the-hand-raise")
    assert mismatch.field == "changes"
    assert mismatch.recorded[0][2] == "sql"
    assert mismatch.recomputed[0][2] == "mql"
    assert report.checked == 3


def test_verify_detects_a_record_decided_under_other_rules(make_event, run):
    events = [
        make_event("webinar_attended", profile=fit_profile(industry="education")),
        make_event("demo_requested"),
    ]
    seed, default = preset("seed"), preset("default")
    # Decided under seed, but stamped with the default policy's version.
    records = [
        dataclasses.replace(d, policy_version=default.version) for d in run(events, seed).decisions
    ]

    report = verify(records, {default.version: default})

    assert [(m.person_id, m.sequence, m.field) for m in report.mismatches] == [
        ("p1", 1, "changes"),
        ("p1", 1, "note"),
        ("p1", 1, "score"),  # seed has no scoring
        ("p1", 2, "changes"),
        ("p1", 2, "note"),
        ("p1", 2, "lead_source"),
    ]
    changes, note = report.mismatches[0], report.mismatches[1]
    assert (changes.recorded[0][2], changes.recomputed) == ("lead", [])
    assert note.recomputed[0] == "blocked.not_ucp"


def test_verify_counts_records_whose_policy_is_unknown(make_event, run):
    result = run([make_event("content_download"), make_event("page_viewed")])

    report = verify(result.decisions, {})

    assert report.checked == 0
    assert report.missing_policies == {preset("default").version: 2}
    assert not report.ok


def test_verify_detects_an_event_applied_twice(make_event, run):
    event = make_event("content_download", profile=fit_profile())
    (decision,) = run([event]).decisions
    twice = [decision, dataclasses.replace(decision, sequence=2)]
    policy = preset("default")

    report = verify(twice, {policy.version: policy})

    assert [(m.sequence, m.field) for m in report.mismatches] == [(2, "duplicate")]


def test_replay_is_deterministic(demo_events):
    first = [d.to_wire() for d in replay(demo_events, preset("default"))]
    second = [d.to_wire() for d in replay(demo_events, preset("default"))]

    assert orjson.dumps(first) == orjson.dumps(second)


def test_state_as_of_returns_the_earlier_stage_between_two_changes(make_event, run):
    result = run(
        [
            make_event("content_download", at=T0, profile=fit_profile()),
            make_event("page_viewed", at=days(2)),
            make_event("demo_requested", at=days(5)),
            make_event("sales_accepted", at=days(9), source="crm"),
        ]
    )

    assert state_as_of(result.decisions, "p1", T0 - timedelta(seconds=1)).current_stage is None
    assert state_as_of(result.decisions, "p1", T0).current_stage == "lead"
    assert state_as_of(result.decisions, "p1", days(3)).current_stage == "lead"
    assert state_as_of(result.decisions, "p1", days(5)).current_stage == "mql"
    assert state_as_of(result.decisions, "p1", days(30)) == result.states["p1"]


def test_state_as_of_ignores_other_persons_and_duplicates(make_event, run):
    first = make_event("content_download", person_id="a", at=T0, profile=fit_profile())
    result = run(
        [
            first,
            make_event("deal_won", person_id="b", at=days(1), source="crm"),
            make_event("content_download", person_id="a", at=days(2), event_id=first.event_id),
        ]
    )

    as_of = state_as_of(result.decisions, "a", days(3))

    assert (as_of.current_stage, as_of.sequence) == ("lead", 1)


def test_funnel_counts_passed_through_stages_as_reached(make_event, run):
    result = run(
        [
            make_event("demo_requested", person_id="won", profile=fit_profile()),
            make_event("deal_won", person_id="won", source="crm"),
            make_event("content_download", person_id="lead", profile=fit_profile()),
        ]
    )

    report = funnel(result.changes)

    assert report.persons == 2
    assert report.reached == {
        "subscriber": 0,
        "lead": 2,
        "mql": 1,
        "sql": 1,
        "opportunity": 1,
        "customer": 1,
        "recycled": 0,
    }
    assert report.current["customer"] == 1
    assert report.highest == {
        "subscriber": 0,
        "lead": 1,
        "mql": 0,
        "sql": 0,
        "opportunity": 0,
        "customer": 1,
    }
    assert report.conversion["mql->customer"] == {"rate": 1.0, "from": 1, "to": 1}
    assert report.conversion["lead->mql"] == {"rate": 0.5, "from": 2, "to": 1}


def test_funnel_conversion_by_lead_source_and_median_days(make_event, run):
    events = []
    plan = {  # person: (lead source, days from mql to sales acceptance or None)
        "w1": ("webinar", 2),
        "w2": ("webinar", 4),
        "w3": ("webinar", None),
        "r1": ("referral", 9),
    }
    for person_id, (source, accepted_after) in plan.items():
        events.append(
            make_event(
                "demo_requested", person_id=person_id, at=T0, source=source, profile=fit_profile()
            )
        )
        if accepted_after is not None:
            events.append(
                make_event(
                    "sales_accepted", person_id=person_id, at=days(accepted_after), source="crm"
                )
            )

    report = funnel(run(events).changes)

    by_source = report.conversion_by_source
    assert set(by_source) == {"referral", "webinar"}
    assert by_source["webinar"]["mql->sql"] == {"from": 3, "to": 2, "rate": 0.6667}
    assert by_source["referral"]["mql->sql"] == {"from": 1, "to": 1, "rate": 1.0}
    assert "lead->mql" not in by_source["webinar"]
    assert report.median_days["mql->sql"] == 4.0
    assert report.median_days["lead->mql"] == 0.0
    assert report.median_days["sql->opportunity"] is None


def test_funnel_of_nothing_is_empty():
    report = funnel([])

    assert report.persons == 0
    assert report.conversion["mql->sql"]["rate"] is None
    assert report.to_dict()["conversion_by_source"] == {}


def test_simulate_reports_who_would_differ_under_seed(demo_events):
    default, seed = preset("default"), preset("seed")

    simulation = simulate(demo_events, default, seed)

    assert simulation.events == len(demo_events)
    assert (simulation.policy_a, simulation.policy_b) == (default.version, seed.version)
    assert simulation.differing
    assert simulation.funnel_b.reached["mql"] >= simulation.funnel_a.reached["mql"]
    assert simulation.funnel_b.reached["lead"] > simulation.funnel_a.reached["lead"]
    replayed = fold(replay(demo_events, default))
    for outcome in simulation.differing:
        assert (outcome.stage_a, outcome.highest_a) != (outcome.stage_b, outcome.highest_b)
        if outcome.person_id in replayed:
            assert outcome.stage_a == replayed[outcome.person_id].current_stage
    shown = simulation.to_dict(limit=5)
    assert shown["persons_differing"] == len(simulation.differing)
    assert len(shown["differing"]) == 5


def test_simulate_of_a_policy_against_itself_differs_nowhere(demo_events):
    simulation = simulate(demo_events[:500], preset("growth"), preset("growth"))

    assert simulation.differing == []
    assert simulation.funnel_a == simulation.funnel_b
