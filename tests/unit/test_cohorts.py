"""Cohort funnels: conversion by the period a person entered each stage, time in stage, and
the two views auditors argue about (as reported, restated)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest
from typer.testing import CliRunner

from events.inbound import Event
from lifecycle.cohorts import cohorts, percentile, period_of, time_in_stage
from lifecycle.replay import replay
from streams.cli.main import app
from streams.dev.demo import synthetic_events
from tests.fixtures.core import T0, days, fit_profile, preset
from tests.unit.test_calibrate import _golden


def _mqls(make_event):
    """Jan: a1 (won after 40 days in opportunity), a2 (stays); Feb: b1 (accepted 5 days on)."""
    feb = days(31)
    return [
        make_event("demo_requested", person_id="a1", at=T0, profile=fit_profile()),
        make_event("sales_accepted", person_id="a1", at=days(2), source="crm"),
        make_event("opportunity_opened", person_id="a1", at=days(10), source="crm"),
        make_event("deal_won", person_id="a1", at=days(50), source="crm"),
        make_event("demo_requested", person_id="a2", at=days(3), profile=fit_profile()),
        make_event("demo_requested", person_id="b1", at=feb, profile=fit_profile()),
        make_event("sales_accepted", person_id="b1", at=days(5, feb), source="crm"),
    ]


def _row(report, cohort, stage, group="all"):
    return next(
        r for r in report.rows if (r["cohort"], r["stage"], r["group"]) == (cohort, stage, group)
    )


def test_cohort_is_the_month_a_person_entered_the_stage(make_event, run):
    report = cohorts(run(_mqls(make_event)).changes, "month")

    jan, feb = _row(report, "2026-01", "mql"), _row(report, "2026-02", "mql")
    assert (jan["entered"], jan["to_next"]["hits"], jan["to_customer"]["hits"]) == (2, 1, 1)
    assert (feb["entered"], feb["to_next"]["hits"]) == (1, 1)
    assert jan["to_customer"]["rate"] == 0.5 and jan["to_customer"]["high"] == 0.9055


def test_time_in_stage_counts_those_who_left_and_reports_who_is_still_in(make_event, run):
    report = cohorts(run(_mqls(make_event)).changes, "month")

    jan = _row(report, "2026-01", "mql")["days_in_stage"]
    assert jan == {"p50": 2.0, "p90": 2.0, "left": 1, "still_in": 1}
    opp = _row(report, "2026-01", "opportunity")["days_in_stage"]
    assert (opp["p50"], opp["left"]) == (40.0, 1)
    overall = time_in_stage(run(_mqls(make_event)).changes)
    assert overall["mql"] == {"p50": 3.5, "p90": 4.7, "left": 2}


def test_weekly_cohorts_use_iso_weeks():
    assert period_of(datetime(2026, 1, 1, tzinfo=UTC), "week") == "2026-W01"
    assert period_of(datetime(2027, 1, 1, tzinfo=UTC), "week") == "2026-W53"
    assert period_of(datetime(2026, 3, 9, tzinfo=UTC), "month") == "2026-03"
    with pytest.raises(ValueError, match="choose one of month, week"):
        period_of(T0, "quarter")


def test_percentiles_interpolate_between_ranks():
    assert percentile([], 50) is None
    assert percentile([1.0], 90) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(n) for n in range(1, 11)], 90) == 9.1


def test_sales_sourced_persons_are_counted_apart_from_the_cohort(make_event, run):
    events = [
        make_event("page_viewed", person_id="s", at=T0, profile=fit_profile()),
        make_event("deal_won", person_id="s", at=days(1), source="crm"),
    ]

    row = _row(cohorts(run(events).changes), "2026-01", "mql")

    assert (row["entered"], row["sales_sourced"], row["to_customer"]["base"]) == (0, 1, 0)


def test_cohorts_by_source_split_each_cohort(make_event, run):
    events = _mqls(make_event)
    events.append(
        make_event("demo_requested", person_id="r", at=T0, source="referral", profile=fit_profile())
    )

    report = cohorts(run(events).changes, "month", by="source")

    assert _row(report, "2026-01", "mql", "referral")["entered"] == 1
    assert _row(report, "2026-01", "mql", "webinar")["entered"] == 2


def test_as_reported_keeps_the_live_policy_and_restated_re_decides(make_event, run):
    """Recorded under default (a student is UCP, never an MQL); restated under seed."""
    events = [
        make_event(
            "demo_requested", person_id="s", at=T0, profile=fit_profile(job_title="Student")
        ),
        make_event("demo_requested", person_id="v", at=T0, profile=fit_profile()),
    ]
    recorded = run(events, "default")

    as_reported = cohorts(recorded.changes)
    restated = cohorts(c for d in replay(events, preset("seed")) for c in d.changes)

    assert _row(as_reported, "2026-01", "mql")["entered"] == 1
    assert _row(restated, "2026-01", "mql")["entered"] == 2
    assert as_reported.policy_versions == {preset("default").version: 1}  # changes per version


def test_funnel_cohort_cli_shows_both_views_from_a_history(tmp_path, make_event, run):
    events = _mqls(make_event)
    history = tmp_path / "history.jsonl"
    history.write_bytes(b"".join(orjson.dumps(d.to_wire()) + b"\n" for d in run(events).decisions))

    result = CliRunner().invoke(
        app,
        ["funnel", "-e", str(history), "--cohort", "month", "--preset", "seed", "--format", "json"],
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["as_reported"]["policy_versions"] == {preset("default").version: 7}
    assert data["restated_under"]["version"] == preset("seed").version
    assert data["restated"]["period"] == "month"


def test_funnel_cohort_cli_on_plain_events_has_no_as_reported_view(tmp_path, make_event):
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        b"".join(orjson.dumps(e.model_dump(mode="json")) + b"\n" for e in _mqls(make_event))
    )

    result = CliRunner().invoke(
        app, ["funnel", "-e", str(path), "--cohort", "week", "--by", "source"]
    )

    assert result.exit_code == 0, result.output
    assert "as reported: needs a history" in result.stdout


def test_golden_monthly_cohorts_of_the_demo_stream():
    events = [Event.model_validate(e) for e in synthetic_events(1_000, 10_000, seed=11)]
    changes = [c for d in replay(events, preset("default")) if not d.duplicate for c in d.changes]

    _golden("cohorts-default-month.json", cohorts(changes, "month").to_dict())


def test_as_reported_rows_count_persons_by_the_policy_version_that_moved_them_in(make_event, run):
    """A policy switch mid-month: the row shows how many entered under each version."""
    before = run([make_event("demo_requested", person_id="a", at=T0, profile=fit_profile())])
    after = run(
        [make_event("demo_requested", person_id="b", at=days(10), profile=fit_profile())], "seed"
    )

    report = cohorts([*before.changes, *after.changes])

    row = _row(report, "2026-01", "mql")
    assert row["entered"] == 2
    assert row["entered_under"] == {preset("default").version: 1, preset("seed").version: 1}
