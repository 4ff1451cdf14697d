"""Shared machinery of the fault tests: a steady inbound stream, waiting, and the checks.

* `make_stream`: a realistic synthetic stream (`streams.dev.demo`), with redeliveries of the
  same event id and a few records the worker must dead-letter, as (key, value) bytes;
* `Publisher`: publishes it at a steady rate in the background and remembers where every
  record landed (partition, offset), the true end of each partition;
* `wait_settled`: until every valid event is in history, or the worker group committed
  everything and nothing moves any more (what is missing then is a gap, not lag);
* `check`: the invariants a fault must not break, computed from the topics alone:
  - every valid inbound event id is in history exactly once, and per person the
    sequences are 1..n with no gap and no duplicate;
  - the stage changes that `lifecycle.replay.replay` of the history's events predicts are
    all on the stage-changes topic, and nothing else is; copies of one change id carry an
    identical payload, equal to the predicted one;
  - every invalid inbound record is dead-lettered.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from events.codec import InvalidMessage, decode_event
from events.inbound import Event
from lifecycle.policy import Policy, load_preset
from lifecycle.replay import replay
from lifecycle.shredding import open_body, open_text
from streams.dev.demo import synthetic_events
from streams.kafka.keys import MasterKeys, read_keys
from streams.kafka.readers import iter_to_end
from streams.kafka.topics import TopicNames
from streams.settings import Settings
from streams.tools.reconcile import committed_offsets, reconcile
from streams.worker.app import app_id
from streams.worker.outputs import to_json

#: Records the worker must reject (dead letters), mixed into the stream.
GARBAGE: tuple[tuple[bytes, bytes], ...] = (
    (b"g1", b"\xff\xfe not json"),
    (
        b"g2",
        b'{"event_id": "bad-naive", "type": "page_viewed", "person_id": "g2",'
        b' "occurred_at": "2026-01-01T00:00:00"}',
    ),
    (
        b"g3",
        b'{"type": "page_viewed", "person_id": "g3", "occurred_at": "2026-01-01T00:00:00Z"}',
    ),
    (
        b"not-g4",
        b'{"event_id": "bad-key", "type": "page_viewed", "person_id": "g4",'
        b' "occurred_at": "2026-01-01T00:00:00Z"}',
    ),
)


def settings_for(broker_url: str, names: TopicNames) -> Settings:
    """The settings a worker on these topics runs with (for app id and reconcile)."""
    return Settings(broker=broker_url, topic_prefix=names.events.removesuffix(".leadflow.events"))


def make_stream(
    events: int = 20_000,
    persons: int = 2_000,
    *,
    seed: int = 11,
    duplicates: float = 0.01,
    garbage_every: int = 2_500,
    id_prefix: str = "",
) -> list[tuple[bytes, bytes]]:
    """(key, value) records: synthetic journeys incl. sales feedback, some events sent twice
    (same id), and one invalid record every `garbage_every` (cycling through `GARBAGE`)."""
    records: list[tuple[bytes, bytes]] = []
    for n, event in enumerate(
        synthetic_events(persons, events, seed=seed, duplicates=duplicates), start=1
    ):
        if id_prefix:
            event["event_id"] = id_prefix + event["event_id"]
        records.append((event["person_id"].encode(), orjson.dumps(event)))
        if garbage_every and n % garbage_every == 0:
            records.append(GARBAGE[(n // garbage_every) % len(GARBAGE)])
    return records


def is_valid(key: bytes | None, value: bytes | None) -> bool:
    """What the worker accepts: a valid envelope keyed by its person id."""
    if value is None:
        return False
    try:
        event = decode_event(value)
    except InvalidMessage:
        return False
    return key == event.person_id.encode()


class Publisher:
    """Publishes records at a steady rate (records/s) in a background task.

    `where[i]` is (partition, offset) of record i once acked; `published` counts acked
    records, so a test can time its faults against the stream's progress.
    """

    def __init__(self, bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        self.bootstrap, self.topic, self.records = bootstrap, topic, records
        self.where: list[tuple[int, int] | None] = [None] * len(records)
        self.published = 0
        self.task: asyncio.Task[None] | None = None

    def start(self, rate: float, *, first: int = 0, last: int | None = None) -> None:
        self.task = asyncio.ensure_future(
            self.run(rate, first, len(self.records) if last is None else last)
        )

    async def run(self, rate: float, first: int, last: int, chunk: int = 100) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=10)
        await producer.start()
        try:
            started = time.monotonic()
            for begin in range(first, last, chunk):
                # Steady: chunk k leaves at started + k·chunk/rate (catching up if late).
                delay = started + (begin - first) / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                futures = []
                for i in range(begin, min(begin + chunk, last)):
                    key, value = self.records[i]
                    futures.append((i, await producer.send(self.topic, value, key=key)))
                for i, future in futures:
                    meta = await future
                    self.where[i] = (meta.partition, meta.offset)
                    self.published += 1
        finally:
            await producer.stop()

    async def wait(self, at_least: int | None = None, timeout: float = 120) -> None:
        """Until `at_least` records are acked (default: until the task is done)."""
        assert self.task is not None
        if at_least is None:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
            return
        deadline = time.monotonic() + timeout
        while self.published < at_least:
            if self.task.done():
                self.task.result()
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"published {self.published} < {at_least} in {timeout} s")
            await asyncio.sleep(0.05)

    def ends(self) -> dict[int, int]:
        """The true end offset of every partition that received a record."""
        ends: dict[int, int] = {}
        for spot in self.where:
            if spot is not None:
                ends[spot[0]] = max(ends.get(spot[0], 0), spot[1] + 1)
        return ends


async def history_event_ids(
    bootstrap: str, names: TopicNames, *, committed_only: bool = True
) -> Counter[str]:
    ids: Counter[str] = Counter()
    async for record in iter_to_end(bootstrap, names.history, committed_only=committed_only):
        ids[orjson.loads(record.value)["event"]["event_id"]] += 1
    return ids


async def committed_past(
    settings: Settings, publisher: Publisher, count: int, timeout: float = 60
) -> dict[int, int]:
    """Wait until the worker group has committed past each of the first `count` records the
    publisher sent (their offsets as acked): every partition's offset moves on within a
    generation, not only at the next rebalance. Returns the offsets waited for."""
    wanted: dict[int, int] = {}
    for where in publisher.where[:count]:
        assert where is not None, "wait for the publisher first"
        partition, offset = where
        wanted[partition] = max(wanted.get(partition, 0), offset + 1)
    group = app_id(settings)
    deadline = time.monotonic() + timeout
    while True:
        committed = await committed_offsets(settings, group, sorted(wanted))
        behind = {p: (committed[p], at) for p, at in wanted.items() if (committed[p] or 0) < at}
        if not behind:
            return wanted
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the group's committed offsets did not reach the published records in "
                f"{timeout} s (partition: (committed, published up to)): {behind}"
            )
        await asyncio.sleep(0.5)


async def inbound_state(settings: Settings) -> tuple[set[str], dict[int, int]]:
    """The valid event ids on the events topic (the sweeper's ticks included: they are
    inbound events too) and the true end offset of each partition."""
    valid: set[str] = set()
    ends: dict[int, int] = {}
    async for record in iter_to_end(settings.bootstrap, settings.topics.events):
        ends[record.partition] = record.offset + 1
        if is_valid(record.key, record.value):
            valid.add(event_id(record.value))
    return valid, ends


async def wait_settled(
    settings: Settings,
    *,
    timeout: float = 120,
    alive: Callable[[], bool] | None = None,
    committed_only: bool = True,
) -> int:
    """Wait until history holds every valid event id of the events topic, or until the
    worker group committed up to every partition's end and history stopped growing (then
    the rest are gaps). Returns the number of valid ids still missing from history."""
    deadline = time.monotonic() + timeout
    previous, stable_since = -1, time.monotonic()
    while True:
        valid, ends = await inbound_state(settings)
        ids = await history_event_ids(
            settings.bootstrap, settings.topics, committed_only=committed_only
        )
        missing = len(valid - ids.keys())
        if not missing:
            return 0
        now = time.monotonic()
        if len(ids) != previous:
            previous, stable_since = len(ids), now
        elif now - stable_since > 8:
            committed = await committed_offsets(settings, app_id(settings), sorted(ends))
            if all((committed[p] or 0) >= end for p, end in ends.items()):
                return missing  # everything committed, history still: gaps
        if alive is not None and not alive():
            raise AssertionError("a worker exited while the stream was being processed")
        if now > deadline:
            committed = await committed_offsets(settings, app_id(settings), sorted(ends))
            raise AssertionError(
                f"{missing} valid events not in history after {timeout} s; "
                f"committed {committed}, ends {ends}"
            )
        await asyncio.sleep(1.0)


async def settled_check(
    settings: Settings,
    *,
    alive: Callable[[], bool] | None = None,
    policy: Policy | None = None,
    attempts: int = 4,
    committed_only: bool = True,
) -> tuple[int, Outcome]:
    """`wait_settled`, then `check`; repeated while the check sees problems.

    The topics are read one after another while the workers keep running, and their
    sweepers publish inactivity ticks for persons whose (months old) window elapsed: a tick
    decided between the reads shows as a stage change whose history record was not read
    yet. Such in-flight states pass; a real violation (a lost record, an unpredicted change,
    a re-decision) is a permanent state of the topics and fails every attempt.
    With `committed_only` every topic is read as a `read_committed` consumer does (what
    `--exactly-once` promises consumers).
    Returns (gaps reported by `wait_settled`, the last outcome).
    """
    for attempt in range(attempts):
        gaps = await wait_settled(settings, alive=alive, committed_only=committed_only)
        outcome = await check(
            settings.bootstrap, settings.topics, policy, committed_only=committed_only
        )
        if gaps or not outcome.problems:
            return gaps, outcome
        print(f"check attempt {attempt + 1}: {outcome.problems}; settling again")
        await asyncio.sleep(5)
    return gaps, outcome


@dataclass
class Outcome:
    """The counts of one check, and every violation found (empty means all invariants hold)."""

    inbound: int = 0
    valid: int = 0  # valid inbound records (a redelivery counts again)
    valid_ids: int = 0  # distinct valid event ids: what history must hold, once each
    ticks: int = 0  # the sweeper's inactivity ticks among them (published by the worker)
    invalid: int = 0
    history: int = 0
    persons: int = 0
    expected: int = 0
    found: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    missing_events: list[str] = field(default_factory=list)
    #: the first repeated change ids, each with where its copies are ("p@offset", ...)
    repeated: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        return {
            "events": self.inbound,
            "expected": self.expected,
            "found": self.found,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
        }

    def summary(self) -> str:
        return (
            f"inbound {self.inbound} (valid {self.valid}, {self.valid_ids} distinct ids, "
            f"{self.ticks} sweeper ticks, invalid {self.invalid}), history "
            f"{self.history} records / {self.persons} persons, stage changes expected "
            f"{self.expected} found {self.found} duplicates {self.duplicates}, dead letters "
            f"{self.dead_letters}, missing events {len(self.missing_events)}, "
            f"problems {len(self.problems)}"
        )


async def settled_check_repaired(
    settings: Settings, label: str, *, alive: Callable[[], bool], committed_only: bool = True
) -> tuple[int, int, Outcome]:
    """`settled_check`; on gaps, the product's answer (`reconcile --repair`) and a re-check.

    Gaps are inputs committed but never applied (Faust/broker). Returns (gaps after any
    repair, records re-driven, the last outcome); a gap that survives repair fails here.
    """
    gaps, outcome = await settled_check(settings, alive=alive, committed_only=committed_only)
    print(f"\n{label}: {outcome.summary()}")
    repaired = 0
    if gaps:
        report = await reconcile(settings, repair=True)
        repaired = report.repaired
        print(f"{label}: reconcile found {len(report.gaps)} gaps, re-drove {repaired}")
        gaps, outcome = await settled_check(settings, alive=alive, committed_only=committed_only)
        assert gaps == 0
        print(f"{label}: after repair: {outcome.summary()}")
    return gaps, repaired, outcome


def _note(problems: list[str], what: str, items: list[Any], limit: int = 5) -> None:
    if items:
        problems.append(f"{len(items)} {what}: {items[:limit]}")


async def check(
    bootstrap: str,
    names: TopicNames,
    policy: Policy | None = None,
    *,
    committed_only: bool = True,
) -> Outcome:
    """Read the events, history, stage-changes and dead-letter topics and check them."""
    policy = policy or load_preset("default")

    def read(topic: str) -> Any:
        return iter_to_end(bootstrap, topic, committed_only=committed_only)

    out = Outcome()
    problems = out.problems

    # (person, event id): an identity merge forwards an alias's event to its survivor with
    # the same event id, so an id may be in history once per person it reached.
    valid_ids: set[tuple[str, str]] = set()
    invalid_at: set[tuple[int, int]] = set()
    invalid_bytes: dict[tuple[int, int], bytes] = {}
    async for record in read(names.events):
        out.inbound += 1
        if is_valid(record.key, record.value):
            valid_ids.add((record.key.decode(), event_id(record.value)))
            out.valid += 1
            out.ticks += b'"inactivity_timeout"' in record.value
        else:
            invalid_at.add((record.partition, record.offset))
            invalid_bytes[(record.partition, record.offset)] = record.value or b""
    out.invalid = len(invalid_at)
    out.valid_ids = len(valid_ids)

    # History: exactly once per event id, sequences 1..n per person.
    events: list[Event] = []
    seen: Counter[tuple[str, str]] = Counter()
    sequences: dict[str, list[int]] = defaultdict(list)
    history = sorted(
        [r async for r in read(names.history)],
        key=lambda r: (r.partition, r.offset),
    )
    # Personal fields are sealed per person (lifecycle/shredding.py): read them as a holder of
    # the master key does, to replay the events as received.
    ring = await read_keys(bootstrap, names.keys, MasterKeys.from_env())
    for record in history:
        data = orjson.loads(record.value)
        person = data["person_id"]
        sequences[person].append(data["sequence"])
        seen[(person, data["event"]["event_id"])] += 1
        events.append(Event.model_validate(open_body(data["event"], ring.get(person), person)))
    out.history, out.persons = len(history), len(sequences)
    _note(problems, "event ids in history more than once", [i for i, n in seen.items() if n > 1])
    _note(problems, "history records of events never published", sorted(seen.keys() - valid_ids))
    out.missing_events = sorted(valid_ids - seen.keys())
    _note(problems, "valid inbound events missing from history", out.missing_events)
    _note(
        problems,
        "persons whose history sequences are not 1..n",
        [
            (person, seq[:10])
            for person, seq in sequences.items()
            if seq != list(range(1, len(seq) + 1))
        ],
    )

    # Stage changes: exactly what replay of the history predicts, copies identical.
    predicted: dict[str, Any] = {}
    # As recorded: each follow-up of a merge is in history as the record of whom it reached.
    for decision in replay(events, policy, follow=False):
        if decision.duplicate:  # cannot be: history holds each event id once (checked above)
            continue
        for change in decision.changes:
            predicted[change.change_id] = orjson.loads(to_json(change))
    out.expected = len(predicted)
    copies: dict[str, list[Any]] = defaultdict(list)
    where: dict[str, list[str]] = defaultdict(list)
    async for record in read(names.stage_changes):
        payload = orjson.loads(record.value)
        reason, person = payload["reason"], payload["person_id"]
        reason["text"] = open_text(reason["text"], ring.get(person), person)
        copies[payload["change_id"]].append(payload)
        where[payload["change_id"]].append(f"{record.partition}@{record.offset}")
    out.found = len(copies.keys() & predicted.keys())
    out.duplicates = sum(len(c) - 1 for c in copies.values())
    out.repeated = [f"{cid} at {' '.join(w)}" for cid, w in where.items() if len(w) > 1][:8]
    _note(
        problems, "predicted stage changes not published", sorted(predicted.keys() - copies.keys())
    )
    unpredicted = sorted(copies.keys() - predicted.keys())
    _note(problems, "published stage changes replay does not predict", unpredicted)
    if unpredicted:  # what a person's history and published changes were, for the report
        debug = {}
        for change_id in unpredicted[:3]:
            person = copies[change_id][0]["person_id"]
            debug[change_id] = {
                "published": copies[change_id],
                "history": [orjson.loads(r.value) for r in history if r.key == person.encode()],
                "published_for_person": sorted(
                    (c[0]["change_id"], c[0]["to_stage"], c[0]["event_id"], len(c))
                    for cid, c in copies.items()
                    if c[0]["person_id"] == person
                ),
                "inbound": [
                    orjson.loads(r.value)
                    async for r in read(names.events)
                    if r.key == person.encode()
                ],
            }
        out_dir = Path("test-output")
        out_dir.mkdir(exist_ok=True)
        (out_dir / f"faults-unpredicted-{names.events}.json").write_bytes(
            orjson.dumps(debug, option=orjson.OPT_INDENT_2)
        )
    _note(
        problems,
        "change ids whose copies differ",
        [cid for cid, c in copies.items() if any(p != c[0] for p in c[1:])],
    )
    _note(
        problems,
        "change ids whose payload differs from the prediction",
        [cid for cid, c in copies.items() if cid in predicted and c[0] != predicted[cid]],
    )

    # Dead letters: every invalid inbound record, named by its partition and offset, or by
    # its bytes: `reconcile --repair` re-drives a gap's invalid record too, and the worker
    # dead-letters the copy at its new offset (as `streams.tools.reconcile` matches them). A
    # letter keyed by a person holds the bytes sealed with their key; one whose key names no
    # person holds only the bytes' SHA-256.
    lettered: set[tuple[int, int]] = set()
    lettered_bytes: set[tuple[int, str]] = set()
    async for record in read(names.dead_letters):
        out.dead_letters += 1
        letter = orjson.loads(record.value)
        if letter["topic"] == names.events:
            lettered.add((letter["partition"], letter["offset"]))
            value = base64.b64decode(letter["value"] or b"")
            digest = letter.get("value_sha256")
            if digest is not None and value:
                problems.append(f"bytes kept for a message with no person key: {letter}")
            if letter.get("sealed") and value:
                person = base64.b64decode(letter["key"] or b"").decode()
                data_key = ring.get(person)
                value = data_key.open(person, value.decode()) if data_key else b""
            lettered_bytes.add((letter["partition"], digest or hashlib.sha256(value).hexdigest()))
    unlettered = sorted(
        at
        for at in invalid_at - lettered
        if (at[0], hashlib.sha256(invalid_bytes[at]).hexdigest()) not in lettered_bytes
        or not invalid_bytes[at]
    )
    _note(problems, "invalid inbound records not dead-lettered", unlettered)
    _note(problems, "dead letters of valid records", sorted(lettered - invalid_at))
    return out


def pause_points(rng: random.Random, rounds: int, low: float, high: float) -> list[float]:
    """Seconds to let the worker run before each fault (random, reproducible per seed)."""
    return [rng.uniform(low, high) for _ in range(rounds)]


def event_id(value: bytes) -> str:
    return str(orjson.loads(value)["event_id"])
