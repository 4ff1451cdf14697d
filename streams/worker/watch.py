"""The topics watch: a worker whose broker lost leadflow's topics exits (status 3) instead of
hanging, and its restart recreates them."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import NoReturn

from aiokafka import AIOKafkaClient

from streams.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between checks that the broker still has leadflow's topics (see `TopicsWatch`).
TOPICS_CHECK_INTERVAL = 3.0
#: Exit status of a worker whose broker lost its topics: restart it (see `topics_lost`).
EXIT_TOPICS_LOST = 3


class TopicsWatch:
    """Notices a broker that came back without leadflow's topics (lost its data).

    A single-node broker restarted without its disks (or Tansu, which keeps everything in
    memory) answers again with no topics, no records, no committed offsets and no group.
    Faust does not notice: at the next rebalance it waits forever for acks of outputs that
    can never be delivered, or retries committing to the vanished events topic, and the
    worker hangs while /healthz still says ok.

    It checks from a thread of its own with its own event loop and client: the worker's loop
    is exactly what is stuck or flooded then (seen on Kafka under load: the consumer logged
    ~290k "topic not found in cluster metadata" errors in a minute and a check on the
    worker's loop never ran).
    """

    def __init__(self, settings: Settings, topics: tuple[str, ...], interval: float) -> None:
        self.settings = settings
        self.topics = topics
        self.interval = interval
        self.client: AIOKafkaClient | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=lambda: asyncio.run(self._watch()), name="leadflow-topics-watch", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    async def _watch(self) -> None:
        try:
            while not self._stop.is_set():
                missing = await self.missing()
                if missing:
                    topics_lost(missing)
                await asyncio.to_thread(self._stop.wait, self.interval)
        finally:
            await self.close()

    async def missing(self) -> list[str]:
        """The watched topics the broker says it does not have (none while it is down)."""
        try:
            if self.client is None:
                self.client = AIOKafkaClient(
                    **self.settings.aiokafka_kwargs(), client_id="leadflow-topics-watch"
                )
                await asyncio.wait_for(self.client.bootstrap(), 10)
            # All topics: a Metadata request naming a missing topic may auto-create it.
            cluster = await asyncio.wait_for(self.client.fetch_all_metadata(), 10)
        except Exception as error:  # the broker is down or slow: its clients retry anyway
            log.debug("topics watch: no metadata (%s)", error)
            if self.client is not None and not self.client.cluster.brokers():
                await self.close()  # never bootstrapped: start over next time
            return []
        if not cluster.brokers():
            return []
        present = cluster.topics()
        return [topic for topic in self.topics if topic not in present]

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.close()


def topics_lost(missing: list[str]) -> NoReturn:
    """Exit at once: the broker lost leadflow's topics, so it lost history and offsets.

    Nothing decided from now on may reach the broker: the person table holds states whose
    history is gone, and records still buffered in the producer were decided from them. A
    hard exit drops both (the RocksDB store survives it, as it survives kill -9). Restarted,
    the worker recreates the topics with their configs and, because its table follows history
    (`streams.worker.recovery`), starts from what the broker holds now.
    """
    log.critical(
        "the broker lost leadflow's topics (%s missing): its history, offsets and group are "
        "gone. Exiting with status %d; restart the worker to recreate the topics and "
        "continue from what the broker holds now",
        ", ".join(missing),
        EXIT_TOPICS_LOST,
    )
    logging.shutdown()
    os._exit(EXIT_TOPICS_LOST)
