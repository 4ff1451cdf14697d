"""The policy file: validation errors a person can act on, and a content-hash version."""

from __future__ import annotations

import pytest
import yaml

from lifecycle.policy import (
    PRESETS,
    PolicyError,
    load_policy,
    load_preset,
    parse_policy,
    preset_path,
    resolve_policy,
)
from tests.fixtures.core import custom_policy

MINIMAL = "name: tiny\ninterest_actions: [content_download]\nhand_raises: [demo_requested]\n"


def _default_text() -> str:
    return preset_path("default").read_text(encoding="utf-8")


def _line_of(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def _error(text: str, origin: str = "team.yaml") -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, origin)
    return str(caught.value)


@pytest.mark.parametrize("name", PRESETS)
def test_all_presets_load(name):
    policy = load_preset(name)

    assert policy.name == name
    assert policy.interest_actions and policy.hand_raises
    assert policy.unknown_event_types() == []
    assert len(policy.version) == 12


def test_presets_have_distinct_versions():
    assert len({load_preset(name).version for name in PRESETS}) == len(PRESETS)


def test_unknown_preset_error_lists_the_presets():
    with pytest.raises(PolicyError) as caught:
        load_preset("nope")

    assert str(caught.value) == "unknown preset 'nope'; choose one of default, seed, growth, mature"


def test_bad_type_names_file_line_and_key_path():
    text = _default_text().replace("threshold: 60", "threshold: sixty")

    message = _error(text)

    line = _line_of(text, "threshold: sixty")
    assert message.startswith(f"team.yaml:{line}: scoring.threshold: ")
    assert "valid number" in message
    assert "\n" not in message


def test_unknown_key_is_rejected_with_its_line():
    text = _default_text().replace("  half_life_days: 30", "  half_life_days: 30\n  colour: red")

    message = _error(text)

    assert (
        message
        == f"team.yaml:{_line_of(text, 'colour')}: scoring.colour: Extra inputs are not permitted"
    )


def test_unknown_top_level_key_is_rejected():
    message = _error(MINIMAL + "lead_definition: everyone\n")

    assert message == "team.yaml:4: lead_definition: Extra inputs are not permitted"


def test_list_item_error_names_the_index():
    message = _error(MINIMAL + "timeout_stages:\n  - lead\n  - limbo\n")

    assert message.startswith("team.yaml:6: timeout_stages.1: Input should be 'subscriber'")


def test_every_error_is_reported_on_its_own_line():
    message = _error(MINIMAL + "inactivity_days: -1\nsla_days: {mql: soon}\n")

    lines = message.splitlines()
    assert [line.split(": ")[:2] for line in lines] == [
        ["team.yaml:4", "inactivity_days"],
        ["team.yaml:5", "sla_days.mql"],
    ]


def test_missing_required_key_is_named():
    assert _error("name: tiny\nhand_raises: [demo_requested]\n") == (
        "team.yaml:1: interest_actions: Field required"
    )


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (MINIMAL + "icp:\n  industries: [software\n  countries: [DE]\n", 6, "expected ','"),
        ("name: tiny\ninterest_actions: [content_download]\n  hand_raises: []\n", 3, "expected"),
        (MINIMAL + "icp:\n\tindustries: []\n", 5, "'\\t'"),
    ],
)
def test_yaml_syntax_error_names_the_line(text, line, problem):
    message = _error(text)

    assert message.startswith(f"team.yaml:{line}: not valid YAML: ")
    assert problem in message


def test_a_policy_is_a_mapping():
    assert _error("- default\n- seed\n") == (
        "team.yaml:1: a policy is a mapping of keys (name, interest_actions, …)"
    )


def test_overlapping_lists_are_rejected():
    message = _error(MINIMAL.replace("[demo_requested]", "[demo_requested, content_download]"))

    assert "content_download is listed in both interest_actions and hand_raises" in message


def test_not_a_lead_overlapping_a_hand_raise_is_rejected():
    text = _default_text().replace(
        "not_a_lead: [linkedin_connection,", "not_a_lead: [demo_requested, linkedin_connection,"
    )

    assert "demo_requested is listed in both hand_raises and not_a_lead" in _error(text)


def test_customer_cannot_time_out():
    assert "customer is terminal" in _error(MINIMAL + "timeout_stages: [lead, customer]\n")


def test_icp_employee_range_must_be_ordered():
    message = _error(MINIMAL + "icp:\n  employees_min: 500\n  employees_max: 50\n")

    assert message.startswith("team.yaml:4: icp: ")
    assert "employees_min is greater than employees_max" in message


def test_warm_threshold_above_hot_is_rejected():
    assert "warm threshold is above the hot threshold" in _error(
        MINIMAL + "temperature: {hot: 0.05, warm: 0.1}\n"
    )


def test_version_is_stable_under_reformatting_and_comments():
    policy = load_preset("default")
    reformatted = parse_policy(policy.to_yaml())
    flow_style = parse_policy(
        yaml.safe_dump(policy.model_dump(mode="json"), default_flow_style=True)
    )
    commented = parse_policy(
        "# signed off by sales and marketing\n"
        + _default_text().replace("threshold: 60", "threshold: 60  # agreed in Q1\n\n")
    )

    assert reformatted.version == policy.version
    assert flow_style.version == policy.version
    assert commented.version == policy.version


def test_version_is_stable_when_defaults_are_spelled_out():
    spelled_out = MINIMAL + "inactivity_days: 90\ntimeout_stages: [lead, mql]\n"

    assert parse_policy(spelled_out).version == parse_policy(MINIMAL).version


@pytest.mark.parametrize(
    "change",
    [
        {"inactivity_days": 180},
        {"gated_sources": ["purchased_list", "syndication"]},
        {"hand_raises": ["demo_requested", "contact_sales", "quote_requested"]},
        {"sla_days": {"mql": 2, "sql": 30}},
        {"decision_makers": {"required": False}},
    ],
)
def test_version_changes_with_any_rule(change):
    assert custom_policy(**change).version != load_preset("default").version


def test_version_changes_with_the_scoring_threshold():
    text = _default_text()

    assert parse_policy(text.replace("threshold: 60", "threshold: 61")).version != (
        parse_policy(text).version
    )


def test_unknown_event_types_are_listed_as_likely_typos():
    policy = parse_policy(
        MINIMAL.replace("[content_download]", "[content_downlaod, webinar_attended]")
    )

    assert policy.unknown_event_types() == ["content_downlaod"]


def test_load_policy_names_an_unreadable_file(tmp_path):
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "missing.yaml")

    assert str(caught.value).startswith(f"{tmp_path / 'missing.yaml'}: cannot read policy: ")


def test_load_policy_errors_name_the_file(tmp_path):
    path = tmp_path / "ours.yaml"
    path.write_text(MINIMAL + "inactivity_days: never\n")

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    assert str(caught.value).startswith(f"{path}:4: inactivity_days: ")


def test_resolve_policy_takes_a_file_or_a_preset_not_both(tmp_path):
    path = tmp_path / "ours.yaml"
    path.write_text(MINIMAL)

    assert resolve_policy().name == "default"
    assert resolve_policy(preset="seed").name == "seed"
    assert resolve_policy(path).name == "tiny"
    with pytest.raises(PolicyError, match="not both"):
        resolve_policy(path, "seed")


def test_windows_longer_than_a_century_are_rejected():
    # A 10^9-day window would overflow deadline arithmetic and stop the worker.
    message = _error(MINIMAL + "inactivity_days: 1000000000\nsla_days: {mql: 40000}\n")
    assert "inactivity_days" in message and "sla_days.mql" in message
    assert "36500" in message
