"""Sending what the worker produces, without waiting for each record's ack.

Every output goes to the same partition number as the input that caused it (all leadflow
topics have the same partition count). That keeps one person's history, stage changes and
ticks together whatever partitioner the upstream producer used (librdkafka's default is not
Java's), makes "history partition p holds exactly the persons of events partition p" true
for recovery, and puts each send in the right transaction in exactly-once mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import faust
import orjson
from pydantic import BaseModel


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
    """

    __slots__ = ("_group", "_pending", "_producer", "app", "source_topic")

    def __init__(self, app: faust.App, source_topic: str) -> None:
        self.app = app
        self.source_topic = source_topic
        self._producer: Any = None
        self._group: int | None = None
        self._pending: list[Awaitable[Any]] = []

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
        return f"{self.app.conf.id}-{self._group}-{partition}"

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int) -> None:
        if self._producer is None:
            await self.start()
        future = await self._producer.send(
            topic,
            key,
            value,
            partition,
            None,
            None,
            transactional_id=self._transactional_id(partition),
        )
        self._pending.append(future)

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
