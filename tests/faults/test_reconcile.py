"""`leadflow reconcile` finds a gap (events committed but never applied) and repairs it.

The gap is made the way Faust or a broker makes one (BROKER.md: a kill -9 rebalance once
left 40 of 20,000 events committed and never processed): with the worker down, events are
published and the worker's group offsets are committed past them. The restarted worker
resumes after them, so they never reach history. `reconcile` must name exactly those
events (a garbage record among them included), `--repair` must re-drive them through the
normal path, and afterwards history, stage changes and `verify` must be whole.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from events.outbound import HistoryRecord, StageChanged
from lifecycle.policy import load_preset
from lifecycle.replay import replay
from lifecycle.verify import verify
from streams.dev.demo import synthetic_events
from streams.kafka.readers import iter_to_end, read_to_end
from streams.settings import Settings
from streams.worker.app import app_id
from tests.fixtures.worker import LEADFLOW, Worker, keyed, publish, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def prefix_of(events_topic: str) -> str:
    return events_topic.removesuffix(".leadflow.events")


async def history_ids(bootstrap: str, topic: str) -> list[str]:
    values = await read_to_end(bootstrap, topic, value_only=True)
    return [orjson.loads(v)["event"]["event_id"] for v in values]


class FaustNamedAssignor(RoundRobinPartitionAssignor):
    name = "faust"


async def commit_to_end(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Join `group` as its only member and commit to the true end of every partition."""
    ends: dict[int, int] = defaultdict(int)
    async for record in iter_to_end(bootstrap, topic):
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        # The group's protocol is Faust's; the broker refuses a member speaking another one.
        partition_assignment_strategy=(FaustNamedAssignor,),
    )
    await consumer.start()
    try:
        consumer.subscribe([topic])
        deadline = asyncio.get_running_loop().time() + 90
        while len(consumer.assignment()) < len(ends):
            assert asyncio.get_running_loop().time() < deadline, "joining the group timed out"
            await consumer.getmany(timeout_ms=200, max_records=1)
        await consumer.commit({TopicPartition(topic, p): end for p, end in ends.items()})
        return dict(ends)
    finally:
        await consumer.stop()


def run_reconcile(broker_url: str, prefix: str, *flags: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [
            LEADFLOW,
            "reconcile",
            "--broker",
            broker_url,
            "--topic-prefix",
            prefix,
            *flags,
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip(), done.stderr
    return done.returncode, orjson.loads(done.stdout)


async def test_reconcile_finds_and_repairs_committed_but_unapplied_events(
    broker, make_topics, tmp_path: Path, fault_report
):
    names = await make_topics(partitions=4)
    prefix = prefix_of(names.events)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    stream = list(synthetic_events(persons=300, events=3_000, seed=11, start=start))
    before, lost, after = stream[:1_500], stream[1_500:1_800], stream[1_800:]
    garbage = (b"reconcile-garbage", b"{not json")

    worker = Worker(broker, names, tmp_path, "w")
    await wait_for(lambda: _owns_all(worker), 90, "the worker to own every partition")
    await publish(broker.bootstrap, names.events, [keyed(e) for e in before])
    await wait_for(
        lambda: _has(broker.bootstrap, names.history, len(before)), 90, "the first history"
    )

    # The gap: with the worker down, 300 events and a garbage record are committed unapplied.
    worker.stop()
    await publish(broker.bootstrap, names.events, [keyed(e) for e in lost] + [garbage])
    group = app_id(Settings(broker=broker.url, topic_prefix=prefix))
    # commit_to_end joins the group and waits for its assignment: the killed member's
    # session (6 s) expires first, so no sleep is needed.
    await commit_to_end(broker.bootstrap, group, names.events)

    worker = Worker(broker, names, tmp_path, "w2")
    await wait_for(lambda: _owns_all(worker), 90, "the restarted worker to own every partition")
    await publish(broker.bootstrap, names.events, [keyed(e) for e in after])
    want = len(before) + len(after)
    await wait_for(lambda: _has(broker.bootstrap, names.history, want), 90, "the later history")
    applied = set(await history_ids(broker.bootstrap, names.history))
    assert not applied & {e["event_id"] for e in lost}, "the simulated gap was not a gap"

    # Found: exactly the lost events and the garbage record, nothing else.
    code, found = await asyncio.to_thread(run_reconcile, broker.url, prefix)
    assert code == 1, found
    assert found["gaps"] == len(lost) + 1 and found["repaired"] == 0
    read = sum(p["below_committed"] + p["pending"] for p in found["partitions"].values())
    assert read >= len(stream) + 1  # (plus any inactivity timeouts the sweeper published)
    first = {g["event_id"] for g in found["first_gaps"]}
    assert first <= {e["event_id"] for e in lost} | {None}

    # Repaired: re-driven through the worker, applied once, the garbage dead-lettered.
    code, repaired = await asyncio.to_thread(run_reconcile, broker.url, prefix, "--repair")
    assert code == 0 and repaired["repaired"] == len(lost) + 1, repaired
    total = len(stream)
    await wait_for(lambda: _has(broker.bootstrap, names.history, total), 90, "repaired history")
    # (the sweeper may add inactivity timeouts: these events are months old by the wall clock)
    await wait_for(lambda: _has(broker.bootstrap, names.dead_letters, 1), 60, "the dead letter")
    code, clean = await asyncio.to_thread(run_reconcile, broker.url, prefix)
    assert code == 0 and clean["gaps"] == 0, clean

    # Whole again: each event applied once, the decisions verify, the stage changes are
    # exactly what replay of the final history predicts.
    history = [
        HistoryRecord.model_validate_json(v)
        for v in await read_to_end(broker.bootstrap, names.history, value_only=True)
    ]
    ids = [r.event.event_id for r in history]
    assert len(ids) == len(set(ids))
    published = {e["event_id"] for e in stream}
    assert published <= set(ids)
    assert all(
        r.event.type == "inactivity_timeout" for r in history if r.event.event_id not in published
    )
    policy = load_preset("default")
    assert verify(history, {policy.version: policy}).mismatches == []
    predicted = {
        c.change_id: c for d in replay((r.event for r in history), policy) for c in d.changes
    }
    changes = [
        StageChanged.model_validate_json(v)
        for v in await read_to_end(broker.bootstrap, names.stage_changes, value_only=True)
    ]
    found_ids = {c.change_id for c in changes}
    assert found_ids == set(predicted)
    fault_report.add(
        "reconcile",
        f"{len(lost) + 1} records committed unapplied",
        events=total + 1,
        expected=len(predicted),
        found=len(found_ids),
        duplicates=len(changes) - len(found_ids),
        dead_letters=1,
        gaps_found=found["gaps"],
        gaps_repaired=repaired["repaired"],
        gaps_after=clean["gaps"],
    )


async def _owns_all(worker: Worker) -> bool:
    return sorted(await worker.owned()) == [0, 1, 2, 3]


async def _has(bootstrap: str, topic: str, count: int) -> bool:
    return len(await read_to_end(bootstrap, topic, value_only=True)) >= count
