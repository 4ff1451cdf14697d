"""The lead definition under the shipped policies: who becomes a subscriber, lead and mql.

These tests double as documentation of the default policy (lifecycle/policies/default.yaml).
"""

from __future__ import annotations

import pytest

from tests.fixtures.core import fit_profile


def test_newsletter_signup_makes_a_subscriber(make_event, run):
    result = run([make_event("newsletter_signup", profile=fit_profile())])

    (change,) = result.changes
    assert (change.from_stage, change.to_stage) == (None, "subscriber")
    assert change.reason.rule == "subscribe"
    assert result.stage() == "subscriber"


def test_newsletter_signup_outside_icp_still_makes_a_subscriber(make_event, run):
    profile = fit_profile(industry="hospitality", seniority="individual", job_title="Analyst")

    assert run([make_event("newsletter_signup", profile=profile)]).stages() == ["subscriber"]


def test_interest_action_from_fitting_decision_maker_makes_a_lead(make_event, run):
    result = run([make_event("content_download", profile=fit_profile())])

    (change,) = result.changes
    assert (change.from_stage, change.to_stage) == (None, "lead")
    assert change.reason.rule == "lead.interest"
    assert change.reason.text == (
        "content_download is an interest action; fits ICP; decision maker (vp)"
    )


def test_interest_action_from_subscriber_makes_a_lead(make_event, run):
    result = run(
        [
            make_event("newsletter_signup", profile=fit_profile()),
            make_event("webinar_attended"),
        ]
    )

    assert result.stages() == ["subscriber", "lead"]
    assert result.changes[-1].from_stage == "subscriber"


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"industry": "hospitality"}, "industry hospitality is outside the ICP"),
        ({"country": "BR"}, "country BR is outside the ICP"),
        ({"employees": 12}, "12 employees is below the ICP minimum 50"),
        ({"employees": 50_000}, "50000 employees is above the ICP maximum 10000"),
    ],
)
def test_interest_action_outside_icp_moves_no_one_and_says_why(make_event, run, override, words):
    result = run([make_event("content_download", profile=fit_profile(**override))])

    assert result.changes == []
    assert result.stage() is None
    note = result.last.note
    assert note.rule == "blocked.fits_icp"
    assert note.text == f"content_download is an interest action; {words}"


def test_interest_action_from_non_decision_maker_moves_no_one(make_event, run):
    profile = fit_profile(seniority="individual", job_title="Analyst")

    result = run([make_event("webinar_attended", profile=profile)])

    assert result.changes == []
    assert result.last.note.rule == "blocked.is_decision_maker"
    assert "individual is not a decision maker or influencer" in result.last.note.text


def test_decision_maker_by_title_keyword(make_event, run):
    profile = fit_profile(seniority=None, job_title="Head of Platform")

    result = run([make_event("content_download", profile=profile)])

    assert result.stages() == ["lead"]
    assert "decision maker (title 'Head of Platform')" in result.changes[0].reason.text


def test_unknown_fit_data_passes_under_default_policy(make_event, run):
    result = run([make_event("content_download", profile=None)])

    assert result.stages() == ["lead"]
    assert result.changes[0].reason.text.endswith("fits ICP; role unknown")


def test_hand_raise_from_fitting_lead_makes_mql_with_reason_sentence(make_event, run):
    result = run(
        [
            make_event("content_download", profile=fit_profile()),
            make_event("demo_requested"),
        ]
    )

    assert result.stages() == ["lead", "mql"]
    mql = result.changes[-1]
    assert (mql.from_stage, mql.passed_through) == ("lead", ())
    assert mql.reason.rule == "mql.hand_raise"
    assert mql.reason.text == (
        "demo_requested is a hand-raise; fits ICP; decision maker (vp); source webinar is not gated"
    )


@pytest.mark.parametrize(
    "hand_raise", ["demo_requested", "contact_sales", "quote_requested", "chat_sales_request"]
)
def test_every_default_hand_raise_makes_mql(make_event, run, hand_raise):
    assert run([make_event(hand_raise, profile=fit_profile())]).stage() == "mql"


def test_hand_raise_from_new_person_passes_through_lead(make_event, run):
    result = run([make_event("contact_sales", profile=fit_profile())])

    (change,) = result.changes
    assert (change.from_stage, change.to_stage) == (None, "mql")
    assert change.passed_through == ("lead",)
    assert change.reached == ("lead", "mql")
    state = result.states["p1"]
    assert state.highest == "mql"
    assert set(state.entered_at) == {"lead", "mql"}


def test_hand_raise_from_subscriber_passes_through_lead(make_event, run):
    result = run(
        [
            make_event("newsletter_signup", profile=fit_profile()),
            make_event("demo_requested"),
        ]
    )

    assert result.changes[-1].from_stage == "subscriber"
    assert result.changes[-1].passed_through == ("lead",)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"industry": "education"}, "UCP: industry education is unacceptable"),
        ({"email": "x@competitor.example"}, "UCP: email domain competitor.example is unacceptable"),
        (
            {"job_title": "Senior Recruiter", "seniority": "director"},
            "UCP: job title 'Senior Recruiter' contains 'recruiter'",
        ),
    ],
)
def test_ucp_contact_never_reaches_mql(make_event, run, override, words):
    profile = fit_profile(**override)
    # A hand-raise, then enough scored activity to pass the threshold many times over.
    events = [make_event("demo_requested", profile=profile)]
    events += [make_event("webinar_attended", at=events[0].occurred_at) for _ in range(5)]
    events.append(make_event("quote_requested"))

    result = run(events)

    assert result.changes == []
    assert result.stage() is None
    assert result.states["p1"].score >= 100
    for decision in result.decisions:
        assert decision.note.rule == "blocked.not_ucp"
        assert words in decision.note.text
        assert decision.note.text.count("UCP: ") == 1


