"""The person table's store, one contract over both stores (memory, RocksDB through rocksdict).

What the worker relies on, read from `streams.worker.agent`, `streams.worker.recovery` and
Faust's restore:

* a value written for partition p (the hot path's `internals.write_store`, within the
  partition's stand-in event) is read back by `table.get` for partition p, and a later write
  replaces it; a person never written reads as None (the table's default);
* Faust's changelog restore (`Table.apply_changelog_batch`) puts records in their partition
  and deletes tombstoned keys;
* the persisted changelog offset (`internals.set_persisted_offset`, and the restore's own):
  RocksDB keeps it per partition, so Faust's restore starts after it; memory has none, so the
  restore reads the whole changelog;
* reopened after close, RocksDB keeps the data and the offsets (a restarted worker restores
  only what came since), memory starts empty.

The worker never iterates or deletes from the table itself (recovery overwrites a stale
person), so neither is part of the contract.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import TP
from faust.types.tuples import Message

from streams.internals import set_persisted_offset, write_store, writing_for
from streams.worker.agent import partition_event

PARTITIONS = 2
CHANGELOG = "store-contract-persons-changelog"


class Stores:
    """Opens the person table as `make_app` does, on one data dir, as often as asked."""

    def __init__(self, kind: str, datadir: Path) -> None:
        self.kind, self.datadir = kind, datadir
        self.opened: list[Any] = []

    def open(self) -> Any:
        rocksdb = self.kind == "rocksdb"
        app = faust.App(
            "store-contract",
            store="rocksdb://" if rocksdb else "memory://",
            datadir=str(self.datadir),
        )
        table = app.Table(
            "persons",
            default=None,
            partitions=PARTITIONS,
            options={"driver": "rocksdict"} if rocksdb else None,
            key_type=bytes,
            value_type=bytes,
        )
        assert table.changelog_topic.get_topic_name() == CHANGELOG
        table.stand_ins = {p: partition_event(app, "events", p) for p in range(PARTITIONS)}
        self.opened.append(table)
        return table

    async def close(self, table: Any) -> None:
        await table.data.stop()
        self.opened.remove(table)


@pytest.fixture(params=["memory", "rocksdb"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    made = Stores(request.param, tmp_path)
    yield made
    for table in list(made.opened):
        await made.close(table)


def put(table: Any, partition: int, key: bytes, value: bytes) -> None:
    with writing_for(table.stand_ins[partition]):
        write_store(table, key, value)


def get(table: Any, partition: int, key: bytes) -> bytes | None:
    with writing_for(table.stand_ins[partition]):
        return table.get(key)


def changelog_record(app: faust.App, partition: int, offset: int, key: bytes, value: bytes | None):
    message = Message(CHANGELOG, partition, offset, time.time(), 0, None, key, value, None)
    return faust.Event(app, key, value, None, message)


class TestPersonTableStore:
    def test_a_write_is_read_back_in_its_partition_and_replaced_by_the_next(self, stores):
        table = stores.open()
        assert get(table, 0, b"p1") is None
        put(table, 0, b"p1", b'{"sequence":1}')
        put(table, 1, b"p2", b'{"sequence":4}')
        assert get(table, 0, b"p1") == b'{"sequence":1}'
        assert get(table, 1, b"p2") == b'{"sequence":4}'
        put(table, 0, b"p1", b'{"sequence":2}')
        assert get(table, 0, b"p1") == b'{"sequence":2}'
        assert get(table, 0, b"never-written") is None

    def test_the_changelog_restore_puts_records_in_their_partition_and_applies_tombstones(
        self, stores
    ):
        table = stores.open()
        put(table, 1, b"gone", b"old")
        table.apply_changelog_batch(
            [
                changelog_record(table.app, 0, 10, b"p1", b"v1"),
                changelog_record(table.app, 1, 11, b"p2", b"v2"),
                changelog_record(table.app, 0, 12, b"p1", b"v1b"),
                changelog_record(table.app, 1, 13, b"gone", None),
            ]
        )
        assert get(table, 0, b"p1") == b"v1b"
        assert get(table, 1, b"p2") == b"v2"
        assert get(table, 1, b"gone") is None
        offsets = [table.persisted_offset(TP(CHANGELOG, p)) for p in range(PARTITIONS)]
        assert offsets == ([12, 13] if stores.kind == "rocksdb" else [None, None])

    def test_the_persisted_offset_is_kept_per_partition_by_rocksdb_only(self, stores):
        table = stores.open()
        assert table.persisted_offset(TP(CHANGELOG, 0)) is None
        set_persisted_offset(table, TP(CHANGELOG, 0), 41)
        set_persisted_offset(table, TP(CHANGELOG, 1), 7)
        set_persisted_offset(table, TP(CHANGELOG, 0), 42)
        offsets = [table.persisted_offset(TP(CHANGELOG, p)) for p in range(PARTITIONS)]
        assert offsets == ([42, 7] if stores.kind == "rocksdb" else [None, None])

    async def test_reopened_rocksdb_keeps_data_and_offsets_and_memory_starts_empty(self, stores):
        table = stores.open()
        put(table, 0, b"p1", b"v1")
        put(table, 1, b"p2", b"v2")
        set_persisted_offset(table, TP(CHANGELOG, 1), 99)
        await stores.close(table)

        reopened = stores.open()
        kept = stores.kind == "rocksdb"
        assert get(reopened, 0, b"p1") == (b"v1" if kept else None)
        assert get(reopened, 1, b"p2") == (b"v2" if kept else None)
        assert reopened.persisted_offset(TP(CHANGELOG, 1)) == (99 if kept else None)
