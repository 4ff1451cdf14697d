"""A share streams its partition (`lifecycle.partials`): a piece lets go of each record once
applied, so its memory follows the partition's persons, not its records (a year of history
is ~50M records), and reads the partition a second time only when a merge touched someone.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from events.outbound import HistoryRecord
from lifecycle.partials import (
    cohort_piece,
    events_recorded,
    funnel_piece,
    recorded_of,
    replay_rows,
    simulate_piece,
    verify_piece,
)
from lifecycle.replay import Recorded
from tests.fixtures.core import preset
from tests.unit.test_partials import by_partition, events_of, merge_history, synthetic_history
from tests.unit.test_shredding import journey, live, opened, strict_roles


class Probe:
    """A one-pass stream of records parsed afresh (as the CLI reads them from Kafka), noting
    how many of those it gave are still alive when the consumer asks past the last one."""

    def __init__(self, records: Iterable[HistoryRecord]) -> None:
        self.raw = [r.model_dump_json() for r in records]
        self.alive: int | None = None
        self.reads = 0

    def records(self) -> Iterator[HistoryRecord]:
        self.reads += 1
        given: list[weakref.ref[Any]] = []
        for raw in self.raw:
            record = HistoryRecord.model_validate_json(raw)
            given.append(weakref.ref(record))
            given.append(weakref.ref(record.event))
            yield record
            del record
        gc.collect()
        self.alive = sum(ref() is not None for ref in given)

    def events(self) -> Iterator[Any]:
        return (r.event for r in self.records())


def persons_in(records: Iterable[HistoryRecord]) -> int:
    return len({r.person_id for r in records})


def a_partition() -> list[HistoryRecord]:
    """One partition of a synthetic history: ~400 records of ~30 persons, no merge."""
    return by_partition(synthetic_history())[0]


def test_a_funnel_piece_holds_no_record_it_has_applied():
    records = a_partition()
    probe = Probe(records)
    piece = funnel_piece(probe.events(), preset("growth"), reread=probe.events)
    assert piece == funnel_piece(events_of(records), preset("growth"))
    assert len(records) > 10 * persons_in(records)
    assert probe.alive is not None and probe.alive <= 2  # the last record, its event at most
    assert probe.reads == 1  # no merge: the partition is read once


def test_a_simulate_piece_holds_no_record_it_has_applied():
    records = a_partition()
    probe = Probe(records)
    a, b = preset("default"), preset("growth")
    piece = simulate_piece(probe.events(), a, b, reread=probe.events)
    assert piece == simulate_piece(events_of(records), a, b)
    assert probe.alive is not None and probe.alive <= 2
    assert probe.reads == 1


def test_cohort_verify_and_replay_pieces_hold_no_record_they_have_applied():
    records = a_partition()
    policy = preset("default")
    for piece in (
        lambda stream: cohort_piece(stream, policy),
        lambda stream: verify_piece(stream, {policy.version: policy}),
        lambda stream: replay_rows((r.event for r in stream), policy, conflicts=[]),
        lambda stream: replay_rows((r.event for r in stream), policy, conflicts=[], state=True),
    ):
        probe = Probe(records)
        assert piece(probe.records()) == piece(records)
        assert probe.alive is not None and probe.alive <= 2


def test_the_persons_a_merge_touched_are_read_again_from_the_partition_not_kept():
    parts = merge_history(alias_partition=0, survivor_partition=1)
    policy = preset("default")
    for number, records in parts.items():
        probe = Probe(records)
        piece = funnel_piece(probe.events(), policy, reread=probe.events)
        assert piece == funnel_piece(events_of(records), policy)
        merged = number in (0, 1)  # the alias's and the survivor's partitions
        assert probe.reads == (2 if merged else 1)
        assert bool(piece["funnel"]["ops"]) == merged
        assert probe.alive is not None and probe.alive <= 2

        probe = Probe(records)
        simulated = simulate_piece(probe.events(), policy, preset("growth"), reread=probe.events)
        assert simulated == simulate_piece(events_of(records), policy, preset("growth"))
        assert probe.reads == (2 if merged else 1)  # one second read serves both policies


def test_an_erased_persons_decisions_follow_the_outcomes_of_the_records_streamed():
    """Outcomes are taken from each record as it streams by (`events_recorded`): the same
    piece as with every record's outcomes at hand (`recorded_of`), holding one at a time."""
    keys: dict[str, Any] = {}
    policy = strict_roles()
    raw = live(journey("p1", title="Head of Data"), keys, policy)
    raw += live(journey("p2"), keys, policy)
    keys.pop("p1")  # erased: the key is gone
    records = opened(raw, keys)
    assert any(r.outcomes for r in records)

    whole = funnel_piece(events_of(records), policy, recorded_of(records))
    assert whole != funnel_piece(events_of(records), policy)  # the outcomes matter here
    probe = Probe(records)
    recorded: Recorded = {}
    streamed = funnel_piece(
        events_recorded(probe.records(), recorded),
        policy,
        recorded,
        lambda: events_recorded(probe.records(), recorded),
    )
    assert streamed == whole
    assert recorded == {}  # nothing kept once the stream ends
    rows = replay_rows(
        events_recorded(Probe(records).records(), recorded), policy, conflicts=[], recorded=recorded
    )
    assert rows == replay_rows(
        events_of(records), policy, conflicts=[], recorded=recorded_of(records)
    )


# --- the CLI's reader of a partition (streams.cli.partials), Kafka faked ------------------------


@dataclass(frozen=True)
class Written:
    """A consumer record, as `iter_to_end` yields one."""

    offset: int
    value: bytes | None
    topic: str = "leadflow.history"
    partition: int = 0
    key: bytes | None = None


def test_a_partition_read_again_stops_where_the_first_read_ended(monkeypatch):
    """Records written after the first read are no part of the share, and a bad record is
    reported once, however often the partition is read."""
    from streams.cli import partials as cli
    from streams.kafka import readers

    records = a_partition()
    topic: list[Written] = [Written(0, b"not json")]
    topic += [Written(n, r.model_dump_json().encode()) for n, r in enumerate(records[:50], 1)]

    async def iter_to_end(*args: Any, **kwargs: Any) -> Any:
        assert kwargs["partitions"] == [0]
        for record in list(topic):
            yield record

    monkeypatch.setattr(readers, "iter_to_end", iter_to_end)
    settings = type("Settings", (), {"bootstrap": "", "aiokafka_kwargs": lambda self: {}})()
    loop = asyncio.new_event_loop()
    try:
        reader = cli._PartitionReader(loop, settings, "leadflow.history", 0, None)  # type: ignore[arg-type]
        first = list(reader.first())
        topic += [Written(51 + n, r.model_dump_json().encode()) for n, r in enumerate(records[50:])]
        again = list(reader.again())
    finally:
        loop.close()
    assert first == again == records[:50]
    assert len(reader.invalid) == 1 and reader.invalid[0].startswith("leadflow.history/0@0: ")
