"""The live agent: decode → decide → evolve → publish, for batches of inbound events.

Thin on purpose: every rule lives in `lifecycle`; this module only moves bytes, keeps person
states at hand and publishes what the core decided. Per event it publishes the history
record (to `history`, the source of truth) and each stage change (to `stage-changes`); a
redelivered event id — however old — re-publishes the changes it produced the first time,
with the same change ids, and writes no history; an event id reused with other content is
dead-lettered with the reason. A decision's follow-up (an identity merge's hand-off, or an
alias's event re-keyed to its survivor: `lifecycle.merge`) is published to the events topic
at the other person's partition, in the same batch as the history record that caused it,
so the survivor's worker (this one or another) applies it as an ordinary arrival. Which ids
were applied is looked up in the dedup store (`streams.worker.dedup_store`); what a second arrival
means is the core's rule (`lifecycle.dedup`).

Person states live in a Faust table (orjson of `PersonState.to_wire()`), written once per
person per batch, with an in-process LRU of `PersonState` objects in front of it: turning a
table value back into a state costs ~64 µs, four times the decision itself.

The events arrive as fetched batches of messages from the consumer (`streams.worker.drain`), not
through a Faust stream, so there is no Faust event per message. Faust's table and RocksDB
store pick the partition of a write from "the current event" (unset outside a stream, inside
`stream.take_events()` too: faust-streaming issue 497, and at rebalance time); the agent sets
a stand-in event of the partition around table reads and writes (`writing_for()`), so
table writes keep Faust's normal layout (store and changelog partition = the input
partition) instead of `use_partitioner=True`, which would send a person's changelog to a
different partition than their events whenever the upstream producer's partitioner differs
from Faust's.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import faust
import orjson
from faust.types import TP, EventT
from faust.types.tuples import Message

from events.codec import InvalidMessage, decode_event
from events.fastcodec import fast_event
from events.inbound import Event
from lifecycle.deadlines import next_deadline
from lifecycle.decide import decide
from lifecycle.dedup import body as event_body
from lifecycle.dedup import key as dedup_key
from lifecycle.dedup import stored
from lifecycle.evolve import evolve
from lifecycle.merge import alias_records
from lifecycle.policy import Policy
from lifecycle.records import Decision
from lifecycle.shredding import (
    PERSONAL_PROFILE,
    opened_forward,
    personal_part,
    seal_merged,
    seal_sentences,
    sealed_forward,
    stored_body,
    transit_key,
    without_personal,
)
from lifecycle.state import PersonState, profile_keys
from streams.internals import (
    reset_current_event,
    set_current_event,
    set_persisted_offset,
    write_store,
    write_store_batch,
)
from streams.kafka.keys import TRANSIT_PREFIX, KeyRing, transit_record
from streams.kafka.publish import KeyPartitions
from streams.kafka.topics import TopicNames
from streams.worker import metrics
from streams.worker.deadletters import dead_letter
from streams.worker.dedup_store import DedupStore
from streams.worker.outputs import Outputs, to_json
from streams.worker.sealing import (
    person_of_key,
    rejected_value,
    state_of_value,
    state_value,
)
from streams.worker.shadow import Shadow

log = logging.getLogger(__name__)

#: Most events per processed batch (a batch is otherwise what the consumer fetched).
BATCH_SIZE = 1000


def partition_event(app: faust.App, topic: str, partition: int) -> EventT:
    """A stand-in event for table writes that no inbound event caused (rebuilds)."""
    message = Message(topic, partition, -1, time.time(), 0, None, None, None, None)
    return faust.Event(app, None, None, None, message)


@dataclass(slots=True)
class BatchStats:
    events: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    conflicts: int = 0  # event ids reused with other content (dead-lettered)
    follow_ups: int = 0  # hand-offs and forwarded events published for other persons
    deliveries: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class _Run:
    """One batch's bookkeeping: counts, the touched persons, where new data keys go."""

    key_outputs: Outputs
    stats: BatchStats = field(default_factory=lambda: BatchStats())
    types: Counter[str] = field(default_factory=Counter)
    stages: Counter[str] = field(default_factory=Counter)
    touched: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Decided:
    """An event decided: what the publishing steps need of it."""

    event: Event
    person: str
    key: bytes
    partition: int
    state: PersonState | None
    part: Any
    content: Any
    decision: Decision
    #: its sentences may quote a personal value (and are sealed): a personal part in the
    #: event, or a personal field in the state it was decided from
    quotes_personal: bool


