"""What only genuine Apache Kafka makes testable: transactions, changelog restore, durable
broker restarts, compaction, true end offsets and lag.

* `--exactly-once` under 10 kill -9s: a `read_committed` reader of every output topic sees
  each stage change and each history record once — not one duplicate `change_id`;
* Faust's changelog restore as Faust intends it: the RocksDB store deleted, 100k persons
  restored from the changelog, and the check against history finds nothing to rebuild;
* the broker killed with kill -9 and restarted with its data: the worker rides it out (no
  exit, no lost event, no decision taken twice);
* compaction: `leadflow.policies` and the person table's changelog keep the latest record
  per key (the topics as `topic_specs` creates them, with segments rolled quickly so the
  cleaner runs within the test);
* end offsets are the true end on Kafka, and the worker's lag metric drains to 0.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from lifecycle.policy import load_preset
from streams.kafka.publish import encode_event
from streams.kafka.readers import iter_to_end, partitions_of, read_to_end
from streams.kafka.topics import TopicNames, ensure_topics, topic_specs
from streams.worker import restore
from streams.worker.app import changelog_spec
from streams.worker.restore import changelog_tails
from streams.worker.run import policy_record
from tests.faults.harness import (
    Publisher,
    committed_past,
    event_id,
    is_valid,
    make_stream,
    settings_for,
    settled_check_repaired,
)
from tests.fixtures.worker import Worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.kafka_only]


async def test_exactly_once_kill_9_read_committed_sees_every_change_once(
    broker, make_topics, tmp_path, fault_report, long_run
):
    rounds = 20 if long_run else 10
    events = 40_000 if long_run else 20_000
    names = await make_topics(partitions=4)
    settings = settings_for(broker.url, names)
    records = make_stream(events, events // 10, seed=41)
    started = time.monotonic()

    worker = Worker(broker, names, tmp_path, "eos", store="rocksdb", extra=("--exactly-once",))
    await worker.ready(timeout=120)
    rss_start = worker.rss_mb()
    publisher = Publisher(broker.bootstrap, names.events, records)
    publisher.start(rate=len(records) / (rounds * 5.0))
    for n in range(rounds):
        await worker.ready(timeout=120)
        await asyncio.sleep(1.0 + (n % 4) * 0.6)  # mid-batch, mid-transaction, mid-commit
        assert worker.alive, f"worker died on its own before kill {n + 1}: {worker.tail()}"
        worker.kill()
        worker.start(store="memory" if n % 2 == 0 else "rocksdb")
    await worker.ready(timeout=120)
    await publisher.wait(timeout=180)
    gaps, repaired, outcome = await settled_check_repaired(
        settings, f"exactly-once: {rounds} kills", alive=lambda: worker.alive
    )
    # Upstream redeliveries (the stream sends ~1 % of events twice) re-emit the changes their
    # first delivery made, by design; every other copy would be the worker's.
    reemitted = await _reemissions(broker.bootstrap, names)
    # What a read_uncommitted reader sees: the outputs of the aborted attempts too.
    uncommitted = Counter(
        [
            orjson.loads(r.value)["change_id"]
            async for r in iter_to_end(broker.bootstrap, names.stage_changes, committed_only=False)
        ]
    )
    aborted_copies = sum(uncommitted.values()) - len(uncommitted)
    fault_report.add(
        "exactly-once: kill -9 + restart",
        f"{rounds} x kill -9, --exactly-once, read_committed",
        **outcome.counts(),
        rss_start_mb=rss_start,
        rss_end_mb=worker.rss_mb(),
        gaps=gaps,
        repaired=repaired,
        reemitted_by_design=reemitted,
        uncommitted_copies=aborted_copies,
        seconds=round(time.monotonic() - started, 1),
    )
    assert worker.alive
    assert outcome.problems == []
    assert outcome.duplicates == reemitted, (
        f"read_committed: {outcome.duplicates} repeated change ids, {reemitted} of them "
        "re-emitted for upstream redeliveries: the rest are the worker's duplicates"
    )
    assert reemitted > 0  # the stream did redeliver
    assert outcome.history == outcome.valid_ids and outcome.inbound == len(records) + outcome.ticks
    assert outcome.expected > 1_000 and outcome.dead_letters >= outcome.invalid > 0


async def test_exactly_once_two_workers_each_killed_apply_nothing_twice(
    broker, make_topics, tmp_path, fault_report
):
    """Two `--exactly-once` workers, each killed once mid-stream: the survivor's rebalance
    must not commit a batch twice (Faust keeps a kept partition's open transaction across
    the rebalance; `streams.worker.assignment.abort_uncommitted` drops it), and no worker
    may apply records twice that Faust delivers twice around its seek to the committed
    offsets (`streams.worker.batcher.Batcher`: 236 repeated change ids in one CI run)."""
    names = await make_topics(partitions=4)
    settings = settings_for(broker.url, names)
    records = make_stream(8_000, 400, seed=17, duplicates=0.0, garbage_every=0)
    # No sweeps: the stream is months old, and a tick would be one more inbound event.
    extra = ("--exactly-once", "--sweep-interval", "3600")
    group = [
        Worker(broker, names, tmp_path, "x1", store="rocksdb", extra=extra),
        Worker(broker, names, tmp_path, "x2", store="memory", extra=extra),
    ]

    async def every_partition_owned() -> bool:
        owned = [await w.owned() for w in group]
        return sorted(p for parts in owned for p in parts) == [0, 1, 2, 3]

    await wait_for(every_partition_owned, 120, "two workers to own every partition")
    publisher = Publisher(broker.bootstrap, names.events, records)
    publisher.start(rate=len(records) / 30.0)
    for fraction, worker in ((0.35, group[0]), (0.7, group[1])):
        await publisher.wait(int(len(records) * fraction), timeout=180)
        worker.kill()
        await asyncio.sleep(1.0)
        worker.start()
    await publisher.wait(timeout=180)
    await wait_for(every_partition_owned, 120, "both workers back")
    gaps, repaired, outcome = await settled_check_repaired(
        settings, "exactly-once, 2 workers", alive=lambda: all(w.alive for w in group)
    )
    logs = [w.tail(2_000_000) for w in group]
    aborted = sum(log.count("aborting the uncommitted transaction") for log in logs)
    # Records Faust delivered twice around its seek to the committed offsets (Batcher).
    refetched = sum(
        int(n) for log in logs for n in re.findall(r"dropped (\d+) records fetched again", log)
    )
    fault_report.add(
        "exactly-once: 2 workers, kill -9 each",
        "2 x kill -9 (one per worker), --exactly-once, read_committed",
        **outcome.counts(),
        gaps=gaps,
        repaired=repaired,
        transactions_aborted_at_revoke=aborted,
        refetched_dropped=refetched,
    )
    assert outcome.problems == []
    assert outcome.history == outcome.valid_ids == len(records) + outcome.ticks
    if outcome.duplicates:  # what the next look at this defect needs from a CI log
        lines = [
            f"{w.name}: {line}"
            for w in group
            for line in w.tail(2_000_000).splitlines()
            if re.search(
                r"revoked|assigned|aborting|transaction|rebalanc|recovery:|start \d|fetched again",
                line,
            )
        ]
        detail = "\n".join([*outcome.repeated, *lines[-60:]])
        raise AssertionError(f"{outcome.duplicates} repeated change ids read_committed:\n{detail}")


STALE_POSITIONS = str(Path(__file__).parent / "stale_positions")


async def test_exactly_once_rebalances_apply_nothing_twice_when_first_positions_are_stale(
    broker, make_topics, tmp_path, fault_report
):
    """An `--exactly-once` worker that another one joins and leaves: the offsets its
    assignments start from must be the ones the last commit wrote. Every OffsetFetch between
    an assignment and its transactional producers' InitProducerId answers none here
    (`stale_positions/sitecustomize.py`: what Kafka answers for a partition's first commit
    still completing, the worst of its stale answers), and the true answers come late: the
    worker must not apply what it fetches from the stale positions meanwhile, applied and
    committed already, or it commits those records' stage changes a second time
    (`streams.worker.assignment.seek_to_complete_commits`)."""
    names = await make_topics(partitions=4)
    settings = settings_for(broker.url, names)
    records = make_stream(3_000, 150, seed=23, duplicates=0.0, garbage_every=0)
    extra = ("--exactly-once", "--sweep-interval", "3600")
    env = {
        "PYTHONPATH": STALE_POSITIONS,
        "LEADFLOW_TEST_STALE_TOPIC": names.events,
        "LEADFLOW_TEST_SLOW_OFFSET_FETCH": "0.3",
    }
    x1 = Worker(broker, names, tmp_path, "x1", store="rocksdb", extra=extra, env=env)
    await x1.ready(4, timeout=120)
    publisher = Publisher(broker.bootstrap, names.events, records)
    publisher.start(rate=len(records) / 20.0)
    await publisher.wait(len(records) // 3, timeout=180)
    x2 = Worker(broker, names, tmp_path, "x2", extra=extra, env=env)  # x1 keeps two
    await wait_for(x2.owned, 120, "x2 to own partitions")
    await publisher.wait(2 * len(records) // 3, timeout=180)
    # Commits go on between rebalances: the seek after one must not send Faust's committed
    # offset back behind a commit made meanwhile (it then committed nothing more, or the
    # outputs ran ahead of the offsets: `streams.internals.BatchingConsumer`).
    await committed_past(settings, publisher, 2 * len(records) // 3)
    x2.terminate()  # x1 takes all four again
    await publisher.wait(timeout=180)
    await x1.ready(4, timeout=120)
    gaps, repaired, outcome = await settled_check_repaired(
        settings, "exactly-once, stale first positions", alive=lambda: x1.alive
    )
    logs = [w.tail(2_000_000) for w in (x1, x2)]
    dropped = r"dropped (\d+) records below the committed"
    below = sum(int(n) for log in logs for n in re.findall(dropped, log))
    fault_report.add(
        "exactly-once: stale first positions",
        "2 rebalances, every first position stale, --exactly-once, read_committed",
        **outcome.counts(),
        gaps=gaps,
        repaired=repaired,
        below_committed_dropped=below,
    )
    assert outcome.problems == []
    assert outcome.history == outcome.valid_ids == len(records) + outcome.ticks
    assert outcome.duplicates == 0, "\n".join(outcome.repeated)
    # Each restore of the table's changelog ended at its partitions' last records
    # (`streams.internals.TailRecovery`), not after Faust's 10 s wait for a marker, and x2,
    # new, restored its partitions from the changelog (Faust knew no end for them), rather
    # than rebuild all their persons from history (a few may be, whose last changelog records
    # went with an aborted transaction).
    assert not any("Aborted tx until highwater" in log for log in logs)
    restored = re.findall(r"recovery: partitions .*?table consistent for (\d+)", logs[1])
    assert restored and int(restored[0]) > 0, x2.tail()


async def test_a_transactional_changelog_is_restored_to_its_last_record_not_its_marker(
    broker, make_topics, monkeypatch
):
    """What `streams.internals.TailRecovery` relies on: Faust's restore reads a partition to
    its last stable offset - 1, a transaction marker a `read_committed` consumer never
    receives (it waited 10 s for it at every assignment), and `changelog_tails` finds the
    last record there is at or before that offset; an aborted transaction's records do not
    count, and where none is within `TAIL` offsets Faust's end stays."""
    names = await make_topics(partitions=2)
    topic = names.history  # two partitions, written here as a changelog is
    p0, p1 = TP(topic, 0), TP(topic, 1)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=topic)
    await producer.start()
    try:
        async with producer.transaction():  # p0: 0-2, marker 3; p1: 0-1, marker 2
            for partition, count in ((0, 3), (1, 2)):
                for _ in range(count):
                    await producer.send_and_wait(topic, b"x", partition=partition)
        async with producer.transaction():  # p1: 3-4, marker 5
            for _ in range(2):
                await producer.send_and_wait(topic, b"x", partition=1)
        await producer.begin_transaction()  # p0: 4-5 aborted, marker 6
        for _ in range(2):
            await producer.send_and_wait(topic, b"x", partition=0)
        await producer.abort_transaction()
    finally:
        await producer.stop()
    reader = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, isolation_level="read_committed")
    await reader.start()
    try:
        stable = await reader.end_offsets([p0, p1])
    finally:
        await reader.stop()
    ends = {p0: stable[p0] - 1, p1: stable[p1] - 1}  # what Faust reads to
    assert ends == {p0: 6, p1: 5}
    settings = settings_for(broker.url, names)
    assert await changelog_tails(settings, ends) == {p0: 2, p1: 4}
    # Faust's end of a partition its consumer has not fetched yet is -1 (no restore at all):
    # the broker is asked for it.
    assert await changelog_tails(settings, {p0: -1, p1: 5}) == {p0: 2, p1: 4}
    empty = TP(names.dead_letters, 0)
    assert await changelog_tails(settings, {empty: -1}) == {}
    monkeypatch.setattr(restore, "TAIL", 2)  # p0's last two offsets: aborted, marker
    assert await changelog_tails(settings, ends) == {p1: 4}


