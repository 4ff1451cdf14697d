"""Crash recovery: kill -9 the worker at random points under a steady stream, restart it.

Restarts alternate between the RocksDB store (kept across the kill, so it can be ahead of
or behind history) and the in-memory store (empty: everything is rebuilt from history).
Some kills hit a worker still joining the group or checking its table against history.
Afterwards the topics must show no lost, duplicated or re-decided event (see harness).
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from tests.faults.harness import (
    Publisher,
    make_stream,
    settings_for,
    settled_check_repaired,
)
from tests.fixtures.worker import Worker

pytestmark = [pytest.mark.integration, pytest.mark.faults]


async def test_kill_9_at_random_points_loses_and_redecides_nothing(
    broker, make_topics, tmp_path, fault_report, long_run
):
    rounds = 20 if long_run else 10
    events = 40_000 if long_run else 20_000
    rng = random.Random(5)
    names = await make_topics(partitions=4)
    settings = settings_for(broker.url, names)
    records = make_stream(events, events // 10, seed=5)
    started = time.monotonic()

    worker = Worker(broker, names, tmp_path, "crash", store="rocksdb")
    await worker.ready()
    rss_start = worker.rss_mb()
    publisher = Publisher(broker.bootstrap, names.events, records)
    publisher.start(rate=len(records) / (rounds * 5.5))
    kills_before_ready = 0
    for n in range(rounds):
        if rng.random() < 0.7:
            await worker.ready(timeout=120)
            await asyncio.sleep(rng.uniform(0.2, 2.5))
        else:  # anywhere in startup: joining, Faust's restore, the check against history
            await asyncio.sleep(rng.uniform(0.5, 4.0))
            kills_before_ready += not await worker.owned()
        assert worker.alive, f"worker died on its own before kill {n + 1}: {worker.tail()}"
        worker.kill()
        worker.start(store="memory" if n % 2 == 0 else "rocksdb")
    await worker.ready(timeout=120)
    await publisher.wait(timeout=180)
    gaps, repaired, outcome = await settled_check_repaired(
        settings,
        f"crash: {rounds} kills ({kills_before_ready} before ready)",
        alive=lambda: worker.alive,
    )
    fault_report.add(
        "crash: kill -9 + restart",
        f"{rounds} x kill -9 ({kills_before_ready} before ready)",
        **outcome.counts(),
        rss_start_mb=rss_start,
        rss_end_mb=worker.rss_mb(),
        gaps=gaps,
        repaired=repaired,
        seconds=round(time.monotonic() - started, 1),
    )
    assert worker.alive
    assert outcome.problems == []
    assert outcome.history == outcome.valid_ids and outcome.inbound == len(records) + outcome.ticks
    assert outcome.expected > 1_000 and outcome.dead_letters >= outcome.invalid > 0
