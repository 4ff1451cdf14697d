"""Reading topics without a consumer group: the manual-assign consumer every reader uses,
the partitions a topic has now, and reading a topic to its true end as of the call
(`iter_to_end`, `read_to_end`), which the recovery, exports, reports, reconcile and tests
rely on."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal, overload

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from streams.kafka.topics import TopicNotFound

__all__ = ["assigned_reader", "iter_to_end", "partitions_of", "read_to_end"]


def assigned_reader(
    client_options: Mapping[str, Any],
    *,
    client_id: str | None = None,
    fetch_max_wait_ms: int = 200,
    committed_only: bool = True,
) -> AIOKafkaConsumer:
    """A consumer for manual `assign`: no group, nothing committed, from the earliest
    offset, and by default `read_committed`, what consumers of a `--exactly-once` worker see
    (no record of an aborted batch). `client_options`: `Settings.aiokafka_kwargs()`."""
    options = {**client_options, **({"client_id": client_id} if client_id else {})}
    return AIOKafkaConsumer(
        **options,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if committed_only else "read_uncommitted",
        fetch_max_wait_ms=fetch_max_wait_ms,
    )


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int] | None:
    """Partition ids of `topic` as the broker reports them now; None if it has no such topic.

    `consumer.partitions_for_topic` only knows topics already in the consumer's metadata, and
    on Kafka that is none after `start()`: aiokafka bootstraps with a Metadata request for no
    topics (Tansu answers that one with every topic, which hid this until the suite ran on
    Kafka). A request for *all* topics refreshes it without naming the topic, because naming
    it would auto-create it on Tansu (and on Kafka with auto-create on). aiokafka exposes
    that request only on its client (`AIOKafkaClient.fetch_all_metadata`, public there),
    reached through the consumer's client
    (`streams.kafka.client_internals.all_topics_metadata`).
    """
    from streams.kafka.client_internals import all_topics_metadata

    cluster = await all_topics_metadata(consumer)
    partitions = cluster.partitions_for_topic(topic)
    return set(partitions) if partitions else None


async def iter_to_end(
    bootstrap: str,
    topic: str,
    *,
    partitions: Sequence[int] | None = None,
    idle_timeout: float = 30.0,
    poll_ms: int = 100,
    client_options: Mapping[str, Any] | None = None,
    committed_only: bool = True,
    start: Mapping[int, int] | None = None,
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Yield every record of ``topic`` from the beginning (or the offsets in ``start``, by
    partition) up to the end as of the call.

    Uses manual ``assign`` (no consumer group, nothing committed) and, by default, reads as a
    ``read_committed`` consumer: records of aborted transactions (a `--exactly-once` worker
    that crashed mid-batch) are skipped, and the end is the last stable offset. Without
    transactions on the topic that is simply its end. ``committed_only=False`` reads every
    record written, aborted ones included. The end of each partition: see `_Ends`.

    Order: offset order within a partition; partitions interleave as fetched.
    Raises :class:`TopicNotFound` if the topic does not exist, ``TimeoutError`` if no
    progress is made for ``idle_timeout`` seconds. ``client_options`` are extra aiokafka
    consumer settings (security: ``Settings.aiokafka_kwargs()``).
    """
    consumer = assigned_reader(
        {**(client_options or {}), "bootstrap_servers": bootstrap},
        client_id="leadflow-read-to-end",
        committed_only=committed_only,
        # Brokers hold a Fetch for an empty partition up to fetch_max_wait_ms before
        # answering; the answer (highwater 0) is what tells us it is empty, so keep it short.
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    try:
        available = await partitions_of(consumer, topic)
        if not available:
            raise TopicNotFound(topic)
        wanted = sorted(available if partitions is None else set(partitions) & available)
        tps = [TopicPartition(topic, p) for p in wanted]
        if not tps:
            return
        ends = _Ends(consumer, await consumer.end_offsets(tps), committed_only)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        for tp in tps:
            if start and start.get(tp.partition):
                consumer.seek(tp, start[tp.partition])
        remaining = set(tps)
        last_progress = time.monotonic()
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=poll_ms)
            progressed = False
            for tp, records in batches.items():
                stop = ends.of(tp)
                for rec in records:
                    if stop is not None and rec.offset >= stop:
                        break
                    progressed = True
                    yield rec
            progressed = await ends.retire_finished(remaining) or progressed
            now = time.monotonic()
            if progressed:
                last_progress = now
            elif now - last_progress > idle_timeout:
                raise TimeoutError(
                    f"read_to_end({topic!r}) made no progress for {idle_timeout}s; "
                    f"partition: (position, end) = {await ends.detail(remaining)}"
                )
    finally:
        await consumer.stop()


