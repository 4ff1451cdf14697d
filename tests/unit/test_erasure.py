"""What an erasure withholds: reason sentences go, rule ids and stage facts stay."""

from __future__ import annotations

from datetime import UTC, datetime

from events.outbound import Reason
from lifecycle.policy import load_preset
from lifecycle.shredding import WITHHELD, withheld
from lifecycle.state import PersonState
from streams.web.views import person_view

REASON = Reason(rule="hand_raise", text="VP of Sales asked for a demo")


def test_an_erased_reason_keeps_its_rule_and_loses_its_sentence():
    assert withheld(REASON) == {"rule": "hand_raise", "text": WITHHELD}
    assert withheld(REASON.model_dump()) == {"rule": "hand_raise", "text": WITHHELD}


def test_the_person_view_of_an_erased_person_withholds_the_last_reason_only():
    policy = load_preset("default")
    now = datetime(2026, 3, 1, tzinfo=UTC)
    state = PersonState("ada", stage="mql", sequence=4, last_reason=REASON)
    assert person_view(state, policy, now)["last_reason"] == REASON

    state.erased = True
    view = person_view(state, policy, now)
    assert view["last_reason"] == {"rule": "hand_raise", "text": WITHHELD}
    assert (view["stage"], view["sequence"], view["profile"]) == ("mql", 4, {})
