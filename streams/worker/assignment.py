"""What a worker does when partitions are assigned or revoked: check the table against history
and rebuild the dedup store (`streams.worker.recovery`), replay history into the shadow
policies, release revoked partitions, and with `--exactly-once` abort what a revoked
partition's transaction holds uncommitted."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import faust
import orjson
from faust.types import TP

from events.outbound import HistoryRecord
from lifecycle.policy import named_policy
from lifecycle.shredding import is_sealed, open_record
from streams.internals import (
    committed_offsets,
    open_transactions,
    parse_transactional_id,
    set_fetch_max_wait,
    transactional_ids,
)
from streams.kafka.keys import KeyRing
from streams.kafka.readers import iter_to_end
from streams.kafka.topics import TopicNames, TopicNotFound
from streams.settings import Settings
from streams.worker import metrics
from streams.worker.recovery import recover_partitions
from streams.worker.shadow import Shadow, shadow_topic
from streams.worker.watch import topics_lost

if TYPE_CHECKING:
    from streams.worker.app import LeadflowApp

log = logging.getLogger(__name__)


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


def install_assignment(app: LeadflowApp) -> None:
    """Hang the assignment and revocation handlers on the app."""
    names, lifecycle = app.names, app.lifecycle

    @app.persons.on_recover
    async def check_against_history() -> None:
        # Runs after Faust's own table restore and before the events partitions resume.
        # Faust ignores exceptions from these callbacks, so a failure stops the worker here:
        # processing a partition whose table was not checked could re-decide persons.
        try:
            await take_assignment(app)
        except Exception as error:
            log.exception("recovery from history failed; stopping the worker")
            await app.crash(error)

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: Any, revoked: set[TP], **_: Any) -> None:
        app.feed.clear()
        partitions = {tp.partition for tp in revoked if tp.topic == names.events}
        if app.in_transaction and partitions:
            await abort_uncommitted(app, partitions)
            await restart_producers(app, partitions)
        lifecycle.release(partitions)


async def take_assignment(app: LeadflowApp) -> None:
    """Release what this worker no longer owns; recover what it newly owns."""
    settings, names, lifecycle = app.settings, app.names, app.lifecycle
    shorten_fetch_wait(app, settings.fetch_max_wait_ms)
    assigned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == names.events}
    lifecycle.release(lifecycle.owned - assigned)
    if app.in_transaction:
        await seek_to_complete_commits(app, assigned)
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
    warning = report.plaintext_warning()
    if warning is not None:
        log.warning("recovery: %s", warning)
    if lifecycle.shadows:
        await rebuild_shadows(lifecycle.shadows, new, settings, lifecycle.keys)


async def seek_to_complete_commits(app: LeadflowApp, partitions: set[int]) -> None:
    """`--exactly-once`: read the assigned events partitions' committed offsets again, now
    that each one's transactional producer has its producer id, seek them there before they
    resume, and make each one the partition's floor: the agent processes no record below it
    (`streams.worker.batcher.Batcher`).

    aiokafka reads a new assignment's first positions as soon as it arrives (its fetcher asks
    for the committed offsets of paused partitions too), before Faust starts the assignment's
    transactional producers (`TransactionManager.on_rebalance`), and Faust may seek that
    early as well (its `getmany` seeks to the committed offsets when it finds the flow
    stopped). An OffsetFetch then may still answer what a partition's group offset was before
    its last commit, whose transaction is prepared but not yet complete (see
    `restart_producers`), or nothing for its first commit, and the fetcher starts there (at
    the beginning for nothing). Faust resumes the events partitions before its last seek, and
    what they deliver meanwhile is processed: records whose outputs are committed already,
    taken for redeliveries, so their stage changes are emitted and committed a second time.
    Once the producer of a partition's transactional id has its producer id, the partition's
    last commit is complete (`tests/faults/test_kafka.py`), so the offsets read here are the
    ones that commit wrote. A partition never committed keeps its position: Faust's seek
    sends it back to its beginning (`streams.internals.rewind_uncommitted`).
    """
    consumer, lifecycle = app.consumer, app.lifecycle
    tps = [TP(app.names.events, p) for p in sorted(partitions)]
    for tp, offset in (await committed_offsets(consumer, tps)).items():
        if offset and tp in consumer.assignment():  # still ours: no new rebalance meanwhile
            await consumer.seek(tp, offset)
            lifecycle.floors[tp.partition] = offset


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


async def restart_producers(app: faust.App, partitions: set[int]) -> None:
    """`--exactly-once`: stop the revoked partitions' transactional producers, so that the
    assignment starts a new one for each partition this worker is given (again).

    Faust's revoke commits a partition's transaction, and aiokafka's `commit_transaction`
    returns once the broker has prepared the commit, before the commit is complete: an
    OffsetFetch then (aiokafka sends no `require_stable`) may still return the offsets from
    before it, and a `read_committed` reader stop before its records (measured on Kafka
    4.3.1: 93 of 300 OffsetFetches right after a commit returned were stale, 28 of 300 last
    stable offsets behind). Another worker taking the partition over is safe, because its
    new producer's InitProducerId is answered only once the previous transaction of that id
    is complete (none stale after it: `tests/faults/test_kafka.py`, and aiokafka retries
    `ConcurrentTransactions` in `InitPIDHandler`). A worker keeping the partition kept its
    producer and had no such wait before its history recovery and its seek to the committed
    offsets; now every partition's producer starts anew. `Producer.stop_transaction` is how
    Faust stops the producers of partitions it loses (`TransactionManager.on_rebalance`,
    faust-streaming 0.15.3).
    """
    for tid in transactional_ids(app.producer):
        if parse_transactional_id(app.conf.id, tid) in partitions:
            await app.producer.stop_transaction(tid)


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
