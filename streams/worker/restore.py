"""Where Faust's restore of the person table's changelog ends, with `--exactly-once`.

A transactional changelog partition ends in a commit marker, which no `read_committed`
consumer receives: Faust's restore, told to read up to the marker, waited 10 s at every
assignment for it (`streams.internals.TailRecovery`). And Faust takes a partition's end from
its consumer's last fetch, so a partition it has not fetched yet (every one, for a worker
just started) gets none, and no restore at all: recovery then rebuilt every person of it
from history. `changelog_tails` asks the broker for the ends it lacks and reads the last
records of each partition to find the last one a restore can apply.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from aiokafka import TopicPartition

from streams.kafka.readers import assigned_reader, iter_to_end
from streams.settings import Settings

log = logging.getLogger(__name__)

#: How far back from a partition's end its last record is looked for: each batch's commit
#: adds one marker, an aborted batch its records and a marker.
TAIL = 1_000
#: A slower read keeps Faust's own end (and its 10 s wait).
TIMEOUT = 10.0


async def changelog_tails(settings: Settings, ends: Mapping[Any, int]) -> dict[Any, int]:
    """The offset of the last record at or before `ends[tp]` (the offset Faust reads to; -1:
    Faust has none, the last stable offset - 1 is asked for) of each changelog partition
    that has one within `TAIL` offsets of it; read_committed, so records of aborted
    transactions do not count."""
    key = {(tp.topic, tp.partition): tp for tp in ends}  # Faust's `TP`s
    last: dict[Any, int] = {}
    try:
        async with asyncio.timeout(TIMEOUT):
            unknown = [tp for tp, end in ends.items() if end < 0]
            ends = {**ends, **await _stable_ends(settings, unknown)}
            by_topic: dict[str, dict[int, int]] = defaultdict(dict)
            for tp, end in ends.items():
                if end >= 0:
                    by_topic[tp.topic][tp.partition] = end
            for topic, partitions in by_topic.items():
                async for record in iter_to_end(
                    settings.bootstrap,
                    topic,
                    partitions=sorted(partitions),
                    start={p: max(0, end - TAIL) for p, end in partitions.items()},
                    client_options=settings.aiokafka_kwargs(),
                ):
                    if record.offset <= partitions[record.partition]:
                        last[key[topic, record.partition]] = record.offset
    except Exception as error:  # the restore goes on with Faust's ends
        log.warning(
            "could not read the changelog's last records (%s: %s)", type(error).__name__, error
        )
        return {}
    return last


async def _stable_ends(settings: Settings, tps: list[Any]) -> dict[Any, int]:
    """The last stable offset - 1 of each of `tps` (-1: empty), from the broker."""
    if not tps:
        return {}
    options = {**settings.aiokafka_kwargs(), "bootstrap_servers": settings.bootstrap}
    consumer = assigned_reader(options, client_id="leadflow-restore")
    await consumer.start()
    try:
        stable = await consumer.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
    finally:
        await consumer.stop()
    return {tp: stable[TopicPartition(tp.topic, tp.partition)] - 1 for tp in tps}