def test_ucp_is_checked_before_icp_fit(make_event, run):
    profile = fit_profile(industry="government", country="BR")

    note = run([make_event("content_download", profile=profile)]).last.note

    assert note.rule == "blocked.not_ucp"
    assert (
        note.text
        == "content_download is an interest action; UCP: industry government is unacceptable"
    )


def test_ucp_learned_later_blocks_mql_for_an_existing_lead(make_event, run):
    result = run(
        [
            make_event("content_download", profile=fit_profile()),
            make_event("demo_requested", profile={"email": "ada@mailinator.com"}),
        ]
    )

    assert result.stages() == ["lead"]
    assert result.last.note.rule == "blocked.not_ucp"
    assert "UCP: email domain mailinator.com is unacceptable" in result.last.note.text


def test_gated_source_hand_raise_makes_only_a_lead(make_event, run):
    result = run([make_event("demo_requested", source="purchased_list", profile=fit_profile())])

    (change,) = result.changes
    assert (change.from_stage, change.to_stage) == (None, "lead")
    assert change.reason.rule == "lead.interest"
    assert change.reason.text == (
        "demo_requested is a hand-raise but source purchased_list is gated; "
        "fits ICP; decision maker (vp)"
    )
    assert change.lead_source is None


def test_gated_source_hand_raise_from_lead_moves_no_one_and_says_why(make_event, run):
    result = run(
        [
            make_event("content_download", profile=fit_profile()),
            make_event("demo_requested", source="purchased_list"),
        ]
    )

    assert result.stages() == ["lead"]
    assert result.last.note.rule == "blocked.source_not_gated"
    assert result.last.note.text.endswith("source purchased_list is gated")


def test_mature_policy_only_allowed_sources_make_mql(make_event, run):
    allowed = ["referral", "demo", "webinar", "event"]
    not_allowed = ["paid_search", "form", "syndication", None]
    events = [
        make_event("demo_requested", person_id=f"p-{source}", source=source, profile=fit_profile())
        for source in allowed + not_allowed
    ]

    result = run(events, "mature")

    for source in allowed:
        assert result.stage(f"p-{source}") == "mql", source
    for source in not_allowed:
        assert result.stage(f"p-{source}") == "lead", source
        (change,) = [c for c in result.changes if c.person_id == f"p-{source}"]
        if source is None:
            assert "no source given and this policy only allows" in change.reason.text
        else:
            assert f"source {source} is not among the allowed sources" in change.reason.text


def test_mature_policy_requires_known_fit_data(make_event, run):
    result = run(
        [make_event("demo_requested", source="referral", profile={"seniority": "vp"})], "mature"
    )

    assert result.changes == []
    assert result.last.note.rule == "blocked.fits_icp"
    assert "industry unknown and this policy requires it" in result.last.note.text


def test_growth_policy_gates_syndication(make_event, run):
    events = [
        make_event("demo_requested", person_id="synd", source="syndication", profile=fit_profile()),
        make_event("demo_requested", person_id="web", source="webinar", profile=fit_profile()),
    ]

    result = run(events, "growth")

    assert (result.stage("synd"), result.stage("web")) == ("lead", "mql")


@pytest.mark.parametrize("action", ["linkedin_connection", "appointment_set", "free_trial_started"])
def test_not_a_lead_actions_do_not_make_a_lead(make_event, run, action):
    result = run([make_event(action, profile=fit_profile())])

    assert result.changes == []
    assert result.stage() is None
    assert result.last.note.rule == "not_a_lead"
    assert result.last.note.text == f"{action} is not a lead action under default"
    assert result.last.activity is False


def test_contact_with_no_action_is_not_a_lead(make_event, run):
    result = run(
        [
            make_event("profile_updated", profile=fit_profile()),
            make_event("page_viewed"),
            make_event("email_clicked"),
        ]
    )

    assert result.changes == []
    assert result.stage() is None
    assert result.states["p1"].profile["industry"] == "software"


def test_seed_policy_passes_everyone_who_shows_interest(make_event, run):
    misfits = {
        "student": {"industry": "education", "job_title": "Student", "seniority": "intern"},
        "tiny": {"employees": 2, "country": "BR", "seniority": "individual"},
        "unknown": {},
    }
    events = []
    for person_id, profile in misfits.items():
        events.append(make_event("intent_signal", person_id=person_id, profile=profile))
        events.append(make_event("quote_requested", person_id=person_id, source="purchased_list"))

    result = run(events, "seed")

    for person_id in misfits:
        assert result.stages(person_id) == ["lead", "mql"], person_id
        mql = [c for c in result.changes if c.person_id == person_id][-1]
        assert mql.reason.text.endswith("no ICP gate; source purchased_list is not gated")


def test_seed_policy_counts_a_free_trial_as_interest(make_event, run):
    assert run([make_event("free_trial_started")], "seed").stages() == ["lead"]
