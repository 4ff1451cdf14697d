"""The events topic, handed to the agent a fetched batch at a time instead of an event at a time.

Faust delivers every record through its per-event machinery: the consumer's drain loop
awaits `wait_first(callback(message), suspend_flow.wait())` (four tasks and an
`asyncio.wait` per record), the conductor's callback acquires flow control and the producer
buffer, decodes the message into an `Event` and puts it on the agent's channel queue, and
the stream takes it off again, tracks it and sets the current event. Profiled in the worker
that was ~60 % of its CPU per event, against ~6 % for the decisions themselves.

`BatchingConsumer` keeps Faust's drain loop (read offsets, gaps, `commit_every`, the flow
checks) but puts the records of the batch topics (leadflow's events topic) on a `Feed` as
one list per fetch; every other topic (none in leadflow today) still goes through the
conductor. The agent takes the lists off the feed, tracks each message in the consumer (what
Faust's stream does, so a rebalance waits for in-flight events), processes them, and acks
each message in the consumer once its outputs are acked, so Faust's offset commits work
exactly as before: only contiguous acked offsets are committed.

Rebalances: Faust suspends flow, clears the agents' queues and waits for tracked messages
to be acked; the feed is cleared with them (`Feed.clear`, on the revoked signal) and lists
still queued from the old generation are dropped untracked when taken, never acked, and
fetched again after Faust seeks to the committed offsets.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import Message

#: Fetched lists waiting for the agent before the drain loop waits (backpressure).
FEED_DEPTH = 4


class Feed:
    """Lists of fetched messages of the batch topics, from the drain loop to the agent."""

    def __init__(self, topics: set[str], depth: int = FEED_DEPTH) -> None:
        self.topics = frozenset(topics)
        self.queue: asyncio.Queue[list[Message]] = asyncio.Queue(depth)

    def clear(self) -> None:
        """Drop what the agent has not taken yet (a rebalance; Faust seeks back)."""
        while not self.queue.empty():
            self.queue.get_nowait()

    async def get(self) -> list[Message]:
        """The next fetched list, joined with any others already waiting."""
        messages = await self.queue.get()
        while not self.queue.empty():
            messages += self.queue.get_nowait()
        return messages


class BatchingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose drain loop feeds the batch topics to the app's `Feed`
    (`app.feed`; without one it is Faust's consumer unchanged)."""

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


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer
