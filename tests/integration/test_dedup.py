"""Exact idempotency on real `leadflow worker` processes: redeliveries of old events, however
old, before and after a kill -9 (RocksDB store kept or lost), change nothing and re-emit the
first changes; an event id reused with other content lands in dead letters with the reason.

Only the fixture interface (`broker`, `make_topics`, `workers`, `Worker`, `publish`, `keyed`,
`wait_for`) is used, so the tests run on whichever broker the fixtures start.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from events.inbound import Event
from events.outbound import DeadLetter, HistoryRecord, StageChanged
from lifecycle.policy import load_preset
from lifecycle.replay import Replayer, fold
from lifecycle.verify import change_facts, verify
from streams.dev.demo import synthetic_events
from streams.kafka.readers import read_to_end
from tests.fixtures.worker import Opened, Worker, caught_up, keyed, publish, wait_for

pytestmark = pytest.mark.integration

POLICY = load_preset("default")


def with_redeliveries(
    events: list[dict[str, Any]], count: int, *, seed: int, min_age: int = 20
) -> list[dict[str, Any]]:
    """`events` with `count` copies of earlier events inserted at random later places, each
    at least `min_age` of its person's own events after the original (older than any window
    a person could remember), as a backlog replay does."""
    rng = random.Random(seed)
    out = list(events)
    for _ in range(count):
        while True:
            original = rng.randrange(len(out))
            person = out[original]["person_id"]
            later = [i for i in range(original + 1, len(out)) if out[i]["person_id"] == person]
            if len(later) >= min_age:
                break
        at = rng.randrange(later[min_age - 1] + 1, len(out) + 1)
        out.insert(at, dict(out[original]))
    return out


def offline(events: list[dict[str, Any]]) -> tuple[Replayer, list[Any]]:
    replayer = Replayer(POLICY)
    decisions = [replayer.apply(Event.model_validate(e)) for e in events]
    return replayer, decisions


async def topic(bootstrap: str, name: str) -> list[bytes]:
    return await read_to_end(bootstrap, name, value_only=True)


async def settled(
    bootstrap: str, names: Any, history: int, changes: int, *, exact: bool = True
) -> tuple[list, list]:
    """History and stage changes once they hold `history` and `changes` records, and then,
    once the workers committed every event, a second read shows nothing more arrived. Not
    `exact`: after a kill -9, inputs applied but not yet committed come again and re-emit
    their changes (same ids)."""

    async def full() -> tuple[list[bytes], list[bytes]] | None:
        h = await topic(bootstrap, names.history)
        c = await topic(bootstrap, names.stage_changes)
        return (h, c) if len(h) >= history and len(c) >= changes else None

    h, c = await wait_for(full, 180, f"{history} history records and {changes} stage changes")
    await caught_up(bootstrap, names)
    h2, c2 = await topic(bootstrap, names.history), await topic(bootstrap, names.stage_changes)
    assert (len(h2), len(c2)) == (len(h), len(c))
    assert len(h2) == history and (len(c2) == changes or not exact)
    opened = await Opened.load(bootstrap, names)  # personal fields are sealed per person
    return [opened.history(v) for v in h2], [opened.change(v) for v in c2]


def per_person(records: list[Any]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for record in records:
        grouped.setdefault(record.person_id, []).append(record)
    return grouped


def assert_live_equals_replay(history, changes, decisions, *, exact: bool = True) -> None:
    """History and stage changes on the topics are exactly what replay of the inputs gives
    (not `exact`: the same changes, some more than once, every copy identical)."""
    applied = [d for d in decisions if not d.duplicate]
    wire = per_person(
        [HistoryRecord.model_validate_json(orjson.dumps(d.to_wire())) for d in applied]
    )
    assert {p: [r.model_dump() for r in rs] for p, rs in per_person(history).items()} == {
        p: [r.model_dump() for r in rs] for p, rs in wire.items()
    }
    emitted = [c for d in decisions if d.conflict is None for c in d.changes]
    found, wanted = Counter(map(change_facts, changes)), Counter(map(change_facts, emitted))
    if exact:
        assert found == wanted
    else:
        assert found.keys() == wanted.keys()
        assert all(found[c] >= n for c, n in wanted.items())


async def test_6000_events_with_400_old_redeliveries_end_as_without_them(
    broker, workers, tmp_path: Path
):
    (worker,) = await workers(1)
    names = worker.names
    plain = list(synthetic_events(100, 6_000, seed=21))
    stream = with_redeliveries(plain, 400, seed=5)
    without, plain_decisions = offline(plain)
    replayer, decisions = offline(stream)
    assert replayer.states == without.states
    assert sum(d.duplicate for d in decisions) == 400
    reemitted = sum(len(d.changes) for d in decisions if d.duplicate)
    planned = sum(len(d.changes) for d in plain_decisions)
    assert reemitted > 0  # some redeliveries are of events that moved someone

    await publish(broker.bootstrap, names.events, [keyed(e) for e in stream])
    history, changes = await settled(broker.bootstrap, names, 6_000, planned + reemitted)

    assert fold(history) == without.states  # identical final states
    assert {c.change_id for c in changes} == {
        c.change_id for d in plain_decisions for c in d.changes
    }
    assert_live_equals_replay(history, changes, decisions)
    assert verify(history, {POLICY.version: POLICY}).ok
    for person in ("p0000000", "p0000050", "p0000099"):  # the worker's table, via the API
        status, body = worker.request(f"/people/{person}")
        assert status == 200
        expected = without.states[person]
        assert (body["sequence"], body["stage"]) == (expected.sequence, expected.current_stage)


@pytest.mark.parametrize("keep_store", [True, False], ids=["store-kept", "store-deleted"])
async def test_redelivery_after_kill_9_and_restart_changes_nothing(
    broker, make_topics, tmp_path: Path, keep_store: bool
):
    names = await make_topics(partitions=4)
    worker = Worker(broker, names, tmp_path, "w", store="rocksdb")
    await worker.ready()
    plain = list(synthetic_events(50, 2_000, seed=9))  # 40 events per person
    half = len(plain) // 2
    first_part = plain[:half]
    await publish(broker.bootstrap, names.events, [keyed(e) for e in first_part])

    async def first_half_applied() -> bool:
        return len(await topic(broker.bootstrap, names.history)) >= half

    await wait_for(first_half_applied, 120, "the first half in history")
    worker.kill()
    if not keep_store:
        shutil.rmtree(worker.data)
    worker.start()
    await worker.ready()

    # Every event of the first half again (a backlog replay), mixed into the second half, and
    # one old event id reused with other content.
    rng = random.Random(3)
    second_part = list(plain[half:])
    for old in first_part:
        second_part.insert(rng.randrange(0, len(second_part) + 1), dict(old))
    reused = {**first_part[10], "type": "demo_requested", "source": "paid_search"}
    second_part.append(reused)
    stream = [*first_part, *second_part]
    without, plain_decisions = offline(plain)
    _, decisions = offline(stream)
    conflicts = [d for d in decisions if d.conflict is not None]
    assert len(conflicts) == 1
    emitted = sum(len(d.changes) for d in decisions if d.conflict is None)

    await publish(broker.bootstrap, names.events, [keyed(e) for e in second_part])
    history, changes = await settled(broker.bootstrap, names, len(plain), emitted, exact=False)

    assert fold(history) == without.states
    assert_live_equals_replay(history, changes, decisions, exact=False)
    letters = [
        DeadLetter.model_validate_json(v) for v in await topic(broker.bootstrap, names.dead_letters)
    ]
    opened = await Opened.load(broker.bootstrap, names)  # sealed with the person's data key
    assert all(d.sealed for d in letters)
    assert [orjson.loads(opened.letter_value(d) or b"") for d in letters] == [reused]
    first_sequence = next(
        d.sequence for d in plain_decisions if d.event.event_id == reused["event_id"]
    )
    assert letters[0].error == (
        f"event_id {reused['event_id']} reused with different content; first seen at history "
        f"sequence {first_sequence}"
    )


async def test_reused_event_id_with_other_content_lands_in_dead_letters_with_the_reason(
    broker, workers
):
    (worker,) = await workers(1)
    names = worker.names
    base = {"person_id": "ada", "source": "webinar"}
    original = {
        **base,
        "event_id": "e1",
        "type": "content_download",
        "occurred_at": "2026-01-01T09:00:00+00:00",
        "profile": {"seniority": "vp", "industry": "software", "employees": 300, "country": "DE"},
    }
    views = [
        {
            **base,
            "event_id": f"v{n}",
            "type": "page_viewed",
            "occurred_at": f"2026-01-02T{n:02d}:00:00+00:00",
        }
        for n in range(6)
    ]
    reused = {**original, "type": "demo_requested"}
    after = {
        **base,
        "event_id": "e9",
        "type": "webinar_attended",
        "occurred_at": "2026-01-03T09:00:00+00:00",
    }
    # The same content in another form (key order, offset, an ignored field) is a duplicate.
    same = {
        **dict(reversed(list(original.items()))),
        "occurred_at": "2026-01-01T10:00:00+01:00",
        "ignored": True,
    }
    await publish(
        broker.bootstrap, names.events, [keyed(e) for e in [original, *views, reused, same, after]]
    )

    async def letters() -> list[DeadLetter] | None:
        values = await topic(broker.bootstrap, names.dead_letters)
        return [DeadLetter.model_validate_json(v) for v in values] or None

    (letter,) = await wait_for(letters, 60, "the conflict in dead letters")
    assert (
        letter.error
        == "event_id e1 reused with different content; first seen at history sequence 1"
    )
    assert letter.sealed, "kept sealed with the person's data key"
    opened = await Opened.load(broker.bootstrap, names)
    assert orjson.loads(opened.letter_value(letter) or b"") == reused
    assert letter.topic == names.events and letter.offset == 7

    async def history_done() -> list[bytes] | None:
        values = await topic(broker.bootstrap, names.history)
        return values if len(values) >= 8 else None

    history = [
        HistoryRecord.model_validate_json(v) for v in await wait_for(history_done, 60, "history")
    ]
    await caught_up(broker.bootstrap, names)
    assert len(await topic(broker.bootstrap, names.history)) == 8
    assert [(r.sequence, r.event.event_id) for r in history] == [
        (1, "e1"),
        *[(n + 2, f"v{n}") for n in range(6)],
        (8, "e9"),
    ]
    changes = [
        StageChanged.model_validate_json(v)
        for v in await topic(broker.bootstrap, names.stage_changes)
    ]
    assert [c.change_id for c in changes].count("ada:1:0") == 2  # first time, and `same`
    status, body = worker.request("/people/ada")
    assert status == 200 and body["sequence"] == 8


async def test_redeliveries_after_partitions_move_to_another_worker_change_nothing(broker, workers):
    """The worker that takes over a partition rebuilds its dedup store from history."""
    first, second = await workers(2)
    names = first.names
    plain = list(synthetic_events(40, 1_200, seed=13))
    half = len(plain) // 2
    await publish(broker.bootstrap, names.events, [keyed(e) for e in plain[:half]])

    async def first_half_applied() -> bool:
        return len(await topic(broker.bootstrap, names.history)) >= half

    await wait_for(first_half_applied, 120, "the first half in history")
    first.kill()

    async def second_owns_all() -> bool:
        return sorted(await second.owned()) == [0, 1, 2, 3]

    await wait_for(second_owns_all, 90, "the second worker to own every partition")
    rest = [*plain[:half], *plain[half:]]  # the first half again, then the new events
    stream = [*plain[:half], *rest]
    without, _ = offline(plain)
    _, decisions = offline(stream)
    emitted = sum(len(d.changes) for d in decisions)

    await publish(broker.bootstrap, names.events, [keyed(e) for e in rest])
    history, changes = await settled(broker.bootstrap, names, len(plain), emitted, exact=False)

    assert fold(history) == without.states
    assert_live_equals_replay(history, changes, decisions, exact=False)
