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

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import faust
import orjson
from faust.types import TP, EventT
from faust.types.tuples import Message

from events.codec import InvalidMessage, decode_event
from events.limits import MAX_ID
from lifecycle.deadlines import next_deadline
from lifecycle.decide import decide
from lifecycle.dedup import body as event_body
from lifecycle.dedup import key as dedup_key
from lifecycle.dedup import stored
from lifecycle.evolve import evolve
from lifecycle.policy import Policy
from lifecycle.shredding import (
    PERSONAL_PROFILE,
    open_state,
    personal_part,
    seal_merged,
    seal_sentences,
    seal_state,
    stored_body,
    without_personal,
)
from lifecycle.state import PersonState
from streams.internals import (
    reset_current_event,
    set_current_event,
    set_persisted_offset,
    write_store,
)
from streams.kafka.keys import KeyRing
from streams.kafka.publish import KeyPartitions
from streams.kafka.topics import TopicNames
from streams.worker import metrics
from streams.worker.deadletters import dead_letter
from streams.worker.dedup_store import DedupStore
from streams.worker.drain import Feed
from streams.worker.outputs import Outputs, to_json
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
        """The state as the table stores it: personal fields and sentences quoting them sealed
        with the person's key (dropped once they are erased)."""
        wire = state.to_wire()
        profile = state.profile
        if profile and not PERSONAL_PROFILE.isdisjoint(profile):
            person, keys = state.person_id, self.keys
            key = keys.get(person)
            seal = None if key is None else (lambda part: keys.seal(person, part))
            seal_state(wire, key, seal)
        return to_json(wire)

    def state_from_table(self, person: str, raw: bytes) -> PersonState:
        data = orjson.loads(raw)
        if "personal" in data or b'"sealed:' in raw:
            data = open_state(data, self.keys.get(person))
        return PersonState.from_wire(data)

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
        """A rejected message's value as its dead letter keeps it: sealed with the data key of
        the person its key names (made if they have none), nothing once they are erased; as
        received when the key names no one (`streams.worker.deadletters`)."""
        person = _person_of(message.key)
        if person is None or not message.value:
            return message.value, False
        partition, keys = message.partition, self.keys
        try:
            token = set_current_event(self.stand_ins[partition])
            try:
                state = self.state(person, partition)
            finally:
                reset_current_event(token)
            if state is not None and state.erased:
                return None, True
            if keys.get(person) is None:
                key_outputs.add(self.names.keys, message.key, keys.create(person), partition)
            data_key = keys.get(person)
            assert data_key is not None
            return data_key.seal(person, message.value).encode(), True
        except Exception:  # a key that cannot be unwrapped: keep nothing rather than plaintext
            log.exception(
                "dead letter at %s[%s]@%s: value not kept", message.topic, partition, message.offset
            )
            return None, True

    # -- the hot path --------------------------------------------------------------------------
    async def process(self, batch: Sequence[Message]) -> BatchStats:
        """Decide every event of the batch, publish the results, write touched states.

        Returns only after every record it published is acked, so Faust acks (and later
        commits) the inputs only once their effects are durable.
        """
        policy, names, outputs = self.policy, self.names, self.outputs
        cache, seen, keys = self.cache, self.seen, self.keys
        # Keys records go out (and are acked) before anything sealed with them; in a Kafka
        # transaction they are part of the batch's transaction, which is all or nothing.
        key_outputs = outputs if self.app.in_transaction else self.key_outputs
        stand_ins = self.stand_ins
        stats = BatchStats()
        types: Counter[str] = Counter()
        stages: Counter[str] = Counter()
        touched: dict[str, int] = {}
        observe = metrics.DECIDE_SECONDS.observe
        perf = time.perf_counter
        history, stage_changes = names.history, names.stage_changes
        for message in batch:
            partition = message.partition
            self.offsets[partition] = message.offset
            stats.events += 1
            try:
                if message.value is None:
                    raise InvalidMessage("empty value (a tombstone is not an event)")
                event = decode_event(message.value)
                person = event.person_id
                key = person.encode()
                if message.key != key:
                    raise InvalidMessage(
                        f"key {message.key!r} is not the person_id {person!r}: events must be "
                        "keyed by person id so one person's events stay in order"
                    )
                token = set_current_event(stand_ins[partition])
                try:
                    state = self.state(person, partition)
                finally:
                    reset_current_event(token)
                if state is not None and state.erased:
                    event = without_personal(event)  # an erased person's data is not kept
                part = personal_part(event)
                content = None
                if part is not None:  # sealed once; the digest is of the event as stored
                    if keys.get(person) is None:
                        key_outputs.add(names.keys, key, keys.create(person), partition)
                    content = stored_body(event_body(event), keys.seal(person, part))
                previous = seen.get(partition, person, event.event_id)
                started = perf()
                decision = decide(state, event, policy, previous, content=content)
                observe(perf() - started)
                if decision.conflict is not None:
                    stats.conflicts += 1
                    raise InvalidMessage(decision.conflict)
            except Exception as error:
                if not isinstance(error, InvalidMessage):
                    log.exception(
                        "event at %s[%s]@%s failed", message.topic, partition, message.offset
                    )
                    error = f"{type(error).__name__}: {error}"
                stats.dead_letters += 1
                value, sealed = self.rejected_bytes(message, key_outputs)
                outputs.add(
                    names.dead_letters,
                    message.key,
                    dead_letter(
                        error,
                        topic=message.topic,
                        partition=partition,
                        offset=message.offset,
                        key=message.key,
                        value=value,
                        sealed=sealed,
                    ),
                    partition,
                )
                continue
            types[event.type] += 1
            for shadow in self.shadows:  # redeliveries re-emit the shadow's changes too
                shadow_changes = shadow.apply(event, decision)
                if shadow_changes and (
                    part is not None
                    or (state is not None and not PERSONAL_PROFILE.isdisjoint(state.profile))
                ):
                    profile = state.profile if state is not None else {}
                    shadow_changes, _ = seal_sentences(
                        shadow_changes, None, profile, event, keys.get(person)
                    )
                for change in shadow_changes:
                    outputs.add(shadow.topic, key, to_json(change), partition)
            follow_up = decision.follow_up
            if follow_up is not None:  # a merge's hand-off, an alias's event for its survivor
                to = follow_up.person_id.encode()
                body = follow_up.model_dump_json(exclude_none=True).encode()
                outputs.add(names.events, to, body, self.partition_of(to), partition)
                stats.follow_ups += 1
            if decision.duplicate:
                stats.duplicates += 1
                for change in decision.changes:
                    outputs.add(stage_changes, key, to_json(change), partition)
                continue
            changes, note = decision.changes, decision.note
            if (changes or note is not None) and (
                part is not None
                or (state is not None and not PERSONAL_PROFILE.isdisjoint(state.profile))
            ):  # sentences that quote a personal value are sealed too
                changes, note = seal_sentences(
                    changes, note, state.profile if state else {}, event, keys.get(person)
                )
            state = evolve(state, decision)
            if changes is not decision.changes or note is not decision.note:
                if changes:  # the state keeps the last sentence as stored (evolve's choice)
                    state.last_reason = changes[-1].reason
                elif note is not None and not decision.erased:
                    state.last_reason = note
            cache[person] = state
            touched[person] = partition
            wire = decision.to_wire(content)
            merged = decision.merged
            if merged is not None and not PERSONAL_PROFILE.isdisjoint(merged.profile):
                if keys.get(person) is None:
                    key_outputs.add(names.keys, key, keys.create(person), partition)
                wire["merged"] = seal_merged(merged, functools.partial(keys.seal, person))
            if changes is not decision.changes:
                wire["changes"] = changes
            wire["note"] = note
            outputs.add(history, key, to_json(wire), partition)
            seen.put(
                partition,
                dedup_key(person, event.event_id),
                stored(decision.sequence, wire["event"], changes),
            )
            if decision.erased:  # the key goes; everything sealed with it is unreadable
                keys.destroy(person)
                key_outputs.add(names.keys, key, None, partition)  # type: ignore[arg-type]
            for change in changes:
                stages[change.to_stage] += 1
                outputs.add(stage_changes, key, to_json(change), partition)
            if decision.merged is not None:  # a survivor's fold: its aliases, for every reader
                for alias, body in alias_records(decision):
                    outputs.add(names.aliases, alias, body, self.partition_of(alias), partition)

        for person, partition in touched.items():
            state = cache.pop(person)
            cache[person] = state  # most recently used last
            token = set_current_event(stand_ins[partition])
            try:
                self.write_batched(state, partition)
            finally:
                reset_current_event(token)
            self.remember(partition, state)
        seen.flush()  # before the first await: a rebalance may release a partition meanwhile
        if key_outputs is not outputs and key_outputs.queued:
            # New data keys must be durable before anything sealed with them.
            await key_outputs.publish()
            await key_outputs.settle()
        await outputs.publish()
        stats.deliveries = outputs.detach()
        self._trim_cache()
        self.processed += stats.events
        metrics.count_batch(types, stages, stats.duplicates)
        if stats.dead_letters:
            metrics.DEAD_LETTERS.inc(stats.dead_letters)
        return stats

    def _trim_cache(self) -> None:
        """Drop the least recently written states beyond `cache_size`."""
        cache = self.cache
        excess = len(cache) - self.cache_size
        if excess > 0:
            for person in list(itertools.islice(cache, excess)):
                del cache[person]


