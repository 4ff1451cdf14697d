"""The events topic, handed to the agent a fetched batch at a time instead of an event at a time.

Faust delivers every record through its per-event machinery: the consumer's drain loop
awaits `wait_first(callback(message), suspend_flow.wait())` (four tasks and an
`asyncio.wait` per record), the conductor's callback acquires flow control and the producer
buffer, decodes the message into an `Event` and puts it on the agent's channel queue, and
the stream takes it off again, tracks it and sets the current event. Profiled in the worker
that was ~60 % of its CPU per event, against ~6 % for the decisions themselves.

`streams.internals.BatchingConsumer` (a fork of Faust's drain loop, so it lives with the
other Faust internals) keeps Faust's drain loop (read offsets, gaps, `commit_every`, the flow
checks) but puts the records of the batch topics (leadflow's events topic) on a `Feed` as
one list per fetch; every other topic (none in leadflow today) still goes through the
conductor. The agent takes the lists off the feed, tracks each message in the consumer (what
Faust's stream does, so a rebalance waits for in-flight events), processes them, and acks
each message in the consumer once its outputs are acked, so Faust's offset commits work
exactly as before: only contiguous acked offsets are committed.

Rebalances: Faust suspends flow, clears the agents' queues and waits for tracked messages
to be acked; the feed is cleared with them (`Feed.clear`, on the revoked signal) and lists
still queued from the old generation are dropped untracked when taken, never acked, and
fetched again after Faust seeks to the committed offsets. A partition the group never
committed has no offset to seek to (aiokafka then leaves it where the fetcher got):
`streams.internals.BatchingConsumer` sends it back to its beginning, or the dropped records
would be skipped and the next commit would cover them.
"""

from __future__ import annotations

import asyncio

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
