"""The faust-streaming / aiokafka / mode internals `streams.internals` (and, for aiokafka's
client, `streams.kafka.client_internals`) relies on, as installed.

Each check names the internal. A failure after an upgrade means: read the upstream function
named in the message, adapt `streams/internals.py` to it, then update the hash or signature
here (and the versions in `streams.internals.CHECKED_VERSIONS` and `pyproject.toml`).
"""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import aiokafka.admin.client
import aiokafka.client
import aiokafka.consumer.consumer
import aiokafka.consumer.fetcher
import aiokafka.producer.producer
import aiokafka.producer.transaction_manager
import aiokafka.protocol.metadata
import faust
import faust.app.base
import faust.stores.rocksdb
import faust.streams
import faust.tables.base
import faust.tables.manager
import faust.tables.recovery
import faust.tables.table
import faust.transport.consumer
import faust.transport.drivers.aiokafka
import faust.worker
import mode.threads
import pytest
from faust.types.tuples import Message

from streams import internals

CHECKED = internals.CHECKED_VERSIONS


def source_hash(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Mirrored:
    """An upstream function leadflow forks, overrides or depends on line by line."""

    internal: str  # what streams.internals does with it
    upstream: Callable[..., Any]
    signature: str
    sha: str


MIRRORED = [
    Mirrored(
        "TailRecovery._build_highwaters wraps it (the restore's end: last stable offset - 1)",
        faust.tables.recovery.Recovery._build_highwaters,
        "(self, consumer: faust.types.transports.ConsumerT, tps: Set[faust.types.tuples.TP], "
        "destination: Counter[faust.types.tuples.TP], title: str) -> None",
        "91b4cc0d3724ae7b",
    ),
    Mirrored(
        "TailRecovery ends what it waits for (two 5 s empty polls, then `detect_aborted_tx`)",
        faust.tables.recovery.Recovery._slurp_changelogs.fun,
        "(self) -> None",
        "7825c7e50f766d5a",
    ),
    Mirrored(
        "TailTableManager.recovery overrides it (makes the Recovery service once)",
        faust.tables.manager.TableManager.recovery.fget,
        "(self) -> faust.tables.recovery.Recovery",
        "f0bf5de78b4c3d23",
    ),
    Mirrored(
        "BatchingConsumer._drain_messages forks it",
        faust.transport.consumer.Consumer._drain_messages,
        "(self, fetcher: mode.types.services.ServiceT) -> None",
        "44a2500309e83c63",
    ),
    Mirrored(
        "BatchingApp._new_transport overrides it",
        faust.app.base.App._new_transport,
        "(self) -> faust.types.transports.TransportT",
        "42db531312dd776f",
    ),
    Mirrored(
        "aiokafka_producer calls it",
        faust.transport.drivers.aiokafka.Producer._ensure_producer,
        "(self) -> aiokafka.producer.producer.AIOKafkaProducer",
        "5592a4bbdf251325",
    ),
    Mirrored(
        "set_fetch_max_wait calls it",
        faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._ensure_consumer,
        "(self) -> aiokafka.consumer.consumer.AIOKafkaConsumer",
        "ff4a4c693b7ec63f",
    ),
    Mirrored(
        "set_fetch_max_wait sets the attribute it reads (_fetch_max_wait_ms)",
        aiokafka.consumer.fetcher.Fetcher._get_actions_per_node,
        "(self, assignment)",
        "1dab2cf937d165d0",
    ),
    Mirrored(
        "set_persisted_offset mirrors its at-least-once branch",
        faust.tables.base.Collection._on_changelog_sent,
        "(self, fut: faust.types.tuples.FutureMessage) -> None",
        "60122c86a120d82c",
    ),
    Mirrored(
        "write_store is a table write without what this does (the changelog send)",
        faust.tables.table.Table.on_key_set,
        "(self, key: ~KT, value: ~VT) -> None",
        "a370e35ca55c2c7e",
    ),
    Mirrored(
        "write_store_batch does what it does for many keys of one partition",
        faust.stores.rocksdb.Store._set,
        "(self, key: bytes, value: Optional[bytes]) -> None",
        "4227e561e288d941",
    ),
    Mirrored(
        "write_store_batch writes a WriteBatch(raw_mode=True) as it does",
        faust.stores.rocksdb.Store.apply_changelog_batch,
        "(self, batch: Iterable[faust.types.events.EventT], to_key: Callable[[Any], Any], "
        "to_value: Callable[[Any], Any]) -> None",
        "ea3344d369fc4ab5",
    ),
    Mirrored(
        "write_store_batch opens or finds a partition's database through it",
        faust.stores.rocksdb.Store._db_for_partition,
        "(self, partition: int) -> Rdict",
        "cb7e67d5f9efc4bc",
    ),
    Mirrored(
        "set_current_event / writing_for mirror it",
        faust.streams.Stream._set_current_event,
        "(self, event: Optional[faust.types.events.EventT] = None) -> None",
        "b9a41294b605ac08",
    ),
    Mirrored(
        "set_current_event relies on tables reading the current event here",
        faust.tables.base.Collection.partition_for_key,
        "(self, key: Any) -> Optional[int]",
        "3b2291811b8dd791",
    ),
    Mirrored(
        "Batcher tracks messages with it (public, but the agent relies on what it does)",
        faust.transport.consumer.Consumer.track_message,
        "(self, message: faust.types.tuples.Message) -> None",
        "217d7f1399a4cd8e",
    ),
    Mirrored(
        "BatchingConsumer.seek_to_committed wraps it (Faust's seek back after a rebalance)",
        faust.transport.consumer.ThreadDelegateConsumer.seek_to_committed,
        "(self) -> Mapping[faust.types.tuples.TP, int]",
        "f1d483b861b0328b",
    ),
    Mirrored(
        "rewind_uncommitted seeks what it skips (no seek without a committed offset > 0)",
        aiokafka.consumer.consumer.AIOKafkaConsumer.seek_to_committed,
        "(self, *partitions)",
        "f6cd85c8b70a4ccf",
    ),
    Mirrored(
        "rewind_uncommitted relies on it seeking through seek_to_committed and reading None",
        faust.transport.consumer.Consumer.perform_seek,
        "(self) -> None",
        "0e8c130ff4b0afd8",
    ),
    Mirrored(
        "rewind_uncommitted guards it: the first acked offset is checked only against a "
        "commit; BatchingConsumer._new_offset takes acked offsets out of its gaps first",
        faust.transport.consumer.Consumer._new_offset,
        "(self, tp: faust.types.tuples.TP) -> Optional[int]",
        "1d2c7ea89a7ad4f1",
    ),
    Mirrored(
        "Batcher drops what its seek delivers twice (events resumed before perform_seek, "
        "with the app's flow already running)",
        faust.tables.recovery.Recovery.on_recovery_completed,
        "(self, generation_id: int = 0) -> None",
        "6ef567acf072e46d",
    ),
    Mirrored(
        "committed_offsets calls it through the consumer thread (one OffsetFetch, None if "
        "never committed)",
        aiokafka.consumer.consumer.AIOKafkaConsumer.committed,
        "(self, partition)",
        "d8706147ab1573ad",
    ),
    Mirrored(
        "seek_to_complete_commits seeks with it (the fetcher's position and _read_offset)",
        faust.transport.consumer.Consumer.seek,
        "(self, partition: faust.types.tuples.TP, offset: int) -> None",
        "b86a9fe05f956b30",
    ),
    Mirrored(
        "restart_producers stops producers through it (pops and stops, no abort)",
        faust.transport.drivers.aiokafka.Producer.stop_transaction,
        "(self, transactional_id: str) -> None",
        "ba24cb80581302aa",
    ),
    Mirrored(
        "restart_producers relies on it starting a producer for every assigned partition",
        faust.transport.consumer.TransactionManager.on_rebalance,
        "(self, assigned: Set[faust.types.tuples.TP], revoked: Set[faust.types.tuples.TP], "
        "newly_assigned: Set[faust.types.tuples.TP]) -> None",
        "2c190b35003af25c",
    ),
    Mirrored(
        "IdempotentProducer overrides it (idempotence only under transactions upstream)",
        faust.transport.drivers.aiokafka.Producer._settings_extra,
        "(self) -> Mapping[str, Any]",
        "a4c7bc41b6382223",
    ),
    Mirrored(
        "forbid_auto_creation swaps the MetadataRequest it builds",
        aiokafka.client.AIOKafkaClient._metadata_update,
        "(self, cluster_metadata, topics)",
        "06dc51ed3e0d38b8",
    ),
    Mirrored(
        "forbid_auto_creation swaps the MetadataRequest it builds",
        aiokafka.admin.client.AIOKafkaAdminClient._get_cluster_metadata,
        "(self, topics: list[str] | None = None) -> aiokafka.protocol.api.Response",
        "a6c7a68344da3851",
    ),
    Mirrored(
        "MetadataRequestNoAutoCreate subclasses it (the flag defaults to true)",
        aiokafka.protocol.metadata.MetadataRequest.__init__,
        "(self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = None)",
        "1c8b379944025961",
    ),
]


@pytest.mark.parametrize("mirrored", MIRRORED, ids=lambda m: m.upstream.__qualname__)
def test_mirrored_upstream_function_is_unchanged(mirrored: Mirrored) -> None:
    name = f"{mirrored.upstream.__module__}.{mirrored.upstream.__qualname__}"
    where = f"(streams.internals: {mirrored.internal}; checked against {CHECKED})"
    signature = str(inspect.signature(mirrored.upstream))
    assert signature == mirrored.signature, f"{name} changed its signature to {signature} {where}"
    sha = source_hash(mirrored.upstream)
    assert sha == mirrored.sha, f"{name} changed (source sha {sha}, was {mirrored.sha}) {where}"


# (internal, class or function whose source must assign or declare it, text that must be there)
ATTRIBUTES = [
    ("ThreadDelegateConsumer._thread", faust.transport.consumer.ThreadDelegateConsumer.__init__,
     "self._thread = self._new_consumer_thread()"),
    ("AIOKafkaConsumer._fetcher", aiokafka.consumer.consumer.AIOKafkaConsumer.start,
     "self._fetcher = Fetcher("),
    ("Fetcher._fetch_max_wait_ms", aiokafka.consumer.fetcher.Fetcher.__init__,
     "self._fetch_max_wait_ms = fetch_max_wait_ms"),
    ("AIOKafkaConsumer._client", aiokafka.consumer.consumer.AIOKafkaConsumer.__init__,
     "self._client = AIOKafkaClient("),
    ("AIOKafkaProducer._txn_manager", aiokafka.producer.producer.AIOKafkaProducer.__init__,
     "self._txn_manager = TransactionManager("),
    ("Producer._transaction_producers", faust.transport.drivers.aiokafka.Producer,
     "_transaction_producers: typing.Dict[str, aiokafka.AIOKafkaProducer] = {}"),
    ("Producer.begin_transaction fills _transaction_producers",
     faust.transport.drivers.aiokafka.Producer.begin_transaction,
     "self._transaction_producers[transactional_id] = transaction_producer"),
    ("Worker.spinner", faust.worker.Worker.__init__,
     "self.spinner = terminal.Spinner(file=self.stdout)"),
    ("Consumer._read_offset", faust.transport.consumer.Consumer.__init__,
     "self._read_offset = defaultdict(lambda: None)"),
    ("Consumer._gap", faust.transport.consumer.Consumer.__init__,
     "self._gap = defaultdict(IntervalTree)"),
    ("Consumer._acked_index", faust.transport.consumer.Consumer.__init__,
     "self._acked_index = defaultdict(set)"),
    ("Consumer._committed_offset (perform_seek sets it from seek_to_committed)",
     faust.transport.consumer.Consumer.perform_seek,
     "self._committed_offset.update(committed_offsets)"),
    ("Consumer._commit_every", faust.transport.consumer.Consumer.__init__,
     "self._commit_every = self.app.conf.broker_commit_every"),
    ("Consumer._n_acked", faust.transport.consumer.Consumer, "_n_acked: int = 0"),
    ("Consumer.ack counts _n_acked", faust.transport.consumer.Consumer.ack,
     "self._n_acked += 1"),
    ("Store._key_index (write_store_batch fills it)", faust.stores.rocksdb.Store.__init__,
     "self._key_index = LRUCache(limit=self.key_index_size)"),
    ("Store.use_rocksdict", faust.stores.rocksdb.Store.__init__,
     "self.use_rocksdict = USE_ROCKSDICT"),
    ("faust.streams._current_event", faust.streams,
     '_current_event = ContextVar("current_event")'),
]  # fmt: skip


@pytest.mark.parametrize("internal, holder, text", ATTRIBUTES, ids=[a[0] for a in ATTRIBUTES])
def test_private_attribute_is_still_where_the_adapter_reads_it(
    internal: str, holder: Any, text: str
) -> None:
    assert text in inspect.getsource(holder), (
        f"{internal}: `{text}` is no longer in {getattr(holder, '__qualname__', holder)}; "
        f"streams.internals relies on it (checked against {CHECKED})"
    )


SIGNATURES = [
    (faust.transport.consumer.Consumer._add_gap,
     "(self, tp: faust.types.tuples.TP, offset_from: int, offset_to: int) -> None"),
    (faust.types.stores.StoreT.set_persisted_offset,
     "(self, tp: faust.types.tuples.TP, offset: int) -> None"),
    (faust.transport.drivers.aiokafka.AIOKafkaConsumerThread.position,
     "(self, tp: faust.types.tuples.TP) -> Optional[int]"),
    (faust.transport.drivers.aiokafka.AIOKafkaConsumerThread.seek_to_beginning,
     "(self, *partitions: aiokafka.structs.TopicPartition) -> None"),
    (aiokafka.client.AIOKafkaClient.fetch_all_metadata, "(self)"),
    (mode.threads.QueueServiceThread.call_thread,
     "(self, fun: Callable[..., collections.abc.Awaitable], *args: Any, **kwargs: Any) -> Any"),
    (aiokafka.producer.transaction_manager.TransactionManager.is_in_transaction, "(self)"),
]  # fmt: skip


@pytest.mark.parametrize(
    "function, expected", SIGNATURES, ids=[s[0].__qualname__ for s in SIGNATURES]
)
def test_called_internal_keeps_its_signature(function: Callable[..., Any], expected: str) -> None:
    signature = str(inspect.signature(function))
    assert signature == expected, (
        f"{function.__module__}.{function.__qualname__} is now {signature}, was {expected}; "
        f"streams.internals calls it (checked against {CHECKED})"
    )


def test_faust_calls_its_consumer_thread_as_committed_offsets_does() -> None:
    # committed_offsets awaits `call_thread` of Faust's consumer thread, a mode
    # QueueServiceThread (the aiokafka consumer runs in that thread's loop)
    thread = faust.transport.drivers.aiokafka.AIOKafkaConsumerThread
    assert issubclass(thread, mode.threads.QueueServiceThread), f"{thread}: no call_thread"


def test_transactional_ids_are_formatted_as_faust_formats_them() -> None:
    upstream = faust.transport.consumer.TransactionManager.transactional_id_format
    assert upstream == "{group_id}-{tpg.group}-{tpg.partition}", (
        f"TransactionManager.transactional_id_format is now {upstream!r}: "
        "streams.internals.transactional_id and parse_transactional_id mirror it"
    )
    tid = internals.transactional_id("leadflow-x", 0, 7)
    group = type("TPG", (), {"group": 0, "partition": 7})()
    assert tid == upstream.format(group_id="leadflow-x", tpg=group)
    assert internals.parse_transactional_id("leadflow-x", tid) == 7
    assert internals.parse_transactional_id("other", tid) is None


def test_the_current_event_is_what_faust_tables_partition_by() -> None:
    assert isinstance(faust.streams._current_event, contextvars.ContextVar)
    app = faust.App("internals-contract", store="memory://")
    table = app.Table("persons", key_type=bytes, value_type=bytes)
    message = Message("events", 5, -1, time.time(), 0, None, None, None, None)
    event = faust.Event(app, None, None, None, message)
    token = internals.set_current_event(event)
    try:
        assert faust.streams.current_event() is event
        assert table.partition_for_key(b"k") == 5
    finally:
        internals.reset_current_event(token)
    assert faust.streams.current_event() is None
    with internals.writing_for(event):
        assert table.partition_for_key(b"k") == 5


@pytest.mark.parametrize("store", ["rocksdb", "memory"])
def test_a_batch_store_write_reads_back_as_table_writes_do(store: str, tmp_path: Any) -> None:
    url = "rocksdb://" if store == "rocksdb" else "memory://"
    app = faust.App(f"internals-batch-{store}", store=url, datadir=str(tmp_path))
    options = {"driver": "rocksdict"} if store == "rocksdb" else None
    table = app.Table("persons", partitions=4, options=options, key_type=bytes, value_type=bytes)
    message = Message("events", 3, -1, time.time(), 0, None, None, None, None)
    with internals.writing_for(faust.Event(app, None, None, None, message)):
        internals.write_store_batch(table, 3, [(b"a", b"1"), (b"b", b"2")])
        internals.write_store(table, b"c", b"3")
        assert [table.data[k] for k in (b"a", b"b", b"c")] == [b"1", b"2", b"3"]
    if store == "rocksdb":
        db = table.data._db_for_partition(3)
        assert db[b"a"] == b"1" and db[b"c"] == b"3"
        assert table.data._key_index[b"b"] == 3
        assert table.data._db_for_partition(0).get(b"a") is None


def test_the_batching_app_builds_the_batching_consumer() -> None:
    app = internals.BatchingApp("internals-contract-transport", broker="kafka://localhost:1")
    assert isinstance(app.transport, internals.BatchingTransport)
    assert app.transport.Consumer is internals.BatchingConsumer


def test_the_producer_is_idempotent_outside_transactions_only_when_the_app_says_so() -> None:
    app = internals.BatchingApp("internals-contract-producer", broker="kafka://localhost:1")
    producer = app.transport.create_producer()
    assert isinstance(producer, internals.IdempotentProducer)
    assert producer._settings_extra() == {}  # Tansu: no idempotent producer
    app.idempotent_producer = True
    assert producer._settings_extra() == {"acks": "all", "enable_idempotence": True}


def test_installed_versions_are_within_the_pins_checked() -> None:
    for package, checked in CHECKED.items():
        installed = metadata.version(package)
        assert installed.split(".")[:2] == checked.split(".")[:2], (
            f"{package} {installed} is installed, streams.internals was checked against "
            f"{checked}: run this file, read what fails, update CHECKED_VERSIONS"
        )
