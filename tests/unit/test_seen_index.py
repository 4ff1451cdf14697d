"""`SeenIndex`, replay's in-memory dedup store: compact entries, found however many a person has."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from lifecycle.dedup import (
    DIGEST_SIZE,
    INDEXED_AFTER,
    KeptChanges,
    SeenIndex,
    body,
    fingerprint,
)
from lifecycle.records import Decision, Reason, StageChange
from lifecycle.replay import Replayer
from tests.fixtures.core import T0, preset


@pytest.mark.parametrize("count", [3, INDEXED_AFTER, INDEXED_AFTER + 1, 3 * INDEXED_AFTER])
def test_every_applied_id_is_found_with_its_sequence_and_digest(make_event, count: int):
    replayer = Replayer(preset("default"))
    events = [make_event("page_viewed") for _ in range(count)]
    for event in events:
        replayer.apply(event)
    seen = replayer.seen
    assert len(seen) == count
    for n, event in enumerate(events, start=1):
        entry = seen.get("p1", event.event_id)
        assert entry is not None and entry.sequence == n
        assert entry.digest == fingerprint(body(event))
    assert seen.get("p1", "never") is None
    assert seen.get("p2", events[0].event_id) is None


@pytest.mark.parametrize("count", [5, 2 * INDEXED_AFTER])
def test_a_reused_id_is_a_conflict_and_a_redelivery_a_duplicate_however_long_ago(
    make_event, count: int
):
    replayer = Replayer(preset("default"))
    events = [make_event("page_viewed") for _ in range(count)]
    for event in events:
        replayer.apply(event)
    first = events[0]
    again = replayer.apply(first)
    assert again.duplicate and again.conflict is None and again.sequence == 1
    reused = first.model_copy(update={"type": "demo_requested"})
    conflict = replayer.apply(reused)
    assert conflict.duplicate and conflict.conflict is not None
    assert len(replayer.seen) == count


def test_the_same_id_for_two_persons_is_two_events(make_event):
    seen = SeenIndex()
    replayer = Replayer(preset("default"), seen=seen)
    a = make_event("page_viewed", person_id="a", event_id="same", at=T0)
    b = make_event("page_viewed", person_id="b", event_id="same", at=T0)
    assert not replayer.apply(a).duplicate
    assert not replayer.apply(b).duplicate
    assert len(seen) == 2


def test_changes_of_a_moving_event_are_kept_to_re_emit(make_event, fit_profile):
    replayer = Replayer(preset("default"))
    move = make_event("demo_requested", profile=fit_profile())
    first = replayer.apply(move)
    assert first.changes
    assert replayer.seen.get("p1", move.event_id).changes == first.changes
    assert replayer.apply(move).changes == first.changes


def test_a_kept_change_comes_back_equal_and_prints_the_same_bytes(make_event, fit_profile):
    replayer = Replayer(preset("default"))
    move = make_event("demo_requested", profile=fit_profile())
    first = replayer.apply(move)
    again = replayer.apply(move)
    assert again.duplicate and again.changes == first.changes
    assert orjson.dumps(again.changes) == orjson.dumps(first.changes)


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 3, 1, 9, 30, tzinfo=UTC),  # no microseconds: printed without them
        datetime(2026, 3, 1, 9, 30, 0, 250, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_packed_changes_keep_every_field_even_those_not_implied(at: datetime):
    """Ids that the key and the change's place do not imply, None sources, skipped stages,
    merged ids and times of any form come back as they were kept."""
    kept = KeptChanges()
    changes = (
        StageChange(
            "p1:4:0",
            "p1",
            4,
            None,
            "lead",
            (),
            at,
            "e1",
            Reason("interest", "a sentence"),
            None,
            None,
            None,
            "v1",
        ),
        StageChange(
            "custom-id",
            "p9",
            4,
            "lead",
            "customer",
            ("mql", "sql", "opportunity"),
            at,
            "other-event",
            Reason("sales.deal_won", "won"),
            "webinar",
            "form",
            "hot",
            "v1",
            "paid_search",
            3,
            merged=("p2", "p3"),
        ),
    )
    kept.put("p1", "e1", changes)
    back = kept.get("p1", "e1")
    assert back == changes
    assert orjson.dumps(back) == orjson.dumps(changes)
    assert kept.get("p1", "e2") == () and kept.get("p2", "e1") == ()


@pytest.mark.parametrize("count", [3, INDEXED_AFTER + 5])
@pytest.mark.parametrize("jump_at", [0, 2])
def test_a_person_whose_sequences_skip_keeps_each_entry_s_own_sequence(
    make_event, count: int, jump_at: int
):
    """Entries hold no sequence while a person's n-th event got sequence n; from the first
    that did not (a replay from given states, an odd history) they are kept with theirs."""
    seen = SeenIndex()
    events = [make_event("page_viewed") for _ in range(count)]
    sequences = [n + 1 if n < jump_at else n + 10 for n in range(count)]
    for event, sequence in zip(events, sequences, strict=True):
        seen.remember(Decision("p1", sequence, "v1", event))
        seen.remember(Decision("p1", sequence + 100, "v1", event))  # the first one wins
    assert len(seen) == count
    assert "p1" in seen.sequenced and "p1" not in seen.persons
    for event, sequence in zip(events, sequences, strict=True):
        entry = seen.get("p1", event.event_id)
        assert entry is not None and entry.sequence == sequence
        assert entry.digest == fingerprint(body(event))
    assert seen.get("p1", "never") is None


def test_a_person_whose_sequences_count_up_keeps_two_digests_an_event(make_event):
    seen = SeenIndex()
    for n in range(1, 6):
        seen.remember(Decision("p1", n, "v1", make_event("page_viewed")))
    assert len(seen.persons["p1"]) == 5 * 2 * DIGEST_SIZE and not seen.sequenced
