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
