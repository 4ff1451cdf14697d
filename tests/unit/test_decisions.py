"""What every decision carries: ids, sources, temperature, notes; and idempotency."""

from __future__ import annotations

import pytest

from lifecycle.decide import decide
from lifecycle.dedup import SeenIndex
from lifecycle.evolve import evolve
from lifecycle.state import PersonState
from lifecycle.temperature import temperature
from tests.fixtures.core import custom_policy, fit_profile, preset


def test_duplicate_event_id_changes_nothing_and_returns_original_changes(make_event, run):
    first = make_event("demo_requested", profile=fit_profile())
    between = make_event("page_viewed")

    result = run([first, between, first])

    original, again = result.decisions[0], result.decisions[2]
    assert again.duplicate is True
    assert again.changes == original.changes
    assert [c.change_id for c in again.changes] == ["p1:1:0"]
    assert again.sequence == original.sequence == 1
    state = result.states["p1"]
    assert state.sequence == 2
    assert state.stage == "mql"


def test_duplicate_decision_does_not_touch_the_state(make_event, policy):
    event = make_event("content_download", profile=fit_profile())
    applied = decide(None, event, policy())
    state = evolve(None, applied)
    seen = SeenIndex()
    seen.remember(applied)
    before = state.copy()

    decision = decide(state, event, policy(), seen.get("p1", event.event_id))

    assert decision.duplicate
    assert state == before


def test_same_event_id_for_another_person_is_not_a_duplicate(make_event, run):
    a = make_event("content_download", person_id="a", profile=fit_profile())
    b = make_event("content_download", person_id="b", event_id=a.event_id)

    result = run([a, b])

    assert not result.last.duplicate
    assert result.stage("b") == "lead"


def test_unknown_event_type_is_recorded_without_effect(make_event, run):
    result = run(
        [
            make_event("content_download", profile=fit_profile()),
            make_event("survey_completed"),
        ]
    )

    decision = result.last
    assert decision.changes == ()
    assert decision.sequence == 2
    assert decision.note.rule == "unknown_type"
    assert decision.note.text == "unknown event type 'survey_completed': recorded, no effect"
    assert decision.activity is False
    state = result.states["p1"]
    assert (state.stage, state.sequence) == ("lead", 2)
    assert state.last_reason == decision.note


def test_lead_source_is_the_source_of_the_event_that_made_the_mql(make_event, run):
    result = run(
        [
            make_event("content_download", source="webinar", profile=fit_profile()),
            make_event("demo_requested", source="paid_search"),
            make_event("sales_accepted", source="crm"),
            make_event("quote_requested", source="referral"),
        ]
    )

    lead, mql, sql = result.changes
    assert lead.lead_source is None
    assert mql.lead_source == "paid_search"
    assert sql.lead_source == "paid_search"
    assert result.states["p1"].lead_source == "paid_search"


def test_lead_source_of_a_sales_skip_is_the_first_touch(make_event, run):
    result = run(
        [
            make_event("page_viewed", source="organic"),
            make_event("sales_accepted", source="crm"),
        ]
    )

    (sql,) = result.changes
    assert sql.passed_through == ("lead", "mql")
    assert sql.lead_source == "organic"


def test_lead_source_is_reset_by_a_new_mql_after_recycling(make_event, run):
    result = run(
        [
            make_event("demo_requested", source="webinar", profile=fit_profile()),
            make_event("sales_rejected", source="crm"),
            make_event("contact_sales", source="event"),
        ]
    )

    assert [c.lead_source for c in result.changes] == ["webinar", "webinar", "event"]


def test_first_touch_source_is_kept(make_event, run):
    result = run(
        [
            make_event("page_viewed", source="syndication"),
            make_event("content_download", source="webinar", profile=fit_profile()),
            make_event("demo_requested", source="referral"),
        ]
    )

    assert {c.first_touch_source for c in result.changes} == {"syndication"}
    assert result.states["p1"].first_touch_source == "syndication"


def test_first_touch_source_is_the_first_event_that_has_one(make_event, run):
    result = run(
        [
            make_event("page_viewed", source=None),
            make_event("content_download", source="form", profile=fit_profile()),
        ]
    )

    assert result.changes[0].first_touch_source == "form"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("demo", "hot"),  # 0.18 >= hot 0.10
        ("referral", "hot"),
        ("webinar", "warm"),  # 0.08 >= warm 0.04
        ("paid_search", "warm"),  # exactly the warm threshold
        ("email", "cold"),  # 0.03
        ("unmeasured_source", "cold"),  # default_conversion 0.02
    ],
)
def test_temperature_from_lead_source_conversion(make_event, run, source, expected):
    result = run([make_event("demo_requested", source=source, profile=fit_profile())])

    (mql,) = result.changes
    assert (mql.lead_source, mql.temperature) == (source, expected)


def test_temperature_is_none_without_thresholds(make_event, run, policy):
    assert policy("seed").temperature is None
    assert temperature(policy("default"), None) == "cold"

    result = run([make_event("demo_requested", source="demo")], "seed")

    assert result.changes[0].temperature is None


def test_temperature_is_none_without_a_rate_for_the_source():
    policy = custom_policy(
        temperature={"hot": 0.1, "warm": 0.05, "source_conversion": {"demo": 0.2}}
    )

    assert temperature(policy, "demo") == "hot"
    assert temperature(policy, "webinar") is None


def test_change_ids_are_person_sequence_index(make_event, run):
    result = run(
        [
            make_event("page_viewed", person_id="alice"),
            make_event("content_download", person_id="alice", profile=fit_profile()),
            make_event("content_download", person_id="bob", profile=fit_profile()),
            make_event("deal_won", person_id="alice", source="crm"),
        ]
    )

    assert [(c.change_id, c.sequence) for c in result.changes] == [
        ("alice:2:0", 2),
        ("bob:1:0", 1),
        ("alice:3:0", 3),
    ]
    for change in result.changes:
        assert change.id == change.change_id
        assert change.time == change.occurred_at
        assert change.policy_version == preset("default").version


def test_every_event_advances_the_person_sequence(make_event, run):
    types = ["page_viewed", "survey_completed", "linkedin_connection", "content_download"]

    result = run([make_event(t) for t in types])

    assert [d.sequence for d in result.decisions] == [1, 2, 3, 4]
    assert result.states["p1"].sequence == 4


def test_person_erased_forgets_the_profile_and_keeps_the_stage(make_event, run):
    result = run(
        [
            make_event("content_download", profile=fit_profile()),
            make_event("person_erased", source=None),
        ]
    )

    state = result.states["p1"]
    assert result.last.erased is True
    assert (state.erased, state.profile, state.stage) == (True, {}, "lead")


def test_profile_is_merged_across_events(make_event, run):
    result = run(
        [
            make_event("page_viewed", profile={"industry": "software"}),
            make_event("page_viewed", profile={"seniority": "vp", "industry": "saas"}),
        ]
    )

    assert result.states["p1"].profile == {"industry": "saas", "seniority": "vp"}


def test_decide_does_not_mutate_the_state(make_event, policy):
    state = PersonState("p1")
    state = evolve(state, decide(state, make_event("content_download"), policy()))
    before = state.copy()

    decide(state, make_event("deal_won", source="crm"), policy())

    assert state == before
