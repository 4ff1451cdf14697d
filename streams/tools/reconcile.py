"""Reconcile: find inbound events the worker committed but never applied, and re-drive them.

The worker's guarantee is "every inbound record below the consumer group's committed offset
has its effect on the history topic (or is dead-lettered)". Faust and some brokers can break
it: a record skipped around a rebalance can still be acked and committed (faust-streaming
issues 596 and 216; once 40 of 20,000 events on Tansu). Nothing downstream would notice, so
this module checks the guarantee directly:

* committed offsets of the worker's group (the Faust app id), read FIRST: everything below
  them had its outputs acked before the commit, so the history read afterwards holds it;
* the history topic: the (person, event id) pairs that were applied (a redelivery shares the
  original's; an event forwarded from a merged id to its survivor keeps its id, so the pair
  names whose record it is);
* the dead-letter topic: the (partition, offset) of every rejected inbound record, and the
  raw bytes of each (a re-driven record that was rejected again names its new offset;
  bytes sealed for a person are opened with the keys topic and the master key);
* the events topic, read to its true end: a record below the committed offset whose key and
  event id are not in history and that was not dead-lettered is a **gap**.

Repair re-publishes a gap's original key and bytes to the events topic, to the SAME partition
(the upstream producer's partitioner may differ from ours, and a person's events, history and
state must stay on one partition). The worker then decides it as a new arrival.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka.keys import opener_of
from streams.kafka.publish import make_producer
from streams.kafka.readers import iter_to_end
from streams.kafka.topics import app_id
from streams.settings import Settings
from streams.tools.export import topic_partitions


@dataclass(frozen=True, slots=True)
class Gap:
    """One inbound record below the committed offset with no effect anywhere."""

    partition: int
    offset: int
    event_id: str | None  # None when the record is not even JSON with an event id
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class PartitionCounts:
    committed: int | None = None  # next offset the group will read; None: never committed
    below: int = 0  # inbound records below the committed offset
    applied: int = 0  # … whose event id is in history
    dead_lettered: int = 0  # … that were rejected
    gaps: int = 0
    pending: int = 0  # at or past the committed offset: not processed yet, not a gap


@dataclass(slots=True)
class ReconcileReport:
    group: str
    events_topic: str
    partitions: dict[int, PartitionCounts] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    history_records: int = 0
    dead_letters: int = 0
    repaired: int = 0
    repair_failed: int = 0
    seconds: float = 0.0

    @property
    def unrepaired(self) -> int:
        return len(self.gaps) - self.repaired

    def gap_ids(self, limit: int | None = None) -> list[str]:
        ids = [g.event_id or f"<{g.partition}@{g.offset}>" for g in self.gaps]
        return ids if limit is None else ids[:limit]

    def to_json(self, limit: int = 20) -> dict[str, Any]:
        return {
            "group": self.group,
            "events_topic": self.events_topic,
            "history_records": self.history_records,
            "dead_letters": self.dead_letters,
            "partitions": {
                str(p): {
                    "committed": c.committed,
                    "below_committed": c.below,
                    "applied": c.applied,
                    "dead_lettered": c.dead_lettered,
                    "gaps": c.gaps,
                    "pending": c.pending,
                }
                for p, c in sorted(self.partitions.items())
            },
            "gaps": len(self.gaps),
            "first_gaps": [
                {"partition": g.partition, "offset": g.offset, "event_id": g.event_id}
                for g in self.gaps[:limit]
            ],
            "repaired": self.repaired,
            "repair_failed": self.repair_failed,
            "unrepaired": self.unrepaired,
            "seconds": round(self.seconds, 3),
        }


def event_id_of(value: bytes | None) -> str | None:
    """The event id of an inbound record, leniently: no validation, any JSON object."""
    if not value:
        return None
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    event_id = data.get("event_id") if isinstance(data, dict) else None
    return event_id if isinstance(event_id, str) else None


def _digest(value: bytes | None) -> str:
    """SHA-256 (hex), as a dead letter of a message with no person key names its bytes."""
    return hashlib.sha256(value or b"").hexdigest()


async def committed_offsets(
    settings: Settings, group: str, partitions: list[int]
) -> dict[int, Any]:
    """The group's committed offset per events partition (None where it never committed).

    A consumer in the group that never subscribes: it reads offsets without joining, so a
    running worker is not disturbed by a rebalance.
    """
    consumer = AIOKafkaConsumer(
        **settings.aiokafka_kwargs(),
        group_id=group,
        enable_auto_commit=False,
        client_id="leadflow-reconcile",
    )
    await consumer.start()
    try:
        topic = settings.topics.events
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        await consumer.stop()


async def find_gaps(settings: Settings, group: str) -> ReconcileReport:
    """Compare the events topic with history and dead letters (see the module docstring)."""
    started = time.monotonic()
    names = settings.topics
    options = settings.aiokafka_kwargs()
    report = ReconcileReport(group, names.events)
    partitions = await topic_partitions(settings, names.events)
    committed = await committed_offsets(settings, group, partitions)  # before history: see above
    for p in partitions:
        report.partitions[p] = PartitionCounts(committed=committed[p])

    # (key, event id): a merged id's event is forwarded to its survivor with the same event
    # id (`lifecycle.merge`), so the alias's record does not stand for the survivor's.
    applied: set[tuple[bytes | None, str]] = set()
    async for record in iter_to_end(settings.bootstrap, names.history, client_options=options):
        report.history_records += 1
        try:
            applied.add((record.key, orjson.loads(record.value)["event"]["event_id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # not a history record; `verify` reports those

    rejected: set[tuple[int, int]] = set()
    rejected_values: set[tuple[int, str]] = set()
    # A letter keyed by a person holds the bytes sealed with their data key (streams.
    # deadletters): opened with the keys topic to compare them; unreadable once erased.
    key_of = await opener_of(settings, lambda _: None)
    async for record in iter_to_end(settings.bootstrap, names.dead_letters, client_options=options):
        report.dead_letters += 1
        try:
            letter = orjson.loads(record.value)
            if letter["topic"] != names.events:
                continue
            rejected.add((letter["partition"], letter["offset"]))
            if letter.get("value_sha256"):  # no person key: the bytes were not kept
                rejected_values.add((letter["partition"], letter["value_sha256"]))
                continue
            value = base64.b64decode(letter["value"])
            if letter.get("sealed"):
                person = base64.b64decode(letter["key"] or b"").decode()
                data_key = key_of(person) if value else None
                if data_key is None:
                    continue
                value = data_key.open(person, value.decode())
            rejected_values.add((letter["partition"], _digest(value)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue

    async for record in iter_to_end(settings.bootstrap, names.events, client_options=options):
        counts = report.partitions[record.partition]
        if counts.committed is None or record.offset >= counts.committed:
            counts.pending += 1
            continue
        counts.below += 1
        event_id = event_id_of(record.value)
        if event_id is not None and (record.key, event_id) in applied:
            counts.applied += 1
        elif (record.partition, record.offset) in rejected or (
            record.partition,
            _digest(record.value),
        ) in rejected_values:
            counts.dead_lettered += 1
        else:
            counts.gaps += 1
            report.gaps.append(
                Gap(record.partition, record.offset, event_id, record.key, record.value)
            )
    report.gaps.sort(key=lambda g: (g.partition, g.offset))
    report.seconds = time.monotonic() - started
    return report


async def redrive(settings: Settings, report: ReconcileReport) -> ReconcileReport:
    """Re-publish every gap's key and bytes to its original partition of the events topic."""
    if not report.gaps:
        return report
    producer = make_producer(settings, client_id="leadflow-reconcile")
    await producer.start()
    try:
        futures = [
            await producer.send(
                settings.topics.events, gap.value, key=gap.key, partition=gap.partition
            )
            for gap in report.gaps
        ]
        await producer.flush()
        for future in futures:
            try:
                await future
                report.repaired += 1
            except Exception:
                report.repair_failed += 1
    finally:
        await producer.stop()
    return report


async def reconcile(
    settings: Settings, *, repair: bool = False, group: str | None = None
) -> ReconcileReport:
    """Find the gaps of the worker group (default: the worker's Faust app id); re-drive them
    with `repair`."""
    report = await find_gaps(settings, group or app_id(settings.topic_prefix))
    if repair:
        await redrive(settings, report)
    return report
