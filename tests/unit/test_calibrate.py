"""Calibration: measured conversion with Wilson intervals, thresholds from the measured
distribution, gating by maturity, and insufficient samples never gated on noise."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from events.inbound import Event
from lifecycle.calibrate import (
    SourceMeasure,
    calibrate,
    gate,
    maturity_of,
    proposal_yaml,
    thresholds,
)
from lifecycle.policy import parse_policy
from lifecycle.rates import Rate, wilson
from streams.dev.demo import synthetic_events
from tests.fixtures.core import T0, custom_policy, days, fit_profile, preset

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


# --- Wilson intervals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hits", "base", "low", "high"),
    [
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (1, 10, 0.0179, 0.4042),
        (0, 20, 0.0, 0.1611),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_interval_matches_known_values(hits, base, low, high):
    assert tuple(round(x, 4) for x in wilson(hits, base)) == (low, high)


def test_wilson_interval_of_no_trials_is_everything():
    assert wilson(0, 0) == (0.0, 1.0)


def test_wilson_interval_refuses_more_hits_than_trials():
    with pytest.raises(ValueError, match="between 0 and base"):
        wilson(3, 2)


def test_a_rate_is_below_another_only_when_the_intervals_do_not_overlap():
    assert Rate(1, 200).below(Rate(40, 200))
    assert not Rate(1, 20).below(Rate(4, 20))  # 5 % vs 20 % on 20 each: noise


# --- thresholds and gating on measures --------------------------------------------------------


def _measure(source: str, won: int, mqls: int, *, enough: bool = True, gated: bool = False):
    return SourceMeasure(
        source=source,
        mqls=mqls,
        sales_sourced=0,
        to_sql=Rate(0, mqls),
        to_customer=Rate(won, mqls),
        enough=enough,
        configured=None,
        configured_temperature=None,
        gated_now=gated,
    )


def _sorted(*measures: SourceMeasure) -> list[SourceMeasure]:
    return sorted(measures, key=lambda m: -(m.to_customer.rate or 0.0))


def test_thresholds_split_the_measured_sources_into_thirds():
    measures = _sorted(*(_measure(f"s{i}", won, 100) for i, won in enumerate(range(9, 0, -1))))

    hot, warm = thresholds(measures, preset("default"))

    assert (hot, warm) == (0.07, 0.04)
    bands = [
        "hot" if m.to_customer.rate >= hot else "warm" if m.to_customer.rate >= warm else "cold"
        for m in measures
    ]
    assert bands == ["hot"] * 3 + ["warm"] * 3 + ["cold"] * 3


def test_thresholds_ignore_sources_with_insufficient_data():
    measures = _sorted(
        _measure("a", 9, 100),
        _measure("b", 5, 100),
        _measure("c", 1, 100),
        _measure("tiny", 5, 5, enough=False),
    )

    assert thresholds(measures, preset("default")) == (0.09, 0.05)


def test_fewer_than_three_measured_sources_keep_the_policy_thresholds():
    measures = [_measure("a", 9, 100), _measure("b", 1, 100)]

    assert thresholds(measures, preset("default")) == (0.10, 0.04)
    assert thresholds(measures, preset("seed")) is None


def _three_and_a_small_one() -> list[SourceMeasure]:
    return _sorted(
        _measure("referral", 60, 200),
        _measure("webinar", 50, 200),
        _measure("syndication", 2, 200),
        _measure("tiny", 0, 12, enough=False),
    )


def test_seed_gates_only_a_source_that_clearly_converts_worst():
    measures = _three_and_a_small_one()

    gate(measures, "seed")

    assert {m.source: m.gated_proposed for m in measures} == {
        "referral": False,
        "webinar": False,
        "syndication": True,
        "tiny": False,
    }


def test_seed_gates_nothing_when_the_worst_is_within_noise():
    measures = _sorted(_measure("a", 6, 100), _measure("b", 5, 100), _measure("c", 3, 100))

    gate(measures, "seed")

    assert not any(m.gated_proposed for m in measures)


def test_growth_gates_every_source_whose_interval_lies_below_the_rest():
    measures = _sorted(
        _measure("referral", 60, 200),
        _measure("webinar", 55, 200),
        _measure("syndication", 2, 200),
        _measure("purchased_list", 3, 200),
    )

    gate(measures, "growth")

    gated = sorted(m.source for m in measures if m.gated_proposed)
    assert gated == ["purchased_list", "syndication"]


def test_seed_gates_only_the_single_worst_of_several_bad_sources():
    measures = [  # in any order
        _measure("syndication", 2, 200),
        _measure("referral", 60, 200),
        _measure("purchased_list", 3, 200),
        _measure("webinar", 55, 200),
    ]

    gate(measures, "seed")

    assert [m.source for m in measures if m.gated_proposed] == ["syndication"]


def test_mature_gates_all_but_the_best_converting():
    measures = _sorted(
        _measure("referral", 60, 200),
        _measure("demo", 55, 200),
        _measure("webinar", 20, 200),
        _measure("syndication", 2, 200),
    )

    gate(measures, "mature")

    assert sorted(m.source for m in measures if not m.gated_proposed) == ["demo", "referral"]


@pytest.mark.parametrize("maturity", ["seed", "growth", "mature"])
def test_insufficient_samples_are_never_gated(maturity):
    measures = _three_and_a_small_one()

    gate(measures, maturity)

    (tiny,) = [m for m in measures if m.source == "tiny"]
    assert not tiny.gated_proposed
    assert tiny.why.startswith("insufficient data (12 MQLs)")


def test_an_insufficient_source_keeps_a_gate_set_by_hand():
    measures = [*_three_and_a_small_one()[:3], _measure("list", 0, 5, enough=False, gated=True)]

    gate(measures, "growth")

    assert measures[-1].gated_proposed
    assert "as configured" in measures[-1].why


def test_maturity_follows_the_preset_name_unless_chosen():
    assert maturity_of(preset("seed")) == "seed"
    assert maturity_of(preset("mature")) == "mature"
    assert maturity_of(preset("default")) == "growth"
    assert maturity_of(preset("default"), "mature") == "mature"
    with pytest.raises(ValueError, match="choose one of"):
        maturity_of(preset("default"), "unicorn")


# --- calibrate on an event stream --------------------------------------------------------------


def _stream(make_event, plan: dict[str, tuple[int, int]]) -> list[Event]:
    """Per source: (MQLs, of them won). Each MQL is a fitting VP raising a hand."""
    events = []
    for source, (mqls, won) in plan.items():
        for n in range(mqls):
            person = f"{source}-{n}"
            events.append(
                make_event(
                    "demo_requested", person_id=person, at=T0, source=source, profile=fit_profile()
                )
            )
            if n < won:
                events.append(make_event("deal_won", person_id=person, at=days(20), source="crm"))
    return events


PLAN = {"referral": (120, 36), "webinar": (120, 30), "syndication": (120, 1), "tiny": (8, 0)}


def test_calibrate_measures_proposes_and_prices_the_switch(make_event):
    events = _stream(make_event, PLAN)
    policy = custom_policy("default", gated_sources=[])

    result = calibrate(events, policy, min_mqls=30, maturity="growth")

    by = {m.source: m for m in result.sources}
    assert (by["referral"].mqls, by["referral"].to_customer.hits) == (120, 36)
    assert not by["tiny"].enough and not by["tiny"].gated_proposed
    assert by["syndication"].gated_proposed
    assert result.proposed.gated_sources == ["syndication"]
    assert result.proposed.temperature.source_conversion["referral"] == 0.3
    assert result.proposed.temperature.source_conversion["syndication"] == 0.0083
    what_if = result.what_if.to_dict()
    assert what_if["by_source"]["syndication"] == {"kept": 0, "lost": 120, "gained": 0}
    assert what_if["mqls_lost"] == 120
    assert what_if["expected_customers_lost"] == 1.0  # 120 lost at the measured 1/120
    assert ("gated_sources", [], ["syndication"]) in result.changes


def test_a_source_gated_today_is_measured_with_its_gate_lifted(make_event):
    events = _stream(make_event, PLAN)
    policy = custom_policy("default", gated_sources=["referral"])

    result = calibrate(events, policy, min_mqls=30, maturity="growth")

    referral = next(m for m in result.sources if m.source == "referral")
    assert referral.gated_now and not referral.gated_proposed
    assert referral.mqls == 120
    assert result.what_if.to_dict()["by_source"]["referral"]["gained"] == 120


def test_the_proposal_validates_and_names_its_data(make_event):
    events = _stream(make_event, PLAN)

    result = calibrate(events, preset("default"), min_mqls=30)
    text = proposal_yaml(result)

    again = parse_policy(text, "<proposal>")
    assert again.version == result.proposed.version
    assert f"from {len(events):,} events" in text
    assert result.data.sha256 in text
    assert "2026-01-01T00:00:00Z to 2026-01-21T00:00:00Z" in text


def test_labels_the_data_contradicts_are_flagged(make_event):
    # default labels webinar warm (0.08) and syndication cold (0.01); here webinar converts
    # at 25 % (hot) and syndication at under 1 %.
    events = _stream(make_event, PLAN)

    result = calibrate(events, preset("default"), min_mqls=30)

    by = {m.source: m for m in result.sources}
    assert by["webinar"].contradicts and by["webinar"].measured_temperature == "hot"
    assert not by["syndication"].contradicts


# --- golden: a fixed stream's calibration, every number ------------------------------------------


def _golden(name: str, data: dict) -> None:
    path = GOLDEN / name
    text = json.dumps(data, indent=1, sort_keys=True, default=str) + "\n"
    if os.environ.get("LEADFLOW_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with LEADFLOW_UPDATE_GOLDEN=1"
    assert json.loads(text) == json.loads(path.read_text())


@pytest.mark.parametrize("name", ["default", "seed", "mature"])
def test_golden_calibration_of_the_demo_stream(name):
    events = [Event.model_validate(e) for e in synthetic_events(1_000, 10_000, seed=11)]

    result = calibrate(events, preset(name))

    _golden(f"calibrate-{name}.json", result.to_dict())
