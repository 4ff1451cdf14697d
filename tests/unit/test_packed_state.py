"""A state's profile and stage entry times are held packed (`lifecycle.state.pack_profile`,
`pack_entered`) and read back as the same dicts, key order included (a state's JSON lists
the keys as they came), and every time as it was."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycle import state as state_module
from lifecycle.stages import STAGES
from lifecycle.state import (
    PersonState,
    enter,
    entered,
    pack_entered,
    pack_profile,
    profile_keys,
    unpack_entered,
    unpack_profile,
)

FIELDS = ("email", "job_title", "seniority", "company", "industry", "employees", "country")
values = st.one_of(st.text(max_size=30), st.integers(0, 10_000_000))
profiles = st.lists(st.tuples(st.sampled_from(FIELDS), values), max_size=7).map(dict)


@given(profiles)
def test_a_packed_profile_reads_back_as_the_same_dict_in_the_same_order(
    profile: dict[str, Any],
) -> None:
    back = unpack_profile(pack_profile(profile))
    assert back == profile and list(back) == list(profile)
    state = PersonState("p1", profile=profile)
    assert state.profile == profile and list(state.profile) == list(profile)
    assert profile_keys(state) == tuple(profile)
    assert orjson.dumps(state.to_wire()) == orjson.dumps(
        {**PersonState("p1").to_wire(), "profile": profile}
    )


def test_a_state_s_profile_is_assigned_not_changed_in_place() -> None:
    state = PersonState("p1", profile={"industry": "saas"})
    state.profile = {**state.profile, "country": "US"}
    assert state.profile == {"industry": "saas", "country": "US"}
    assert state == PersonState("p1", profile={"industry": "saas", "country": "US"})
    assert state.copy().profile == state.profile
    assert PersonState("p2").profile == {}


def test_past_the_numbered_key_orders_a_profile_is_packed_with_its_keys(monkeypatch) -> None:
    monkeypatch.setattr(state_module, "MAX_ORDERS", len(state_module._ORDERS))
    profile = {"zz-unseen-order": 1, "email": "a@b.example"}
    packed = pack_profile(profile)
    assert packed.startswith(b"{")
    assert unpack_profile(packed) == profile
    assert profile_keys(PersonState("p1", profile=profile)) == tuple(profile)


instants = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2999, 12, 31), timezones=st.just(UTC)
)


@given(st.lists(st.tuples(st.sampled_from(STAGES), instants), max_size=7).map(dict))
def test_packed_entry_times_read_back_as_the_same_times_in_the_same_order(
    entered: dict[str, datetime],
) -> None:
    back = unpack_entered(pack_entered(entered))
    assert back == entered and list(back) == list(entered)
    assert all(at.tzinfo is UTC for at in back.values())
    assert orjson.dumps(back) == orjson.dumps(entered)


@pytest.mark.parametrize(
    "entered",
    [
        {"lead": datetime(2026, 1, 1, 9, tzinfo=timezone(timedelta(hours=2)))},  # an offset
        {"lead": datetime(2026, 1, 1, 9)},  # naive
        {"no-such-stage": datetime(2026, 1, 1, 9, tzinfo=UTC)},
    ],
)
def test_entry_times_of_another_kind_are_packed_as_json_and_read_back_exactly(
    entered: dict[str, datetime],
) -> None:
    packed = pack_entered(entered)
    assert packed.startswith(b"{")
    back = unpack_entered(packed)
    assert back == entered and orjson.dumps(back) == orjson.dumps(entered)
    state = PersonState("p1", entered_at=entered)
    assert state.entered_at == entered


any_instants = st.one_of(
    instants,
    st.datetimes(timezones=st.just(timezone(timedelta(hours=-5)))),  # falls back to JSON
)


@given(st.lists(st.tuples(st.sampled_from(STAGES), any_instants), max_size=12))
def test_entering_stages_on_the_packed_times_is_assigning_into_the_dict(
    steps: list[tuple[str, datetime]],
) -> None:
    """`enter` (evolve's per-change path) and `entered` (the SLA check) agree with a dict."""
    state, expected = PersonState("p1"), {}
    for stage, at in steps:
        enter(state, stage, at)
        expected[stage] = at
        assert entered(state, stage) == at
    back = state.entered_at
    assert back == expected and list(back) == list(expected)
    assert orjson.dumps(back) == orjson.dumps(expected)
    assert all(entered(state, s) == expected.get(s) for s in STAGES)