def alias_records(decision: Any) -> list[tuple[bytes, bytes]]:
    """`events.outbound.PersonAliased` records (key, value) for every alias of a survivor's
    fold: its new alias and the ones that alias already had (a chain resolves to the end)."""
    event = decision.event
    return [
        (
            alias.encode(),
            orjson.dumps(
                {
                    "alias": alias,
                    "survivor": decision.person_id,
                    "merged_at": event.occurred_at,
                    "event_id": event.event_id,
                    "sequence": decision.sequence,
                }
            ),
        )
        for alias in decision.merged.aliases
    ]


class AckAfterDelivery:
    """Acks a batch's input messages once every record it published is acked by the broker.

    Without waiting in the agent: the next batch is decided while this one is in flight.
    Faust commits only contiguous acked offsets, so an input is never committed before its
    outputs are durable. A failed delivery stops the worker instead: a restart re-processes
    the unacked inputs and recovery repairs the table from history.
    """

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.tasks: set[asyncio.Future[None]] = set()

    def after(self, deliveries: list[Any], messages: list[Message]) -> None:
        task = asyncio.ensure_future(self._ack(deliveries, messages))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _ack(self, deliveries: list[Any], messages: list[Message]) -> None:
        with contextlib.suppress(Exception):  # a failed delivery already stopped the worker
            await ack_when_delivered(self.app, deliveries, messages)


