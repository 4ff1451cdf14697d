"""Seal a history written before crypto-shredding: copy it sealed, then swap the copy in.

A deployment that upgrades from a version without crypto-shredding has a history topic whose
records hold personal fields in the clear, kept forever; no erasure could reach them. The
history topic is append-only, so `leadflow keys seal-history` rewrites it, with the workers
stopped:

1. **Read** the history topic partition by partition, in offset order (twice: the first pass
   only finds the persons whose history holds an erasure).
2. **Seal** each record as the worker of this version would have written it
   (`lifecycle.shredding`): the event's personal fields into `event.personal`, reason
   sentences that quote a personal value `sealed:…`, a survivor's folded profile into
   `merged.personal`, each with the person's data key (made on `leadflow.keys` if they have
   none). A person whose history holds an erasure gets no key: their personal fields are
   dropped and those sentences withheld, so nothing of theirs stays readable. Decisions that
   read a personal field get their `outcomes` recorded (re-decided under the record's policy
   version, as `leadflow verify` does), so replay and verify still reproduce an erased
   person's decisions. A record with nothing personal keeps its bytes.
3. **Copy** the sealed records to a staging topic (`<history>.sealing`): same partitions,
   same keys, same order. New data keys are acked before the swap.
4. **Swap**: delete the history topic, create it again with the same partition count,
   replication and configs, copy the staging topic back, check the counts, delete the
   staging topic.
5. **Tombstone** every person's entry of the table changelog: the table held plaintext
   profiles, and on its next start the worker rebuilds every person from the sealed history
   (`streams.worker.recovery`: a missing table entry is rebuilt), writing sealed states.

A crash at any step is resumed by running the command again: the staging topic's and the
history topic's counts per partition say which step was reached. Sealing is deterministic
(the nonce is derived from the plaintext), so a second run writes the same bytes.

Not rewritten: `leadflow.stage-changes` (kept 7 days: plaintext sentences written before
the upgrade age out), shadow topics (same), dead letters written before the upgrade (90
days), exports taken before, and the workers' local RocksDB files until the rebuild
overwrites them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError

from events.outbound import HistoryRecord
from lifecycle.decide import decide
from lifecycle.dedup import SeenIndex
from lifecycle.evolve import evolve
from lifecycle.policy import Policy
from lifecycle.records import Reason
from lifecycle.shredding import (
    PERSONAL_PROFILE,
    DataKey,
    is_sealed,
    open_record,
    personal_part,
    personal_values,
    quotes,
    seal_personal,
    seal_reason,
    stored_body,
)
from lifecycle.state import PersonState
from streams.kafka.keys import KeyRing, MasterKeys, read_keys
from streams.kafka.readers import iter_to_end, partitions_of
from streams.kafka.topics import (
    CHANGELOG_SUFFIX,
    TopicNotFound,
    app_id,
    ensure_topics,
    topic_specs,
)
from streams.settings import Settings
from streams.tools.export import read_policies_topic

log = logging.getLogger(__name__)

STAGING_SUFFIX = ".sealing"
#: Records in flight per partition before the producer is awaited.
_WINDOW = 2_000
#: Data keys kept unwrapped while sealing (each holds an AES context).
_OPEN_KEYS = 10_000


class SealHistoryError(RuntimeError):
    """The history cannot be sealed now; the message says why and what to do."""


@dataclass(slots=True)
class SealReport:
    records: int = 0
    #: records whose bytes changed: they held personal data in the clear or lacked outcomes
    rewritten: int = 0
    keys_created: int = 0
    #: persons whose history holds an erasure: their personal fields were dropped
    erased: set[str] = field(default_factory=set)
    outcomes_recorded: int = 0
    #: records whose policy version is not on the policies topic: sealed, no outcomes
    missing_policy: Counter[str] = field(default_factory=Counter)
    changelog_tombstones: int = 0
    resumed: str | None = None
    partitions: dict[int, int] = field(default_factory=dict)


# -- sealing one record --------------------------------------------------------------------------


def _sealed_reason(reason: Any, key: DataKey | None, person: str, values: tuple[str, ...]) -> Any:
    if reason is None:
        return None
    sealed = seal_reason(Reason(reason["rule"], reason["text"]), key, person, values)
    return {"rule": sealed.rule, "text": sealed.text}


def seal_record(
    data: dict[str, Any],
    record: HistoryRecord,
    before: PersonState | None,
    key: DataKey | None,
) -> dict[str, Any]:
    """`data` (a history record as JSON data, plaintext) as this version stores it: personal
    fields sealed with `key`, or dropped (and quoting sentences withheld) when `key` is None."""
    person = data["person_id"]
    event = record.event
    part = personal_part(event)
    token = None if key is None or part is None else seal_personal(key, person, part)
    data["event"] = stored_body(data["event"], token)
    values = personal_values(before.profile if before is not None else {}, event)
    for change in data.get("changes") or ():
        change["reason"] = _sealed_reason(change.get("reason"), key, person, values)
    data["note"] = _sealed_reason(data.get("note"), key, person, values)
    merged = data.get("merged")
    if merged is not None and "personal" not in merged:
        profile = merged.get("profile") or {}
        personal = {k: v for k, v in profile.items() if k in PERSONAL_PROFILE}
        if personal:
            merged["profile"] = {k: v for k, v in profile.items() if k not in PERSONAL_PROFILE}
            if key is not None:
                merged["personal"] = seal_personal(key, person, personal)
    return data


def _quotes_any(data: dict[str, Any], values: tuple[str, ...]) -> bool:
    """Whether a sentence of the record quotes one of `values`."""
    if not values:
        return False
    reasons = [c.get("reason") for c in data.get("changes") or ()] + [data.get("note")]
    return any(r is not None and quotes(r["text"], values) for r in reasons)


def _holds_personal(data: dict[str, Any], record: HistoryRecord) -> bool:
    if personal_part(record.event) is not None:
        return True
    merged = data.get("merged")
    return bool(merged and PERSONAL_PROFILE & (merged.get("profile") or {}).keys())


class _Sealer:
    """Seals records in history order, keeping each person's state for the next one."""

    def __init__(
        self, ring: KeyRing, policies: dict[str, Policy], erased: set[str], report: SealReport
    ) -> None:
        self.ring, self.policies, self.erased, self.report = ring, policies, erased, report
        self.states: dict[str, PersonState] = {}
        self.seen = SeenIndex()
        #: (person, wrapped key) of keys made here, to publish before the swap
        self.new_keys: list[tuple[str, bytes, int]] = []

    def next_partition(self) -> None:
        """Forget the states of a partition done (memory stays that of one partition)."""
        self.states.clear()
        self.seen = SeenIndex()

    def key_of(self, person: str, partition: int) -> DataKey | None:
        if person in self.erased:
            return None
        key = self.ring.get(person)
        if key is None:
            self.new_keys.append((person, self.ring.create(person), partition))
            self.report.keys_created += 1
            key = self.ring.get(person)
        return key

    def seal(self, raw: bytes, partition: int) -> bytes:
        data = orjson.loads(raw)
        person = data["person_id"]
        sealed_already = is_sealed(raw)
        if sealed_already:  # written by this version: open it to follow the person's state
            opened = open_record(orjson.loads(raw), self.ring.get(person), texts=False)
            record = HistoryRecord.model_validate(opened)
        else:
            record = HistoryRecord.model_validate(data)
        before = self.states.get(person)
        changed = False
        if not sealed_already:
            if data.get("outcomes") is None:
                outcomes = self._outcomes(record, before)
                if outcomes:
                    data["outcomes"] = outcomes
                    self.report.outcomes_recorded += 1
                    changed = True
            values = personal_values(before.profile if before is not None else {}, record.event)
            if _holds_personal(data, record) or _quotes_any(data, values):
                data = seal_record(data, record, before, self.key_of(person, partition))
                changed = True
        self.states[person] = evolve(before, record)
        self.seen.remember(record)
        if not changed:
            return raw
        self.report.rewritten += 1
        return orjson.dumps(data)

    def _outcomes(self, record: HistoryRecord, before: PersonState | None) -> dict[str, str] | None:
        policy = self.policies.get(record.policy_version)
        if policy is None:
            self.report.missing_policy[record.policy_version] += 1
            return None
        event = record.event
        decision = decide(before, event, policy, self.seen.get(record.person_id, event.event_id))
        return decision.outcomes or None


