"""Identity merges across partitions on real `leadflow worker` processes, with kill -9s.

A stream of synthetic journeys with old redeliveries and `person_merged` events whose
absorbed person and survivor are on different partitions (chains, a survivor nobody knew,
later events for aliases, redelivered merges) is published at a steady rate to two workers;
each is killed with kill -9 once while it runs and restarted. The absorbed person's worker
records the merge and publishes the hand-off keyed by the survivor; an alias's later events
are forwarded the same way. Afterwards (see `tests/faults/harness.py`): every (person, event
id) on the events topic is in history once, sequences are 1..n, the stage changes are
exactly what replay of the history predicts, `verify` finds nothing, the fold of history
equals replay's states, every merge reached its survivor, and `reconcile` finds no gap.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson
import pytest

from events.outbound import HistoryRecord
from lifecycle.policy import load_preset
from lifecycle.replay import fold, replay
from lifecycle.verify import verify
from streams.dev.demo import synthetic_events
from streams.kafka.publish import KeyPartitions
from streams.kafka.readers import iter_to_end
from streams.kafka.topics import TopicNames
from streams.tools.reconcile import reconcile
from tests.faults.harness import Publisher, settings_for, settled_check_repaired
from tests.fixtures.worker import Opened, Worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

POLICY = load_preset("default")
PARTITIONS = 4


def merge_stream(
    events: int = 8_000, persons: int = 400, *, seed: int = 17
) -> tuple[list[dict[str, Any]], dict[str, str], list[tuple[str, str]]]:
    """Synthetic journeys, ~3 % old redeliveries, and merges across partitions.

    Returns the stream (JSON-ready events in publishing order), the expected final
    survivor of every absorbed id (chains resolved), and the crossing pairs: two ids on
    different partitions merged into each other at the same point of the stream (in flight
    at once, they resolve to the smaller id; one after the other, the second is refused).
    """
    rng = random.Random(seed)
    partition = KeyPartitions(range(PARTITIONS))
    stream = list(synthetic_events(persons, events, seed=seed, duplicates=0.0))
    ids = sorted({e["person_id"] for e in stream})
    rng.shuffle(ids)

    def at(index: int) -> str:
        return stream[min(index, len(stream) - 1)]["occurred_at"]

    merges: list[tuple[str, str, int]] = []  # (absorbed, survivor, stream position)
    pool = list(ids)
    while len(merges) < 24 and len(pool) > 2:
        a = pool.pop()
        b = next((p for p in pool if partition(p.encode()) != partition(a.encode())), None)
        if b is None:
            break
        pool.remove(b)
        merges.append((a, b, rng.randrange(len(stream) // 4, len(stream) * 3 // 4)))
    # a chain: the survivor of the first merge is merged on, later, into another partition
    a, b, position = merges[0]
    c = next(p for p in pool if partition(p.encode()) not in {partition(b.encode())})
    pool.remove(c)
    merges.append((b, c, min(position + len(stream) // 8, len(stream) - 1)))
    # a survivor nobody knew
    unknown = "crm-new-survivor"
    lone = next(p for p in pool if partition(p.encode()) != partition(unknown.encode()))
    pool.remove(lone)
    merges.append((lone, unknown, len(stream) // 2))

    inserts: list[tuple[int, dict[str, Any]]] = []
    crossings: list[tuple[str, str]] = []
    for n in range(3):
        x = pool.pop()
        y = next(p for p in pool if partition(p.encode()) != partition(x.encode()))
        pool.remove(y)
        crossings.append((x, y))
        position = rng.randrange(len(stream) // 4, len(stream) * 3 // 4)
        for k, (me, other) in enumerate(((x, y), (y, x))):
            merge = {
                "event_id": f"cross-{n}-{k}",
                "type": "person_merged",
                "person_id": me,
                "merged_into": other,
                "occurred_at": at(position),
            }
            inserts.append((position, merge))
            inserts.append((rng.randrange(position + 1, len(stream) + 1), dict(merge)))
            for j in range(2):  # later events for both, the first one right after
                spot = position + 1 if j == 0 else rng.randrange(position + 1, len(stream) + 1)
                inserts.append(
                    (
                        spot,
                        {
                            "event_id": f"alias-x{n}-{k}-{j}",
                            "type": ("page_viewed", "demo_requested")[j],
                            "person_id": me,
                            "occurred_at": at(spot),
                            "source": "referral",
                        },
                    )
                )
    for n, (absorbed, survivor, position) in enumerate(merges):
        merge = {
            "event_id": f"merge-{n}",
            "type": "person_merged",
            "person_id": absorbed,
            "merged_into": survivor,
            "occurred_at": at(position),
        }
        inserts.append((position, merge))
        later = rng.randrange(position + 1, len(stream) + 1)
        inserts.append((later, dict(merge)))  # the CRM's webhook backlog sends it again
        for k in range(3):  # later events for the alias, some of which move the survivor
            spot = rng.randrange(position + 1, len(stream) + 1)
            inserts.append(
                (
                    spot,
                    {
                        "event_id": f"alias-{n}-{k}",
                        "type": ("page_viewed", "demo_requested", "sales_accepted")[k],
                        "person_id": absorbed,
                        "occurred_at": at(spot),
                        "source": "referral",
                    },
                )
            )
    # old redeliveries: copies of events at least 200 positions earlier
    for _ in range(len(stream) // 30):
        original = rng.randrange(len(stream) - 400)
        inserts.append((rng.randrange(original + 200, len(stream) + 1), dict(stream[original])))
    for position, event in sorted(inserts, key=lambda x: x[0], reverse=True):
        stream.insert(position, event)

    survivors = {absorbed: survivor for absorbed, survivor, _ in merges}

    def final(person: str) -> str:
        while person in survivors:
            person = survivors[person]
        return person

    return stream, {absorbed: final(absorbed) for absorbed in survivors}, crossings


async def history_records(bootstrap: str, names: TopicNames) -> list[HistoryRecord]:
    """History in (partition, offset) order, read as a holder of the master key reads it
    (personal fields are sealed per person: lifecycle/shredding.py), so replay decides on
    the events as received."""
    records = [r async for r in iter_to_end(bootstrap, names.history)]
    records.sort(key=lambda r: (r.partition, r.offset))
    opened = await Opened.load(bootstrap, names)
    return [opened.history(r.value) for r in records]


async def test_merges_across_partitions_with_kill_9_equal_replay_of_history(
    broker, make_topics, tmp_path, fault_report
):
    names = await make_topics(partitions=PARTITIONS)
    settings = settings_for(broker.url, names)
    stream, survivors, crossings = merge_stream()
    records = [(e["person_id"].encode(), orjson.dumps(e)) for e in stream]
    started = time.monotonic()

    group = [
        Worker(broker, names, tmp_path, "m1", store="rocksdb"),
        Worker(broker, names, tmp_path, "m2", store="memory"),
    ]

    async def every_partition_owned() -> bool:
        owned = [await w.owned() for w in group]
        return sorted(p for parts in owned for p in parts) == list(range(PARTITIONS))

    await wait_for(every_partition_owned, 120, "two workers to own every partition")
    publisher = Publisher(broker.bootstrap, names.events, records)
    publisher.start(rate=len(records) / 30.0)
    for fraction, worker in ((0.35, group[0]), (0.7, group[1])):
        await publisher.wait(int(len(records) * fraction), timeout=180)
        assert worker.alive, f"worker {worker.name} died on its own: {worker.tail()}"
        worker.kill()  # kill -9, mid-stream: hand-offs and forwards in flight
        await asyncio.sleep(1.0)
        worker.start()
    await publisher.wait(timeout=180)
    await wait_for(every_partition_owned, 120, "both workers back")

    def alive() -> bool:
        return all(w.alive for w in group)

    gaps, repaired, outcome = await settled_check_repaired(settings, "merges", alive=alive)
    assert not outcome.problems, outcome.problems

    # History, stage changes and states equal replay's; verify finds nothing.
    history = await history_records(broker.bootstrap, names)
    replayed = list(replay((r.event for r in history), POLICY, follow=False))
    assert not any(d.duplicate for d in replayed)
    states = fold(history)
    assert states == fold(replayed)
    report = verify(history, {POLICY.version: POLICY})
    assert report.ok, report.mismatches[:5]

    # Every merge reached its survivor: the absorbed id is an alias, the survivor lists it.
    for absorbed, survivor in survivors.items():
        assert states[absorbed].merged_into is not None, absorbed
        assert absorbed in states[survivor].aliases, (absorbed, survivor)
        assert states[survivor].merged_into is None
    # A crossing pair ends as one person: one id an alias of the other, which survives.
    crossed = 0
    for x, y in crossings:
        ends = {states[x].merged_into, states[y].merged_into}
        assert ends in ({None, x}, {None, y}), (x, y, ends)
        survivor, alias = (x, y) if states[x].merged_into is None else (y, x)
        assert alias in states[survivor].aliases, (x, y)
        notes = [r for r in history if r.note is not None and r.event.person_id == alias]
        if any(r.note.rule == "identity.merge_crossed" for r in notes):
            crossed += 1
            assert survivor == min(x, y)
    assert crossed >= 1, "no crossing pair was in flight at once"
    forwarded = [r for r in history if r.event.forwarded_via]
    handoffs = [r for r in history if r.event.type == "person_absorbed"]
    assert len({r.event.event_id for r in handoffs}) == len(survivors) + 2 * crossed + (
        len(crossings) - crossed
    )
    # each later event of an alias was applied by a survivor (forwarded, not just noted)
    applied = {
        r.event.event_id.removeprefix("returned:")
        for r in forwarded
        if r.note is None or r.note.rule not in ("identity.forwarded", "identity.merge_cycle")
    }
    alias_events = {
        r.event.event_id
        for r in history
        if r.event.event_id.startswith("alias-") and not r.event.event_id.startswith("alias-x")
    }
    assert alias_events and alias_events <= applied
    # each later event of a crossing pair was applied by the pair's survivor
    applied_by = {
        (r.event.person_id, r.event.event_id.removeprefix("returned:"))
        for r in history
        if r.note is None or not r.note.rule.startswith(("identity.forwarded", "identity.merge_"))
    }
    for n, (x, y) in enumerate(crossings):
        survivor = x if states[x].merged_into is None else y
        for event_id in (f"alias-x{n}-{k}-{j}" for k in (0, 1) for j in (0, 1)):
            assert (survivor, event_id) in applied_by, (survivor, event_id)

    # reconcile: every committed inbound record is in history or dead letters.
    final = await reconcile(settings, repair=False)
    assert not final.gaps

    # The API: an alias says whom it was merged into (whichever worker is asked).
    for absorbed, survivor in list(survivors.items())[:4]:
        for worker in group:
            status, body = worker.request(f"/people/{absorbed}")
            assert status == 200 and body["merged_into"] == states[absorbed].merged_into
            status, body = worker.request(f"/people/{survivor}")
            assert status == 200 and absorbed in body["aliases"]

    fault_report.add(
        "merges across partitions",
        "2 x kill -9 (two workers)",
        events=len(records),
        expected=outcome.expected,
        found=outcome.found,
        duplicates=outcome.duplicates,
        dead_letters=outcome.dead_letters,
        merges=len(survivors),
        crossings=f"{crossed} of {len(crossings)} in flight at once",
        forwarded=len(forwarded),
        gaps=gaps,
        repaired=repaired,
        seconds=round(time.monotonic() - started, 1),
    )


def test_merge_stream_crosses_partitions():
    stream, survivors, crossings = merge_stream(2_000, 200)
    partition = KeyPartitions(range(PARTITIONS))
    merges = [e for e in stream if e["type"] == "person_merged"]
    assert all(
        partition(e["person_id"].encode()) != partition(e["merged_into"].encode()) for e in merges
    )
    assert len(merges) == 2 * len(survivors) + 4 * len(crossings)
    ids = {x for pair in crossings for x in pair}
    assert len(ids) == 6 and not ids & {*survivors, *survivors.values()}
