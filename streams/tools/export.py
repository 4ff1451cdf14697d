"""Reading the history and policies topics whole, for export and for the offline commands.

Reads stop at the true end of every partition: the high watermark of the fetch responses
(`streams.kafka.readers.iter_to_end`), never `end_offsets`, which on the dev broker (Tansu) reports
the start of the last batch and would silently drop the newest records.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from pydantic import BaseModel, ValidationError

from events.codec import decode_model, describe_validation_error
from events.inbound import Event
from events.outbound import HistoryRecord
from lifecycle.policy import Policy
from lifecycle.shredding import DataKey, is_sealed, open_record
from streams.kafka.keys import opener_of
from streams.kafka.readers import iter_to_end, partitions_of, read_to_end
from streams.kafka.topics import TopicNotFound
from streams.settings import Settings

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

log = logging.getLogger(__name__)

OnError = Callable[[str], None]


def warn(message: str) -> None:
    """How the readers here report what they skip, unless told otherwise (a log warning)."""
    log.warning("%s", message)


def where(record: ConsumerRecord[bytes, bytes]) -> str:
    """`topic/partition@offset`: how an error names a record so it can be found again."""
    return f"{record.topic}/{record.partition}@{record.offset}"


def parse_value(model: type[M], value: bytes | None) -> M:
    """Validate one record's value as `model`; ValueError with a one-line reason if it is
    not one (the reader names the record with `where`)."""
    if value is None:
        raise ValueError("empty value (tombstone)")
    return decode_model(model, value)


def parse_history(
    record: ConsumerRecord[bytes, bytes],
    key_of: Callable[[str], DataKey | None] | None = None,
) -> HistoryRecord:
    """Validate one history record; ValueError with a one-line reason if it is not one.

    With `key_of` (person -> data key), sealed personal fields and sentences are opened."""
    if record.value is None:
        raise ValueError("empty value (tombstone)")
    try:
        if key_of is not None and is_sealed(record.value):
            data = orjson.loads(record.value)
            person = data.get("person_id") if isinstance(data, dict) else None
            if isinstance(person, str):
                return HistoryRecord.model_validate(open_record(data, key_of(person)))
        return HistoryRecord.model_validate_json(record.value)
    except ValidationError as error:
        raise ValueError(describe_validation_error(error)) from None


def _json_of(record: ConsumerRecord[bytes, bytes]) -> Any:
    """A record's value as JSON data; ValueError naming why not."""
    if record.value is None:
        raise ValueError("empty value (tombstone)")
    try:
        return orjson.loads(record.value)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from None


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """What a replay of history reads of a record: its event, and what its decision kept of
    the personal fields it read (`outcomes`, for a person whose fields are unreadable)."""

    person_id: str
    policy_version: str
    event: Event
    outcomes: dict[str, str] | None


def parse_history_event(
    record: ConsumerRecord[bytes, bytes],
    key_of: Callable[[str], DataKey | None] | None = None,
) -> RecordedEvent:
    """The event of a history record, validated alone, as a replay of an exported history
    file takes it (`streams.tools.files`): the rest of the record is what replay re-decides,
    so only verify and export validate it (`parse_history`), at twice the cost per record.
    ValueError with a one-line reason if the record holds no valid event."""
    data = _json_of(record)
    if not isinstance(data, dict) or not isinstance(data.get("event"), dict):
        raise ValueError("not a history record (no event)")
    person, version = data.get("person_id"), data.get("policy_version")
    if not isinstance(person, str) or not isinstance(version, str):
        raise ValueError("not a history record (no person_id or policy_version)")
    if key_of is not None and is_sealed(record.value):
        data = open_record(data, key_of(person), texts=False)
    try:
        event = Event.model_validate(data["event"])
    except ValidationError as error:
        raise ValueError(f"history record event: {describe_validation_error(error)}") from None
    outcomes = data.get("outcomes")
    if outcomes is not None and not (
        isinstance(outcomes, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in outcomes.items())
    ):
        raise ValueError("history record outcomes: not an object of strings")
    return RecordedEvent(person, version, event, outcomes or None)


def parse_policy(record: ConsumerRecord[bytes, bytes]) -> Policy:
    """A policy record is the policy as JSON, or `{"version": …, "policy": {…}}`."""
    data = _json_of(record)
    if isinstance(data, dict) and isinstance(data.get("policy"), dict):
        data = data["policy"]
    try:
        return Policy.model_validate(data)
    except ValidationError as error:
        raise ValueError(describe_validation_error(error)) from None


async def topic_partitions(settings: Settings, topic: str) -> list[int]:
    """Partition ids of `topic`, from a metadata request that names no topic.

    Naming the topic would auto-create it on Tansu (and on Kafka with auto-create on).
    """
    consumer = AIOKafkaConsumer(**settings.aiokafka_kwargs(), client_id="leadflow-export")
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, topic)
    finally:
        await consumer.stop()
    if not partitions:
        raise TopicNotFound(topic)
    return sorted(partitions)


