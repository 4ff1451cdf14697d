"""Broker loss: the broker dies mid-stream and comes back on the same port with no data.

A single-node broker losing its disks (Kafka: its data dir is wiped while it is down; Tansu
keeps everything in memory anyway): topics, records, committed offsets and the group are
gone. What the worker does (and a user can
rely on):

* during the outage it stays up: its clients retry and log connection errors;
* within seconds of the broker answering again without leadflow's topics it exits with
  status 3 (`EXIT_TOPICS_LOST`) and says why. It must not hang: left alone, Faust retries
  committing offsets of the vanished events topic forever inside the rebalance, while
  /healthz still says ok (what this test found first). It must not carry on either: its
  table and its producer buffer hold decisions taken from history the broker lost;
* restarted (by its supervisor; here the test), it recreates the topics with their configs
  and the policy record, and its person table follows history, the source of truth, which
  is now empty: no decision is taken from state the broker lost;
* events published after the restart are decided exactly as a replay of the new history
  says (per person sequences from 1), nothing is dead-lettered that should not be;
* its kept RocksDB table is not corrupted: a later kill -9 and restart finds it consistent
  with history (nothing to rebuild) and the next events are still decided correctly.

The worker's clients never ask the broker to auto-create a topic
(`streams.kafka.client_internals.forbid_auto_creation`): Tansu creates one without configs for any
Metadata request naming it, and in one CI run the worker's own consumer recreated the events
topic and the changelog that way in the second before it noticed the loss; restarted, it
refused them for their configs.

The broker dies while the worker has no output in flight. With records in flight, Tansu
breaks itself: the producer's retries reach the restarted broker before the worker exits,
Tansu acks and stores them under the topics that no longer exist, and once the topics are
recreated every produce to offset 0 fails with `AlreadyExists` in its object store (the
restarted worker then stops on the failed delivery, and the partitions stay unreadable
past the collision). On Kafka those retries fail with UNKNOWN_TOPIC_OR_PARTITION (or, with
auto-create on, land in a new topic the worker then refuses at start for its configs).
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from lifecycle.policy import load_preset
from streams.kafka.readers import read_to_end
from streams.kafka.topics import TopicNames, ensure_topics, topic_specs
from streams.worker.watch import EXIT_TOPICS_LOST
from tests.faults.harness import (
    Outcome,
    Publisher,
    make_stream,
    settings_for,
    settled_check,
    wait_settled,
)
from tests.fixtures.worker import Worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OUTAGE_SECONDS = 4.0


@pytest.mark.smoke
async def test_broker_restart_without_data_worker_stays_up_recreates_topics_and_resumes(
    private_broker, new_topic_names, tmp_path, fault_report
):
    broker = private_broker
    names: TopicNames = new_topic_names()
    settings = settings_for(broker.url, names)
    specs = topic_specs(names, 4, 1)
    await ensure_topics(broker.bootstrap, specs)
    started = time.monotonic()

    worker = Worker(broker, names, tmp_path, "w", store="rocksdb")
    await worker.ready()
    rss_start = worker.rss_mb()

    async def publish_and_check(stream: list[tuple[bytes, bytes]]) -> Outcome:
        publisher = Publisher(broker.bootstrap, names.events, stream)
        publisher.start(rate=3_000)
        await publisher.wait(timeout=60)
        gaps, outcome = await settled_check(settings, alive=lambda: worker.alive)
        assert gaps == 0
        return outcome

    # Before: the first part of the stream, applied; then the broker dies.
    before = make_stream(5_000, 800, seed=31, id_prefix="before-")
    publisher = Publisher(broker.bootstrap, names.events, before)
    publisher.start(rate=4_000)
    await publisher.wait(timeout=60)
    assert await wait_settled(settings, alive=lambda: worker.alive) == 0
    await asyncio.sleep(1.0)  # the last batch's stage changes are acked too (20 ms linger)
    broker.stop(hard=True)
    await asyncio.sleep(OUTAGE_SECONDS)
    assert worker.alive, f"the worker died during the broker outage: {worker.tail()}"
    broker.wipe()
    broker.start()  # same port, empty
    back = time.monotonic()

    async def exited() -> bool:
        return not worker.alive

    await wait_for(exited, 60, "the worker to notice that the broker lost its topics")
    noticed = time.monotonic() - back
    assert worker.proc.returncode == EXIT_TOPICS_LOST, worker.tail()
    assert "the broker lost leadflow's topics" in worker.tail(20_000)
    worker.start()  # what its supervisor does; same RocksDB store
    await worker.ready(timeout=90)
    resumed = time.monotonic() - back

    # The recreated topics carry their specs (partitions, retention), and the policy is back.
    await ensure_topics(broker.bootstrap, specs, check_existing=True)

    # After: the same persons again, new event ids. Their lost history is not resurrected:
    # sequences start at 1 and every decision is what replay of the new history predicts.
    after = make_stream(5_000, 800, seed=32, id_prefix="after-")
    outcome = await publish_and_check(after)
    print(
        f"\nbroker loss: worker exited {noticed:.1f}s after the broker came back, processing "
        f"again after {resumed:.1f}s: {outcome.summary()}"
    )
    assert outcome.problems == []
    assert outcome.history == outcome.valid_ids and outcome.inbound == len(after) + outcome.ticks
    assert outcome.expected > 300

    # The kept table: a crash now must find it consistent with the new history.
    worker.kill()
    worker.start()
    await worker.ready(timeout=90)
    recovery = re.findall(r"recovery: .*rebuilt (\d+)", worker.tail(200_000))
    assert recovery and recovery[-1] == "0", f"table inconsistent after the broker loss: {recovery}"
    more = make_stream(1_500, 800, seed=33, id_prefix="later-")
    outcome = await publish_and_check(more)
    print(f"broker loss: after a later restart: {outcome.summary()}")
    policies = await _policy_versions(broker.bootstrap, names)
    fault_report.add(
        "broker loss: restart, data lost",
        f"broker kill -9, {OUTAGE_SECONDS:.0f}s down, back empty; worker kill -9 later",
        **outcome.counts(),
        rss_start_mb=rss_start,
        rss_end_mb=worker.rss_mb(),
        events_before_loss=len(before),
        exited_after_s=round(noticed, 1),
        resumed_s=round(resumed, 1),
        seconds=round(time.monotonic() - started, 1),
    )
    assert outcome.problems == []
    assert outcome.history == outcome.valid_ids
    assert outcome.inbound == len(after) + len(more) + outcome.ticks
    assert load_preset("default").version in policies


async def _policy_versions(bootstrap: str, names: TopicNames) -> set[str]:
    return {r.key.decode() for r in await read_to_end(bootstrap, names.policies) if r.key}
