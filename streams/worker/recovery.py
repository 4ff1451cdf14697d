"""Recovery: make the person table agree with the history topic before processing a partition.

History is the source of truth; the table is a view of it. Faust's own changelog restore is
not enough on every broker (on Tansu it stops short, and a kept RocksDB store can be ahead
of the changelog's reported end), and a crash can leave the table one write ahead of a
history record that was never acked. So when a worker is assigned events partitions, it
reads the same history partitions to their true end and compares each person's last
sequence with the table's:

* equal → the table entry is kept;
* missing, behind or ahead → the person is rebuilt by folding their history records with
  `evolve` (no rule is re-applied), and the table entry replaced;
* a table entry with no history at all is ignored (see `PartitionProcessor.state`).

The same pass rebuilds the partitions' dedup stores (`streams.worker.dedup_store`): dropped, then
one entry per history record, its digest computed from the record's event as read
(`lifecycle.dedup.fingerprint` of the JSON, no validation: ~3.5 µs of CPU per record).

History partition p holds exactly the persons of events partition p, because the agent
writes every output to its input's partition number.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from events.outbound import HistoryRecord
from lifecycle.deadlines import next_deadline
from lifecycle.dedup import key as dedup_key
from lifecycle.dedup import stored
from lifecycle.evolve import evolve
from lifecycle.state import PersonState
from streams.internals import writing_for
from streams.kafka.readers import iter_to_end
from streams.worker.agent import PartitionProcessor, partition_event
from streams.worker.outputs import to_json

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RecoveryReport:
    partitions: tuple[int, ...]
    records: int = 0
    persons: int = 0
    consistent: int = 0
    missing: int = 0
    behind: int = 0
    ahead: int = 0
    gaps: int = 0  # history records whose sequence does not follow the previous one
    seen: int = 0  # history records the dedup store was rebuilt from
    seconds: float = 0.0
    rebuilt_persons: list[str] = field(default_factory=list, repr=False)

    @property
    def rebuilt(self) -> int:
        return self.missing + self.behind + self.ahead

    def summary(self) -> str:
        return (
            f"partitions {list(self.partitions)}: {self.records} history records, "
            f"{self.persons} persons; table consistent for {self.consistent}, rebuilt "
            f"{self.rebuilt} (missing {self.missing}, behind {self.behind}, ahead {self.ahead})"
            f"{f'; {self.gaps} sequence gaps in history' if self.gaps else ''}; "
            f"dedup store rebuilt from {self.seen} records "
            f"in {self.seconds:.2f}s"
        )


async def recover_partitions(
    lifecycle: PartitionProcessor,
    partitions: set[int],
    *,
    bootstrap: str,
    client_options: Mapping[str, Any] | None = None,
) -> RecoveryReport:
    """Check and repair the table for `partitions`, then hand them to `lifecycle`."""
    started = time.monotonic()
    report = RecoveryReport(tuple(sorted(partitions)))
    topic = lifecycle.names.history
    policy = lifecycle.policy
    # Our own records for these partitions must be in the topic before we read it.
    await lifecycle.app.producer.flush()

    # Pass 1: last sequence per person (a light parse; no validation), and the dedup stores.
    seen = lifecycle.seen
    for partition in partitions:
        seen.reset(partition)
    last: dict[str, tuple[int, int]] = {}
    async for record in iter_to_end(
        bootstrap, topic, partitions=report.partitions, client_options=client_options
    ):
        data = orjson.loads(record.value)
        person, sequence = data["person_id"], data["sequence"]
        event = data["event"]
        seen.put_first(
            record.partition,
            dedup_key(person, event["event_id"]),
            stored(sequence, event, data["changes"]),
        )
        previous = last.get(person)
        if sequence != (previous[1] if previous else 0) + 1:
            report.gaps += 1
        if previous is None or sequence > previous[1]:
            last[person] = (record.partition, sequence)
        report.records += 1
    report.persons = len(last)
    seen.flush()
    report.seen = report.records

    persons: dict[int, dict[str, datetime | None]] = {p: {} for p in partitions}
    stand_ins = {p: partition_event(lifecycle.app, lifecycle.names.events, p) for p in partitions}
    stale: set[bytes] = set()
    for person, (partition, sequence) in last.items():
        with writing_for(stand_ins[partition]):
            raw = lifecycle.read_table(person)
        if raw is None:
            report.missing += 1
            stale.add(person.encode())
            continue
        data = orjson.loads(raw)
        if data["sequence"] != sequence:
            if data["sequence"] < sequence:
                report.behind += 1
            else:
                report.ahead += 1
            stale.add(person.encode())
            continue
        report.consistent += 1
        state = PersonState.from_wire(data)
        persons[partition][person] = next_deadline(state, policy)

    if stale:
        # Pass 2: fold the stale persons' records (full validation, as replay does).
        states: dict[str, PersonState] = {}
        wanted = sorted({last[key.decode()][0] for key in stale})
        async for record in iter_to_end(
            bootstrap, topic, partitions=wanted, client_options=client_options
        ):
            if record.key in stale:
                applied = HistoryRecord.model_validate_json(record.value)
                person = applied.person_id
                states[person] = evolve(states.get(person), applied)
        for person, state in states.items():
            # Back to plain lifecycle records (the fold holds pydantic ones).
            state = PersonState.from_wire(orjson.loads(to_json(state.to_wire())))
            partition = last[person][0]
            with writing_for(stand_ins[partition]):
                lifecycle.write_table(state)
            lifecycle.cache.pop(person, None)
            persons[partition][person] = next_deadline(state, policy)
            report.rebuilt_persons.append(person)

    for partition in partitions:
        lifecycle.adopt(partition, persons[partition])
    report.seconds = time.monotonic() - started
    return report
