"""Outputs.publish: one record batch per topic and partition, in order, acks reported.

A fake aiokafka producer stands in for the broker (the real path is covered by the worker
integration tests); what is checked here is the batching contract the worker relies on.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.worker.outputs import Outputs


class FakeProducer:
    def __init__(self, batch_size: int = 16_384) -> None:
        self.batch_size = batch_size
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes]]]] = []
        self.singles: list[tuple[str, int, bytes]] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.real: AIOKafkaProducer | None = None

    def create_batch(self) -> Any:
        if self.real is None:  # not started: only its batch builder is used
            self.real = AIOKafkaProducer(
                bootstrap_servers="127.0.0.1:9", max_batch_size=self.batch_size
            )
        return Recording(self.real.create_batch())

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.sent.append((topic, partition, batch.records))
        base = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = base + len(batch.records)
        future = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(offset=base))
        return future

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, partition: int
    ) -> asyncio.Future[Any]:
        self.singles.append((topic, partition, value))
        future = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(offset=0))
        return future


class Recording:
    """aiokafka's own batch builder (its size rules), remembering what was appended."""

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.records: list[tuple[bytes | None, bytes]] = []

    def append(self, *, timestamp: Any, key: Any, value: Any) -> Any:
        metadata = self.builder.append(timestamp=timestamp, key=key, value=value)
        if metadata is not None:
            self.records.append((key, value))
        return metadata

    def record_count(self) -> int:
        return self.builder.record_count()

    def close(self) -> None:
        self.builder.close()


def outputs_with(producer: FakeProducer) -> Outputs:
    app = SimpleNamespace(in_transaction=False)
    outputs = Outputs(app, "events")  # type: ignore[arg-type]
    outputs._producer = SimpleNamespace(_ensure_producer=lambda: producer)
    return outputs


async def test_one_batch_per_topic_and_partition_in_order_and_acks_reported():
    producer = FakeProducer()
    outputs = outputs_with(producer)
    acked: list[tuple[int, int]] = []
    outputs.on_sent["changelog"] = lambda partition, last: acked.append((partition, last))
    for i in range(5):
        outputs.add("history", b"k", b"h%d" % i, i % 2)
        outputs.add("changelog", b"k", b"c%d" % i, 1)
    await outputs.publish()
    await outputs.settle()
    batches = {(t, p): [v for _, v in records] for t, p, records in producer.sent}
    assert batches == {
        ("history", 0): [b"h0", b"h2", b"h4"],
        ("history", 1): [b"h1", b"h3"],
        ("changelog", 1): [b"c0", b"c1", b"c2", b"c3", b"c4"],
    }
    assert acked == [(1, 4)]  # the offset of the last changelog record
    await outputs.publish()  # nothing queued: nothing sent
    assert len(producer.sent) == 3


async def test_a_full_batch_is_split_and_an_oversized_record_goes_alone():
    producer = FakeProducer(batch_size=1_024)
    outputs = outputs_with(producer)
    values = [b"x" * 300 for _ in range(7)] + [b"y" * 5_000] + [b"z" * 10]
    for value in values:
        outputs.add("history", None, value, 0)
    await outputs.publish()
    await outputs.settle()
    batched = [v for _, _, records in producer.sent for _, v in records]
    single = [v for _, _, v in producer.singles]
    assert len(producer.sent) >= 3  # 7 x 300 bytes do not fit in one 1 KiB batch
    assert sorted(batched + single) == sorted(values)
    assert batched[:7] == values[:7] and batched[-1] == values[-1]
