"""Topic names, their specs/configs, and their creation (reading them: `streams.kafka.readers`).

Topic configs matter on Apache Kafka (production). Tansu (dev/test) accepts and describes
them back but never deletes or compacts anything, and it also accepts things Kafka rejects
(replication factor > broker count, unknown config keys), so do not rely on the dev broker
to validate a spec.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

log = logging.getLogger(__name__)

__all__ = [
    "DEAD_LETTER_RETENTION_MS",
    "EnsureResult",
    "TopicNames",
    "TopicNotFound",
    "TopicSpec",
    "TopicSpecMismatch",
    "ensure_topics",
    "topic_specs",
]

DAY_MS = 24 * 60 * 60 * 1000
DEAD_LETTER_RETENTION_MS = 90 * DAY_MS  # 7_776_000_000
#: events and stage-changes: a week (Kafka's default, spelled out so every deployment agrees)
STREAM_RETENTION_MS = 7 * DAY_MS
#: keys: how soon after an erasure compaction must have removed the wrapped data key. The
#: active segment is never compacted, so it rolls hourly; tombstones stay a day, so readers
#: that were down see them.
KEYS_MAX_COMPACTION_LAG_MS = DAY_MS
KEYS_SEGMENT_MS = 60 * 60 * 1000
KEYS_TOMBSTONE_RETENTION_MS = DAY_MS
#: The person table (a Faust table named so) has this changelog after the app id.
CHANGELOG_SUFFIX = "-persons-changelog"
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The service's topic names. Defaults are the production names.

    Use :meth:`prefixed` to get an isolated set (per test, per dev sandbox).
    """

    events: str = "leadflow.events"  # inbound lead events (validated input)
    stage_changes: str = "leadflow.stage-changes"  # derived stage transitions
    history: str = "leadflow.history"  # event-sourced history: kept forever
    dead_letters: str = "leadflow.dead-letters"  # rejected input, kept 90 days
    policies: str = "leadflow.policies"  # versioned lead definitions, compacted
    aliases: str = "leadflow.aliases"  # ids merged into another: the latest per alias, compacted
    keys: str = "leadflow.keys"  # per-person data keys (wrapped), compacted; erasure = tombstone

    @classmethod
    def prefixed(cls, prefix: str) -> TopicNames:
        """Defaults with ``"{prefix}."`` in front, e.g. ``t1a2b.leadflow.events``."""
        if not prefix:
            return cls()
        prefix = prefix.rstrip(".")
        return cls(**{f.name: f"{prefix}.{getattr(cls(), f.name)}" for f in fields(cls)})

    def all(self) -> tuple[str, ...]:
        """All names, in field order."""
        return tuple(getattr(self, f.name) for f in fields(self))


class TopicSpec(NamedTuple):
    """``(name, partitions, replication, configs)`` for one topic."""

    name: str
    partitions: int
    replication: int
    configs: dict[str, str]


