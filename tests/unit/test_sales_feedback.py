"""Sales feedback is authoritative; stages only move forward except into recycled."""

from __future__ import annotations

import pytest

from tests.fixtures.core import fit_profile


def _mql(make_event, person_id: str = "p1"):
    return make_event("demo_requested", person_id=person_id, profile=fit_profile())


def test_sales_accepted_is_authoritative_and_skips_to_sql(make_event, run):
    # No profile, no interest action: sales said so, and that is enough.
    result = run([make_event("sales_accepted", source="crm", reason="met at the booth")])

    (change,) = result.changes
    assert (change.from_stage, change.to_stage) == (None, "sql")
    assert change.passed_through == ("lead", "mql")
    assert change.reason.rule == "sales.accepted"
    assert change.reason.text == "sales accepted the lead: met at the booth"
    assert result.states["p1"].highest == "sql"


def test_sales_accepted_on_ucp_contact_is_still_authoritative(make_event, run):
    profile = fit_profile(industry="education")

    result = run([make_event("sales_accepted", source="crm", profile=profile)])

    assert result.stages() == ["sql"]


def test_sales_accepted_on_mql_makes_sql(make_event, run):
    result = run([_mql(make_event), make_event("sales_accepted", source="crm")])

    assert result.stages() == ["mql", "sql"]
    assert result.changes[-1].passed_through == ()


def test_deal_won_on_mql_passes_through_sql_and_opportunity(make_event, run):
    result = run([_mql(make_event), make_event("deal_won", source="crm")])

    won = result.changes[-1]
    assert (won.from_stage, won.to_stage) == ("mql", "customer")
    assert won.passed_through == ("sql", "opportunity")
    assert won.reason.rule == "sales.won"
    state = result.states["p1"]
    assert state.highest == "customer"
    assert {"sql", "opportunity", "customer"} <= set(state.entered_at)


def test_opportunity_opened_on_lead_passes_through_mql_and_sql(make_event, run):
    result = run(
        [
            make_event("content_download", profile=fit_profile()),
            make_event("opportunity_opened", source="crm"),
        ]
    )

    assert result.changes[-1].passed_through == ("mql", "sql")
    assert result.stage() == "opportunity"


def test_full_journey_moves_one_stage_at_a_time(make_event, run):
    result = run(
        [
            make_event("newsletter_signup", profile=fit_profile()),
            make_event("webinar_attended"),
            make_event("demo_requested"),
            make_event("sales_accepted", source="crm"),
            make_event("opportunity_opened", source="crm"),
            make_event("deal_won", source="crm"),
        ]
    )

    assert result.stages() == ["subscriber", "lead", "mql", "sql", "opportunity", "customer"]
    assert all(c.passed_through == () for c in result.changes)


@pytest.mark.parametrize(
    ("setup", "later"),
    [
        (["sales_accepted"], "demo_requested"),
        (["sales_accepted"], "content_download"),
        (["sales_accepted"], "newsletter_signup"),
        (["sales_accepted"], "sales_accepted"),
        (["opportunity_opened"], "sales_accepted"),
        (["demo_requested"], "content_download"),
        (["demo_requested"], "newsletter_signup"),
        (["content_download"], "newsletter_signup"),
    ],
)
def test_stages_only_move_forward(make_event, run, setup, later):
    events = [make_event(t, profile=fit_profile()) for t in setup]
    before = run(list(events)).stage()

    result = run([*events, make_event(later)])

    assert result.last.changes == ()
    assert result.stage() == before


@pytest.mark.parametrize("setup", [["content_download"], ["demo_requested"], ["sales_accepted"]])
def test_sales_rejected_recycles(make_event, run, setup):
    events = [make_event(t, profile=fit_profile()) for t in setup]
    events.append(make_event("sales_rejected", source="crm", reason="no budget"))

    result = run(events)

    rejected = result.changes[-1]
    assert rejected.to_stage == "recycled"
    assert rejected.reason.rule == "sales.rejected"
    assert rejected.reason.text == "sales rejected the lead: no budget"
    assert result.states["p1"].highest == run(events[:-1]).states["p1"].highest


@pytest.mark.parametrize("setup", [["demo_requested"], ["sales_accepted"], ["opportunity_opened"]])
def test_deal_lost_recycles(make_event, run, setup):
    events = [make_event(t, profile=fit_profile()) for t in setup]
    events.append(make_event("deal_lost", source="crm"))

    result = run(events)

    assert result.changes[-1].to_stage == "recycled"
    assert result.changes[-1].reason.rule == "sales.lost"


@pytest.mark.parametrize("first", [None, "newsletter_signup"])
def test_sales_rejected_before_lead_moves_no_one(make_event, run, first):
    events = [make_event(first, profile=fit_profile())] if first else []
    events.append(make_event("sales_rejected", source="crm"))

    result = run(events)

    assert result.last.changes == ()


@pytest.mark.parametrize(
    "later",
    [
        "sales_rejected",
        "deal_lost",
        "deal_won",
        "sales_accepted",
        "demo_requested",
        "content_download",
        "newsletter_signup",
        "inactivity_timeout",
    ],
)
def test_customer_is_terminal(make_event, run, later):
    won = make_event("deal_won", profile=fit_profile())
    a_year_later = make_event(later, at=won.occurred_at.replace(year=2027))

    result = run([won, a_year_later])

    assert result.stages() == ["customer"]
    assert result.stage() == "customer"


def test_recycled_person_reenters_lead_on_interest_and_mql_on_hand_raise(make_event, run):
    result = run(
        [
            make_event("demo_requested", profile=fit_profile()),
            make_event("sales_rejected", source="crm"),
            make_event("webinar_attended"),
            make_event("sales_rejected", source="crm"),
            make_event("contact_sales", source="referral"),
        ]
    )

    assert result.stages() == ["mql", "recycled", "lead", "recycled", "mql"]
    back_to_lead, back_to_mql = result.changes[2], result.changes[4]
    assert back_to_lead.from_stage == "recycled"
    assert back_to_mql.from_stage == "recycled"
    assert back_to_mql.passed_through == ("lead",)
    assert back_to_mql.lead_source == "referral"


def test_recycled_ucp_contact_does_not_reenter(make_event, run):
    result = run(
        [
            make_event("sales_accepted", source="crm", profile=fit_profile(industry="education")),
            make_event("sales_rejected", source="crm"),
            make_event("demo_requested"),
        ]
    )

    assert result.stages() == ["sql", "recycled"]
    assert result.last.note.rule == "blocked.not_ucp"
