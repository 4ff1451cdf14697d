"""The worker's dedup store: one entry per applied event, beside the person table.

Keyed by (person, event id) (`lifecycle.dedup.key`), valued with the event's content digest,
the history sequence it got and the changes it produced (`lifecycle.dedup.pack`): ~50 bytes
per event plus ~450 per stage change, on disk. With `--store rocksdb` each owned partition
has its own RocksDB (rocksdict) under `<data dir>/dedup/<partition>`, so memory stays bounded
(RocksDB's write buffer and block cache, not one entry per event); with `--store memory` a
dict per partition, like the memory person table.

It has no changelog. At every assignment recovery rebuilds a partition's store from the
history partition it reads anyway (`streams.worker.recovery`): history is the source of truth, and
an entry written for a batch whose history record was never acked (a crash in between) must
not survive, or the redelivered event would be taken for a duplicate and never applied.
Retention: forever, like history.

The agent's writes wait in memory until `flush()` (once per batch, one RocksDB write batch per
partition); `get` sees them at once, so a redelivery within the same batch is caught too.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import rocksdict

from lifecycle.dedup import Seen, key, unpack

#: RocksDB memory per partition: write buffer and block cache (bloom filters keep misses,
#: the common case, off the disk).
WRITE_BUFFER_BYTES = 8 * 1024 * 1024
BLOCK_CACHE_BYTES = 8 * 1024 * 1024


def _options() -> rocksdict.Options:
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    table = rocksdict.BlockBasedOptions()
    table.set_bloom_filter(10, True)
    table.set_block_cache(rocksdict.Cache(BLOCK_CACHE_BYTES))
    options.set_block_based_table_factory(table)
    return options


class DedupStore:
    """Applied event ids of the partitions this worker owns (RocksDB, or memory if no dir)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._dbs: dict[int, Any] = {}  # partition -> Rdict, or dict in memory
        self._pending: dict[int, dict[bytes, bytes]] = {}

    def _path(self, partition: int) -> Path:
        assert self.directory is not None
        return self.directory / str(partition)

    def reset(self, partition: int) -> None:
        """An empty store for `partition` (what was there is dropped): recovery refills it."""
        self.release(partition)
        if self.directory is None:
            self._dbs[partition] = {}
        else:
            path = self._path(partition)
            shutil.rmtree(path, ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dbs[partition] = rocksdict.Rdict(str(path), _options())
        self._pending[partition] = {}

    def release(self, partition: int) -> None:
        """Close and drop a partition's store (its persons moved to another worker)."""
        self._pending.pop(partition, None)
        db = self._dbs.pop(partition, None)
        if db is not None and self.directory is not None:
            db.close()
            shutil.rmtree(self._path(partition), ignore_errors=True)

    def get(self, partition: int, person_id: str, event_id: str) -> Seen | None:
        """What the person's event id did when it was applied, or None if it never was."""
        k = key(person_id, event_id)
        value = self._pending[partition].get(k)
        if value is None:
            value = self._dbs[partition].get(k)
            if value is None:
                return None
        return unpack(value)

    def put(self, partition: int, k: bytes, value: bytes) -> None:
        """Record an applied event (written at the next `flush()`)."""
        self._pending[partition][k] = value

    def put_first(self, partition: int, k: bytes, value: bytes) -> None:
        """Record an event from history unless an earlier record of the same id is there.

        History written before exact dedup may hold an old redelivery applied twice; the
        first application is the one a later redelivery answers with.
        """
        pending = self._pending[partition]
        if k in pending or self._dbs[partition].get(k) is not None:
            return
        pending[k] = value
        if len(pending) >= 10_000:
            self.flush()

    def flush(self) -> None:
        """Write what `put` collected: one write batch per partition."""
        for partition, pending in self._pending.items():
            if not pending:
                continue
            db = self._dbs[partition]
            if self.directory is None:
                db.update(pending)
            else:
                batch = rocksdict.WriteBatch(raw_mode=True)
                for k, value in pending.items():
                    batch.put(k, value)
                db.write(batch)
            self._pending[partition] = {}

    def __len__(self) -> int:
        """Entries in memory stores (RocksDB: an estimate), for tests and metrics."""
        total = 0
        for partition, db in self._dbs.items():
            total += len(self._pending[partition])
            if self.directory is None:
                total += len(db)
            else:
                total += int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
        return total

    def close(self) -> None:
        self.flush()
        for db in self._dbs.values():
            if self.directory is not None:
                db.close()
        self._dbs.clear()
        self._pending.clear()
