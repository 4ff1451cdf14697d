"""The live agent: decode → decide → evolve → publish, for batches of inbound events.

Thin on purpose: every rule lives in `lifecycle`; this module only moves bytes, keeps person
states at hand and publishes what the core decided. Per event it publishes the history
record (to `history`, the source of truth) and each stage change (to `stage-changes`); a
redelivered event id re-publishes the changes it produced the first time, with the same
change ids, and writes no history.

Person states live in a Faust table (orjson of `PersonState.to_wire()`), written once per
person per batch, with an in-process LRU of `PersonState` objects in front of it: turning a
table value back into a state costs ~64 µs, four times the decision itself.

Faust's table and RocksDB store pick the partition of a write from "the current event",
which is unset inside `stream.take_events()` (faust-streaming issue 497) and at rebalance
time. `writing_for()` sets it explicitly, so table writes keep Faust's normal layout (store
and changelog partition = the input partition) instead of `use_partitioner=True`, which
would send a person's changelog to a different partition than their events whenever the
upstream producer's partitioner differs from Faust's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import faust
import orjson
from faust.streams import _current_event
from faust.types import TP, EventT
from faust.types.tuples import Message

from events.codec import InvalidMessage, decode_event
from lifecycle.deadlines import next_deadline
from lifecycle.decide import decide
from lifecycle.evolve import evolve
from lifecycle.policy import Policy
from lifecycle.state import PersonState
from streams import metrics
from streams.deadletters import dead_letter
from streams.outputs import Outputs, to_json
from streams.shadow import Shadow
from streams.topics import TopicNames

log = logging.getLogger(__name__)

#: Events per batch handed to the agent body, and how long to wait to fill one.
BATCH_SIZE = 1000
BATCH_WAIT = 0.05


@contextlib.contextmanager
def writing_for(event: EventT) -> Iterator[None]:
    """Make `event` Faust's current event, so table reads and writes use its partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def partition_event(app: faust.App, topic: str, partition: int) -> EventT:
    """A stand-in event for table writes that no inbound event caused (rebuilds)."""
    message = Message(topic, partition, -1, time.time(), 0, None, None, None, None)
    return faust.Event(app, None, None, None, message)


@dataclass(slots=True)
class BatchStats:
    events: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    skipped: int = 0
    deliveries: list[Any] = field(default_factory=list)


class Lifecycle:
    """What one worker holds for the partitions it owns, and the per-batch processing.

    * `owned`: partitions checked against history and safe to process (see `recovery`);
    * `persons[p]`: every person of partition p that has history, with their next deadline
      (the sweeper's index; also "which table entries are real", see `_state`);
    * `cache`: recently used states, bounded, shared across partitions (ids are unique).
    """

    def __init__(
        self,
        app: faust.App,
        policy: Policy,
        names: TopicNames,
        table: Any,
        *,
        cache_size: int = 100_000,
    ) -> None:
        self.app = app
        self.policy = policy
        self.names = names
        self.table = table
        self.cache_size = cache_size
        self.owned: set[int] = set()
        self.persons: dict[int, dict[str, datetime | None]] = {}
        self.cache: dict[str, PersonState] = {}
        self.ticks: dict[str, datetime] = {}  # sweeper ticks published, not yet applied
        self.offsets: dict[int, int] = {}  # last processed offset per partition
        self.outputs = Outputs(app, names.events)
        self.changelog: str = table.changelog_topic.get_topic_name()
        self.outputs.on_sent[self.changelog] = self._changelog_sent
        self.processed = 0
        self.shadows: list[Shadow] = []  # candidate policies run beside this one (streams.shadow)

    # -- ownership (called by recovery) ------------------------------------------------------
    def release(self, partitions: set[int]) -> None:
        """Forget partitions this worker no longer owns (their persons move elsewhere)."""
        for p in partitions:
            self.owned.discard(p)
            self.offsets.pop(p, None)
            for shadow in self.shadows:
                shadow.forget(self.persons.get(p, ()))
            for person in self.persons.pop(p, {}):
                self.cache.pop(person, None)
                self.ticks.pop(person, None)
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(str(p))

    def adopt(self, partition: int, persons: dict[str, datetime | None]) -> None:
        self.persons[partition] = persons
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
        self.table[state.person_id.encode()] = to_json(state.to_wire())

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
        key, value = state.person_id.encode(), to_json(state.to_wire())
        self.table.data[key] = value
        self.outputs.add(self.changelog, key, value, partition)

    def _changelog_sent(self, partition: int, last_offset: int) -> None:
        self.table.data.set_persisted_offset(TP(self.changelog, partition), last_offset)

    def _state(self, person: str, partition: int) -> PersonState | None:
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
        return PersonState.from_wire(orjson.loads(raw))

    # -- the hot path --------------------------------------------------------------------------
    async def process(self, batch: Sequence[EventT]) -> BatchStats:
        """Decide every event of the batch, publish the results, write touched states.

        Returns only after every record it published is acked, so Faust acks (and later
        commits) the inputs only once their effects are durable.
        """
        app, policy, names, outputs = self.app, self.policy, self.names, self.outputs
        generation = app.consumer_generation_id
        owned = self.owned
        cache = self.cache
        stats = BatchStats()
        types: Counter[str] = Counter()
        stages: Counter[str] = Counter()
        touched: dict[str, tuple[int, EventT]] = {}
        observe = metrics.DECIDE_SECONDS.observe
        perf = time.perf_counter
        history, stage_changes = names.history, names.stage_changes
        for item in batch:
            message = item.message
            partition = message.partition
            if partition not in owned or message.generation_id != generation:
                stats.skipped += 1  # fetched before a rebalance; Faust re-delivers it
                continue
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
                token = _current_event.set(weakref.ref(item))
                try:
                    state = self._state(person, partition)
                finally:
                    _current_event.reset(token)
                started = perf()
                decision = decide(state, event, policy)
                observe(perf() - started)
            except Exception as error:
                if not isinstance(error, InvalidMessage):
                    log.exception(
                        "event at %s[%s]@%s failed", message.topic, partition, message.offset
                    )
                    error = f"{type(error).__name__}: {error}"
                stats.dead_letters += 1
                outputs.add(
                    names.dead_letters,
                    message.key,
                    dead_letter(
                        error,
                        topic=message.topic,
                        partition=partition,
                        offset=message.offset,
                        key=message.key,
                        value=message.value,
                    ),
                    partition,
                )
                continue
            types[event.type] += 1
            for shadow in self.shadows:  # redeliveries re-emit the shadow's changes too
                for change in shadow.apply(event):
                    outputs.add(shadow.topic, key, to_json(change), partition)
            if decision.duplicate:
                stats.duplicates += 1
                for change in decision.changes:
                    outputs.add(stage_changes, key, to_json(change), partition)
                continue
            state = evolve(state, decision)
            cache[person] = state
            touched[person] = (partition, item)
            outputs.add(history, key, to_json(decision.to_wire()), partition)
            for change in decision.changes:
                stages[change.to_stage] += 1
                outputs.add(stage_changes, key, to_json(change), partition)

        for person, (partition, item) in touched.items():
            state = cache.pop(person)
            cache[person] = state  # most recently used last
            token = _current_event.set(weakref.ref(item))
            try:
                self.write_batched(state, partition)
            finally:
                _current_event.reset(token)
            self.remember(partition, state)
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


