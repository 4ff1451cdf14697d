"""Two `--exactly-once` workers killed six times between them, 12,000 events; a
`read_committed` reader of the stage changes must see each change id once (the issue-10
hunt; `test_kafka.py` has the short version). One seed in every run (~60 s); the long run
(`--long` or LEADFLOW_FAULTS_LONG=1) takes three.

On 2026-12-01 seed 18 failed in one of three fresh-clone CI runs (139 repeated change ids,
history intact: records applied and committed already were processed again and their stage
changes re-emitted), and the test ran in the long run only while the cause was hunted. The
failure did not come back on a quiet machine (12 seeds), so its own log was never read; the
race found and fixed gives exactly its signature: an assignment's first positions are read
before its transactional producers are fenced, when an OffsetFetch may still answer the
offsets from before the last commit (or none), and the worker applied what it fetched from
there before Faust's seek (`streams.worker.assignment.seek_to_complete_commits`;
`test_kafka.py` forces that race at every rebalance: 106 and 146 repeated change ids without
the fix, none with it). After the fix 9 long runs (27 seeds) passed. The
NotEnoughReplicasError the broker answered the changelog's produce with (retried) and the
"Invalid state transition IN_TRANSACTION -> IN_TRANSACTION" in begin_transaction are in
passing runs too: the latter is Faust beginning again the kept transaction of the assignor's
leader topic (`...-0-0`), which carries nothing."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import Publisher, make_stream, settings_for, settled_check_repaired
from tests.fixtures.worker import Worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.kafka_only]


async def test_exactly_once_two_workers_killed_six_times_apply_nothing_twice(
    broker, make_topics, tmp_path, fault_report, long_run
):
    for seed in (18, 19, 20) if long_run else (18,):
        await _killed_six_times(broker, make_topics, tmp_path / f"seed-{seed}", fault_report, seed)


async def _killed_six_times(
    broker: Any, make_topics: Any, tmp_path: Path, fault_report: Any, seed: int
) -> None:
    tmp_path.mkdir()
    kills, partitions = 6, 4
    names = await make_topics(partitions=partitions)
    settings = settings_for(broker.url, names)
    records = make_stream(12_000, 600, seed=seed, duplicates=0.0, garbage_every=0)
    extra = ("--exactly-once", "--sweep-interval", "3600")
    group = [
        Worker(broker, names, tmp_path, "x1", store="rocksdb", extra=extra),
        Worker(broker, names, tmp_path, "x2", store="memory", extra=extra),
    ]

    async def every_partition_owned() -> bool:
        owned = [await w.owned() for w in group]
        return sorted(p for parts in owned for p in parts) == list(range(partitions))

    await wait_for(every_partition_owned, 120, "two workers to own every partition")
    rng = random.Random(seed)
    publisher = Publisher(broker.bootstrap, names.events, records)
    publisher.start(rate=len(records) / 40.0)
    for n in range(kills):
        await publisher.wait(int(len(records) * (n + 1) / (kills + 1)), timeout=180)
        worker = group[n % 2] if rng.random() < 0.8 else group[(n + 1) % 2]
        if worker.alive:
            worker.kill()
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        worker.start()
    await publisher.wait(timeout=180)
    await wait_for(every_partition_owned, 180, "both workers back")
    gaps, repaired, outcome = await settled_check_repaired(
        settings, f"exactly-once stress, seed {seed}", alive=lambda: all(w.alive for w in group)
    )
    logs = [w.tail(50_000_000) for w in group]
    refetched = sum(
        int(n) for log in logs for n in re.findall(r"dropped (\d+) records fetched again", log)
    )
    fault_report.add(
        f"exactly-once: 2 workers, {kills} kills (seed {seed})",
        f"{kills} x kill -9 over 2 workers, --exactly-once, read_committed",
        **outcome.counts(),
        gaps=gaps,
        repaired=repaired,
        refetched_dropped=refetched,
    )
    assert outcome.problems == []
    assert outcome.history == outcome.valid_ids == len(records) + outcome.ticks
    if outcome.duplicates:
        lines = [
            f"{w.name}: {line}"
            for w, log in zip(group, logs, strict=True)
            for line in log.splitlines()
            if re.search(r"revok|assigned|aborting|rebalanc|recovery:|start \d|fetched again", line)
        ]
        detail = "\n".join([*outcome.repeated, *lines[-80:]])
        raise AssertionError(f"{outcome.duplicates} repeated change ids read_committed:\n{detail}")