def topic_specs(
    names: TopicNames | None = None,
    partitions: int = 4,
    replication: int = 1,
    *,
    policies_partitions: int = 1,
) -> list[TopicSpec]:
    """Specs for every leadflow topic: the one source of topic settings.

    The worker and `leadflow topics create` create topics from these; docker-compose.yml runs
    `topics create`, and deploy/base/topics.yaml (Strimzi) must say the same
    (tests/unit/test_deploy_files.py fails when they drift).

    * history: kept forever (``retention.ms=-1``, ``retention.bytes=-1``) — the event store;
      replay/verify read it whole.
    * dead-letters: 90 days of retention, enough to investigate and re-drive.
    * policies: ``cleanup.policy=compact`` — the latest record per policy version; one
      partition by default so every reader sees versions in one total order.
    * aliases: ``cleanup.policy=compact`` — per merged id, its survivor (the live funnel
      counts one person; stage changes alone miss merges that move nobody).
    * keys: ``cleanup.policy=compact`` — each person's wrapped data key, the same partition
      count as events; an erasure writes a tombstone, and compaction removes the key within
      ``max.compaction.lag.ms`` (a day; segments roll hourly, tombstones stay a day).
    * events / stage-changes: a week.
    * with replication > 1, ``min.insync.replicas`` 2 (acks=all then survives one broker).
    """
    n = names or TopicNames()
    common = {"min.insync.replicas": str(min(2, replication))} if replication > 1 else {}
    stream = {"cleanup.policy": "delete", "retention.ms": str(STREAM_RETENTION_MS), **common}
    return [
        TopicSpec(n.events, partitions, replication, dict(stream)),
        TopicSpec(n.stage_changes, partitions, replication, dict(stream)),
        TopicSpec(
            n.history,
            partitions,
            replication,
            {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1", **common},
        ),
        TopicSpec(
            n.dead_letters,
            partitions,
            replication,
            {
                "cleanup.policy": "delete",
                "retention.ms": str(DEAD_LETTER_RETENTION_MS),
                **common,
            },
        ),
        TopicSpec(
            n.policies,
            policies_partitions,
            replication,
            {"cleanup.policy": "compact", **common},
        ),
        TopicSpec(n.aliases, partitions, replication, {"cleanup.policy": "compact", **common}),
        TopicSpec(
            n.keys,
            partitions,
            replication,
            {
                "cleanup.policy": "compact",
                "max.compaction.lag.ms": str(KEYS_MAX_COMPACTION_LAG_MS),
                "segment.ms": str(KEYS_SEGMENT_MS),
                "delete.retention.ms": str(KEYS_TOMBSTONE_RETENTION_MS),
                "min.cleanable.dirty.ratio": "0.01",
                **common,
            },
        ),
    ]


def app_id(topic_prefix: str) -> str:
    """The Faust app id: the consumer group and the prefix of the table's changelog topic."""
    prefix = topic_prefix.rstrip(".")
    return f"{prefix}.leadflow" if prefix else "leadflow"


def changelog_spec(topic_prefix: str, partitions: int = 4, replication: int = 1) -> TopicSpec:
    """The person table's changelog (compacted; same partition count as the events)."""
    common = {"min.insync.replicas": str(min(2, replication))} if replication > 1 else {}
    return TopicSpec(
        f"{app_id(topic_prefix)}{CHANGELOG_SUFFIX}",
        partitions,
        replication,
        {"cleanup.policy": "compact", **common},
    )


class TopicSpecMismatch(RuntimeError):
    """An existing topic's partition count or configs differ from its spec."""


class TopicNotFound(LookupError):
    """The topic does not exist on the broker."""


@dataclass(frozen=True, slots=True)
class EnsureResult:
    created: tuple[str, ...]
    existing: tuple[str, ...]


async def ensure_topics(
    bootstrap: str,
    spec: Iterable[TopicSpec | tuple[str, int, int, dict[str, str]]],
    *,
    timeout: float = 30.0,
    check_existing: bool = True,
    client_options: Mapping[str, Any] | None = None,
) -> EnsureResult:
    """Create the topics in ``spec`` that are missing, with their configs.

    Existing topics are left alone (configs are not altered: ``alter_configs`` is not
    supported on Tansu, and changing retention of a live topic should be a deliberate act).
    With ``check_existing`` an existing topic whose partition count or spec'd config values
    differ raises :class:`TopicSpecMismatch` (keyed state would be partitioned differently;
    an auto-created history topic would have default retention).
    Waits until the metadata shows a leader for every partition of every spec'd topic, so
    producing right after this returns does not race topic creation on Kafka.
    ``client_options`` are extra aiokafka client settings (security: ``aiokafka_kwargs()``).
    """
    # aiokafka is imported here, not with the module: the settings import the topic names, and
    # the offline commands (replay on a file) must not pay for a Kafka client (issue 13).
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import for_code

    specs = [TopicSpec(*s) for s in spec]
    if not specs:
        return EnsureResult((), ())
    admin = AIOKafkaAdminClient(
        **{**(client_options or {}), "bootstrap_servers": bootstrap},
        request_timeout_ms=int(timeout * 1000),
        client_id="leadflow-ensure-topics",
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(s.name, s.partitions, s.replication, topic_configs=dict(s.configs))
                for s in specs
            ],
            timeout_ms=int(timeout * 1000),
        )
        created: list[str] = []
        existing: list[str] = []
        for topic, code, *rest in response.topic_errors:
            if code == 0:
                created.append(topic)
            elif code == _TOPIC_ALREADY_EXISTS:
                existing.append(topic)
            else:
                message = rest[0] if rest else None
                raise for_code(code)(f"creating topic {topic!r}: {message}")
        deadline = time.monotonic() + timeout
        names = [s.name for s in specs]
        while True:
            described = {t["topic"]: t for t in await admin.describe_topics(names)}
            pending = [s.name for s in specs if not _has_leaders(described.get(s.name))]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics without partition leaders after {timeout}s: {pending}")
            await asyncio.sleep(0.1)
        if check_existing and existing:
            await _check_existing(admin, [s for s in specs if s.name in existing], described)
        if created:
            log.info("created topics %s", created)
        return EnsureResult(tuple(created), tuple(existing))
    finally:
        await admin.close()


async def _check_existing(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], described: dict[str, Any]
) -> None:
    """Raise TopicSpecMismatch if an existing topic differs in partitions or spec'd configs.

    Catches topics that were auto-created (broker defaults, e.g. 7-day retention on a
    history topic) before ``ensure_topics`` ran. Tansu auto-creates a 4-partition topic with
    no configs on *any* Metadata request naming it; Kafka does so when
    ``auto.create.topics.enable`` is on.
    """
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    problems: list[str] = []
    for s in specs:
        have = len(described[s.name]["partitions"])
        if have != s.partitions:
            problems.append(f"{s.name}: {have} partitions, spec says {s.partitions}")
    with_configs = [s for s in specs if s.configs]
    if with_configs:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in with_configs]
        )
        actual: dict[str, dict[str, str | None]] = {}
        for resp in responses:
            for error_code, _msg, _type, name, entries, *_ in resp.resources:
                if error_code == 0:
                    actual[name] = {e[0]: e[1] for e in entries}
        for s in with_configs:
            got = actual.get(s.name, {})
            for key, want in s.configs.items():
                if got.get(key) != want:
                    problems.append(f"{s.name}: {key}={got.get(key)!r}, spec says {want!r}")
    if problems:
        raise TopicSpecMismatch("existing topics differ from their spec: " + "; ".join(problems))


def _has_leaders(topic: dict[str, Any] | None) -> bool:
    return bool(
        topic
        and topic["error_code"] == 0
        and topic["partitions"]
        and all(p["error_code"] == 0 and p["leader"] >= 0 for p in topic["partitions"])
    )