async def iter_topic_in_order(
    settings: Settings,
    topic: str,
    *,
    idle_timeout: float = 30.0,
    partitions: Collection[int] | None = None,
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` up to its true end, partition by partition in offset order
    (of `partitions` only, if given).

    One partition at a time keeps memory flat for a topic of any size.
    """
    for partition in await topic_partitions(settings, topic):
        if partitions is not None and partition not in partitions:
            continue
        async for record in iter_to_end(
            settings.bootstrap,
            topic,
            partitions=[partition],
            idle_timeout=idle_timeout,
            client_options=settings.aiokafka_kwargs(),
        ):
            yield record


async def read_history_topic(
    settings: Settings, *, on_error: OnError | None = None
) -> list[HistoryRecord]:
    """Every history record on the broker, in (partition, offset) order, in one list (see
    `history_batches`, which streams them)."""
    return [r async for batch in history_batches(settings, on_error=on_error) for r in batch]


#: History records parsed and handed on at once by `history_batches`.
HISTORY_BATCH = 2_000


async def history_batches(
    settings: Settings,
    *,
    on_error: OnError | None = None,
    size: int = HISTORY_BATCH,
    parse: Callable[..., T] = parse_history,  # type: ignore[assignment]
    partitions: Collection[int] | None = None,
) -> AsyncIterator[list[T]]:
    """Every history record on the broker, partition by partition in offset order, `size`
    at a time: memory for one batch, not for the topic (a year of history is ~50M records).

    Sealed personal fields are opened with the keys topic and the master key of the
    environment, where both are at hand; an erased person's stay unreadable (their records
    keep the outcomes of their decisions, `lifecycle.shredding`).
    Per-person order is history order (key = person id). A record that is not a valid
    history record is reported through `on_error` as `topic/partition@offset: reason` and
    skipped. Raises `TopicNotFound` if there is no history topic. Each partition is read to
    its end as of the moment its read starts (`iter_topic_in_order`). `parse`: each record
    whole (`parse_history`), or its event (`parse_history_event`). `partitions`: only those.
    """
    report = on_error or warn
    key_of = await opener_of(settings, report)
    batch: list[T] = []
    async for record in iter_topic_in_order(
        settings, settings.topics.history, partitions=partitions
    ):
        try:
            batch.append(parse(record, key_of))
        except ValueError as error:
            report(f"{where(record)}: {error}")
            continue
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def read_policies_topic(
    settings: Settings, *, on_error: OnError | None = None
) -> dict[str, Policy]:
    """Every policy version ever published, by version (content hash). Empty if no topic."""
    report = on_error or warn
    try:
        records = await read_to_end(
            settings.bootstrap,
            settings.topics.policies,
            client_options=settings.aiokafka_kwargs(),
        )
    except TopicNotFound:
        return {}
    found: dict[str, Policy] = {}
    for record in records:
        try:
            policy = parse_policy(record)
        except ValueError as error:
            report(f"{where(record)}: {error}")
            continue
        key = record.key.decode(errors="replace") if record.key else None
        if key and key != policy.version:
            report(f"{where(record)}: keyed {key!r} but its content hashes to {policy.version}")
        found[policy.version] = policy
    return found


@dataclass(slots=True)
class ExportStats:
    records: int = 0
    invalid: int = 0
    changes: int = 0
    policies: int = 0
    persons: set[str] = field(default_factory=set)
    per_partition: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


def _one_line(value: bytes) -> bytes:
    """JSONL needs one record per line; re-serialise the rare pretty-printed value."""
    return orjson.dumps(orjson.loads(value)) if b"\n" in value else value


async def export_history(
    settings: Settings,
    out: Path,
    policies_out: Path,
    *,
    on_error: OnError | None = None,
    on_record: Callable[[int], None] | None = None,
) -> ExportStats:
    """Write the history topic to `out` (JSONL, as stored) and every policy to `policies_out`.

    Files are written under a temporary name and renamed when complete, so a failed export
    never leaves a truncated file that looks whole.
    """
    report = on_error or warn
    stats = ExportStats()
    started = time.monotonic()
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("wb") as handle:
        async for record in iter_topic_in_order(settings, settings.topics.history):
            try:
                parsed = parse_history(record)
            except ValueError as error:
                stats.invalid += 1
                report(f"{where(record)}: {error}")
                continue
            assert record.value is not None
            handle.write(_one_line(record.value))
            handle.write(b"\n")
            stats.records += 1
            stats.changes += len(parsed.changes)
            stats.persons.add(parsed.person_id)
            stats.per_partition[record.partition] = stats.per_partition.get(record.partition, 0) + 1
            if on_record is not None:
                on_record(1)
    os.replace(tmp, out)
    policies = await read_policies_topic(settings, on_error=report)
    tmp = policies_out.with_name(policies_out.name + ".partial")
    with tmp.open("wb") as handle:
        for version, policy in policies.items():
            line = {"version": version, "policy": policy.model_dump(mode="json")}
            handle.write(orjson.dumps(line) + b"\n")
    os.replace(tmp, policies_out)
    stats.policies = len(policies)
    stats.seconds = time.monotonic() - started
    return stats
