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
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from events.outbound import HistoryRecord
from lifecycle.deadlines import next_deadline
from lifecycle.dedup import key as dedup_key
from lifecycle.dedup import stored
from lifecycle.evolve import evolve
from lifecycle.shredding import PERSONAL_PROFILE, is_sealed, open_record
from lifecycle.state import PersonState
from streams.internals import writing_for
from streams.kafka.readers import iter_to_end
from streams.worker.agent import PartitionProcessor, partition_event
from streams.worker.outputs import Outputs, to_json

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
    keys: int = 0  # keys-topic records read
    rewrapped: int = 0  # data keys rewrapped under the current master key
    shredded: int = 0  # erased persons whose key was still there (tombstoned now)
    #: records holding personal fields in the clear: written before crypto-shredding
    plaintext: int = 0
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
            f"dedup store rebuilt from {self.seen} records; {self.keys} key records"
            f"{f', {self.rewrapped} rewrapped' if self.rewrapped else ''}"
            f"{f', {self.shredded} erasures completed' if self.shredded else ''} "
            f"in {self.seconds:.2f}s"
        )

    def plaintext_warning(self) -> str | None:
        """What to do about a history written before crypto-shredding (None: nothing)."""
        if not self.plaintext:
            return None
        return (
            f"partitions {list(self.partitions)}: {self.plaintext} history records hold "
            "personal fields in the clear (written before crypto-shredding): no erasure can "
            "reach them; stop every worker and run `leadflow keys seal-history` once"
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
    recovery = _Recovery(lifecycle, partitions, bootstrap, client_options)
    # Our own records for these partitions must be in the topic before we read it.
    await lifecycle.app.producer.flush()
    await recovery.load_keys()
    last, erased = await recovery.scan_history()
    await recovery.shred_missed(erased)
    persons, stale = recovery.check_table(last, erased)
    if stale:
        await recovery.rebuild(stale, last, persons)
    for partition in partitions:
        lifecycle.adopt(partition, persons[partition])
    report = recovery.report
    report.seconds = time.monotonic() - started
    return report


def _clear_personal(event: dict[str, Any]) -> bool:
    """Whether a stored event holds personal fields in the clear (`lifecycle.shredding`)."""
    profile = event.get("profile")
    return event.get("reason") is not None or bool(profile and PERSONAL_PROFILE & profile.keys())


class _Recovery:
    """The passes of one recovery, over the newly assigned partitions."""

    def __init__(
        self,
        lifecycle: PartitionProcessor,
        partitions: set[int],
        bootstrap: str,
        client_options: Mapping[str, Any] | None,
    ) -> None:
        self.lifecycle = lifecycle
        self.partitions = partitions
        self.bootstrap = bootstrap
        self.client_options = client_options
        self.report = RecoveryReport(tuple(sorted(partitions)))
        self.keys, self.keys_topic = lifecycle.keys, lifecycle.names.keys
        self.key_partition: dict[str, int] = {}
        # Its own sender: the agent's (`lifecycle.key_outputs`) may hold a batch's new keys
        # meanwhile, and each must settle exactly what it sent.
        self.key_outputs = Outputs(lifecycle.app, lifecycle.names.events)
        self.stand_ins = {
            p: partition_event(lifecycle.app, lifecycle.names.events, p) for p in partitions
        }

    def _read(self, topic: str, partitions: Sequence[int]) -> AsyncIterator[Any]:
        return iter_to_end(
            self.bootstrap, topic, partitions=partitions, client_options=self.client_options
        )

    async def load_keys(self) -> None:
        """Pass 0: the partitions' data keys (streams.kafka.keys); rewrap those under an old
        master key."""
        keys, report = self.keys, self.report
        positions = self.lifecycle.key_positions
        async for record in self._read(self.keys_topic, report.partitions):
            person = keys.load_record(record.key, record.value)
            if person is not None:
                self.key_partition[person] = record.partition
            positions[record.partition] = record.offset + 1
            report.keys += 1
        for person in sorted(keys.stale):
            value = keys.rewrapped(person)
            if value is not None:
                partition = self.key_partition[person]
                self.key_outputs.add(self.keys_topic, person.encode(), value, partition)
                report.rewrapped += 1

    async def scan_history(self) -> tuple[dict[str, tuple[int, int]], set[str]]:
        """Pass 1: last (partition, sequence) per person (a light parse; no validation), the
        erased persons, and the dedup stores rebuilt."""
        seen, report = self.lifecycle.seen, self.report
        for partition in self.partitions:
            seen.reset(partition)
        last: dict[str, tuple[int, int]] = {}
        erased: set[str] = set()
        async for record in self._read(self.lifecycle.names.history, report.partitions):
            data = orjson.loads(record.value)
            person, sequence = data["person_id"], data["sequence"]
            event = data["event"]
            seen.put_first(
                record.partition,
                dedup_key(person, event["event_id"]),
                stored(sequence, event, data["changes"]),
            )
            if data.get("erased"):
                erased.add(person)
            if "personal" not in event and _clear_personal(event):
                report.plaintext += 1
            previous = last.get(person)
            if sequence != (previous[1] if previous else 0) + 1:
                report.gaps += 1
            if previous is None or sequence > previous[1]:
                last[person] = (record.partition, sequence)
            report.records += 1
        report.persons = len(last)
        seen.flush()
        report.seen = report.records
        return last, erased

    async def shred_missed(self, erased: set[str]) -> None:
        """An erasure whose tombstone never made it (a crash after its history record was
        acked): the key goes now; then the keys records (rewraps too) are made durable."""
        keys = self.keys
        for person in sorted(erased & keys.wrapped.keys()):
            keys.destroy(person)
            partition = self.key_partition[person]
            self.key_outputs.add(self.keys_topic, person.encode(), None, partition)
            self.report.shredded += 1
        for person in sorted(erased):  # their aliases' transit keys (re-published meanwhile)
            for record in keys.transits_of(person):
                keys.drop_transit(record)
                partition = self.lifecycle.partition_of(person.encode())
                self.key_outputs.add(self.keys_topic, record, None, partition)
        if self.key_outputs.queued:
            await self.key_outputs.publish()
            await self.key_outputs.settle()

    def check_table(
        self, last: dict[str, tuple[int, int]], erased: set[str]
    ) -> tuple[dict[int, dict[str, datetime | None]], set[bytes]]:
        """Each person's table value against history: consistent ones adopted with their
        next deadline, the others (missing, behind, ahead, erased differently) stale."""
        lifecycle, report, policy = self.lifecycle, self.report, self.lifecycle.policy
        persons: dict[int, dict[str, datetime | None]] = {p: {} for p in self.partitions}
        stale: set[bytes] = set()
        for person, (partition, sequence) in last.items():
            with writing_for(self.stand_ins[partition]):
                raw = lifecycle.read_table(person)
            if raw is None:
                report.missing += 1
                stale.add(person.encode())
                continue
            data = orjson.loads(raw)
            if data["sequence"] != sequence or (person in erased) != data.get("erased", False):
                if data["sequence"] < sequence:
                    report.behind += 1
                else:
                    report.ahead += 1
                stale.add(person.encode())
                continue
            report.consistent += 1
            state = lifecycle.state_from_table(person, raw)
            persons[partition][person] = next_deadline(state, policy)
        return persons, stale

    async def rebuild(
        self,
        stale: set[bytes],
        last: dict[str, tuple[int, int]],
        persons: dict[int, dict[str, datetime | None]],
    ) -> None:
        """Pass 2: fold the stale persons' records (full validation, as replay does) and
        write their states."""
        lifecycle, keys = self.lifecycle, self.keys
        states: dict[str, PersonState] = {}
        wanted = sorted({last[key.decode()][0] for key in stale})
        async for record in self._read(lifecycle.names.history, wanted):
            if record.key in stale:
                if is_sealed(record.value):  # personal fields back, as the live state has them
                    data = orjson.loads(record.value)
                    key = keys.get(data["person_id"])
                    applied = HistoryRecord.model_validate(open_record(data, key, texts=False))
                else:
                    applied = HistoryRecord.model_validate_json(record.value)
                person = applied.person_id
                states[person] = evolve(states.get(person), applied)
        # A person folded from records written before crypto-shredding has personal fields
        # in the clear and maybe no key yet: one is made (durable before the sealed state is
        # written), or the table would drop those fields.
        for person, state in states.items():
            clear = not state.erased and not PERSONAL_PROFILE.isdisjoint(state.profile)
            if clear and keys.get(person) is None:
                partition = last[person][0]
                self.key_outputs.add(
                    self.keys_topic, person.encode(), keys.create(person), partition
                )
        if self.key_outputs.queued:
            await self.key_outputs.publish()
            await self.key_outputs.settle()
        for person, state in states.items():
            # Back to plain lifecycle records (the fold holds pydantic ones).
            state = PersonState.from_wire(orjson.loads(to_json(state.to_wire())))
            partition = last[person][0]
            with writing_for(self.stand_ins[partition]):
                lifecycle.write_table(state)
            lifecycle.cache.pop(person, None)
            persons[partition][person] = next_deadline(state, lifecycle.policy)
            self.report.rebuilt_persons.append(person)