async def ack_when_delivered(
    app: faust.App, deliveries: list[Any], messages: list[Message]
) -> None:
    """Ack `messages` in the consumer once every delivery is acked by the broker; a failed
    delivery stops the worker instead (and is raised): the inputs stay uncommitted."""
    try:
        if deliveries:
            await asyncio.gather(*deliveries)
    except Exception as error:
        log.exception("publishing failed; stopping the worker (the inputs stay uncommitted)")
        await app.crash(error)
        raise
    ack = app.consumer.ack
    for message in messages:
        ack(message)


def _person_of(key: bytes | None) -> str | None:
    """The person id a message key names (None for no key, or one no person id can be)."""
    if not key or len(key) > MAX_ID:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return None


class Batcher:
    """Takes the events topic off the consumer's `Feed` and processes it a batch at a time.

    A batch is whatever the consumer fetched since the agent last looked (lists queued while
    it worked are joined), cut at `size` events: large when behind, small and immediate when
    caught up. Each message is tracked in the consumer before processing (so a rebalance
    waits for it, as for any Faust stream) and acked once the batch's outputs are acked,
    while the next batch is being decided.

    Messages of partitions this worker no longer owns, or of an earlier generation, fetched
    before a rebalance, are dropped without an ack: Faust seeks back to the committed offset
    after the rebalance and delivers them again to whoever owns them then. Messages taken
    while the app's flow is suspended wait for it (see `run`).
    """

    def __init__(
        self,
        app: faust.App,
        feed: Feed,
        lifecycle: PartitionProcessor,
        *,
        size: int = BATCH_SIZE,
    ) -> None:
        self.app, self.feed, self.lifecycle = app, feed, lifecycle
        self.size = size
        self.acks = AckAfterDelivery(app)
        self.dropped = 0

    async def run(self) -> None:
        get, size, flow = self.feed.get, self.size, self.app.flow_control
        while True:
            messages = await get()
            if not flow.is_active():
                # After a rebalance Faust resumes the events partitions (the consumer's flow
                # may already run, for the table restore), seeks them to the committed
                # offsets, and only then resumes the app's flow: what the consumer fetched
                # meanwhile belongs to the current assignment, and dropping it would skip it
                # (nothing seeks back once the flow runs; Faust even takes the skipped offsets
                # for a gap it may commit over). So wait for the flow; if a rebalance comes
                # first, the generation changes and `_live` drops them.
                await flow.acquire()
            live = self._live(messages)
            self.dropped += len(messages) - len(live)
            for start in range(0, len(live), size):
                await self._process(live[start : start + size])

    def _live(self, messages: list[Message]) -> list[Message]:
        app = self.app
        if not app.flow_control.is_active():
            return []
        generation, owned = app.consumer_generation_id, self.lifecycle.owned
        live = [m for m in messages if m.generation_id == generation and m.partition in owned]
        track = app.consumer.track_message
        for message in live:
            message.tracked = True  # what Faust's stream does before `track_message`
            track(message)
        return live

    async def _process(self, batch: list[Message]) -> None:
        try:
            stats = await self.lifecycle.process(batch)
        except Exception as error:
            log.exception("lifecycle agent failed; stopping the worker")
            await self.app.crash(error)
            raise
        if self.app.in_transaction:
            await self._commit_with_outputs(stats.deliveries, batch)
            return
        self.acks.after(stats.deliveries, batch)

    async def _commit_with_outputs(self, deliveries: list[Any], batch: list[Message]) -> None:
        """`--exactly-once`: this batch's outputs and its input offsets in one transaction.

        Faust commits a transaction with the offsets acked so far, on a timer: outputs of a
        batch still in flight went into that commit without their offsets, and a crash then
        re-processed the batch, re-emitting its stage changes as a redelivery does (found on
        Kafka: 118 repeated change ids read_committed over 10 kill -9s). So in a transaction
        the batch is delivered, acked and committed before the next one is decided, and
        Faust's timed commits are off (`make_app`).
        """
        await ack_when_delivered(self.app, deliveries, batch)
        await self.app.consumer.commit()
