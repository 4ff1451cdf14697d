"""The Faust app: topics, the person table, the lifecycle agent, the sweeper, health and metrics.

`make_app(settings, policy)` builds everything from settings and nothing else; the worker
command (`streams.worker`) creates the topics with their configs *before* the app starts,
because some brokers (Tansu, Kafka with auto-create on) create a missing topic with default
configs on the first metadata request that names it.

Topics are raw bytes: pydantic is not a Faust codec, so the agent decodes with
`events.codec.decode_event` and encodes with orjson.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any, NoReturn

import faust
import orjson
from aiokafka import AIOKafkaClient
from faust.types import TP

from events.outbound import HistoryRecord
from lifecycle.policy import Policy, named_policy
from lifecycle.shredding import is_sealed, open_record
from streams import metrics, topics
from streams.agent import BATCH_SIZE, Batcher, PartitionProcessor
from streams.api import Api, install_api
from streams.dedup_store import DedupStore
from streams.drain import Feed
from streams.internals import (
    BatchingApp,
    BatchingConsumer,
    forbid_auto_creation,
    open_transactions,
    parse_transactional_id,
    set_fetch_max_wait,
)
from streams.keys import KeyRing
from streams.outputs import Outputs
from streams.recovery import recover_partitions
from streams.settings import Settings
from streams.shadow import Shadow, shadow_topic
from streams.sweeper import sweep
from streams.topics import TopicNames, TopicNotFound, TopicSpec, iter_to_end

log = logging.getLogger(__name__)

#: The person table's name (its changelog is "{app id}-persons-changelog").
PERSON_TABLE = "persons"
LAG_INTERVAL = 5.0
#: Seconds between checks that the broker still has leadflow's topics (see `TopicsWatch`).
TOPICS_CHECK_INTERVAL = 3.0
#: Exit status of a worker whose broker lost its topics: restart it (see `topics_lost`).
EXIT_TOPICS_LOST = 3


def app_id(settings: Settings) -> str:
    """The Faust app id: the consumer group and the prefix of the table's changelog topic."""
    return topics.app_id(settings.topic_prefix)


def shorten_fetch_wait(app: faust.App, wait_ms: int) -> None:
    """Set the worker consumer's fetch wait, which Faust hard-codes to 1,500 ms.

    Kafka answers a fetch as soon as data arrives, so the wait only bounds idle polls there;
    Tansu holds every fetch for the whole wait (measured: 715 ms median per hop at 1,500 ms,
    16 ms at 100 ms), which made it most of the event → stage change latency. Read by
    aiokafka's fetcher for every request, so setting it on a running consumer takes effect
    at the next fetch.
    """
    if not set_fetch_max_wait(app, wait_ms):  # another transport: keep its default
        log.warning("cannot set the fetch wait on %s", type(app.consumer).__name__)


def changelog_spec(settings: Settings) -> TopicSpec:
    """The person table's changelog, created with the other topics (compacted, same count)."""
    spec = topics.changelog_spec(settings.topic_prefix, settings.partitions, settings.replication)
    expected = f"{app_id(settings)}-{PERSON_TABLE}-changelog"
    assert spec.name == expected, "PERSON_TABLE and CHANGELOG_SUFFIX differ"
    return spec


def credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """SASL / SSL settings in the form Faust takes them (None for PLAINTEXT)."""
    context = settings.ssl_context()
    if settings.security_protocol.startswith("SASL"):
        password = settings.sasl_password.get_secret_value() if settings.sasl_password else None
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=password,
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


class LeadflowApp(BatchingApp):
    """The Faust app and the parts of leadflow hung on it (for the worker, the API, tests)."""

    settings: Settings
    policy: Policy
    names: TopicNames
    events_topic: faust.TopicT
    persons: Any  # faust Table of person id (bytes) → PersonState.to_wire() JSON (bytes)
    lifecycle: PartitionProcessor
    api: Api
    feed: Feed