class AckAfterDelivery:
    """Acks a batch's input events once every record it published is acked by the broker.

    Without waiting in the agent: the next batch is decided while this one is in flight.
    Faust commits only contiguous acked offsets, so an input is never committed before its
    outputs are durable. A failed delivery stops the worker instead: a restart re-processes
    the unacked inputs and recovery repairs the table from history.
    """

    def __init__(self, app: faust.App, stream: faust.StreamT) -> None:
        self.app = app
        self.stream = stream
        self.tasks: set[asyncio.Future[None]] = set()

    def after(self, deliveries: list[Any], events: list[EventT]) -> None:
        task = asyncio.ensure_future(self._ack(deliveries, events))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _ack(self, deliveries: list[Any], events: list[EventT]) -> None:
        try:
            if deliveries:
                await asyncio.gather(*deliveries)
        except Exception as error:
            log.exception("publishing failed; stopping the worker (the inputs stay uncommitted)")
            await self.app.crash(error)
            return
        ack = self.stream.ack
        for event in events:
            await ack(event)


class Batcher:
    """Feeds the stream to `Lifecycle.process` in batches, acking each after delivery.

    A batch closes at `size` events (throughput when behind) or `wait` seconds after its
    first event (latency when caught up; a timer closes it if the stream goes quiet).
    Cheaper than `Stream.take_events()`, whose per-event processor costs ~50 µs here, and
    it decides the next batch while the previous one's records are still in flight.
    """

    def __init__(
        self,
        app: faust.App,
        stream: faust.StreamT,
        lifecycle: Lifecycle,
        *,
        size: int = BATCH_SIZE,
        wait: float = BATCH_WAIT,
    ) -> None:
        self.app, self.stream, self.lifecycle = app, stream, lifecycle
        self.size, self.wait = size, wait
        self.acks = AckAfterDelivery(app, stream)
        self.batch: list[EventT] = []
        self.opened = 0.0
        self.lock = asyncio.Lock()

    async def run(self) -> None:
        # Acked below, once the batch's outputs are durable.
        self.stream.enable_acks = False
        timer = asyncio.ensure_future(self._close_quiet_batches())
        try:
            async for event in self.stream.events():
                if not self.batch:
                    self.opened = time.monotonic()
                self.batch.append(event)
                if len(self.batch) >= self.size or time.monotonic() - self.opened >= self.wait:
                    await self._close()
        finally:
            timer.cancel()

    async def _close_quiet_batches(self) -> None:
        while True:
            await asyncio.sleep(self.wait)
            if self.batch and time.monotonic() - self.opened >= self.wait:
                await self._close()

    async def _close(self) -> None:
        # Swapped before taking the lock, so batches are processed in the order they closed.
        batch, self.batch = self.batch, []
        if not batch:
            return
        async with self.lock:
            try:
                stats = await self.lifecycle.process(batch)
            except Exception as error:
                log.exception("lifecycle agent failed; stopping the worker")
                await self.app.crash(error)
                raise
        self.acks.after(stats.deliveries, batch)
