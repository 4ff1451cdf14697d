"""The worker's dedup store, one contract over both stores (memory, rocksdict)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.dedup import key, pack
from streams.worker.dedup_store import DedupStore

DIGEST = b"d" * 16


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    made = DedupStore(None if request.param == "memory" else tmp_path / "dedup")
    made.reset(0)
    made.reset(1)
    yield made
    made.close()


class TestDedupStore:
    def test_an_applied_event_is_found_before_and_after_flush(self, store):
        store.put(0, key("p1", "e1"), pack(DIGEST, 7))
        assert store.get(0, "p1", "e1").sequence == 7
        store.flush()
        assert store.get(0, "p1", "e1").sequence == 7
        assert store.get(0, "p1", "e2") is None
        assert store.get(0, "p2", "e1") is None

    def test_partitions_are_separate(self, store):
        store.put(0, key("p1", "e1"), pack(DIGEST, 1))
        store.flush()
        assert store.get(1, "p1", "e1") is None

    def test_rebuild_keeps_the_first_application_of_an_id(self, store):
        store.put_first(0, key("p1", "e1"), pack(DIGEST, 3))
        store.flush()
        store.put_first(0, key("p1", "e1"), pack(b"x" * 16, 9))
        store.put_first(0, key("p1", "e2"), pack(DIGEST, 4))
        store.put_first(0, key("p1", "e2"), pack(DIGEST, 5))
        store.flush()
        assert store.get(0, "p1", "e1").sequence == 3
        assert store.get(0, "p1", "e2").sequence == 4

    def test_reset_drops_what_the_partition_held(self, store):
        store.put(0, key("p1", "e1"), pack(DIGEST, 1))
        store.put(1, key("p2", "e1"), pack(DIGEST, 1))
        store.flush()
        store.reset(0)
        assert store.get(0, "p1", "e1") is None
        assert store.get(1, "p2", "e1").sequence == 1

    def test_a_released_partition_is_gone(self, store):
        store.put(0, key("p1", "e1"), pack(DIGEST, 1))
        store.release(0)
        with pytest.raises(KeyError):
            store.get(0, "p1", "e1")


def test_rocksdb_store_lives_under_its_directory(tmp_path: Path):
    store = DedupStore(tmp_path / "dedup")
    store.reset(3)
    store.put(3, key("p1", "e1"), pack(DIGEST, 1))
    store.flush()
    assert (tmp_path / "dedup" / "3").is_dir()
    store.release(3)
    assert not (tmp_path / "dedup" / "3").exists()
    store.close()