async def test_a_new_producer_of_a_transactional_id_reads_what_its_last_commit_wrote(
    broker, make_topics
):
    """What `streams.worker.assignment.restart_producers` relies on: right after
    `commit_transaction` returns, an OffsetFetch (aiokafka sends no `require_stable`) may
    still answer the offsets from before the commit, but once a new producer of the same
    transactional id has its producer id, the commit is complete: its offsets are what the
    group reads and its records are below the last stable offset."""
    names = await make_topics(partitions=1)
    group, tid = f"{names.events}-group", f"{names.events}-tid"
    source, out = TopicPartition(names.events, 0), TopicPartition(names.history, 0)
    reader = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group)
    committed_reader = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, isolation_level="read_committed"
    )
    raw_reader = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=tid)
    for client in (reader, committed_reader, raw_reader, producer):
        await client.start()
    stale_right_after, rounds = 0, 20
    try:
        for n in range(1, rounds + 1):
            await producer.begin_transaction()
            await producer.send_and_wait(out.topic, b"x", partition=0)
            await producer.send_offsets_to_transaction({source: n}, group)
            await producer.commit_transaction()
            stale_right_after += await reader.committed(source) != n
            await producer.stop()  # what the revoke does now
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=tid)
            await producer.start()
            await producer.begin_transaction()  # waits for InitProducerId, as Faust's does
            assert await reader.committed(source) == n, f"round {n}: offsets still stale"
            stable = (await committed_reader.end_offsets([out]))[out]
            end = (await raw_reader.end_offsets([out]))[out]
            assert stable == end, f"round {n}: last stable offset {stable}, end {end}"
            await producer.abort_transaction()
    finally:
        for client in (reader, committed_reader, raw_reader, producer):
            await client.stop()
    print(f"\nstale offsets right after commit_transaction: {stale_right_after} of {rounds}")


