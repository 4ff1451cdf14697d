"""Conversion that cannot flatter: persons who entered a stage by a decision are told apart
from those who only passed through it on an authoritative sales event (sales-sourced)."""

from __future__ import annotations

from lifecycle.funnel import funnel
from lifecycle.simulate import simulate
from tests.fixtures.core import T0, days, fit_profile, preset


def _won_without_hand_raise(make_event, person_id: str) -> list:
    """A person sales accepted and won with no hand-raise: mql only passed through."""
    return [
        make_event("page_viewed", person_id=person_id, at=T0, profile=fit_profile()),
        make_event("sales_accepted", person_id=person_id, at=days(1), source="crm"),
        make_event("deal_won", person_id=person_id, at=days(30), source="crm"),
    ]


def test_mql_passed_through_on_a_sales_event_is_sales_sourced(make_event, run):
    events = _won_without_hand_raise(make_event, "won")
    events.append(make_event("demo_requested", person_id="mql", at=T0, profile=fit_profile()))

    report = funnel(run(events).changes)

    assert report.reached["mql"] == 2
    assert report.sales_sourced["mql"] == 1
    assert report.entered["mql"] == 1
    assert report.sales_sourced["lead"] == 1  # sales_accepted on a new person skipped lead too


def test_marketing_conversion_counts_only_mqls_the_policy_made(make_event, run):
    events = _won_without_hand_raise(make_event, "won")
    events.append(make_event("demo_requested", person_id="mql", at=T0, profile=fit_profile()))

    report = funnel(run(events).changes)

    assert report.conversion["mql->customer"] == {"rate": 0.0, "from": 1, "to": 0}
    assert report.conversion_reached["mql->customer"] == {"rate": 0.5, "from": 2, "to": 1}


def test_deal_won_on_a_hand_raised_mql_is_not_sales_sourced_there(make_event, run):
    events = [
        make_event("demo_requested", person_id="p", at=T0, profile=fit_profile()),
        make_event("deal_won", person_id="p", at=days(3), source="crm"),
    ]

    report = funnel(run(events).changes)

    assert report.entered["mql"] == 1
    assert report.sales_sourced["mql"] == 0
    assert report.sales_sourced["sql"] == report.sales_sourced["opportunity"] == 1
    assert report.conversion["mql->customer"]["rate"] == 1.0


def test_a_policy_that_makes_no_mqls_reports_no_mql_conversion(make_event, run):
    """Under mature a seed-stage funnel's hand-raises from ungated sources are blocked; the
    won deals that skipped mql must not become a perfect mql→customer rate."""
    events = []
    for n in range(4):
        person = f"p{n}"
        events.append(make_event("demo_requested", person_id=person, at=T0, source="paid_search"))
        if n == 0:
            events.append(make_event("deal_won", person_id=person, at=days(5), source="crm"))

    sim = simulate(events, preset("seed"), preset("mature"))

    assert sim.funnel_a.conversion["mql->customer"] == {"rate": 0.25, "from": 4, "to": 1}
    mature = sim.funnel_b
    assert mature.sales_sourced["mql"] == 1
    assert mature.conversion["mql->customer"] == {"rate": None, "from": 0, "to": 0}
    assert mature.conversion_reached["mql->customer"]["rate"] == 1.0


def test_sales_sourced_mqls_are_counted_per_lead_source(make_event, run):
    events = _won_without_hand_raise(make_event, "won")

    report = funnel(run(events).changes)

    (source,) = report.sales_sourced_by_source
    assert report.sales_sourced_by_source[source] == 1
    assert report.conversion_by_source[source]["mql->customer"]["from"] == 0


def test_time_between_stages_ignores_stages_only_passed_through(make_event, run):
    events = _won_without_hand_raise(make_event, "won")

    report = funnel(run(events).changes)

    assert report.median_days["mql->sql"] is None
    assert report.median_days["sql->opportunity"] == 29.0


def test_simulate_prints_no_rate_where_a_policy_made_no_mqls(make_event, tmp_path):
    """`1.0 → – (no MQLs)`, not `1.0 → None`; a person B never staged is "no stage"."""
    import orjson
    from typer.testing import CliRunner

    from streams.cli.main import app

    events = [make_event("demo_requested", person_id="p0", at=T0, source="paid_search")]
    events.append(make_event("deal_won", person_id="p0", at=days(5), source="crm"))
    events.append(make_event("content_download", person_id="p1", at=T0, source="webinar"))
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e.model_dump(mode="json")) + b"\n" for e in events))

    args = ["simulate", "-e", str(path), "-p", "seed", "--against", "mature"]
    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    assert "mql->customer: 1.0 → – (no MQLs) over MQLs the policy made (1 → 0)" in result.stdout
    assert "p1: lead (highest lead) → no stage" in result.stdout
    assert "None" not in result.stdout
