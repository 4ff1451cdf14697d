"""Sweeper ticks are valid events for every valid person id, with deterministic ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events.codec import decode_event
from events.limits import MAX_ID
from streams.worker.sweeper import tick, tick_id

DEADLINE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW = DEADLINE + timedelta(hours=1)


@pytest.mark.parametrize("length", [1, 40, MAX_ID - 40, MAX_ID])
def test_a_tick_decodes_for_person_ids_up_to_the_limit(length: int) -> None:
    person = "p" * length
    event = decode_event(tick(person, DEADLINE, NOW))
    assert event.person_id == person
    assert event.type == "inactivity_timeout"
    assert len(event.event_id) <= MAX_ID


def test_short_ids_stay_readable_and_ids_are_deterministic() -> None:
    assert tick_id("ada", DEADLINE) == f"timeout:ada:{DEADLINE.isoformat()}"
    long = "q" * MAX_ID
    assert tick_id(long, DEADLINE) == tick_id(long, DEADLINE)
    assert tick_id(long, DEADLINE) != tick_id(long, DEADLINE + timedelta(days=1))
    assert tick_id(long, DEADLINE) != tick_id("r" * MAX_ID, DEADLINE)