# -- the topics ----------------------------------------------------------------------------------


async def _counts(settings: Settings, topic: str) -> dict[int, int] | None:
    """Records per partition of `topic` (None: no such topic)."""
    counts: Counter[int] = Counter()
    try:
        async for record in iter_to_end(
            settings.bootstrap, topic, client_options=settings.aiokafka_kwargs()
        ):
            counts[record.partition] += 1
    except TopicNotFound:
        return None
    return dict(counts)


async def _records(
    settings: Settings, topic: str, partitions: list[int] | None = None
) -> AsyncIterator[Any]:
    async for record in iter_to_end(
        settings.bootstrap, topic, partitions=partitions, client_options=settings.aiokafka_kwargs()
    ):
        yield record


async def _workers_stopped(settings: Settings) -> None:
    group = app_id(settings.topic_prefix)
    async with _admin(settings) as admin:
        for attempt in range(50):
            try:
                responses = await admin.describe_consumer_groups([group])
                break
            except GroupCoordinatorNotAvailableError:
                # A broker where no group ever ran creates its offsets topic on this first
                # request: the coordinator answers once that topic has a leader
                if attempt == 49:
                    raise
                await asyncio.sleep(0.3)
        for response in responses:
            for described in response.groups:
                state, members = described[2], described[5]
                if members or state not in ("Empty", "Dead", ""):
                    raise SealHistoryError(
                        f"the worker group {group!r} has {len(members)} active members "
                        f"({state}): stop every worker first (a worker would make data keys "
                        "of its own, and write history the copy misses; on Tansu, the dev "
                        "broker, a member that left stays listed: seal a Kafka history)"
                    )


