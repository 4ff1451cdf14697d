"""The Faust app: topics, the person table, the lifecycle agent, the sweeper, health and metrics.

`make_app(settings, policy)` builds everything from settings and nothing else; the worker
command (`streams.worker.run`) creates the topics with their configs *before* the app starts,
because some brokers (Tansu, Kafka with auto-create on) create a missing topic with default
configs on the first metadata request that names it.

Topics are raw bytes: pydantic is not a Faust codec, so the agent decodes with
`events.codec.decode_event` and encodes with orjson.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import faust
from faust.types import TP

from lifecycle.policy import Policy
from streams.internals import BatchingApp, BatchingConsumer, TailTableManager
from streams.kafka import topics
from streams.kafka.client_internals import forbid_auto_creation
from streams.kafka.keys import KeyRing
from streams.kafka.readers import iter_to_end
from streams.kafka.topics import TopicNames, TopicSpec
from streams.settings import Settings
from streams.web.api import Api, install_api
from streams.worker import metrics
from streams.worker.agent import BATCH_SIZE, PartitionProcessor
from streams.worker.assignment import install_assignment, shadows_of
from streams.worker.batcher import Batcher
from streams.worker.dedup_store import DedupStore
from streams.worker.drain import Feed
from streams.worker.outputs import Outputs
from streams.worker.restore import changelog_tails
from streams.worker.sweeper import sweep
from streams.worker.watch import TOPICS_CHECK_INTERVAL, TopicsWatch

log = logging.getLogger(__name__)

#: The person table's name (its changelog is "{app id}-persons-changelog").
PERSON_TABLE = "persons"
LAG_INTERVAL = 5.0
#: Topics are raw bytes (see the module docstring).
RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


def app_id(settings: Settings) -> str:
    """The Faust app id: the consumer group and the prefix of the table's changelog topic."""
    return topics.app_id(settings.topic_prefix)


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
    #: the producer is idempotent outside transactions too (`internals.IdempotentProducer`)
    idempotent_producer: bool = False
    #: where each changelog partition's last record is (`internals.TailRecovery`)
    changelog_tails: Callable[[Mapping[TP, int]], Awaitable[dict[TP, int]]]


def faust_options(settings: Settings) -> dict[str, Any]:
    """The Faust app's settings for a leadflow worker."""
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
        # The table is checked against history after every assignment (streams.worker.recovery);
        # brokers that misreport end offsets (Tansu) must not crash the restore instead.
        "recovery_consistency_check": False,
        # With --exactly-once the restore ends at the changelog's last record, not its marker.
        "TableManager": TailTableManager,
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
    return options


async def _keys_from(
    settings: Settings, lifecycle: PartitionProcessor, positions: Mapping[int, int]
) -> AsyncIterator[Any]:
    """The owned keys partitions from `positions` (0 where none) to their end."""
    owned = sorted(lifecycle.owned)
    async for record in iter_to_end(
        settings.bootstrap,
        settings.topics.keys,
        partitions=owned,
        start={p: positions.get(p, 0) for p in owned},
        client_options=settings.aiokafka_kwargs(),
    ):
        yield record


def make_app(
    settings: Settings,
    policy: Policy,
    *,
    cache_size: int = 100_000,
    batch_size: int = BATCH_SIZE,
    idempotent_producer: bool = False,
) -> LeadflowApp:
    """The composition root: the app, its topics and table, the processor, the agent, the
    assignment handlers, the timers, the pages and the HTTP API. `idempotent_producer`:
    where the broker takes one (`streams.worker.run.prepare` finds out)."""
    forbid_auto_creation()
    names = settings.topics
    app = LeadflowApp(app_id(settings), **faust_options(settings))
    app.settings, app.policy, app.names = settings, policy, names
    app.changelog_tails = functools.partial(changelog_tails, settings)
    app.idempotent_producer = idempotent_producer
    app.events_topic = app.topic(names.events, partitions=settings.partitions, **RAW)
    app.persons = app.Table(
        PERSON_TABLE,
        default=None,
        partitions=settings.partitions,
        options=table_options(settings),
        key_type=bytes,  # bytes keys and values: the "raw" serializer
        value_type=bytes,
    )
    # Applied event ids, beside the table (RocksDB with the rocksdb store); no changelog:
    # recovery rebuilds it from history at every assignment (streams.worker.dedup_store).
    seen = DedupStore(settings.data_dir / "dedup" if settings.store == "rocksdb" else None)
    # Data keys of the owned persons (streams.kafka.keys), loaded from the keys topic by recovery.
    keys = KeyRing(settings.master_keys(), cache_size=cache_size)
    app.lifecycle = PartitionProcessor(
        app, policy, names, app.persons, cache_size=cache_size, seen=seen, keys=keys
    )
    app.lifecycle.key_reader = functools.partial(_keys_from, settings, app.lifecycle)
    app.feed = Feed({names.events})
    install_agent(app, batch_size)
    install_assignment(app)
    install_timers(app)
    install_pages(app)
    app.lifecycle.shadows = shadows_of(settings, names)
    shadows = {s.policy.version: (s.policy, s.topic) for s in app.lifecycle.shadows}
    app.api = install_api(app, shadows)
    return app


def install_agent(app: LeadflowApp, batch_size: int) -> None:
    """The agent subscribes the worker to the events topic (and makes it an acking topic);
    the consumer hands its records to `app.feed` rather than to this stream
    (streams.worker.drain), and the agent body processes the feed."""

    @app.agent(app.events_topic, name="lifecycle", concurrency=1)
    async def lifecycle_agent(stream: faust.StreamT) -> None:
        if not isinstance(app.consumer, BatchingConsumer):
            raise TypeError(f"the worker needs {BatchingConsumer.__name__}, not {app.consumer}")
        await Batcher(app, app.feed, app.lifecycle, size=batch_size).run()


def install_timers(app: LeadflowApp) -> None:
    """The sweeper, the consumer-lag gauge and the topics watch."""
    settings, names, lifecycle = app.settings, app.names, app.lifecycle
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


def install_pages(app: LeadflowApp) -> None:
    """`/healthz` and `/metrics`: open, no personal data."""
    lifecycle = app.lifecycle

    @app.page("/healthz")
    async def healthz(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.json(
            {
                "status": "ok",
                "policy_version": app.policy.version,
                "partitions": sorted(lifecycle.owned),
                "events_processed": lifecycle.processed,
            }
        )

    @app.page("/metrics")
    async def metrics_page(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        body, content_type = metrics.render()
        return web.bytes(body, content_type=content_type)


def table_options(settings: Settings) -> dict[str, object] | None:
    """The person table's store options (Faust's `RocksDBOptions`, public through `Table`):
    rocksdict, and write buffers sized for small values (`Settings.table_write_buffer_mb`)."""
    if settings.store != "rocksdb":
        return None
    return {
        "driver": "rocksdict",
        "write_buffer_size": settings.table_write_buffer_mb * 1024 * 1024,
        "max_write_buffer_number": 2,
    }
