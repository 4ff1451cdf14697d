"""Imported at start by a worker whose PYTHONPATH holds this directory (tests only): for the
topic named by LEADFLOW_TEST_STALE_TOPIC, the group's committed offsets are read as a broker
still completing the last commit answers them, from the moment an assignment arrives until
Faust has started that assignment's transactional producers.

On Kafka an OffsetFetch right after `commit_transaction` returns may still answer the offsets
from before that commit (`tests/faults/test_kafka.py`: several in ten), or none for a
partition's first commit, and the first OffsetFetch of an assignment goes out as soon as it
arrives (aiokafka's fetcher asks for the first positions), before the producers' InitProducerId,
which waits for the commit to be complete. Here every OffsetFetch of that window answers
none (the beginning, with the worker's reset policy), the worst a stale answer can be, and
every one after it answers the truth, LEADFLOW_TEST_SLOW_OFFSET_FETCH seconds late (a loaded
broker), so a race a loaded broker loses now and then is lost at every rebalance.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiokafka.consumer import group_coordinator
from faust.transport import consumer as faust_consumer

_TOPIC = os.environ.get("LEADFLOW_TEST_STALE_TOPIC")
_SLOW = float(os.environ.get("LEADFLOW_TEST_SLOW_OFFSET_FETCH", "0"))
_fenced = False  # the current assignment's transactional producers have their producer ids

_on_join_complete = group_coordinator.GroupCoordinator._on_join_complete
_fetch = group_coordinator.GroupCoordinator._do_fetch_commit_offsets
_on_rebalance = faust_consumer.TransactionManager.on_rebalance


async def _join_complete(self: Any, *args: Any, **kwargs: Any) -> Any:
    global _fenced
    _fenced = False
    return await _on_join_complete(self, *args, **kwargs)


async def _producers_started(self: Any, *args: Any, **kwargs: Any) -> Any:
    global _fenced
    result = await _on_rebalance(self, *args, **kwargs)
    _fenced = True
    return result


async def _fetch_committed(self: Any, partitions: Any) -> Any:
    offsets = await _fetch(self, partitions)
    if not any(tp.topic == _TOPIC for tp in partitions):
        return offsets
    if not _fenced:
        return {tp: offset for tp, offset in offsets.items() if tp.topic != _TOPIC}
    await asyncio.sleep(_SLOW)
    return offsets


if _TOPIC:
    group_coordinator.GroupCoordinator._on_join_complete = _join_complete
    group_coordinator.GroupCoordinator._do_fetch_commit_offsets = _fetch_committed
    faust_consumer.TransactionManager.on_rebalance = _producers_started
