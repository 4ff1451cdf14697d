"""Sending what the worker produces, without waiting for each record's ack.

Every output goes to the same partition number as the input that caused it (all leadflow
topics have the same partition count). That keeps one person's history, stage changes and
ticks together whatever partitioner the upstream producer used (librdkafka's default is not
Java's), makes "history partition p holds exactly the persons of events partition p" true
for recovery, and puts each send in the right transaction in exactly-once mode. The one
exception: an identity merge's hand-off and an alias's forwarded event go to the events
partition of the person they are for (`streams.worker.agent`), in the transaction of the input
that caused them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import orjson
from pydantic import BaseModel

from streams.internals import aiokafka_producer, transactional_id


def _default(obj: Any) -> Any:
    # States rebuilt from pydantic history records may still hold pydantic models.
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def to_json(obj: Any) -> bytes:
    """orjson for the lifecycle dataclasses (and plain data, and pydantic models)."""
    return orjson.dumps(obj, default=_default)


class Outputs:
    """Buffers sends on the app's producer and settles their delivery futures in one go.

    Faust flushes the producer before committing offsets, but a flush does not report a
    failed delivery; `settle()` does, so the caller can stop before acking the inputs.

    Two ways in: `send()` hands one record to the producer now; `add()` only queues it, and
    `publish()` then sends everything queued as one record batch per topic and partition
    (aiokafka `send_batch`): one future per batch instead of a coroutine, a future and a
    debug log call per record, in the same per-partition order. In a transaction `publish()`
    falls back to one send per record, because each record names its transactional producer.
    """

    __slots__ = (
        "_group",
        "_pending",
        "_producer",
        "_queued",
        "app",
        "on_sent",
        "source_topic",
    )

    def __init__(self, app: faust.App, source_topic: str) -> None:
        self.app = app
        self.source_topic = source_topic
        self._producer: Any = None
        self._group: int | None = None
        self._pending: list[Awaitable[Any]] = []
        #: (topic, partition, input partition) -> records; the input partition names the
        #: transaction (it differs from the partition only for merge follow-ups)
        self._queued: dict[tuple[str, int, int], list[tuple[bytes | None, bytes | None]]] = {}
        #: topic -> called with (partition, offset of the last record) when a batch is acked
        self.on_sent: dict[str, Callable[[int, int], None]] = {}

    async def start(self) -> None:
        self._producer = await self.app.maybe_start_producer()
        if self.app.in_transaction:
            self._producer = self.app.producer

    def _transactional_id(self, partition: int) -> str | None:
        """The transaction of the source partition (mirrors Faust's TransactionManager)."""
        if not self.app.in_transaction:
            return None
        if self._group is None:
            self._group = self.app.assignor.group_for_topic(self.source_topic)
        return transactional_id(self.app.conf.id, self._group, partition)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int,
        source: int | None = None,
    ) -> None:
        """Send now; `source` is the input partition when it is not `partition`."""
        if self._producer is None:
            await self.start()
        future = await self._producer.send(
            topic,
            key,
            value,
            partition,
            None,
            None,
            transactional_id=self._transactional_id(partition if source is None else source),
        )
        self._pending.append(future)

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int,
        source: int | None = None,
    ) -> None:
        """Queue one record for the next `publish()` (value None: a tombstone); `source`: the
        input partition, when the record goes to another partition (its transaction is the
        input's)."""
        slot = (topic, partition, partition if source is None else source)
        queue = self._queued.get(slot)
        if queue is None:
            queue = self._queued[slot] = []
        queue.append((key, value))

    async def publish(self) -> None:
        """Send everything `add()` queued, a record batch per topic and partition."""
        queued, self._queued = self._queued, {}
        if not queued:
            return
        if self._producer is None:
            await self.start()
        if self.app.in_transaction:
            for (topic, partition, source), records in queued.items():
                for key, value in records:
                    await self.send(topic, key, value, partition, source)
            return
        producer = aiokafka_producer(self._producer)
        pending = self._pending
        for (topic, partition, _), records in queued.items():
            notify = self.on_sent.get(topic)
            batch = producer.create_batch()
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    if batch.record_count():
                        await self._send_batch(producer, batch, topic, partition, notify)
                        batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        # Larger than a whole batch: the producer's own size checks decide.
                        sent = await producer.send(topic, value, key=key, partition=partition)
                        pending.append(sent)
            if batch.record_count():
                await self._send_batch(producer, batch, topic, partition, notify)

    async def _send_batch(
        self,
        producer: Any,
        batch: Any,
        topic: str,
        partition: int,
        notify: Callable[[int, int], None] | None,
    ) -> None:
        count = batch.record_count()
        batch.close()
        future = await producer.send_batch(batch, topic, partition=partition)
        if notify is not None:

            def sent(done: asyncio.Future[Any]) -> None:
                if not done.cancelled() and done.exception() is None and done.result():
                    notify(partition, done.result().offset + count - 1)

            future.add_done_callback(sent)
        self._pending.append(future)

    @property
    def queued(self) -> bool:
        return bool(self._queued)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def detach(self) -> list[Awaitable[Any]]:
        """Hand over the delivery futures of everything sent so far (and forget them)."""
        pending, self._pending = self._pending, []
        return pending

    async def settle(self) -> None:
        """Wait for every buffered send; raise the first delivery error."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)
