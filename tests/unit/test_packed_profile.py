"""A state's profile is held packed (`lifecycle.state.pack_profile`) and reads back as the
same dict, its key order included (a state's JSON lists the keys as they came)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from lifecycle import state as state_module
from lifecycle.state import PersonState, pack_profile, unpack_profile

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
