"""Attribution on every stage change: lead source, first touch, the last touch before the
change and the number of marketing touches by then; funnels by each."""

from __future__ import annotations

import json

import orjson
from typer.testing import CliRunner

from events.outbound import HistoryRecord, StageChanged
from lifecycle.funnel import funnel, touch_bucket
from lifecycle.replay import fold
from lifecycle.state import PersonState
from streams.cli.main import app
from tests.fixtures.core import T0, days, fit_profile


def _journey(make_event):
    return [
        make_event("page_viewed", at=T0, source="paid_search", profile=fit_profile()),
        make_event("content_download", at=days(1), source="webinar"),
        make_event("email_clicked", at=days(2), source="email"),
        make_event("demo_requested", at=days(3), source="referral"),
        make_event("sales_accepted", at=days(4), source="crm"),
    ]


def test_a_change_carries_the_last_touch_and_the_touches_up_to_it(make_event, run):
    result = run(_journey(make_event))

    lead, mql, _ = result.changes
    assert (lead.to_stage, lead.last_touch_source, lead.touches) == ("lead", "webinar", 2)
    assert (mql.lead_source, mql.first_touch_source) == ("referral", "paid_search")
    assert (mql.last_touch_source, mql.touches) == ("referral", 4)


def test_a_sales_event_is_not_a_touch(make_event, run):
    result = run(_journey(make_event))

    sql = result.changes[-1]
    assert (sql.to_stage, sql.last_touch_source, sql.touches) == ("sql", "referral", 4)
    assert result.states["p1"].touches == 4


def test_a_profile_update_is_not_a_touch(make_event, run):
    result = run([make_event("profile_updated", source="crm_sync", profile=fit_profile())])

    assert (result.states["p1"].touches, result.states["p1"].last_touch_source) == (0, None)


def test_a_time_out_is_attributed_to_the_touches_before_the_late_event(make_event, run):
    result = run(
        [
            make_event("content_download", at=T0, source="webinar", profile=fit_profile()),
            make_event("content_download", at=days(200), source="form"),
        ]
    )

    recycled = next(c for c in result.changes if c.to_stage == "recycled")
    assert (recycled.last_touch_source, recycled.touches) == ("webinar", 1)
    back = result.changes[-1]
    assert (back.to_stage, back.last_touch_source, back.touches) == ("lead", "form", 2)


def test_attribution_survives_the_wire_and_a_fold_of_history(make_event, run):
    result = run(_journey(make_event))
    wire = [HistoryRecord.model_validate_json(orjson.dumps(d.to_wire())) for d in result.decisions]

    folded = fold(wire)["p1"]
    again = PersonState.from_wire(orjson.loads(orjson.dumps(folded.to_wire())))

    assert (folded.touches, folded.last_touch_source) == (4, "referral")
    assert (again.touches, again.last_touch_source) == (4, "referral")
    change = StageChanged.model_validate_json(orjson.dumps(result.changes[1]))
    assert (change.last_touch_source, change.touches) == ("referral", 4)


def test_a_stage_change_without_attribution_still_reads(make_event, run):
    raw = orjson.loads(orjson.dumps(run(_journey(make_event)).changes[0]))
    del raw["last_touch_source"], raw["touches"]

    change = StageChanged.model_validate(raw)

    assert (change.last_touch_source, change.touches) == (None, 0)


def test_funnels_by_first_touch_last_touch_and_touch_count(make_event, run):
    events = [
        make_event(
            "content_download", person_id="a", at=T0, source="webinar", profile=fit_profile()
        ),
        make_event("demo_requested", person_id="a", at=days(1), source="referral"),
        make_event("deal_won", person_id="a", at=days(9), source="crm"),
        make_event(
            "demo_requested", person_id="b", at=T0, source="referral", profile=fit_profile()
        ),
    ]

    report = funnel(run(events).changes)

    assert report.conversion_by_first_touch["webinar"]["mql->customer"]["rate"] == 1.0
    assert report.conversion_by_first_touch["referral"]["mql->customer"]["rate"] == 0.0
    assert report.conversion_by_last_touch["referral"]["mql->customer"] == {
        "from": 2,
        "to": 1,
        "rate": 0.5,
    }
    assert set(report.conversion_by_touches) == {"1", "2"}
    assert report.conversion_by_touches["2"]["mql->customer"]["rate"] == 1.0


def test_touch_buckets():
    assert [touch_bucket(n) for n in (None, 0, 1, 2, 3, 5, 6, 10, 11, 500)] == [
        "unknown",
        "unknown",
        "1",
        "2",
        "3-5",
        "3-5",
        "6-10",
        "6-10",
        "11+",
        "11+",
    ]


def test_funnel_by_last_touch_on_the_command_line(tmp_path, make_event):
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        b"".join(orjson.dumps(e.model_dump(mode="json")) + b"\n" for e in _journey(make_event))
    )

    result = CliRunner().invoke(
        app, ["funnel", "-e", str(path), "--by", "last_touch", "--format", "json"]
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["by"] == "last_touch"
    assert data["conversion"]["referral"]["mql->sql"] == {"from": 1, "to": 1, "rate": 1.0}
    bad = CliRunner().invoke(app, ["funnel", "-e", str(path), "--by", "zodiac"])
    assert bad.exit_code == 2 and "--by is one of" in bad.stderr
