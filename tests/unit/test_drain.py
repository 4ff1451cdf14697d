"""The events feed and the batcher's filter: what is processed, tracked, dropped and acked.

The drain loop itself is Faust's, run against the real broker by the worker integration
tests and the fault suite (crash, rebalance); here a stand-in app checks the bookkeeping the
worker's offset commits rely on.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from faust.types.tuples import Message
from intervaltree import IntervalTree
from mode.utils.queues import FlowControlEvent

from streams.internals import BatchingConsumer, forget_acked_gaps, rewind_uncommitted
from streams.worker.batcher import AckAfterDelivery, Batcher
from streams.worker.drain import Feed


def message(partition: int, offset: int, generation: int = 1) -> Message:
    return Message(
        "events", partition, offset, 0.0, 0, None, b"k", b"v", None, generation_id=generation
    )


class Consumer:
    def __init__(self) -> None:
        self.unacked: set[Message] = set()
        self.acked: list[int] = []

    def track_message(self, message: Message) -> None:
        self.unacked.add(message)

    def ack(self, message: Message) -> bool:
        self.unacked.discard(message)
        self.acked.append(message.offset)
        return True


def app(*, active: bool = True, generation: int = 1) -> Any:
    return SimpleNamespace(
        flow_control=SimpleNamespace(is_active=lambda: active),
        consumer_generation_id=generation,
        consumer=Consumer(),
        in_transaction=False,
    )


def batcher(app: Any, owned: set[int]) -> Batcher:
    return Batcher(app, Feed({"events"}), SimpleNamespace(owned=owned, floors={}), size=2)


async def test_feed_joins_lists_waiting_for_the_agent_in_order() -> None:
    feed = Feed({"events"})
    feed.queue.put_nowait([message(0, 1), message(0, 2)])
    feed.queue.put_nowait([message(1, 7)])
    got = await feed.get()
    assert [(m.partition, m.offset) for m in got] == [(0, 1), (0, 2), (1, 7)]
    assert feed.queue.empty()


async def test_feed_clear_drops_what_the_agent_has_not_taken() -> None:
    feed = Feed({"events"})
    feed.queue.put_nowait([message(0, 1)])
    feed.clear()
    assert feed.queue.empty()


def test_live_messages_are_tracked_as_unacked() -> None:
    a = app()
    live = batcher(a, {0, 1})._live([message(0, 1), message(1, 2)])
    assert [m.offset for m in live] == [1, 2]
    assert a.consumer.unacked == set(live)
    assert all(m.tracked for m in live)


def test_messages_of_other_partitions_or_generations_are_dropped_untracked() -> None:
    a = app(generation=2)
    stale, foreign, live = message(0, 1, generation=1), message(3, 2, 2), message(0, 3, 2)
    assert batcher(a, {0})._live([stale, foreign, live]) == [live]
    assert a.consumer.unacked == {live}  # never acked either: Faust seeks back to them


def test_nothing_is_live_while_flow_is_suspended() -> None:
    a = app(active=False)
    assert batcher(a, {0})._live([message(0, 1)]) == []
    assert a.consumer.unacked == set()


async def test_batch_is_acked_only_after_its_outputs_are_acked() -> None:
    a = app()
    acks = AckAfterDelivery(a)
    delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    batch = [message(0, 1), message(0, 2)]
    acks.after([delivered], batch)
    await asyncio.sleep(0)
    assert a.consumer.acked == []
    delivered.set_result(None)
    await asyncio.gather(*acks.tasks)
    assert a.consumer.acked == [1, 2]


async def test_a_failed_delivery_acks_nothing_and_stops_the_worker() -> None:
    a = app()
    crashed: list[BaseException] = []

    async def crash(error: BaseException) -> None:
        crashed.append(error)

    a.crash = crash
    acks = AckAfterDelivery(a)
    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    failed.set_exception(RuntimeError("broker said no"))
    acks.after([failed], [message(0, 1)])
    await asyncio.gather(*acks.tasks)
    assert a.consumer.acked == []
    assert [str(e) for e in crashed] == ["broker said no"]


async def test_run_processes_in_batches_of_at_most_size() -> None:
    a = app()
    sizes: list[int] = []

    class PartitionProcessor:
        def __init__(self) -> None:
            self.owned, self.floors = {0}, {}

        async def process(self, batch: list[Message]) -> Any:
            sizes.append(len(batch))
            return SimpleNamespace(deliveries=[])

    b = Batcher(a, Feed({"events"}), PartitionProcessor(), size=2)  # type: ignore[arg-type]
    b.feed.queue.put_nowait([message(0, n) for n in range(5)])
    task = asyncio.ensure_future(b.run())
    while len(sizes) < 3:
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(*b.acks.tasks)
    assert sizes == [2, 2, 1]
    assert a.consumer.acked == [0, 1, 2, 3, 4]


async def test_in_a_transaction_each_batch_is_committed_with_its_outputs_before_the_next() -> None:
    """--exactly-once: a batch's outputs, acks and commit happen before the next batch is
    decided, so no commit can carry outputs whose offsets it does not carry."""
    a = app()
    a.in_transaction = True
    log: list[str] = []

    async def commit() -> bool:
        log.append(f"commit after ack of {a.consumer.acked[-1]}")
        return True

    a.consumer.commit = commit

    class PartitionProcessor:
        def __init__(self) -> None:
            self.owned, self.floors = {0}, {}

        async def process(self, batch: list[Message]) -> Any:
            log.append(f"decide {[m.offset for m in batch]}")
            delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(delivered.set_result, None)
            return SimpleNamespace(deliveries=[delivered])

    b = Batcher(a, Feed({"events"}), PartitionProcessor(), size=2)  # type: ignore[arg-type]
    b.feed.queue.put_nowait([message(0, n) for n in range(4)])
    task = asyncio.ensure_future(b.run())
    while len(log) < 4:
        await asyncio.sleep(0)
    task.cancel()
    assert log == [
        "decide [0, 1]",
        "commit after ack of 1",
        "decide [2, 3]",
        "commit after ack of 3",
    ]
    assert b.acks.tasks == set()  # nothing acked in the background


class ConsumerThread:
    """Faust's consumer thread as the seek after a rebalance sees it: aiokafka's
    `seek_to_committed` seeks only partitions with a committed offset above 0."""

    def __init__(
        self,
        positions: dict[TP, int],
        committed: dict[TP, int | None],
        meanwhile: Any = None,
    ) -> None:
        self.positions, self.committed = positions, committed
        self.meanwhile = meanwhile  # what happens while its OffsetFetches are answered

    async def seek_to_committed(self) -> dict[TP, int | None]:
        answers = dict(self.committed)  # read first, as each OffsetFetch is sent
        if self.meanwhile is not None:
            self.meanwhile()
        for tp, offset in answers.items():
            if offset and offset > 0:  # aiokafka 0.14.0 AIOKafkaConsumer.seek_to_committed
                self.positions[tp] = offset
        return answers

    def seek(self, tp: TP, offset: int) -> None:
        self.positions[tp] = offset

    async def position(self, tp: TP) -> int:
        return self.positions[tp]

    async def seek_to_beginning(self, *tps: TP) -> None:
        for tp in tps:
            self.positions[tp] = 0


def batching_consumer(
    thread: ConsumerThread, feed_topics: set[str], known: dict[TP, int | None] | None = None
) -> BatchingConsumer:
    consumer = object.__new__(BatchingConsumer)  # only what the seek reads
    consumer._thread = thread  # type: ignore[assignment]
    consumer.app = SimpleNamespace(feed=Feed(feed_topics))  # type: ignore[assignment]
    consumer._committed_offset = {} if known is None else known  # type: ignore[assignment]
    return consumer


async def test_seek_back_never_goes_behind_a_commit_made_while_the_offsets_were_read() -> None:
    # The agent commits the new assignment while Faust's seek reads the committed offsets: the
    # answer (292) is older than that commit (376). Faust records what the seek returns as
    # committed, and with 292 its acks from 376 on leave a hole it never commits past.
    kept, other = TP("events", 2), TP("events", 3)
    known: dict[TP, int | None] = {kept: 318, other: 213}

    def agent_commits() -> None:
        known[kept] = 376

    thread = ConsumerThread({kept: 404, other: 250}, {kept: 292, other: 213}, agent_commits)
    offsets = await batching_consumer(thread, {"events"}, known).seek_to_committed()
    assert offsets == {kept: 376, other: 213}
    assert thread.positions == {kept: 376, other: 213}


async def test_a_partition_read_as_never_committed_that_this_worker_committed_is_not_rewound() -> (
    None
):
    tp = TP("events", 0)
    thread = ConsumerThread({tp: 700}, {tp: None})
    offsets = await batching_consumer(thread, {"events"}, {tp: 650}).seek_to_committed()
    assert offsets == {tp: 650} and thread.positions == {tp: 650}


async def test_seek_back_goes_forward_to_a_later_commit_only() -> None:
    ahead, changelog = TP("events", 0), TP("persons-changelog", 0)
    thread = ConsumerThread({ahead: 90, changelog: 90}, {ahead: 80, changelog: 5})
    known: dict[TP, int | None] = {ahead: 60, changelog: 70}
    offsets = await batching_consumer(thread, {"events"}, known).seek_to_committed()
    assert offsets == {ahead: 80, changelog: 5}  # the answer is newer; tables are Faust's
    assert thread.positions == {ahead: 80, changelog: 5}


async def test_seek_back_rereads_a_never_committed_partition_from_its_beginning() -> None:
    # Fetched to 1466 and dropped around a rebalance, never committed: the next acks would
    # start at 1466 and Faust would commit over 0..1465, events never applied.
    never, committed = TP("events", 1), TP("events", 0)
    thread = ConsumerThread({never: 1466, committed: 1700}, {never: None, committed: 1531})
    offsets = await batching_consumer(thread, {"events"}).seek_to_committed()
    assert thread.positions == {never: 0, committed: 1531}
    assert offsets == {never: None, committed: 1531}  # what Faust's perform_seek records


async def test_seek_back_leaves_partitions_of_other_topics_where_faust_put_them() -> None:
    changelog = TP("persons-changelog", 1)
    thread = ConsumerThread({changelog: 90}, {changelog: None})
    await batching_consumer(thread, {"events"}).seek_to_committed()
    assert thread.positions == {changelog: 90}


async def test_rewind_returns_the_partitions_sent_back_to_their_beginning() -> None:
    tps = [TP("events", p) for p in range(3)]
    thread = ConsumerThread(dict.fromkeys(tps, 5), {tps[0]: None, tps[1]: 0, tps[2]: 4})
    rewound = await rewind_uncommitted(thread, thread.committed, {"events"})
    assert rewound == tps[:2]
    assert [thread.positions[tp] for tp in tps] == [0, 0, 5]


class Recorder:
    """A partition processor owning partition 0 that records the offsets it processes."""

    def __init__(self, processed: list[int]) -> None:
        self.owned, self.processed = {0}, processed
        self.floors: dict[int, int] = {}  # committed offsets read at assignment

    async def process(self, batch: list[Message]) -> Any:
        self.processed.extend(m.offset for m in batch)
        return SimpleNamespace(deliveries=[])


async def test_messages_taken_before_the_flow_resumes_wait_for_it_rather_than_skipped() -> None:
    # Fetched between Faust's seek to the committed offsets and the app's flow resuming:
    # dropped, they would be skipped (nothing seeks back once the flow runs).
    a = app()
    a.flow_control = FlowControlEvent()  # suspended, as during a rebalance
    processed: list[int] = []
    b = Batcher(a, Feed({"events"}), Recorder(processed), size=10)  # type: ignore[arg-type]
    b.feed.queue.put_nowait([message(0, n) for n in range(3)])
    task = asyncio.ensure_future(b.run())
    for _ in range(5):
        await asyncio.sleep(0)
    assert processed == [] and a.consumer.unacked == set()  # waiting, not tracked yet
    a.flow_control.resume()
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(*b.acks.tasks)
    assert processed == [0, 1, 2] and a.consumer.acked == [0, 1, 2] and b.dropped == 0


async def test_messages_held_across_a_rebalance_are_dropped_for_the_next_seek() -> None:
    a = app()
    a.flow_control = FlowControlEvent()
    processed: list[int] = []
    b = Batcher(a, Feed({"events"}), Recorder(processed), size=10)  # type: ignore[arg-type]
    b.feed.queue.put_nowait([message(0, n) for n in range(3)])
    task = asyncio.ensure_future(b.run())
    await asyncio.sleep(0)
    a.consumer_generation_id = 2  # a rebalance came first: Faust seeks again for it
    a.flow_control.resume()
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    assert processed == [] and a.consumer.acked == [] and b.dropped == 3


async def run_batcher(
    a: Any, lists: list[list[Message]], processed: list[int], floors: dict[int, int] | None = None
) -> Batcher:
    """Feed `lists` to a batcher one at a time (each after the previous is processed)."""
    recorder = Recorder(processed)
    recorder.owned, recorder.floors = {0, 1}, floors or {}
    b = Batcher(a, Feed({"events"}), recorder, size=10)  # type: ignore[arg-type]
    task = asyncio.ensure_future(b.run())
    for messages in lists:
        b.feed.queue.put_nowait(messages)
        for _ in range(20):
            await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(*b.acks.tasks)
    return b


async def test_records_fetched_again_before_the_seek_to_committed_are_processed_once() -> None:
    """Issue 10: Faust resumes the events partitions, with the app's flow running, while its
    seek to the committed offsets awaits the broker; what was fetched meanwhile comes again
    after the seek. Processed twice, the copies would re-emit their stage changes, and with
    `--exactly-once` commit them a second time (112 repeated change ids read_committed on
    Kafka with the seek slowed down)."""
    a = app()
    processed: list[int] = []
    before_seek = [message(0, n) for n in range(3)] + [message(1, 7)]
    after_seek = [message(0, n) for n in range(1, 5)] + [message(1, 7), message(1, 8)]
    b = await run_batcher(a, [before_seek, after_seek], processed)
    assert processed == [0, 1, 2, 7, 3, 4, 8]
    assert a.consumer.acked == [0, 1, 2, 7, 3, 4, 8]  # each offset acked once: committed once
    assert b.repeats == 3 and a.consumer.unacked == set()


async def test_a_seek_further_back_than_the_generation_started_loses_nothing() -> None:
    """A partition the group never committed, whose position had moved past records no one
    applied, is sent back to its beginning (`internals.rewind_uncommitted`): what comes
    below the offsets this generation took was never taken, and is processed."""
    a = app()
    processed: list[int] = []
    before_seek = [message(0, n) for n in range(5, 8)]
    after_rewind = [message(0, n) for n in range(0, 9)]
    b = await run_batcher(a, [before_seek, after_rewind], processed)
    assert sorted(processed) == list(range(9)) and len(processed) == 9
    assert b.repeats == 3 and a.consumer.unacked == set()


async def test_after_a_rebalance_the_committed_offsets_are_processed_again() -> None:
    # A new generation starts from the committed offsets, whatever this worker took before:
    # the partition's state was rebuilt from history meanwhile.
    a = app()
    processed: list[int] = []
    b = Batcher(a, Feed({"events"}), Recorder(processed), size=10)  # type: ignore[arg-type]
    task = asyncio.ensure_future(b.run())
    b.feed.queue.put_nowait([message(0, n) for n in range(3)])
    for _ in range(20):
        await asyncio.sleep(0)
    a.consumer_generation_id = 2
    b.feed.queue.put_nowait([message(0, n, generation=2) for n in range(1, 4)])
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(*b.acks.tasks)
    assert processed == [0, 1, 2, 1, 2, 3] and b.repeats == 0


async def test_records_below_the_committed_offset_read_at_assignment_are_not_applied_again():
    """--exactly-once: aiokafka reads a new assignment's first positions before Faust starts
    its transactional producers, and an OffsetFetch then may still answer the offsets from
    before the last commit (or none: the beginning). What is fetched from there before the
    seek to the offsets read once the producers are fenced is below them: applied and
    committed already, it must not be taken for redeliveries whose stage changes are
    emitted and committed a second time."""
    a = app()
    processed: list[int] = []
    stale = [message(0, n) for n in range(0, 6)] + [message(1, n) for n in range(3, 6)]
    after_seek = [message(0, n) for n in range(4, 8)] + [message(1, 6)]
    b = await run_batcher(a, [stale, after_seek], processed, floors={0: 4, 1: 6})
    assert processed == [4, 5, 6, 7, 6]
    assert a.consumer.acked == [4, 5, 6, 7, 6] and a.consumer.unacked == set()
    assert b.below_committed == 4 + 3 and b.repeats == 2


async def test_a_first_record_past_the_committed_offset_keeps_one_run_of_taken_offsets():
    # The committed offset may point at a transaction marker: the first record is past it.
    a = app()
    processed: list[int] = []
    b = await run_batcher(a, [[message(0, n) for n in range(9, 12)]], processed, floors={0: 8})
    assert processed == [9, 10, 11] and b._taken[1] == {0: [[-1, 11]]}


def consumer_with_acks(committed: int, acked: range, gaps: list[tuple[int, int]]) -> Any:
    """Faust's offset bookkeeping of one partition as `_new_offset` reads it."""
    tp = TP("events", 2)
    consumer = object.__new__(BatchingConsumer)
    consumer._committed_offset = defaultdict(lambda: None, {tp: committed})  # type: ignore[assignment]
    consumer._acked = defaultdict(list, {tp: list(acked)})  # type: ignore[assignment]
    consumer._acked_index = defaultdict(set, {tp: set(acked)})  # type: ignore[assignment]
    consumer._gap = defaultdict(IntervalTree, {tp: IntervalTree.from_tuples(gaps)})  # type: ignore[assignment]
    return consumer, tp


