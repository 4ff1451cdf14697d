"""The one door to faust-streaming, aiokafka and mode internals.

Everything leadflow does with a private attribute or method of those libraries (or with a
public one in a way their authors did not plan for: writing a table's store directly) is
here, each with the upstream function it mirrors and the versions it was checked against.
`tests/unit/test_internals_contract.py` checks every one of them against the installed
libraries (the attribute exists, the signature, a hash of the mirrored upstream source), so
an upgrade that changes one fails a test naming it instead of breaking the worker quietly.
`pyproject.toml` pins the three libraries to the checked versions with upper bounds.

Checked against: faust-streaming 0.15.3, aiokafka 0.14.0, mode-streaming 0.7.1.

Upgrading: bump the pins, run the contract test, read each upstream function it names,
adapt the code here, then update `CHECKED` in the test with the new hashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Collection, Iterator, Mapping
from contextvars import Token
from typing import TYPE_CHECKING, Any

import faust
import faust.stores.rocksdb
import faust.tables.manager as faust_tables
import faust.tables.recovery as faust_recovery
from aiokafka import AIOKafkaProducer
from faust.streams import _current_event
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT
from faust.types.tuples import Message

if TYPE_CHECKING:
    from streams.worker.drain import Feed

log = logging.getLogger(__name__)

#: The versions every function below was read against.
CHECKED_VERSIONS = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}


# -- the current event (table partitions) ---------------------------------------------------
# Mirrors `faust.streams.Stream._set_current_event` (faust-streaming 0.15.3): Faust's tables
# pick a write's partition from `faust.streams.current_event()`
# (`faust.tables.base.Collection.partition_for_key`), which reads the private context
# variable `faust.streams._current_event` holding a weak reference to the event.
def set_current_event(event: EventT) -> Token[Any]:
    """Make `event` Faust's current event; reset with `reset_current_event(token)`."""
    return _current_event.set(weakref.ref(event))


def reset_current_event(token: Token[Any]) -> None:
    """Undo `set_current_event` (`ContextVar.reset` of `faust.streams._current_event`)."""
    _current_event.reset(token)


@contextlib.contextmanager
def writing_for(event: EventT) -> Iterator[None]:
    """Make `event` Faust's current event, so table reads and writes use its partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


# -- the table's store, written without Faust's per-write changelog send --------------------
# Mirrors the store half of `faust.tables.table.Table.__setitem__` (`ManagedUserDict`
# `__setitem__` → `self.data[key] = value`, then `on_key_set` sends the changelog record,
# faust-streaming 0.15.3 / mode-streaming 0.7.1): the agent sends the changelog record
# itself, in the batch's record batch (`streams.worker.agent.PartitionProcessor.write_batched`).
def write_store(table: faust.types.TableT, key: bytes, value: bytes) -> None:
    """Put `value` in the table's store (`Collection.data`), with no changelog record."""
    table.data[key] = value


# Mirrors `faust.stores.rocksdb.Store._set` (faust-streaming 0.15.3: `db =
# self._db_for_partition(partition)`, `self._key_index[key] = partition`, `db.put(key, value)`)
# for many keys of one partition: one rocksdict `WriteBatch(raw_mode=True)` written at once,
# as `Store.apply_changelog_batch` writes a changelog batch. Keys and values go in as given:
# `SerializedStore.__setitem__` encodes them with the table's serializer, "raw" for the
# person table's bytes (identity). Another store (memory) takes them one by one, as before.
def write_store_batch(
    table: faust.types.TableT, partition: int, items: list[tuple[bytes, bytes]]
) -> None:
    """Put every (key, value) in the table's store for `partition`, with no changelog
    record: one RocksDB write batch instead of a put each (~1 µs less per person)."""
    store = table.data
    if not (isinstance(store, faust.stores.rocksdb.Store) and store.use_rocksdict):
        for key, value in items:
            store[key] = value
        return
    db = store._db_for_partition(partition)
    batch = faust.stores.rocksdb.WriteBatch(raw_mode=True)
    key_index = store._key_index
    for key, value in items:
        batch.put(key, value)
        key_index[key] = partition
    db.write(batch)


