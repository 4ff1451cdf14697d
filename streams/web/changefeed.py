"""A live view of a stage-change topic: the funnel and the most recent changes.

It follows the aliases topic too: a merge that moved nobody has no stage change, and the
funnel counts the alias as its survivor from then on.

Each worker follows the whole topic (every partition, no consumer group), so any worker can
answer `/funnel` for everyone, not only for the persons it owns. Used for the live topic and
for each shadow policy's topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from events.outbound import PersonAliased, StageChanged
from lifecycle.funnel import Funnel
from streams.kafka.readers import assigned_reader, partitions_of

log = logging.getLogger(__name__)


class ChangeFeed:
    """Follows one stage-change topic from its beginning into a `Funnel` and a recent list."""

    def __init__(
        self,
        topic: str,
        *,
        client_options: dict[str, Any],
        aliases: str | None = None,
        recent: int = 200,
    ) -> None:
        self.topic = topic
        #: The aliases topic (`events.outbound.PersonAliased`): merges that moved nobody
        #: have no stage change, and the funnel must still count one person.
        self.aliases = aliases
        self.client_options = client_options
        self.funnel = Funnel()
        self.recent: deque[StageChanged] = deque(maxlen=recent)
        self._recent_ids: set[str] = set()  # the change ids in `recent` (each once)
        self.seen = 0
        self.skipped = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker went away: retry, the view must not die
                log.warning("change feed %s interrupted; retrying", self.topic, exc_info=True)
                await asyncio.sleep(2.0)

    async def _follow(self) -> None:
        consumer = assigned_reader(self.client_options, fetch_max_wait_ms=200)
        await consumer.start()
        try:
            assigned = []
            for topic in (self.topic, *([self.aliases] if self.aliases else [])):
                partitions = await self._partitions(consumer, topic)
                assigned += [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            positions: dict[TopicPartition, int] = getattr(self, "_positions", {})
            for tp in assigned:
                if tp in positions:
                    consumer.seek(tp, positions[tp])
                else:
                    await consumer.seek_to_beginning(tp)
            self._positions = positions
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                for tp, records in batches.items():
                    add = self._add if tp.topic == self.topic else self._alias
                    for record in records:
                        add(record.value)
                    if records:
                        positions[tp] = records[-1].offset + 1
        finally:
            await consumer.stop()

    @staticmethod
    async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
        for _ in range(60):
            partitions = await partitions_of(consumer, topic)
            if partitions:
                return partitions
            await asyncio.sleep(0.5)
        raise RuntimeError(f"topic {topic} has no partitions yet")

    def _alias(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            aliased = PersonAliased.model_validate_json(value)
        except ValidationError:
            self.skipped += 1
            return
        self.funnel.merge(aliased.alias, aliased.survivor)

    def _add(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            change = StageChanged.model_validate_json(value)
        except ValidationError:
            self.skipped += 1
            return
        self.seen += 1
        self.funnel.add(change)
        recent, ids = self.recent, self._recent_ids
        if change.change_id not in ids:  # redeliveries once (a scan of `recent` cost ~3 %)
            if len(recent) == recent.maxlen:
                ids.discard(recent[0].change_id)
            recent.append(change)
            ids.add(change.change_id)