async def _reemissions(bootstrap: str, names: TopicNames) -> int:
    """Stage changes re-emitted because upstream sent an event id again: per redelivery, the
    changes its first delivery produced."""
    copies: Counter[str] = Counter()
    async for record in iter_to_end(bootstrap, names.events):
        if is_valid(record.key, record.value):
            copies[event_id(record.value)] += 1
    changes = {
        data["event"]["event_id"]: len(data["changes"])
        for data in (orjson.loads(r.value) for r in await read_to_end(bootstrap, names.history))
    }
    return sum((n - 1) * changes.get(e, 0) for e, n in copies.items() if n > 1)


async def test_changelog_restore_of_100k_persons_with_the_store_deleted(
    broker, make_topics, tmp_path, fault_report
):
    """Faust restores the deleted RocksDB store from the changelog; history agrees with it."""
    persons = 100_000
    names = await make_topics(partitions=4)
    settings = settings_for(broker.url, names)
    records = [
        encode_event(
            {
                "event_id": f"e{i}",
                "person_id": f"p{i}",
                "type": "webinar_attended",
                "occurred_at": f"2026-0{1 + i % 9}-1{i % 10}T10:00:00Z",
                "source": "webinar",
                "profile": {"seniority": "vp", "industry": "software", "employees": 300},
            }
        )
        for i in range(persons)
    ]
    worker = Worker(broker, names, tmp_path, "restore", store="rocksdb")
    await worker.ready(timeout=120)
    publisher = Publisher(broker.bootstrap, names.events, records)
    publisher.start(rate=50_000)
    await publisher.wait(timeout=300)

    async def all_processed() -> bool:
        _, health = await asyncio.to_thread(worker.request, "/healthz", token=None)
        return isinstance(health, dict) and health.get("events_processed", 0) >= persons

    await wait_for(all_processed, 300, f"the worker to process {persons:,} events")
    changelog = changelog_spec(settings).name
    await wait_for(
        lambda: _count(broker.bootstrap, changelog, at_least=persons),
        60,
        "every person's state on the changelog",
    )
    assert worker.terminate() == 0
    shutil.rmtree(worker.data)  # the RocksDB store is gone: Faust restores from the changelog
    restarted = time.monotonic()
    worker.start(store="rocksdb")
    await worker.ready(timeout=300)
    restore_s = time.monotonic() - restarted
    log = worker.tail(400_000)
    recovery = re.findall(r"recovery: (.*)", log)
    assert recovery, log[-3000:]
    rebuilt = re.findall(r"rebuilt (\d+)", recovery[-1])
    print(f"\nrestore of {persons:,} persons: ready after {restore_s:.1f}s; {recovery[-1]}")
    assert rebuilt == ["0"], f"the changelog restore disagreed with history: {recovery[-1]}"

    # The restored states decide the next events as a replay of history does.
    more = make_stream(2_000, 500, seed=43, id_prefix="after-", garbage_every=0)
    Publisher(broker.bootstrap, names.events, more).start(rate=5_000)
    gaps, _, outcome = await settled_check_repaired(settings, "restore", alive=lambda: worker.alive)
    fault_report.add(
        "changelog restore: store deleted",
        f"{persons:,} persons, RocksDB store deleted, SIGTERM + restart",
        **outcome.counts(),
        restore_s=round(restore_s, 1),
        rss_end_mb=worker.rss_mb(),
    )
    assert outcome.problems == [] and gaps == 0