# Mirrors `faust.tables.base.Collection._on_changelog_sent` (faust-streaming 0.15.3), the
# at-least-once branch: `self.data.set_persisted_offset(res.topic_partition, res.offset)`.
def set_persisted_offset(table: faust.types.TableT, tp: TP, offset: int) -> None:
    """Record in the store that the changelog holds it up to `offset` (Faust's restore
    starts from there)."""
    table.data.set_persisted_offset(tp, offset)


# -- the producer --------------------------------------------------------------------------
# Mirrors `faust.transport.drivers.aiokafka.Producer._ensure_producer` (faust-streaming
# 0.15.3): the running `aiokafka.AIOKafkaProducer` behind Faust's producer, for
# `create_batch` / `send_batch`, which Faust does not expose.
def aiokafka_producer(producer: Any) -> AIOKafkaProducer:
    """The aiokafka producer of Faust's (started) producer."""
    return producer._ensure_producer()


# Mirrors `faust.transport.consumer.TransactionManager.transactional_id_format`
# ("{group_id}-{tpg.group}-{tpg.partition}", faust-streaming 0.15.3): the transactional id
# Faust gives the producer of one source partition in `--exactly-once`.
def transactional_id(app_id: str, group: int, partition: int) -> str:
    """The transactional id Faust uses for `partition` of topic group `group`."""
    return f"{app_id}-{group}-{partition}"


def parse_transactional_id(app_id: str, tid: str) -> int | None:
    """The source partition of one of `app_id`'s transactional ids (None if not one)."""
    prefix, _, partition = tid.rpartition("-")
    if not prefix.startswith(f"{app_id}-") or not partition.isdigit():
        return None
    return int(partition)


# Reads `faust.transport.drivers.aiokafka.Producer._transaction_producers` (the class-level
# dict `begin_transaction` fills and `stop_transaction` empties, faust-streaming 0.15.3).
def transactional_ids(producer: Any) -> list[str]:
    """Transactional ids of Faust's running transactional producers."""
    return list(getattr(producer, "_transaction_producers", {}))


# Reads `faust.transport.drivers.aiokafka.Producer._transaction_producers` (the class-level
# dict `begin_transaction` fills, faust-streaming 0.15.3) and aiokafka's
# `AIOKafkaProducer._txn_manager.is_in_transaction()` (aiokafka 0.14.0).
def open_transactions(producer: Any) -> list[str]:
    """Transactional ids of Faust's producers that are inside a transaction now."""
    open_ids = []
    for tid, transactional in list(getattr(producer, "_transaction_producers", {}).items()):
        manager = getattr(transactional, "_txn_manager", None)
        if manager is not None and manager.is_in_transaction():
            open_ids.append(tid)
    return open_ids


# -- the consumer --------------------------------------------------------------------------
# Mirrors aiokafka's `Fetcher._get_actions_per_node`, which reads `self._fetch_max_wait_ms`
# for every FetchRequest (aiokafka 0.14.0); reached as Faust's
# `Consumer._thread._ensure_consumer()._fetcher` (faust-streaming 0.15.3:
# `ThreadDelegateConsumer._thread`, `AIOKafkaConsumerThread._ensure_consumer`, aiokafka
# `AIOKafkaConsumer._fetcher`). Faust hard-codes the wait (`fetch_max_wait_ms=1500`).
def set_fetch_max_wait(app: faust.App, wait_ms: int) -> bool:
    """Set the running worker consumer's fetch wait; False if this transport has none."""
    try:
        fetcher = app.consumer._thread._ensure_consumer()._fetcher
    except AttributeError:
        return False
    fetcher._fetch_max_wait_ms = wait_ms
    return True


# The aiokafka client internals every client needs, with or without Faust (no topic
# auto-creation; metadata of every topic), are in `streams.kafka.client_internals`: an
# offline command that reads a topic does not import Faust for them (34 MB, 0.4 s).


