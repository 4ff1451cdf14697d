"""Where Faust's restore of the person table's changelog ends, with `--exactly-once`.

A transactional changelog partition ends in a commit marker, which no `read_committed`
consumer receives: Faust's restore, told to read up to the marker, waited 10 s at every
assignment for it (`streams.internals.TailRecovery`). `changelog_tails` reads the last
records of each partition to find the last one a restore can apply.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from streams.kafka.readers import iter_to_end
from streams.settings import Settings

log = logging.getLogger(__name__)

#: How far back from a partition's end its last record is looked for: each batch's commit
#: adds one marker, an aborted batch its records and a marker.
TAIL = 1_000
#: A slower read keeps Faust's own end (and its 10 s wait).
TIMEOUT = 10.0


async def changelog_tails(settings: Settings, ends: Mapping[Any, int]) -> dict[Any, int]:
    """The offset of the last record at or before `ends[tp]` (the offset Faust reads to) of
    each changelog partition that has one within `TAIL` offsets of it; read_committed, so
    records of aborted transactions do not count."""
    by_topic: dict[str, dict[int, int]] = defaultdict(dict)
    for tp, end in ends.items():
        by_topic[tp.topic][tp.partition] = end
    key = {(tp.topic, tp.partition): tp for tp in ends}  # Faust's `TP`s
    last: dict[Any, int] = {}
    try:
        async with asyncio.timeout(TIMEOUT):
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
