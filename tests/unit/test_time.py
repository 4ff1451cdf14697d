"""Time only enters through events: the inactivity window, stage SLAs and score decay."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lifecycle.deadlines import inactivity_deadline, next_deadline, sla_deadline
from tests.fixtures.core import T0, custom_policy, days, fit_profile, preset

WINDOW = timedelta(days=90)
SECOND = timedelta(seconds=1)


def test_event_after_inactivity_window_first_recycles_as_of_window_end_then_applies(
    make_event, run
):
    lead = make_event("content_download", at=T0, profile=fit_profile())
    late = make_event("demo_requested", at=days(100))

    result = run([lead, late])

    recycle, mql = result.last.changes
    assert (recycle.from_stage, recycle.to_stage) == ("lead", "recycled")
    assert recycle.occurred_at == T0 + WINDOW
    assert recycle.reason.rule == "inactivity"
    assert recycle.reason.text == "no activity for 90 days since 2026-01-01; lead times out"
    assert (mql.from_stage, mql.to_stage) == ("recycled", "mql")
    assert mql.occurred_at == days(100)
    assert [c.change_id for c in result.last.changes] == ["p1:2:0", "p1:2:1"]


def test_event_that_moves_no_one_still_recycles_after_the_window(make_event, run):
    result = run(
        [
            make_event("demo_requested", at=T0, profile=fit_profile()),
            make_event("page_viewed", at=days(91)),
        ]
    )

    assert result.stages() == ["mql", "recycled"]
    assert result.stage() == "recycled"


def test_inactivity_window_counts_from_the_last_activity_not_the_stage_entry(make_event, run):
    result = run(
        [
            make_event("content_download", at=T0, profile=fit_profile()),
            make_event("email_clicked", at=days(60)),
            make_event("page_viewed", at=days(140)),
        ]
    )

    assert result.stages() == ["lead"]


def test_not_a_lead_actions_do_not_count_as_activity(make_event, run):
    result = run(
        [
            make_event("content_download", at=T0, profile=fit_profile()),
            make_event("linkedin_connection", at=days(60)),
            make_event("page_viewed", at=days(100)),
        ]
    )

    assert result.stages() == ["lead", "recycled"]
    assert result.changes[-1].occurred_at == T0 + WINDOW


def test_inactivity_timeout_tick_recycles_only_after_the_window(make_event, run):
    lead = make_event("content_download", at=T0, profile=fit_profile())
    early = make_event("inactivity_timeout", at=T0 + WINDOW - SECOND, source=None)
    late = make_event("inactivity_timeout", at=T0 + WINDOW + SECOND, source=None)

    result = run([lead, early, late])

    assert result.decisions[1].changes == ()
    (recycle,) = result.decisions[2].changes
    assert recycle.to_stage == "recycled"
    assert recycle.occurred_at == T0 + WINDOW
    assert result.decisions[2].activity is False


@pytest.mark.parametrize("setup", [["newsletter_signup"], ["sales_accepted"]])
def test_stages_outside_timeout_stages_do_not_recycle(make_event, run, setup):
    events = [make_event(t, at=T0, profile=fit_profile()) for t in setup]
    events.append(make_event("inactivity_timeout", at=days(400), source=None))

    result = run(events)

    assert result.last.changes == ()


def test_mature_policy_times_out_sql_after_60_days(make_event, run):
    result = run(
        [
            make_event("sales_accepted", at=T0, source="crm"),
            make_event("inactivity_timeout", at=days(61), source=None),
        ],
        "mature",
    )

    assert result.stages() == ["sql", "recycled"]
    assert result.changes[-1].occurred_at == days(60)


def test_sla_breach_is_recorded_not_a_stage_change(make_event, run):
    result = run(
        [
            make_event("demo_requested", at=T0, profile=fit_profile()),
            make_event("page_viewed", at=days(2)),
            make_event("page_viewed", at=days(4), event_id="late"),
            make_event("page_viewed", at=days(5)),
        ]
    )

    assert result.decisions[1].sla_breaches == ()
    (breach,) = result.decisions[2].sla_breaches
    assert (breach.person_id, breach.stage, breach.sla_days) == ("p1", "mql", 3)
    assert breach.entered_at == T0
    assert breach.due_at == days(3)
    assert breach.detected_at == days(4)
    assert breach.event_id == "late"
    assert result.decisions[2].changes == ()
    assert result.decisions[3].sla_breaches == ()  # recorded once per stage entry
    state = result.states["p1"]
    assert (state.stage, state.sla_breached) == ("mql", ("mql",))


def test_sla_breach_is_recorded_with_the_move_that_ends_the_stage(make_event, run):
    result = run(
        [
            make_event("demo_requested", at=T0, profile=fit_profile()),
            make_event("sales_accepted", at=days(5), source="crm"),
        ]
    )

    assert [b.stage for b in result.last.sla_breaches] == ["mql"]
    assert result.stages() == ["mql", "sql"]
    assert result.states["p1"].sla_breached == ("mql",)


def test_reentering_a_stage_restarts_its_sla(make_event, run):
    result = run(
        [
            make_event("demo_requested", at=T0, profile=fit_profile()),
            make_event("page_viewed", at=days(4)),
            make_event("sales_rejected", at=days(5), source="crm"),
            make_event("demo_requested", at=days(6)),
            make_event("page_viewed", at=days(10)),
        ]
    )

    assert [len(d.sla_breaches) for d in result.decisions] == [0, 1, 0, 0, 1]
    assert result.last.sla_breaches[0].entered_at == days(6)


def test_score_threshold_makes_mql(make_event, run):
    # default weights: content_download 10, intent_signal 15; threshold 60.
    at = T0
    events = [make_event("content_download", at=at, profile=fit_profile())]
    events += [make_event("intent_signal", at=at) for _ in range(4)]

    result = run(events)

    assert [d.score for d in result.decisions] == [10, 25, 40, 55, 70]
    assert result.stages() == ["lead", "mql"]
    mql = result.last.changes[0]
    assert mql.reason.rule == "mql.score"
    assert mql.reason.text == (
        "intent_signal raised the score; fits ICP; decision maker (vp); "
        "source webinar is not gated; score 70 reached the threshold 60"
    )
    assert mql.lead_source == "webinar"


def test_score_threshold_from_a_new_person_passes_through_lead(make_event, run):
    events = [make_event("webinar_attended", at=T0, profile=fit_profile()) for _ in range(3)]

    result = run(events)

    assert result.stages() == ["lead", "mql"]
    assert result.last.changes[0].passed_through == ()
    assert result.last.score == 60


def test_score_from_a_gated_source_does_not_make_mql(make_event, run):
    events = [
        make_event("intent_signal", at=T0, source="purchased_list", profile=fit_profile())
        for _ in range(5)
    ]

    result = run(events)

    assert result.changes == []
    assert result.last.note.rule == "blocked.source_not_gated"


def test_score_decays_with_half_life(make_event, run):
    result = run(
        [
            make_event("webinar_attended", at=T0, profile=fit_profile()),
            make_event("page_viewed", at=days(30)),
            make_event("page_viewed", at=days(90)),
        ]
    )

    scores = [d.score for d in result.decisions]
    assert scores[0] == 20
    assert scores[1] == pytest.approx(20 / 2 + 2)
    assert scores[2] == pytest.approx(12 / 4 + 2)
    assert result.last.score_at == days(90)


def test_late_event_does_not_decay_the_score(make_event, run):
    result = run(
        [
            make_event("webinar_attended", at=days(30), profile=fit_profile()),
            make_event("page_viewed", at=T0),
        ]
    )

    assert result.last.score == 22
    assert result.last.score_at == days(30)


def test_policy_without_scoring_never_scores(make_event, run):
    events = [make_event("intent_signal", at=T0, profile=fit_profile()) for _ in range(10)]

    result = run(events, "growth")

    assert result.changes == []
    assert result.last.score == 0


def test_next_deadline_is_the_earlier_of_inactivity_and_sla(make_event, run):
    result = run([make_event("demo_requested", at=T0, profile=fit_profile())])
    state, policy = result.states["p1"], preset("default")

    assert inactivity_deadline(state, policy) == days(90)
    assert sla_deadline(state, policy) == days(3)
    assert next_deadline(state, policy) == days(3)


def test_no_deadline_once_sla_breached_and_stage_does_not_time_out(make_event, run):
    result = run(
        [
            make_event("sales_accepted", at=T0, source="crm"),
            make_event("page_viewed", at=days(31)),
        ]
    )
    state, policy = result.states["p1"], preset("default")

    assert state.sla_breached == ("sql",)
    assert next_deadline(state, policy) is None


def test_inactivity_window_follows_the_policy(make_event, run):
    policy = custom_policy(inactivity_days=180)
    events = [
        make_event("content_download", at=T0, profile=fit_profile()),
        make_event("page_viewed", at=days(179)),
        make_event("page_viewed", at=days(360)),
    ]

    result = run(events, policy)

    assert result.stages() == ["lead", "recycled"]
    assert result.changes[-1].occurred_at == days(179 + 180)
    assert "no activity for 180 days" in result.changes[-1].reason.text
