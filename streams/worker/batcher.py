"""The agent's loop: take fetched lists off the feed, keep what this worker owns in the current
generation, process it in batches (`PartitionProcessor.process`), and ack the inputs only
once every record published for them is acked (`AckAfterDelivery`), or, with
`--exactly-once`, commit them with the batch's outputs in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import faust
from faust.types.tuples import Message

from streams.worker.agent import BATCH_SIZE, PartitionProcessor
from streams.worker.drain import Feed

log = logging.getLogger(__name__)


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


def _take(runs: list[list[int]], offset: int) -> bool:
    """Add `offset` to a partition's runs of taken offsets; False if it was taken already."""
    if len(runs) == 1:  # the usual case, checked first (~0.7 µs less per event)
        run = runs[0]
        if offset == run[1] + 1:  # past the only run: not taken yet
            run[1] = offset
            return True
    if any(first <= offset <= last for first, last in runs):
        return False
    for run in runs:
        if offset == run[1] + 1:  # the usual case: the next offset of a run
            run[1] = offset
            return True
    runs.append([offset, offset])
    return True


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

    A message at an offset of its partition already taken in this generation is dropped
    too (`repeats`): Faust delivers a partition's records twice when it fetches them
    before its own seek to the committed offsets, which ends each assignment
    (`faust.tables.recovery.Recovery.on_recovery_completed`, faust-streaming 0.15.3: the
    events partitions are resumed, and the app's flow already runs, while
    `Consumer.perform_seek` awaits one OffsetFetch per assigned partition; the seek then
    sends the fetcher back to what it had fetched, and resets `_read_offset`, so Faust's own
    check of already-read offsets lets the copies through). Processed again, the copies are
    redeliveries that re-emit their stage changes, and with `--exactly-once` those are
    committed a second time (issue 10: found on Kafka with the seek slowed down, 112 repeated
    change ids read_committed; CI once saw 236). The first copy was processed in this
    generation, and is acked (and committed) as any other message, so nothing is lost: within
    a generation nothing taken is rolled back (transactions are aborted only at a revoke, a
    failed delivery or commit stops the worker). Code that aborts and goes on within a
    generation must forget the partition's entry in `_taken`, or its records are skipped.
    Below the lowest offset taken nothing is dropped: a seek can land further back than the
    position the generation started from (a partition the group never committed is sent
    back to its beginning, `internals.rewind_uncommitted`, when its position had moved past
    records no one applied), and those records were never taken. Except below the partition's
    committed offset as read once its transactional producer was fenced (`--exactly-once`:
    `PartitionProcessor.floors`, `streams.worker.assignment.seek_to_complete_commits`):
    everything there is applied and committed, and a record from there was fetched from a
    position read while the last commit was not complete yet. Processed, it would be taken
    for a redelivery and its stage changes committed a second time, and its commit could
    move the group's offset back below records applied since.
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
        #: messages dropped because this generation already took their offset
        self.repeats = 0
        #: messages dropped because they are below their partition's committed offset
        self.below_committed = 0
        #: (generation, partition -> the offsets taken for processing in it, as runs
        #: [first, last]: one, or a few after a seek further back)
        self._taken: tuple[int | None, dict[int, list[list[int]]]] = (None, {})

    async def run(self) -> None:
        get, size, flow = self.feed.get, self.size, self.app.flow_control
        while True:
            messages = await get()
            if not flow.is_active():
                # After a rebalance Faust resumes the events partitions (the consumer's flow
                # may already run, for the table restore), seeks them to the committed
                # offsets, and resumes the app's flow: what the consumer fetched meanwhile
                # belongs to the current assignment, and dropping it would skip it (nothing
                # seeks back once the flow runs; Faust even takes the skipped offsets for a
                # gap it may commit over). So wait for the flow; if a rebalance comes first,
                # the generation changes and `_live` drops them. (The app's flow often runs
                # before that seek already: `_live` drops what the seek delivers twice.)
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
        floors = self.lifecycle.floors
        taken_in, taken = self._taken
        if taken_in != generation:
            taken = {}
            self._taken = (generation, taken)
        live, repeats, below = [], 0, 0
        for m in messages:
            if m.generation_id != generation or m.partition not in owned:
                continue
            runs = taken.get(m.partition)
            if runs is None:  # the partition's first record in this generation
                floor = floors.get(m.partition)
                # Every offset below the committed offset counts as taken, and so does every
                # one between it and a first record past it (markers, aborted records: read
                # from the committed offset on, nothing else is there), so that one run
                # holds them all and `_take` keeps to its fast path.
                runs = taken[m.partition] = [[-1, max(floor, m.offset) - 1]] if floor else []
            if _take(runs, m.offset):
                live.append(m)
            elif m.offset < floors.get(m.partition, 0):
                below += 1  # fetched from a position read before the last commit completed
            else:
                repeats += 1  # fetched again in this generation: processed once already
        if repeats:
            self.repeats += repeats
            log.info(
                "dropped %d records fetched again in generation %s (Faust's seek to the "
                "committed offsets came after they were fetched; each was processed once)",
                repeats,
                generation,
            )
        if below:
            self.below_committed += below
            log.info(
                "dropped %d records below the committed offsets in generation %s (fetched "
                "from positions read before the last commit was complete; each was applied "
                "and committed already)",
                below,
                generation,
            )
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