class _Ends:
    """Where each partition of one read ends, known once its first Fetch response arrived.

    The end offsets from ListOffsets (`end_offsets`) are the true end on Kafka. **Tansu
    workaround:** Tansu's ListOffsets reports the first offset of the last batch + 1, short
    of the true end; the stable offset (or, reading uncommitted, the high watermark) of the
    partition's first Fetch response is right on both brokers, so the end is the larger of
    the two (on Kafka they agree). A partition is done when ``position >= end`` (the
    position moves past transaction markers too); records at or past the end (produced
    after the call) are not yielded, so the result is a consistent snapshot.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        listed: Mapping[TopicPartition, int],
        committed_only: bool,
    ) -> None:
        self.consumer = consumer
        self.listed = listed
        self.fetched = consumer.last_stable_offset if committed_only else consumer.highwater
        self.end: dict[TopicPartition, int] = {}

    def of(self, tp: TopicPartition) -> int | None:
        """The partition's end, or None before its first Fetch response."""
        if tp not in self.end:
            fetched = self.fetched(tp)
            if fetched is None:
                return None
            self.end[tp] = max(fetched, self.listed.get(tp, 0))
        return self.end[tp]

    async def retire_finished(self, remaining: set[TopicPartition]) -> bool:
        """Pause and drop from `remaining` each partition read to its end; whether anything
        moved (an end learnt, a partition finished)."""
        progressed = False
        for tp in list(remaining):
            if tp not in self.end and self.of(tp) is not None:
                progressed = True
            if tp in self.end and await self.consumer.position(tp) >= self.end[tp]:
                remaining.discard(tp)
                self.consumer.pause(tp)
                progressed = True
        return progressed

    async def detail(self, remaining: set[TopicPartition]) -> dict[int, tuple[int, int | None]]:
        return {
            tp.partition: (await self.consumer.position(tp), self.end.get(tp)) for tp in remaining
        }


@overload
async def read_to_end(
    bootstrap: str,
    topic: str,
    *,
    value_only: Literal[False] = ...,
    partitions: Sequence[int] | None = ...,
    idle_timeout: float = ...,
    client_options: Mapping[str, Any] | None = ...,
    committed_only: bool = ...,
) -> list[ConsumerRecord[bytes, bytes]]: ...
@overload
async def read_to_end(
    bootstrap: str,
    topic: str,
    *,
    value_only: Literal[True],
    partitions: Sequence[int] | None = ...,
    idle_timeout: float = ...,
    client_options: Mapping[str, Any] | None = ...,
    committed_only: bool = ...,
) -> list[bytes | None]: ...
async def read_to_end(
    bootstrap: str,
    topic: str,
    *,
    value_only: bool = False,
    partitions: Sequence[int] | None = None,
    idle_timeout: float = 30.0,
    client_options: Mapping[str, Any] | None = None,
    committed_only: bool = True,
) -> list[ConsumerRecord[bytes, bytes]] | list[bytes | None]:
    """All records of ``topic`` (see :func:`iter_to_end`), sorted by (partition, offset).

    With ``value_only`` return just the raw values. Holds everything in memory; use
    :func:`iter_to_end` to stream large topics.
    """
    records = [
        r
        async for r in iter_to_end(
            bootstrap,
            topic,
            partitions=partitions,
            idle_timeout=idle_timeout,
            client_options=client_options,
            committed_only=committed_only,
        )
    ]
    records.sort(key=lambda r: (r.partition, r.offset))
    if value_only:
        return [r.value for r in records]
    return records