async def _topic_layout(settings: Settings, topic: str) -> tuple[int, int, dict[str, str]]:
    """(partitions, replication, configs) of an existing history topic: its partition count
    and replication, and the values it has of the configs the history spec sets
    (`streams.kafka.topics.topic_specs`), so an operator's changes are kept."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    (spec,) = [s for s in topic_specs(settings.topics) if s.name == settings.topics.history]
    async with _admin(settings) as admin:
        (described,) = await admin.describe_topics([topic])
        partitions = described["partitions"]
        replication = len(partitions[0]["replicas"]) if partitions else 1
        actual: dict[str, str | None] = {}
        for response in await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        ):
            for error_code, _message, _type, _name, entries, *_ in response.resources:
                if error_code == 0:
                    actual.update({e[0]: e[1] for e in entries})
        configs = {k: actual.get(k) or v for k, v in spec.configs.items()}
        return len(partitions), replication, configs


async def _create(settings: Settings, topic: str, layout: tuple[int, int, dict[str, str]]) -> None:
    partitions, replication, configs = layout
    await ensure_topics(
        settings.bootstrap,
        [(topic, partitions, replication, configs)],
        client_options=settings.aiokafka_kwargs(),
        check_existing=False,
    )


@contextlib.asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs(), client_id="leadflow-seal-history")
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def _delete(settings: Settings, topic: str) -> None:
    async with _admin(settings) as admin:
        await admin.delete_topics([topic])
    for _ in range(300):  # deletion is asynchronous on Kafka
        consumer_gone = await _gone(settings, topic)
        if consumer_gone:
            return
        await asyncio.sleep(0.2)
    raise SealHistoryError(f"{topic} still exists 60 s after it was deleted")


async def _gone(settings: Settings, topic: str) -> bool:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(**settings.aiokafka_kwargs(), client_id="leadflow-seal-history")
    await consumer.start()
    try:
        return not await partitions_of(consumer, topic)
    finally:
        await consumer.stop()


async def _copy(
    settings: Settings,
    producer: AIOKafkaProducer,
    source: AsyncIterator[Any],
    topic: str,
    transform: Callable[[bytes, int], bytes] | None = None,
) -> dict[int, int]:
    """Every record of `source` to the same partition of `topic`, in order; counts per partition."""
    counts: Counter[int] = Counter()
    pending: list[asyncio.Future[Any]] = []
    async for record in source:
        value = record.value if transform is None else transform(record.value, record.partition)
        pending.append(
            await producer.send(topic, value, key=record.key, partition=record.partition)
        )
        counts[record.partition] += 1
        if len(pending) >= _WINDOW:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return dict(counts)


async def seal_history(
    settings: Settings,
    master: MasterKeys,
    *,
    on_progress: Callable[[str], None] = lambda _: None,
) -> SealReport:
    """Seal the history topic of `settings` (module docstring); returns what it did."""
    names = settings.topics
    history, staging = names.history, names.history + STAGING_SUFFIX
    options = settings.aiokafka_kwargs()
    report = SealReport()
    await _workers_stopped(settings)
    history_counts = await _counts(settings, history)
    staging_counts = await _counts(settings, staging)
    if history_counts is None and staging_counts is None:
        raise SealHistoryError(f"no topic {history}: nothing to seal")
    layout = None
    producer = AIOKafkaProducer(
        **options, client_id="leadflow-seal-history", acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        if staging_counts is not None and (
            history_counts is None or sum(history_counts.values()) < sum(staging_counts.values())
        ):
            report.resumed = "swap"  # the staging copy was complete when history was deleted
        else:
            if staging_counts is not None:  # a copy that did not finish: start again
                report.resumed = "copy"
                await _delete(settings, staging)
            assert history_counts is not None
            layout = await _topic_layout(settings, history)
            await _seal_to_staging(settings, master, producer, report, layout, on_progress)
            staging_counts = await _counts(settings, staging)
            if staging_counts != history_counts:
                raise SealHistoryError(
                    f"{staging} holds {staging_counts} records per partition, {history} "
                    f"{history_counts}: not swapped; run the command again"
                )
        if layout is None:
            layout = await _topic_layout(settings, staging)
        on_progress(f"swapping {staging} in as {history}")
        if history_counts is not None:
            await _delete(settings, history)
        await _create(settings, history, layout)
        report.partitions = await _copy(settings, producer, _records(settings, staging), history)
        if report.partitions != staging_counts:
            raise SealHistoryError(
                f"{history} got {report.partitions} records per partition of {staging}'s "
                f"{staging_counts}: run the command again (it copies {staging} again)"
            )
        report.records = sum(report.partitions.values())
        report.changelog_tombstones = await _tombstone_changelog(settings, producer)
        await _delete(settings, staging)
    finally:
        await producer.stop()
    return report


async def _seal_to_staging(
    settings: Settings,
    master: MasterKeys,
    producer: AIOKafkaProducer,
    report: SealReport,
    layout: tuple[int, int, dict[str, str]],
    on_progress: Callable[[str], None],
) -> None:
    names, options = settings.topics, settings.aiokafka_kwargs()
    history, staging = names.history, names.history + STAGING_SUFFIX
    ring = await read_keys(settings.bootstrap, names.keys, master, client_options=options)
    policies = await read_policies_topic(settings)
    on_progress(f"finding erased persons in {history}")
    async for record in _records(settings, history):
        data = orjson.loads(record.value) if record.value else None
        if isinstance(data, dict) and data.get("erased"):
            report.erased.add(data["person_id"])
    await _create(settings, staging, layout)
    partitions = layout[0]
    ring.cache_size = _OPEN_KEYS  # a person's records are together: a small LRU does
    sealer = _Sealer(ring, policies, report.erased, report)
    for partition in range(partitions):  # a person's records are all in one partition
        on_progress(f"sealing {history}[{partition}] into {staging}")
        source = _records(settings, history, [partition])
        await _copy(settings, producer, source, staging, sealer.seal)
        sealer.next_partition()
    # New data keys are durable before the sealed copy becomes the history.
    sent = [
        await producer.send(names.keys, value, key=person.encode(), partition=partition)
        for person, value, partition in sealer.new_keys
    ]
    await asyncio.gather(*sent)


async def _tombstone_changelog(settings: Settings, producer: AIOKafkaProducer) -> int:
    """A tombstone for every key of the table changelog (its values held plaintext profiles):
    the worker rebuilds each person from the sealed history at its next start."""
    changelog = f"{app_id(settings.topic_prefix)}{CHANGELOG_SUFFIX}"
    keys: dict[bytes, int] = {}
    try:
        async for record in _records(settings, changelog):
            if record.key is not None:
                if record.value is None:
                    keys.pop(record.key, None)
                else:
                    keys[record.key] = record.partition
    except TopicNotFound:
        return 0
    sent = [
        await producer.send(changelog, None, key=key, partition=partition)
        for key, partition in keys.items()
    ]
    await asyncio.gather(*sent)
    return len(sent)