def test_a_gap_over_records_fetched_before_a_seek_back_does_not_hold_the_commits_back() -> None:
    # Seek back to 292 while 293..349 were fetched and being processed; the record at 350,
    # fetched before the seek, passes after it: Faust's drain loop records a gap 293..350
    # (`_add_gap(tp, 293, 350)`). Those records are acked as well: merged as they are, each
    # is acked twice and Faust commits 294, then one more offset per commit.
    consumer, tp = consumer_with_acks(292, range(292, 351), [(293, 351)])
    assert consumer._new_offset(tp) == 351


def test_a_gap_of_skipped_offsets_is_still_committed_over() -> None:
    # A transaction marker at 300: the drain loop read 299 then 301 and recorded 300..301.
    consumer, tp = consumer_with_acks(290, range(290, 300), [(300, 302)])
    consumer._acked[tp].extend(range(301, 310))
    consumer._acked_index[tp].update(range(301, 310))
    assert consumer._new_offset(tp) == 310


def test_forget_acked_gaps_keeps_what_was_not_acked() -> None:
    gap = IntervalTree.from_tuples([(10, 20), (30, 35)])
    forget_acked_gaps(gap, {11, 12, 13, 19, 30, 31, 32, 33, 34, 50})
    assert sorted((i.begin, i.end) for i in gap) == [(10, 11), (14, 19)]