def _clear_profile(state: PersonState | None) -> bool:
    """A state with personal fields and no data key yet: folded from history written before
    crypto-shredding (its table value would drop them without a key)."""
    return (
        state is not None
        and not state.erased
        and not PERSONAL_PROFILE.isdisjoint(profile_keys(state))
    )


class PartitionProcessor:
    """What one worker holds for the partitions it owns, and the per-batch processing.

    * `owned`: partitions checked against history and safe to process (see `recovery`);
    * `persons[p]`: every person of partition p that has history, with their next deadline
      (the sweeper's index; also "which table entries are real", see `state`);
    * `cache`: recently used states, bounded, shared across partitions (ids are unique);
    * `seen`: the applied event ids of the owned partitions (rebuilt by `recovery`).
    """

    def __init__(
        self,
        app: faust.App,
        policy: Policy,
        names: TopicNames,
        table: Any,
        *,
        cache_size: int = 100_000,
        seen: DedupStore | None = None,
        keys: KeyRing | None = None,
        partitions: int | None = None,
    ) -> None:
        self.app = app
        self.policy = policy
        self.names = names
        self.table = table
        self.cache_size = cache_size
        self.owned: set[int] = set()
        self.stand_ins: dict[int, EventT] = {}  # per owned partition, for table reads/writes
        self.persons: dict[int, dict[str, datetime | None]] = {}
        self.cache: dict[str, PersonState] = {}
        self.ticks: dict[str, datetime] = {}  # sweeper ticks published, not yet applied
        self.offsets: dict[int, int] = {}  # last processed offset per partition
        #: per owned partition, the committed offset read when it was assigned (with
        #: `--exactly-once`, `streams.worker.assignment.seek_to_complete_commits`): every record
        #: below it is applied and committed, and the Batcher drops it
        self.floors: dict[int, int] = {}
        self.outputs = Outputs(app, names.events)
        self.changelog: str = table.changelog_topic.get_topic_name()
        self.outputs.on_sent[self.changelog] = self._changelog_sent
        self.processed = 0
        self.shadows: list[
            Shadow
        ] = []  # candidate policies run beside this one (streams.worker.shadow)
        self.seen = DedupStore(None) if seen is None else seen
        #: data keys of the owned persons (`streams.kafka.keys`); their records go out first
        self.keys = KeyRing(None) if keys is None else keys
        self.key_outputs = Outputs(app, names.events)
        #: keys-topic position read to, per owned partition (recovery, then `_catch_up_keys`)
        self.key_positions: dict[int, int] = {}
        #: reads the keys topic from positions to its end (set by the composition root)
        self.key_reader: Callable[[Mapping[int, int]], AsyncIterator[Any]] | None = None
        #: transit records this worker published since it started (`_seal_forward`)
        self.transits_sent: set[bytes] = set()
        count = partitions or int(app.conf.topic_partitions)
        #: The events partition of a person id: where a merge's hand-off and an alias's
        #: forwarded events go (the default partitioner's murmur2, as `leadflow send` and
        #: Java clients key them; see README "Identity merges").
        self.partition_of = KeyPartitions(range(count))

    # -- ownership (called by recovery) ------------------------------------------------------
    def release(self, partitions: set[int]) -> None:
        """Forget partitions this worker no longer owns (their persons move elsewhere)."""
        for p in partitions:
            self.owned.discard(p)
            self.stand_ins.pop(p, None)
            self.offsets.pop(p, None)
            self.floors.pop(p, None)
            self.key_positions.pop(p, None)
            self.seen.release(p)
            for shadow in self.shadows:
                shadow.forget(self.persons.get(p, ()))
            for person in self.persons.pop(p, {}):
                self.cache.pop(person, None)
                self.ticks.pop(person, None)
                self.keys.destroy(person)  # here only: the key stays on the keys topic
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(str(p))

    def adopt(self, partition: int, persons: dict[str, datetime | None]) -> None:
        self.persons[partition] = persons
        self.stand_ins[partition] = partition_event(self.app, self.names.events, partition)
        self.owned.add(partition)

    def remember(self, partition: int, state: PersonState) -> None:
        """Record a state just written to the table: its deadline, and drop a stale tick."""
        self.persons.setdefault(partition, {})[state.person_id] = next_deadline(state, self.policy)
        self.ticks.pop(state.person_id, None)

    # -- table ---------------------------------------------------------------------------------
    def read_table(self, person: str) -> bytes | None:
        """Raw table value (call within `writing_for` an event of the person's partition)."""
        return self.table.get(person.encode())

    def write_table(self, state: PersonState) -> None:
        """Through Faust: store write, changelog send, persisted offset (recovery uses it)."""
        self.table[state.person_id.encode()] = self.table_value(state)

    def table_value(self, state: PersonState) -> bytes:
        return state_value(state, self.keys)

    def state_from_table(self, person: str, raw: bytes) -> PersonState:
        return state_of_value(person, raw, self.keys)

    def write_batched(self, state: PersonState, partition: int) -> None:
        """The hot-path table write: the store now, the changelog record with the batch.

        What `table[key] = value` does, without its per-write cost (~20 % of the worker's CPU
        measured: a changelog send through Faust's producer buffer, a delivery callback and a
        persisted-offset write in RocksDB per person): the same record (raw key and value, the
        input's partition) goes out in the batch's changelog record batch, and the store's
        persisted changelog offset is set once per acked batch (`_changelog_sent`). In a
        Kafka transaction Faust's own path is kept (it persists offsets on commit).
        """
        if self.app.in_transaction:
            self.write_table(state)
            return
        key, value = state.person_id.encode(), self.table_value(state)
        write_store(self.table, key, value)
        self.outputs.add(self.changelog, key, value, partition)

    def _changelog_sent(self, partition: int, last_offset: int) -> None:
        set_persisted_offset(self.table, TP(self.changelog, partition), last_offset)

    def state(self, person: str, partition: int) -> PersonState | None:
        state = self.cache.get(person)
        if state is not None:
            return state
        if person not in self.persons.get(partition, ()):
            # No history for this person: a table entry would be an orphan of a write whose
            # history record never made it (recovery keeps only what history backs).
            return None
        raw = self.read_table(person)
        if raw is None:
            return None
        return self.state_from_table(person, raw)

    def rejected_bytes(self, message: Message, key_outputs: Outputs) -> tuple[bytes | None, bool]:
        """A rejected message's value as its dead letter keeps it (`sealing.rejected_value`);
        nothing when its key names no person (`streams.worker.deadletters`)."""
        person = person_of_key(message.key)
        if not message.value:
            return message.value, False
        if person is None:
            return None, False

        def state_of() -> PersonState | None:
            token = set_current_event(self.stand_ins[message.partition])
            try:
                return self.state(person, message.partition)
            finally:
                reset_current_event(token)

        return rejected_value(message, person, state_of, self.keys, key_outputs, self.names.keys)

    # -- the hot path --------------------------------------------------------------------------
    async def process(self, batch: Sequence[Message]) -> BatchStats:
        """Decide every event of the batch, publish the results, write touched states.

        Returns only after every record it published is acked, so Faust acks (and later
        commits) the inputs only once their effects are durable.
        """
        outputs = self.outputs
        # Keys records go out (and are acked) before anything sealed with them; in a Kafka
        # transaction they are part of the batch's transaction, which is all or nothing.
        key_outputs = outputs if self.app.in_transaction else self.key_outputs
        run = _Run(key_outputs)
        if self._missing_transit(batch):
            await self._catch_up_keys()
        for message in batch:
            self.offsets[message.partition] = message.offset
            run.stats.events += 1
            decided = self._decide(message, run)
            if decided is not None:
                self._publish(decided, run)
        self._write_touched(run.touched)
        self.seen.flush()  # before the first await: a rebalance may release a partition meanwhile
        if key_outputs is not outputs and key_outputs.queued:
            # New data keys must be durable before anything sealed with them.
            await key_outputs.publish()
            await key_outputs.settle()
        await outputs.publish()
        stats = run.stats
        stats.deliveries = outputs.detach()
        self._trim_cache()
        self.processed += stats.events
        metrics.count_batch(run.types, run.stages, stats.duplicates)
        if stats.dead_letters:
            metrics.DEAD_LETTERS.inc(stats.dead_letters)
        return stats

    def _decide(self, message: Message, run: _Run) -> _Decided | None:
        """Decode, look up the state and what was seen, seal the personal part, decide; a
        message that cannot be decided becomes a dead letter (and None)."""
        partition, keys, names = message.partition, self.keys, self.names
        try:
            value = message.value
            if value is None:
                raise InvalidMessage("empty value (a tombstone is not an event)")
            # msgspec first (`events.fastcodec`, the same events as pydantic's); anything it
            # does not take, pydantic decides, with its one-line reason
            event = fast_event(value)
            if event is None:
                event = decode_event(value)
            person = event.person_id
            key = person.encode()
            if message.key != key:
                raise InvalidMessage(
                    f"key {message.key!r} is not the person_id {person!r}: events must be "
                    "keyed by person id so one person's events stay in order"
                )
            token = set_current_event(self.stand_ins[partition])
            try:
                state = self.state(person, partition)
            finally:
                reset_current_event(token)
            if event.forwarded_personal is not None:
                event = self._open_forward(event, state, partition, run)
            if state is not None and state.erased:
                event = without_personal(event)  # an erased person's data is not kept
            part = personal_part(event)
            content = None
            if keys.get(person) is None and (part is not None or _clear_profile(state)):
                run.key_outputs.add(names.keys, key, keys.create(person), partition)
            if part is not None:  # sealed once; the digest is of the event as stored
                content = stored_body(event_body(event), keys.seal(person, part))
            previous = self.seen.get(partition, person, event.event_id)
            started = time.perf_counter()
            decision = decide(state, event, self.policy, previous, content=content)
            metrics.DECIDE_SECONDS.observe(time.perf_counter() - started)
            if decision.conflict is not None:
                run.stats.conflicts += 1
                raise InvalidMessage(decision.conflict)
        except Exception as error:
            self._dead_letter(message, error, run)
            return None
        quotes = part is not None or (
            state is not None and not PERSONAL_PROFILE.isdisjoint(profile_keys(state))
        )
        return _Decided(event, person, key, partition, state, part, content, decision, quotes)

    # -- an alias's forwarded events: sealed in transit -------------------------------------------
    def _seal_forward(self, follow_up: Event, d: _Decided, to_partition: int, run: _Run) -> Event:
        """An alias's event for its survivor, its personal fields sealed with the transit key
        of (survivor, alias), which goes to the keys topic at the survivor's partition first
        (once per pair since this worker started; again after a restart, so a rotated master
        key wraps it)."""
        if not follow_up.forwarded_via or personal_part(follow_up) is None:
            return follow_up
        alias_key = self.keys.get(d.person)
        assert alias_key is not None  # made in _decide for the event's personal part
        survivor = follow_up.person_id
        transit = transit_key(alias_key, survivor)
        record = transit_record(survivor, follow_up.forwarded_via[-1])
        if record not in self.transits_sent:
            value = self.keys.add_transit(record, transit)
            run.key_outputs.add(self.names.keys, record, value, to_partition, d.partition)
            self.transits_sent.add(record)
        return sealed_forward(follow_up, transit)

    def _missing_transit(self, batch: Sequence[Message]) -> bool:
        """Whether a forwarded event of the batch needs a transit key not at hand."""
        for message in batch:
            value = message.value
            if value and b'"forwarded_personal"' in value:
                try:
                    data = orjson.loads(value)
                    record = transit_record(data["person_id"], data["forwarded_via"][-1])
                except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                    continue  # _decide dead-letters it
                if self.keys.get_transit(record) is None:
                    return True
        return False

    async def _catch_up_keys(self) -> None:
        """Read the owned keys partitions on from where recovery (or the last catch-up) left
        them: the transit keys other workers published for this worker's survivors."""
        if self.key_reader is None:
            return
        positions = self.key_positions
        async for record in self.key_reader(dict(positions)):
            if record.key is not None and record.key.startswith(TRANSIT_PREFIX):
                self.keys.load_record(record.key, record.value)
            positions[record.partition] = record.offset + 1

    def _open_forward(
        self, event: Event, state: PersonState | None, partition: int, run: _Run
    ) -> Event:
        """A forwarded event with its personal fields opened (dropped for an erased survivor,
        whose transit keys are tombstoned again if a forward brought one back)."""
        record = transit_record(event.person_id, (event.forwarded_via or ("",))[-1])
        if state is not None and state.erased:
            if self.keys.drop_transit(record):
                run.key_outputs.add(self.names.keys, record, None, partition)  # type: ignore[arg-type]
            return opened_forward(event, None)
        transit = self.keys.get_transit(record)
        if transit is None:
            raise InvalidMessage(
                "forwarded_personal: no transit key of this survivor and alias on the keys "
                "topic (only leadflow sets forwarded_personal)"
            )
        try:
            return opened_forward(event, transit)
        except ValueError:
            raise InvalidMessage(
                "forwarded_personal: does not open with the transit key of this survivor and "
                "alias (only leadflow sets forwarded_personal)"
            ) from None

    def _dead_letter(self, message: Message, error: Exception, run: _Run) -> None:
        reason: Exception | str = error
        if not isinstance(error, InvalidMessage):
            log.exception(
                "event at %s[%s]@%s failed", message.topic, message.partition, message.offset
            )
            reason = f"{type(error).__name__}: {error}"
        run.stats.dead_letters += 1
        value, sealed = self.rejected_bytes(message, run.key_outputs)
        withheld = value is None and not sealed and bool(message.value)
        letter = dead_letter(
            reason,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=value,
            sealed=sealed,
            value_sha256=hashlib.sha256(message.value).hexdigest() if withheld else None,
        )
        self.outputs.add(self.names.dead_letters, message.key, letter, message.partition)

    def _publish(self, d: _Decided, run: _Run) -> None:
        """Queue what a decision publishes: shadows' changes, a follow-up, and for an applied
        event the new state, its history record and its stage changes."""
        outputs, names, decision = self.outputs, self.names, d.decision
        key, partition = d.key, d.partition
        run.types[d.event.type] += 1
        for shadow in self.shadows:  # redeliveries re-emit the shadow's changes too
            shadow_changes = shadow.apply(d.event, decision)
            if shadow_changes and d.quotes_personal:
                profile = d.state.profile if d.state is not None else {}
                shadow_changes, _ = seal_sentences(
                    shadow_changes, None, profile, d.event, self.keys.get(d.person)
                )
            for change in shadow_changes:
                outputs.add(shadow.topic, key, to_json(change), partition)
        follow_up = decision.follow_up
        if follow_up is not None:  # a merge's hand-off, an alias's event for its survivor
            to = follow_up.person_id.encode()
            to_partition = self.partition_of(to)
            if d.part is not None:  # never in the clear: sealed for the survivor
                follow_up = self._seal_forward(follow_up, d, to_partition, run)
            body = follow_up.model_dump_json(exclude_none=True).encode()
            outputs.add(names.events, to, body, to_partition, partition)
            run.stats.follow_ups += 1
        if decision.duplicate:
            run.stats.duplicates += 1
            for change in decision.changes:
                outputs.add(names.stage_changes, key, to_json(change), partition)
            return
        self._apply(d, run)

    def _apply(self, d: _Decided, run: _Run) -> None:
        """An applied event: evolve the state, queue its history record (sealed where it
        quotes personal data) and stage changes, remember its id, and on erasure drop the key."""
        outputs, names, keys, decision = self.outputs, self.names, self.keys, d.decision
        person, key, partition = d.person, d.key, d.partition
        changes, note = decision.changes, decision.note
        if (changes or note is not None) and d.quotes_personal:
            changes, note = seal_sentences(
                changes, note, d.state.profile if d.state else {}, d.event, keys.get(person)
            )
        state = evolve(d.state, decision)
        if changes is not decision.changes or note is not decision.note:
            if changes:  # the state keeps the last sentence as stored (evolve's choice)
                state.last_reason = changes[-1].reason
            elif note is not None and not decision.erased:
                state.last_reason = note
        self.cache[person] = state
        run.touched[person] = partition
        wire = decision.to_wire(d.content)
        merged = decision.merged
        if merged is not None and not PERSONAL_PROFILE.isdisjoint(merged.profile):
            if keys.get(person) is None:
                run.key_outputs.add(names.keys, key, keys.create(person), partition)
            wire["merged"] = seal_merged(merged, functools.partial(keys.seal, person))
        if changes is not decision.changes:
            wire["changes"] = changes
        wire["note"] = note
        outputs.add(names.history, key, to_json(wire), partition)
        self.seen.put(
            partition,
            dedup_key(person, d.event.event_id),
            stored(decision.sequence, wire["event"], changes),
        )
        if decision.erased:  # the key goes; everything sealed with it is unreadable
            keys.destroy(person)
            run.key_outputs.add(names.keys, key, None, partition)  # type: ignore[arg-type]
            for record in keys.transits_of(person):  # and what its aliases forwarded
                keys.drop_transit(record)
                run.key_outputs.add(names.keys, record, None, partition)  # type: ignore[arg-type]
        for change in changes:
            run.stages[change.to_stage] += 1
            outputs.add(names.stage_changes, key, to_json(change), partition)
        if merged is not None:  # a survivor's fold: its aliases, for every reader
            for alias, body in alias_records(decision):
                outputs.add(names.aliases, alias, body, self.partition_of(alias), partition)

    def _write_touched(self, touched: dict[str, int]) -> None:
        """Write each touched person's state once (the store now, one write batch per
        partition; the changelog with the batch) and move it to the recently used end of the
        cache. In a Kafka transaction each write goes through Faust (`write_batched`)."""
        cache = self.cache
        if self.app.in_transaction:
            for person, partition in touched.items():
                state = cache.pop(person)
                cache[person] = state  # most recently used last
                token = set_current_event(self.stand_ins[partition])
                try:
                    self.write_batched(state, partition)
                finally:
                    reset_current_event(token)
                self.remember(partition, state)
            return
        writes: dict[int, list[tuple[bytes, bytes]]] = {}
        add, changelog = self.outputs.add, self.changelog
        for person, partition in touched.items():
            state = cache.pop(person)
            cache[person] = state  # most recently used last
            key, value = person.encode(), self.table_value(state)
            items = writes.get(partition)
            if items is None:
                items = writes[partition] = []
            items.append((key, value))
            add(changelog, key, value, partition)
            self.remember(partition, state)
        for partition, items in writes.items():
            token = set_current_event(self.stand_ins[partition])
            try:
                write_store_batch(self.table, partition, items)
            finally:
                reset_current_event(token)

    def _trim_cache(self) -> None:
        """Drop the least recently written states beyond `cache_size`."""
        cache = self.cache
        excess = len(cache) - self.cache_size
        if excess > 0:
            for person in list(itertools.islice(cache, excess)):
                del cache[person]