def make_app(
    settings: Settings,
    policy: Policy,
    *,
    cache_size: int = 100_000,
    batch_size: int = BATCH_SIZE,
) -> LeadflowApp:
    forbid_auto_creation()
    names = settings.topics
    options: dict[str, Any] = {
        "broker": settings.broker,
        "broker_session_timeout": settings.session_timeout,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication,
        "store": "rocksdb://" if settings.store == "rocksdb" else "memory://",
        "datadir": str(settings.data_dir),
        "web_enabled": True,
        "web_bind": settings.web_host,
        "web_port": settings.web_port,
        # /table/… would serve person data without a token.
        "web_tables_enabled": False,
        "consumer_auto_offset_reset": "earliest",
        # The table is checked against history after every assignment (streams.recovery);
        # brokers that misreport end offsets (Tansu) must not crash the restore instead.
        "recovery_consistency_check": False,
        "processing_guarantee": "exactly_once" if settings.exactly_once else "at_least_once",
        # In a transaction the agent commits each batch with its outputs (Batcher): Faust's
        # timed and counted commits would commit outputs of a batch still in flight.
        **(
            {"broker_commit_interval": 24 * 3600.0, "broker_commit_every": 10**9}
            if settings.exactly_once
            else {}
        ),
        # Each event publishes ~2 KB (history record, table changelog): Faust's default 16 KB
        # batches meant a produce request every few events.
        "producer_linger_ms": 20,
        "producer_max_batch_size": 512 * 1024,
    }
    if settings.web_host not in ("0.0.0.0", "::", ""):
        options["web_host"] = settings.web_host
    if settings.canonical_url:
        options["canonical_url"] = settings.canonical_url  # how other workers reach this one
    creds = credentials(settings)
    if creds is not None:
        options["broker_credentials"] = creds
    app = LeadflowApp(app_id(settings), **options)
    app.settings, app.policy, app.names = settings, policy, names

    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    app.events_topic = app.topic(names.events, partitions=settings.partitions, **raw)
    app.persons = app.Table(
        PERSON_TABLE,
        default=None,
        partitions=settings.partitions,
        options={"driver": "rocksdict"} if settings.store == "rocksdb" else None,
        key_type=bytes,  # bytes keys and values: the "raw" serializer
        value_type=bytes,
    )
    # Applied event ids, beside the table (RocksDB with the rocksdb store); no changelog:
    # recovery rebuilds it from history at every assignment (streams.dedup_store).
    seen = DedupStore(settings.data_dir / "dedup" if settings.store == "rocksdb" else None)
    # Data keys of the owned persons (streams.keys), loaded from the keys topic by recovery.
    keys = KeyRing(settings.master_keys(), cache_size=cache_size)
    lifecycle = app.lifecycle = PartitionProcessor(
        app, policy, names, app.persons, cache_size=cache_size, seen=seen, keys=keys
    )

    app.feed = Feed({names.events})

    # The agent subscribes the worker to the events topic (and makes it an acking topic);
    # the consumer hands its records to `app.feed` rather than to this stream
    # (streams.drain), and the agent body processes the feed.
    @app.agent(app.events_topic, name="lifecycle", concurrency=1)
    async def lifecycle_agent(stream: faust.StreamT) -> None:
        if not isinstance(app.consumer, BatchingConsumer):
            raise TypeError(f"the worker needs {BatchingConsumer.__name__}, not {app.consumer}")
        await Batcher(app, app.feed, lifecycle, size=batch_size).run()

    @app.persons.on_recover
    async def check_against_history() -> None:
        # Runs after Faust's own table restore and before the events partitions resume.
        # Faust ignores exceptions from these callbacks, so a failure stops the worker here:
        # processing a partition whose table was not checked could re-decide persons.
        try:
            await take_assignment()
        except Exception as error:
            log.exception("recovery from history failed; stopping the worker")
            await app.crash(error)

    async def take_assignment() -> None:
        shorten_fetch_wait(app, settings.fetch_max_wait_ms)
        assigned = {
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == names.events
        }
        lifecycle.release(lifecycle.owned - assigned)
        new = assigned - lifecycle.owned
        if not new:
            return
        try:
            report = await recover_partitions(
                lifecycle,
                new,
                bootstrap=settings.bootstrap,
                client_options=settings.aiokafka_kwargs(),
            )
        except TopicNotFound as missing:
            topics_lost([str(missing)])
        metrics.REBUILT.inc(report.rebuilt)
        log.info("recovery: %s", report.summary())
        if lifecycle.shadows:
            await rebuild_shadows(lifecycle.shadows, new, settings, lifecycle.keys)

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: Any, revoked: set[TP], **_: Any) -> None:
        app.feed.clear()
        partitions = {tp.partition for tp in revoked if tp.topic == names.events}
        if app.in_transaction and partitions:
            await abort_uncommitted(app, partitions)
        lifecycle.release(partitions)

    sweeper_outputs = Outputs(app, names.events)

    @app.timer(settings.sweep_interval, name="sweeper")
    async def sweeper() -> None:
        await sweep(lifecycle, sweeper_outputs)

    @app.timer(LAG_INTERVAL, name="consumer_lag")
    async def consumer_lag() -> None:
        consumer = app.consumer
        for partition in list(lifecycle.owned):
            last = lifecycle.offsets.get(partition)
            highwater = consumer.highwater(TP(names.events, partition))
            if last is not None and highwater is not None:
                metrics.CONSUMER_LAG.labels(str(partition)).set(max(highwater - last - 1, 0))

    watch = TopicsWatch(settings, (names.events, names.history), TOPICS_CHECK_INTERVAL)

    @app.task
    async def start_topics_watch() -> None:
        watch.start()

    @app.on_before_shutdown.connect
    async def stop_topics_watch(sender: Any, **_: Any) -> None:
        await asyncio.to_thread(watch.stop)

    @app.page("/healthz")
    async def healthz(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.json(
            {
                "status": "ok",
                "policy_version": policy.version,
                "partitions": sorted(lifecycle.owned),
                "events_processed": lifecycle.processed,
            }
        )

    @app.page("/metrics")
    async def metrics_page(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        body, content_type = metrics.render()
        return web.bytes(body, content_type=content_type)

    lifecycle.shadows = shadows_of(settings, names)
    app.api = install_api(app, {s.policy.version: (s.policy, s.topic) for s in lifecycle.shadows})
    return app


async def abort_uncommitted(app: faust.App, partitions: set[int]) -> None:
    """`--exactly-once`: abort what the revoked partitions' transactions hold uncommitted.

    Called after Faust's own revoke commit and producer flush. Faust commits a partition's
    transaction only with new acked offsets, and its revoke waits for acks at most a second
    at a time; a batch still in flight then stays in the open transaction. For a partition
    this worker is assigned again, Faust keeps that producer and its open transaction
    (`begin_transaction` fails with an invalid state transition, logged and ignored): the
    batch is processed again from the committed offset, from a state rebuilt from committed
    history, into the same transaction, and both copies are committed together (found on
    Kafka: two workers, one kill -9, 338 history records twice). Aborting here drops the
    first copy, whose inputs were never committed. Faust's producers and transactional ids
    are read through `streams.internals`.
    """
    for tid in open_transactions(app.producer):
        # every topic group of a revoked partition
        if parse_transactional_id(app.conf.id, tid) in partitions:
            log.info("aborting the uncommitted transaction %s of a revoked partition", tid)
            await app.producer.abort_transaction(tid)


def shadows_of(settings: Settings, names: TopicNames) -> list[Shadow]:
    """The candidate policies of `--shadow`, each with its own stage-change topic."""
    return [Shadow(p, shadow_topic(names, p)) for p in map(named_policy, settings.shadow)]


async def rebuild_shadows(
    shadows: list[Shadow], partitions: set[int], settings: Settings, keys: KeyRing
) -> None:
    """Shadow states are memory only: replay the newly owned history partitions into them."""
    started, count = time.monotonic(), 0
    async for record in iter_to_end(
        settings.bootstrap,
        settings.topics.history,
        partitions=sorted(partitions),
        client_options=settings.aiokafka_kwargs(),
    ):
        if is_sealed(record.value):  # personal fields back, as the live shadows read them
            data = orjson.loads(record.value)
            data = open_record(data, keys.get(data["person_id"]), texts=False)
            event = HistoryRecord.model_validate(data).event
        else:
            event = HistoryRecord.model_validate_json(record.value).event
        for shadow in shadows:
            shadow.apply(event)
        count += 1
    log.info("shadows: replayed %d history records in %.2fs", count, time.monotonic() - started)


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
    (`streams.recovery`), starts from what the broker holds now.
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