# -- the worker ----------------------------------------------------------------------------
# Mirrors `faust.worker.Worker.__init__`, which sets `self.spinner` (a `mode.utils.terminal
# .Spinner`), and `Worker._on_startup_end_spinner` / `on_setup_root_logger`, which use it
# when set (faust-streaming 0.15.3).
def without_spinner(worker: faust.Worker) -> None:
    """No progress spinner: with one, Faust sets the root logger to DEBUG."""
    worker.spinner = None


# -- the committed offsets, read again once a partition's producer is fenced -------------------
# Mirrors what `aiokafka.AIOKafkaConsumer.seek_to_committed` reads for each partition
# (`committed(tp)`, one OffsetFetch, aiokafka 0.14.0), called through Faust's consumer thread
# (`ThreadDelegateConsumer._thread`, `AIOKafkaConsumerThread._ensure_consumer`,
# faust-streaming 0.15.3; `QueueServiceThread.call_thread`, mode-streaming 0.7.1), which has
# no `committed` of its own.
async def committed_offsets(consumer: Any, tps: Collection[TP]) -> dict[TP, int | None]:
    """The group's committed offset of each of `tps` (None: never committed), read now.

    `consumer` is Faust's consumer (`app.consumer`)."""
    thread = consumer._thread
    client = thread._ensure_consumer()
    return {tp: await thread.call_thread(client.committed, tp) for tp in tps}


def ahead_of_read(
    read: Mapping[Any, int | None], known: Mapping[Any, int | None], topics: Collection[str]
) -> dict[Any, int]:
    """The partitions of `topics` whose offset `read` from the group is behind (or missing)
    what the consumer `known` committed itself, with that offset.

    A group's committed offset only moves forward (each commit starts from what was
    committed), so an offset this consumer committed, or read once, is a floor for any later
    answer: one below it is stale."""
    ahead = {}
    for tp, offset in read.items():
        floor = known.get(tp)
        if tp.topic in topics and floor and (offset is None or offset < floor):
            ahead[tp] = floor
    return ahead


def forget_acked_gaps(gap: Any, acked: Collection[int]) -> None:
    """Take the `acked` offsets out of a partition's read gaps (`IntervalTree`, ends
    excluded), a run of consecutive offsets at a time."""
    run_start = previous = None
    for offset in sorted(acked):
        if previous is None or offset != previous + 1:
            if run_start is not None:
                gap.chop(run_start, previous + 1)
            run_start = offset
        previous = offset
    if run_start is not None:
        gap.chop(run_start, previous + 1)


# -- the events topic a fetched batch at a time ----------------------------------------------
async def rewind_uncommitted(
    consumer: Any, committed: Mapping[Any, int | None], topics: Collection[str]
) -> list[Any]:
    """Seek the partitions of `topics` the group never committed (offset None or 0) back to
    their beginning, and return them (see `BatchingConsumer.seek_to_committed`).

    `consumer` is Faust's consumer thread (`AIOKafkaConsumerThread`: `position`,
    `seek_to_beginning`); `committed` is what aiokafka's `seek_to_committed` returned.
    """
    never = [tp for tp, offset in committed.items() if tp.topic in topics and not offset]
    if not never:
        return []
    positions = {tp: await consumer.position(tp) for tp in never}
    await consumer.seek_to_beginning(*never)
    moved = {tp.partition: at for tp, at in positions.items() if at}
    if moved:
        log.info(
            "partitions %s have no committed offset and were read up to %s (processed but "
            "not committed yet, or dropped around a rebalance): reading them again from "
            "the beginning (redeliveries change nothing)",
            sorted(moved),
            moved,
        )
    return never


class BatchingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose drain loop feeds the batch topics to the app's `Feed`
    (`app.feed`; without one it is Faust's consumer unchanged). See `streams.worker.drain`."""

    # Wraps `faust.transport.consumer.ThreadDelegateConsumer.seek_to_committed`, which
    # returns `aiokafka.AIOKafkaConsumer.seek_to_committed` (aiokafka 0.14.0): that seeks a
    # partition only `if offset and offset > 0`, so a partition the group never committed
    # keeps whatever position the fetcher reached. Faust drops records fetched around a
    # rebalance (flow stopped, partition paused; the Batcher drops lists of an earlier
    # generation) and relies on this seek to fetch them again: for a never-committed partition
    # they were skipped, the next acks started past them and Faust committed over them (found
    # on Kafka: 2,664 committed events never applied after 10 kill -9s, all on the two
    # partitions without a commit yet; Faust's `_new_offset` checks the first acked offset
    # only against a committed offset). Such partitions go back to their beginning, where
    # `consumer_auto_offset_reset="earliest"` starts a new group; redeliveries are harmless.
    #
    # It also never sends a partition back behind what this consumer knows is committed
    # (`ahead_of_read`): Faust's `perform_seek` reads the committed offsets (one OffsetFetch
    # per partition) while the agent already processes and commits the new assignment, and
    # then sets its own `_committed_offset` to what it read. An answer older than a commit
    # made meanwhile sent the fetcher back (the Batcher drops those records as fetched again)
    # and, worse, moved Faust's committed offset back behind the acks that followed: its
    # `_new_offset` then sees a hole below the first ack and commits nothing more for that
    # partition in the generation, or fills the hole with a read gap and commits one offset
    # per commit. With `--exactly-once` each batch's outputs were committed meanwhile without
    # its input offsets, and the next owner of the partition applied them again (found on
    # Kafka with the OffsetFetch answers slowed down: 82 repeated change ids read_committed,
    # the group's offset 340 records behind the outputs).
    async def seek_to_committed(self) -> Mapping[TP, int]:
        read = await super().seek_to_committed()
        feed: Feed | None = getattr(self.app, "feed", None)
        if feed is None:
            return read
        known = self._committed_offset
        await rewind_uncommitted(
            self._thread, {**read, **ahead_of_read(read, known, feed.topics)}, feed.topics
        )
        # After the rewind's awaits, so that a commit made meanwhile counts too; from here
        # to `perform_seek` updating `_committed_offset` nothing awaits.
        ahead = ahead_of_read(read, known, feed.topics)
        for tp, offset in ahead.items():
            self._thread.seek(tp, offset)
        if ahead:
            log.info(
                "the committed offsets read for the seek after the rebalance were behind what "
                "this worker committed since (a stale or early answer): partitions %s resume "
                "from the offsets committed last instead",
                {tp.partition: (read.get(tp), offset) for tp, offset in sorted(ahead.items())},
            )
        return {**read, **ahead}

    # Wraps `faust.transport.consumer.Consumer._new_offset` (faust-streaming 0.15.3), which
    # adds a partition's read gaps (offsets the drain loop saw skipped: transaction markers,
    # aborted records) to its acked offsets before taking the first run of consecutive ones.
    # A gap holds the offset of the record after it too, and after a seek back the drain
    # loop records one over records already fetched (its read offset goes back while records
    # fetched before the seek are still being passed on): those offsets are acked as well,
    # each duplicate ends the run, and Faust commits one offset per commit from there, far
    # behind what was processed (with `--exactly-once`, the outputs committed without their
    # offsets: found on Kafka, commits 350, 351, 352… while the batches reached 700). What
    # was acked is no gap.
    def _new_offset(self, tp: TP) -> int | None:
        gap = self._gap.get(tp)
        if gap:
            forget_acked_gaps(gap, self._acked_index[tp])
        return super()._new_offset(tp)

    # A fork of `faust.transport.consumer.Consumer._drain_messages` (faust-streaming 0.15.3):
    # the same loop (read offsets, gaps, `commit_every`, the flow checks) and the same
    # private state (`_stopped`, `_read_offset`, `_commit_every`, `_n_acked`, `_add_gap`,
    # the fetcher's `_stopped`), but the batch topics' records go on the feed as one list
    # per fetch instead of one `callback(message)` each.
    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop
        feed: Feed | None = getattr(self.app, "feed", None)
        if feed is None:
            return await super()._drain_messages(fetcher)
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        batch_topics = feed.topics
        queue = feed.queue
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                batch: list[Message] = []
                async for tp, message in ait:
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # already read (Faust drops these too)
                    if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if message.topic in batch_topics:
                        batch.append(message)
                    else:
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    set_read_offset(tp, offset)
                if batch:
                    if queue.full():
                        # The agent is behind: wait for room, unless a rebalance starts.
                        await self.wait_first(queue.put(batch), self.suspend_flow.wait())
                    else:
                        queue.put_nowait(batch)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


# -- the producer's settings --------------------------------------------------------------
class IdempotentProducer(faust_aiokafka.Producer):
    """Faust's aiokafka producer, idempotent also outside transactions when the app says so
    (`app.idempotent_producer`, set where the broker supports it: genuine Kafka, not Tansu).

    Overrides `faust.transport.drivers.aiokafka.Producer._settings_extra` (faust-streaming
    0.15.3), which returns `{"acks": "all", "enable_idempotence": True}` only for
    `processing_guarantee="exactly_once"` and `{}` otherwise. Without idempotence a produce
    request whose first attempt reached the log before the broker died is appended again on
    retry: seen on Kafka after a broker kill -9, 100 history records written twice.
    """

    def _settings_extra(self) -> Mapping[str, Any]:
        extra = super()._settings_extra()
        if not extra and getattr(self.app, "idempotent_producer", False):
            return {"acks": "all", "enable_idempotence": True}
        return extra


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer
    Producer = IdempotentProducer


class TailRecovery(faust_recovery.Recovery):
    """Faust's changelog restore, ending at each partition's last record in a transaction.

    Overrides `faust.tables.recovery.Recovery._build_highwaters` (faust-streaming 0.15.3),
    which takes a partition's last stable offset - 1 as the offset its restore reads to. With
    `--exactly-once` that offset is a transaction's commit marker, which a `read_committed`
    consumer never receives, so the restore waits for its changelog queue to stay empty
    twice 5 s (`_slurp_changelogs`: `detect_aborted_tx`) before it takes the position for
    done: every assignment of a partition with a changelog held the worker 10 s (measured:
    10.1-11.2 s from "Resuming flow" to "Done reading" at each rebalance). And it takes that
    offset from its consumer's last fetch: a partition not fetched yet (all of them, for a
    worker just started) got -1, no restore, and recovery rebuilt its persons from history.
    The app's `changelog_tails` (`streams.worker.restore`) reads where the last record of
    each partition is, and the restore ends when that record is applied; where it finds
    none, Faust's own end stays.
    """

    async def _build_highwaters(
        self, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        await super()._build_highwaters(consumer, tps, destination, title)
        tails = getattr(self.app, "changelog_tails", None)
        ends = {tp: destination[tp] for tp in tps}
        if not (self.app.in_transaction and tails and ends):
            return
        last = await tails(ends)
        moved = {tp: at for tp, at in last.items() if at != ends[tp]}
        if moved:
            for tp, at in moved.items():  # a `Counter`: `update` would add
                destination[tp] = at
            log.info(
                "%s changelog partitions: restoring up to their last records, not to a "
                "transaction marker or (-1) no end known yet: %s",
                title,
                {tp.partition: (ends[tp], at) for tp, at in sorted(moved.items())},
            )


class TailTableManager(faust_tables.TableManager):
    """Faust's table manager with `TailRecovery` (`app.conf.TableManager`).

    Overrides `faust.tables.manager.TableManager.recovery` (faust-streaming 0.15.3), the
    property that makes the `Recovery` service once."""

    @property
    def recovery(self) -> faust_recovery.Recovery:
        if self._recovery is None:
            self._recovery = TailRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class BatchingApp(faust.App):
    """A Faust app whose transport's consumer is `BatchingConsumer`."""

    # Overrides `faust.app.base.App._new_transport` (faust-streaming 0.15.3), which returns
    # `transport.by_url(self.conf.broker_consumer[0])(self.conf.broker_consumer, self)`;
    # the URL scheme (kafka://, aiokafka://) picks the aiokafka transport either way.
    def _new_transport(self) -> Any:
        return BatchingTransport(self.conf.broker_consumer, self)