async def _written(bootstrap: str, topic: str) -> int:
    """How many records were ever written to `topic` (its end offsets: compaction keeps
    them, where a read of a compacted topic returns fewer records)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic) or ())]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def _count(bootstrap: str, topic: str, *, at_least: int) -> bool:
    return await _written(bootstrap, topic) >= at_least


async def test_broker_kill_9_and_restart_with_its_data_worker_rides_it_out(
    private_broker, new_topic_names, tmp_path, fault_report
):
    broker = private_broker
    names = new_topic_names()
    settings = settings_for(broker.url, names)
    await ensure_topics(broker.bootstrap, topic_specs(names, 4, 1))
    records = make_stream(12_000, 1_500, seed=45)
    worker = Worker(broker, names, tmp_path, "w", store="rocksdb")
    await worker.ready(timeout=120)
    publisher = Publisher(broker.bootstrap, names.events, records[:6_000])
    publisher.start(rate=2_000)
    await publisher.wait(at_least=3_000)
    broker.stop(hard=True)  # mid-stream: the publisher and the worker both have records in flight
    down = time.monotonic()
    await asyncio.sleep(4.0)
    broker.start()  # same port, same data
    back = time.monotonic()
    await publisher.wait(timeout=120)
    assert worker.alive, f"the worker exited when the broker restarted: {worker.tail()}"
    await worker.ready(timeout=120)
    resumed = time.monotonic() - back
    rest = Publisher(broker.bootstrap, names.events, records[6_000:])
    rest.start(rate=3_000)
    await rest.wait(timeout=120)
    try:
        gaps, repaired, outcome = await settled_check_repaired(
            settings, "broker restart", alive=lambda: worker.alive
        )
    except AssertionError as error:
        if "not in history after" not in str(error):
            raise
        # Seen once (issue 10 note), not reproduced since: after the broker came back the
        # worker applied nothing more. Only that symptom is expected to fail; a record
        # written twice (a produce retry without idempotence) fails below as it should.
        pytest.xfail(f"open defect: nothing applied after the broker came back: {error}")
    fault_report.add(
        "broker kill -9, data kept",
        f"broker kill -9 mid-stream, back after {back - down:.0f}s (4 s down + restart)",
        **outcome.counts(),
        resumed_s=round(resumed, 1),
        gaps=gaps,
        repaired=repaired,
        rss_end_mb=worker.rss_mb(),
    )
    assert worker.alive and "the broker lost leadflow's topics" not in worker.tail(200_000)
    assert outcome.problems == []
    assert outcome.history == outcome.valid_ids
    # The publisher's producer (not idempotent, as upstream systems often are not) may send
    # a batch again when the broker dies under it: more inbound copies, the same event ids.
    assert outcome.inbound >= len(records) + outcome.ticks


# Compaction runs only on rolled segments: these topics roll every 200 ms so the cleaner
# (log.cleaner.backoff.ms=1000 on the test broker) gets to them within the test. Everything
# else is the spec leadflow creates them with.
FAST_ROLL = {"segment.ms": "200", "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "0"}


async def test_policies_and_changelog_keep_the_latest_record_per_key(
    broker, new_topic_names, tmp_path
):
    names = new_topic_names()
    settings = settings_for(broker.url, names)
    specs = [*topic_specs(names, 4, 1), changelog_spec(settings)]
    compacted = {names.policies, changelog_spec(settings).name}
    fast = [
        s._replace(configs={**s.configs, **FAST_ROLL}) if s.name in compacted else s for s in specs
    ]
    assert all(s.configs["cleanup.policy"] == "compact" for s in fast if s.name in compacted)
    await ensure_topics(broker.bootstrap, fast)

    # The policies topic: each of three policies published four times (worker restarts).
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        presets = [load_preset(name) for name in ("default", "growth", "mature")]
        for _ in range(4):
            for policy in presets:
                key, value = policy_record(policy)
                await producer.send_and_wait(names.policies, value, key=key)
            await asyncio.sleep(0.3)  # a new segment per round
    finally:
        await producer.stop()

    # The changelog: a worker writes each person's state once per batch it touches them in.
    # No sweeps: a tick would write new states while the test waits for the cleaner.
    worker = Worker(broker, names, tmp_path, "w", extra=("--sweep-interval", "3600"))
    await worker.ready(timeout=120)
    stream = make_stream(3_000, 60, seed=47, garbage_every=0, duplicates=0)
    for begin in range(0, len(stream), 300):  # one chunk processed at a time: many states
        publisher = Publisher(broker.bootstrap, names.events, stream[begin : begin + 300])
        publisher.start(rate=10_000)
        await publisher.wait(timeout=60)
        done = begin + len(stream[begin : begin + 300])

        async def chunk_processed(done: int = done) -> bool:
            _, health = await asyncio.to_thread(worker.request, "/healthz", token=None)
            return isinstance(health, dict) and health.get("events_processed", 0) >= done

        await wait_for(chunk_processed, 60, f"the worker to process {done} events")
    changelog = changelog_spec(settings).name
    await wait_for(lambda: _count(broker.bootstrap, changelog, at_least=600), 60, "changelog")
    # The cleaner may already have compacted some of it (segments roll every 200 ms), which
    # keeps the latest record of every key: `latest` is right either way, and the records
    # written are counted by the end offsets (a CI run read 91 of them after the cleaner ran).
    latest = {r.key: r.value for r in await read_to_end(broker.bootstrap, changelog)}
    written = await _written(broker.bootstrap, changelog)
    assert written > 3 * len(latest), f"the test needs many records per person: {written}"
    await asyncio.sleep(0.5)
    await _roll(broker.bootstrap, (names.policies, 1), (changelog, 4))

    async def compacted_to_latest() -> bool:
        records = await read_to_end(broker.bootstrap, changelog)
        policies = await read_to_end(broker.bootstrap, names.policies)
        real = [r for r in records if r.key != b"roll"]
        return (
            len(real) == len(latest)
            and {r.key: r.value for r in real} == latest
            and len([r for r in policies if r.key != b"roll"]) == len(presets)
        )

    await wait_for(compacted_to_latest, 90, "the cleaner to keep only the latest per key")
    kept = await read_to_end(broker.bootstrap, names.policies)
    policies = {r.key.decode(): r.value for r in kept}
    assert {p.version for p in presets} <= policies.keys()
    print(f"\ncompaction: changelog {written} records → {len(latest)}, policies 12 → 3")


async def _roll(bootstrap: str, *topics: tuple[str, int]) -> None:
    """One more record per partition after segment.ms, so the segments holding the real
    records are no longer active (the cleaner never touches the active segment)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, partitions in topics:
            for partition in range(partitions):
                await producer.send_and_wait(topic, b"{}", key=b"roll", partition=partition)
    finally:
        await producer.stop()


async def test_end_offsets_are_the_true_end_and_the_lag_metric_drains(
    broker, make_topics, tmp_path
):
    names = await make_topics(partitions=4)
    records = make_stream(5_000, 500, seed=49, garbage_every=0)
    worker = Worker(broker, names, tmp_path, "lag", store="memory")
    await worker.ready(timeout=120)
    publisher = Publisher(broker.bootstrap, names.events, records)
    publisher.start(rate=20_000)
    await publisher.wait(timeout=60)
    true_end = publisher.ends()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(names.events, p) for p in range(4)]
        listed = {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()
    assert {p: e for p, e in listed.items() if e} == true_end  # Kafka's ListOffsets is right

    async def lag_zero() -> bool:
        _, health = await asyncio.to_thread(worker.request, "/healthz", token=None)
        if not isinstance(health, dict) or health.get("events_processed", 0) < len(records):
            return False
        _, text = await asyncio.to_thread(worker.request, "/metrics", token=None)
        lags = re.findall(r'^leadflow_consumer_lag\{partition="(\d)"\} (\S+)$', text, re.M)
        return len(lags) == 4 and all(float(v) == 0 for _, v in lags)

    await wait_for(lag_zero, 90, "the consumer lag metric to reach 0 on every partition")
