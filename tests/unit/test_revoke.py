"""`--exactly-once` at revocation: what a revoked partition's transactional producer holds
uncommitted is aborted, and every revoked partition's producer is stopped, so that the next
assignment starts a new one (its InitProducerId waits for the previous transaction of that id
to complete: `tests/faults/test_kafka.py` checks that on Kafka)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streams.worker.assignment import abort_uncommitted, restart_producers


class Transactional:
    """An aiokafka transactional producer as the adapter reads it (`_txn_manager`)."""

    def __init__(self, open_: bool) -> None:
        self.open = open_
        self._txn_manager = SimpleNamespace(is_in_transaction=lambda: self.open)


class FaustProducer:
    """Faust's producer: transactional producers by id, abort and stop by id."""

    def __init__(self, producers: dict[str, Transactional]) -> None:
        self._transaction_producers = producers
        self.calls: list[str] = []

    async def abort_transaction(self, tid: str) -> None:
        self.calls.append(f"abort {tid}")
        self._transaction_producers[tid].open = False

    async def stop_transaction(self, tid: str) -> None:
        self.calls.append(f"stop {tid}")
        self._transaction_producers.pop(tid, None)


def app(producers: dict[str, Transactional]) -> Any:
    return SimpleNamespace(producer=FaustProducer(producers), conf=SimpleNamespace(id="app"))


async def test_revoked_partitions_are_aborted_then_their_producers_stopped() -> None:
    a = app(
        {
            "app-1-0": Transactional(open_=True),  # events partition 0, a batch in flight
            "app-1-1": Transactional(open_=False),  # committed by Faust's revoke
            "app-0-0": Transactional(open_=False),  # the leader topic (its partition 0)
            "app-1-2": Transactional(open_=True),  # not revoked
        }
    )
    await abort_uncommitted(a, {0, 1})
    await restart_producers(a, {0, 1})
    assert a.producer.calls == ["abort app-1-0", "stop app-1-0", "stop app-1-1", "stop app-0-0"]
    assert list(a.producer._transaction_producers) == ["app-1-2"]


async def test_other_apps_transactional_ids_are_left_alone() -> None:
    a = app({"other-1-0": Transactional(open_=True), "app-x": Transactional(open_=True)})
    await abort_uncommitted(a, {0})
    await restart_producers(a, {0})
    assert a.producer.calls == []
