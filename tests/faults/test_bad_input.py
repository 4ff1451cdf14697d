"""Bad input through the real events topic: the worker stays up and sorts every message.

Hypothesis generates >= 10k messages (random bytes, JSON that is not an object, envelopes
with one field broken: wrong types, over-long strings, naive or out-of-range datetimes,
missing ids, deep nesting, invalid UTF-8, oversized payloads, wrong keys, tombstones) and
valid edge cases (unknown types, odd unicode, fields at their limits, a payload of exactly
the size limit), interleaved with ordinary valid events. Each case carries the outcome the
contract promises; the codec is asked too, so a wrong label fails the test instead of
hiding a bug. The worker must dead-letter exactly the invalid ones (matched by partition
and offset, raw bytes kept, a reason given) and record every valid one in history once.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from events.codec import InvalidMessage, decode_event
from events.inbound import KNOWN_TYPES
from events.limits import MAX_ID, MAX_NAME, MAX_PAYLOAD_BYTES, MAX_TEXT
from events.outbound import DeadLetter, HistoryRecord
from lifecycle.policy import load_preset
from lifecycle.verify import verify
from streams.dev.demo import synthetic_events
from streams.kafka.readers import read_to_end
from tests.fixtures.worker import Opened, Worker

pytestmark = [pytest.mark.integration, pytest.mark.faults]

#: Cases from hypothesis (in groups of GROUP per example), plus PLAIN ordinary valid events.
EXAMPLES = 10_500
PLAIN = 1_500


@dataclass(slots=True)
class Case:
    kind: str
    key: bytes | None
    value: bytes | None
    valid: bool
    event_id: str | None = None  # set for valid cases (unique)


# -- strategies ---------------------------------------------------------------------------------
# Generating ~10k full envelopes one example at a time takes ~90 s here, so each example draws
# one valid envelope and derives a group of cases from it (each a different kind of damage).


def _repeat(limit: int, low: int = 1) -> st.SearchStrategy[str]:
    """A string of `low`..`limit` characters, cheap to generate at any length."""
    return st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(low, limit))


def _text(limit: int, low: int = 1) -> st.SearchStrategy[str]:
    """Short arbitrary text, or a long repeated one up to exactly `limit` characters."""
    return st.text(min_size=low, max_size=min(limit, 24)) | _repeat(limit, max(low, 1))


offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
in_range = st.datetimes(datetime(1900, 1, 2), datetime(2999, 12, 30), timezones=offsets)
texts = st.text(min_size=1, max_size=16)
ids = _text(MAX_ID)
names = _text(MAX_NAME)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
profiles = st.fixed_dictionaries(
    {},
    optional={
        "email": _text(MAX_TEXT, 0),
        "seniority": names,
        "industry": st.sampled_from(["software", "fintech", "retail"]) | names,
        "employees": st.integers(0, 10_000_000),
        "country": names,
    },
)


@st.composite
def valid_envelopes(draw: st.DrawFn, event_type: st.SearchStrategy[str] | None = None) -> dict:
    """An envelope the contract accepts (the id is replaced by a unique one later)."""
    envelope: dict[str, Any] = {
        "event_id": PLACEHOLDER,
        "type": draw(st.sampled_from(sorted(KNOWN_TYPES)) if event_type is None else event_type),
        "person_id": draw(ids),
        "occurred_at": draw(in_range).isoformat(),
    }
    optional = {
        "source": names,
        "campaign": _text(MAX_TEXT, 0),
        "reason": _text(MAX_TEXT, 0),
        "profile": profiles,
        "schema_version": st.integers(1, 1000),
        "x-extra": json_values,  # unknown fields are ignored
    }
    for field, strategy in optional.items():
        if draw(st.booleans()):
            envelope[field] = draw(strategy)
    return envelope


PLACEHOLDER = "placeholder"
NOT_STRINGS = (
    st.integers() | st.floats(allow_nan=False) | st.booleans() | st.lists(texts, max_size=3)
)
#: One field broken on an otherwise valid envelope: (field, strategy of broken values).
BROKEN_FIELDS: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("event_id", NOT_STRINGS | st.none() | st.dictionaries(texts, texts, max_size=2)),
    ("person_id", NOT_STRINGS | st.none()),
    ("type", NOT_STRINGS | st.none()),
    ("source", NOT_STRINGS),
    ("campaign", NOT_STRINGS),
    ("occurred_at", st.booleans() | st.lists(texts, max_size=2) | st.none() | texts),
    ("profile", st.integers() | texts | st.lists(texts, max_size=2) | st.booleans()),
    ("schema_version", st.integers(max_value=0) | st.integers(min_value=1001) | texts),
]
LONG_FIELDS = [
    ("event_id", MAX_ID),
    ("person_id", MAX_ID),
    ("type", MAX_NAME),
    ("source", MAX_NAME),
    ("campaign", MAX_TEXT),
    ("reason", MAX_TEXT),
]
BAD_UTF8 = [
    b"\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xe2\x82",
    b"\xf8\x88\x80\x80\x80",
]
EDGE_TIMES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59Z"]


def _dump(envelope: Any) -> bytes:
    """Compact JSON; the stdlib encoder, as it takes integers of any size."""
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()


def _key(envelope: dict[str, Any]) -> bytes:
    person = envelope.get("person_id")
    return person.encode() if isinstance(person, str) else b"bad-key"


def _spliced(envelope: dict[str, Any], field: str, raw: bytes) -> bytes:
    """The envelope's JSON with `raw` (not itself JSON-encoded) as the value of `field`."""
    return _dump({**envelope, field: "@@SPLICE@@"}).replace(b'"@@SPLICE@@"', raw, 1)


Mutation = Any  # (draw, envelope) -> Case


def wrong_type(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    field, values = draw(st.sampled_from(BROKEN_FIELDS))
    value = draw(values)
    if isinstance(value, str) and field in ("occurred_at", "schema_version"):
        value = "not a value: " + value
    return Case("wrong_type", _key(envelope), _dump({**envelope, field: value}), False)


def huge_string(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    field, limit = draw(st.sampled_from(LONG_FIELDS))
    value = draw(_repeat(limit * 3, limit + 1))
    key = value.encode() if field == "person_id" else _key(envelope)
    return Case("huge_string", key, _dump({**envelope, field: value}), False)


def bad_time(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    """Naive times, bare dates, and aware times outside the accepted years."""
    naive = st.datetimes(datetime(1900, 1, 1), datetime(2999, 12, 31))
    early = st.datetimes(datetime(1, 1, 2), datetime(1899, 12, 30), timezones=offsets)
    late = st.datetimes(datetime(3000, 1, 2), datetime(9999, 12, 30), timezones=offsets)
    when = draw(
        (naive | early | late).map(datetime.isoformat)
        | st.dates().map(lambda d: d.isoformat())
        | st.sampled_from(EDGE_TIMES)
    )
    return Case("bad_time", _key(envelope), _dump({**envelope, "occurred_at": when}), False)


def missing_id(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    field = draw(st.sampled_from(["event_id", "person_id", "type", "occurred_at"]))
    broken = {k: v for k, v in envelope.items() if k != field}
    if draw(st.booleans()):
        broken[field] = ""
    return Case("missing_id", _key(envelope), _dump(broken), False)


def deep_nesting(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    """A required field nested deep, up to far past the parser's recursion limit."""
    field = draw(st.sampled_from(["event_id", "person_id", "occurred_at", "type"]))
    depth = draw(st.integers(1, 20_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    raw = opener * depth + b"1" + closer * depth
    return Case("deep_nesting", _key(envelope), _spliced(envelope, field, raw), False)


def invalid_utf8(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    field = draw(st.sampled_from(["person_id", "event_id", "type", "x-extra"]))
    raw = b'"a' + draw(st.sampled_from(BAD_UTF8)) + b'b"'
    return Case("invalid_utf8", _key(envelope), _spliced(envelope, field, raw), False)


def oversized(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    size = draw(st.integers(MAX_PAYLOAD_BYTES + 1, 3 * MAX_PAYLOAD_BYTES))
    base = len(_dump({**envelope, "x-padding": ""}))
    value = _dump({**envelope, "x-padding": "p" * max(size - base, 0)})
    return Case("oversized", _key(envelope), value, False)


WHITESPACE_TO_X = bytes.maketrans(b" \t\r\n", b"xxxx")


def broken_json(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    """The envelope cut short, with a lone surrogate escape, or with trailing garbage."""
    raw = _dump(envelope)
    how = draw(st.sampled_from(["truncated", "surrogate", "trailing"]))
    if how == "truncated":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif how == "surrogate":
        raw = _spliced(envelope, "campaign", b'"\\ud800"')
    else:
        # JSON allows trailing whitespace: the garbage must hold something else.
        garbage = draw(st.binary(min_size=1, max_size=8)).translate(WHITESPACE_TO_X)
        raw += b" " + garbage
    return Case("broken_json", _key(envelope), raw, False)


def not_an_object(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    value = draw(
        st.none() | st.booleans() | st.integers() | texts | st.lists(json_values, max_size=4)
    )
    return Case("not_an_object", _key(envelope), _dump(value), False)


def random_bytes(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    key = draw(st.none() | st.binary(max_size=20))
    return Case("random_bytes", key, draw(st.binary(max_size=300)), False)


def wrong_key(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    key = draw(st.none() | st.binary(max_size=20))
    if key == _key(envelope):
        key = None
    return Case("wrong_key", key, _dump(envelope), False)


def tombstone(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    return Case("tombstone", _key(envelope), None, False)


def valid_edge(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    return Case("valid_edge", _key(envelope), _dump(envelope), True)


def unknown_type(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    """Types no schema knows are valid envelopes: recorded, no effect."""
    event_type = draw(names.filter(lambda t: t not in KNOWN_TYPES))
    return Case("unknown_type", _key(envelope), _dump({**envelope, "type": event_type}), True)


def at_size_limit(draw: st.DrawFn, envelope: dict[str, Any]) -> Case:
    """A payload of exactly MAX_PAYLOAD_BYTES bytes (extra padding field) is accepted."""
    base = len(_dump({**envelope, "x-padding": ""}))
    if base > MAX_PAYLOAD_BYTES:
        return valid_edge(draw, envelope)
    value = _dump({**envelope, "x-padding": "p" * (MAX_PAYLOAD_BYTES - base)})
    return Case("at_size_limit", _key(envelope), value, True)


#: Kinds of case and their weights (how many of each in a group, on average).
MUTATIONS: list[tuple[Mutation, int]] = [
    (wrong_type, 6),
    (huge_string, 3),
    (bad_time, 3),
    (missing_id, 3),
    (deep_nesting, 2),
    (invalid_utf8, 2),
    (broken_json, 3),
    (not_an_object, 1),
    (random_bytes, 1),
    (wrong_key, 2),
    (tombstone, 1),
    (valid_edge, 6),
    (unknown_type, 3),
]
RARE: list[Mutation] = [oversized, at_size_limit]
WEIGHTED = [m for m, weight in MUTATIONS for _ in range(weight)]
GROUP = 12  # cases derived from one envelope


@st.composite
def case_groups(draw: st.DrawFn) -> list[Case]:
    envelope = draw(valid_envelopes())
    # Kinds picked by a drawn seed: hypothesis favours the first options of a sampled_from,
    # which would make most cases one kind.
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    chosen = rng.choices(WEIGHTED, k=GROUP)
    if rng.random() < 1 / 25:  # a few large payloads
        chosen[0] = rng.choice(RARE)
    return [mutate(draw, dict(envelope)) for mutate in chosen]


def generate_cases(count: int) -> list[Case]:
    """At least `count` cases from the strategies, the same on every run (fixed seed)."""
    cases: list[Case] = []

    @seed(20260501)
    @settings(
        max_examples=-(-count // GROUP),
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case_groups())
    def collect(group: list[Case]) -> None:
        cases.extend(group)

    collect()
    return cases


def expected_by_contract(case: Case) -> bool:
    """What the codec says (plus the key rule the worker adds): must agree with the label."""
    if case.value is None:
        return False
    try:
        event = decode_event(case.value)
    except InvalidMessage:
        return False
    return case.key == event.person_id.encode()


def with_unique_ids(cases: list[Case]) -> list[Case]:
    """Give every valid case a unique event id (so history can be matched one to one)."""
    out = []
    for n, case in enumerate(cases):
        if case.valid:
            assert case.value is not None
            event_id = f"v{n:010d}"  # as long as the placeholder: sizes stay
            marker = b'"event_id":"' + PLACEHOLDER.encode() + b'"'
            assert case.value.count(marker) == 1, case
            value = case.value.replace(marker, b'"event_id":"' + event_id.encode() + b'"', 1)
            if len(value) > MAX_PAYLOAD_BYTES:  # the at-limit case: trim its padding back
                value = value.replace(b"p" * (len(value) - MAX_PAYLOAD_BYTES) + b'"', b'"', 1)
            case = Case(case.kind, case.key, value, True, event_id)
        out.append(case)
    return out


def plain_events(count: int) -> list[Case]:
    return [
        Case("plain", e["person_id"].encode(), orjson.dumps(e), True, e["event_id"])
        for e in synthetic_events(count // 5, count, seed=11)
    ]


# -- the test -----------------------------------------------------------------------------------


async def publish_all(bootstrap: str, topic: str, cases: list[Case]) -> list[tuple[int, int]]:
    """Publish in order; returns (partition, offset) of each case."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=10, max_request_size=4 * MAX_PAYLOAD_BYTES
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, c.value, key=c.key) for c in cases]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metadata]


async def settled(
    bootstrap: str, names: Any, worker: Worker, published: int, histories: int, letters: int
) -> tuple[list[Any], list[Any]]:
    """History and dead letters once the worker has processed every published message.

    Polls the worker's own count first: re-reading ~30 MB of dead letters every second
    would compete with the worker for this machine's two cores.
    """
    deadline = time.monotonic() + 150
    while True:
        assert worker.alive, f"worker died: {worker.tail()}"
        status, health = await asyncio.to_thread(worker.request, "/healthz", token=None)
        if status == 200 and health["events_processed"] >= published:
            break
        assert time.monotonic() < deadline, f"processed {health} of {published} after 150 s"
        await asyncio.sleep(0.5)
    while True:  # their outputs may still be in flight
        history = await read_to_end(bootstrap, names.history)
        dead = await read_to_end(bootstrap, names.dead_letters)
        if len(history) >= histories and len(dead) >= letters:
            return history, dead
        assert time.monotonic() < deadline, (
            f"history {len(history)}/{histories}, dead letters {len(dead)}/{letters} after 150 s"
        )
        await asyncio.sleep(1.0)


async def test_every_invalid_input_is_dead_lettered_and_every_valid_one_recorded(
    broker, make_topics, tmp_path: Path, fault_report
):
    names = await make_topics(partitions=4)
    # The sweeper runs often: it meets the odd persons too (ids in any script, events dated
    # 1900 whose deadlines passed long ago) and its ticks must be recorded like any event.
    worker = Worker(broker, names, tmp_path, "bad-input", extra=("--sweep-interval", "5"))
    started = time.monotonic()
    try:  # generated while the worker joins its group
        generated = await asyncio.to_thread(generate_cases, EXAMPLES)
    except BaseException:
        worker.kill()
        raise
    generation_s = time.monotonic() - started
    assert len(generated) >= 10_000
    mislabelled = [c for c in generated if expected_by_contract(c) != c.valid]
    assert not mislabelled, f"{len(mislabelled)} labels disagree with the codec: {mislabelled[:3]}"
    cases = with_unique_ids(generated) + plain_events(PLAIN)
    random.Random(5).shuffle(cases)
    kinds = Counter(c.kind for c in cases)
    print(f"\n{len(cases)} cases ({generation_s:.1f}s to generate): {dict(sorted(kinds.items()))}")

    try:
        await worker.ready()
        rss_start = worker.rss_mb()
        publishing = time.monotonic()
        positions = await publish_all(broker.bootstrap, names.events, cases)
        valid = [c for c in cases if c.valid]
        invalid = {pos: c for pos, c in zip(positions, cases, strict=True) if not c.valid}
        history, dead = await settled(
            broker.bootstrap, names, worker, len(cases), len(valid), len(invalid)
        )
        print(f"published, processed and read back in {time.monotonic() - publishing:.1f}s")
        assert worker.alive, f"worker died: {worker.tail()}"
        status, health = await asyncio.to_thread(worker.request, "/healthz", token=None)
        rss_end = worker.rss_mb()
    finally:
        worker.kill()

    letters = [DeadLetter.model_validate_json(r.value) for r in dead]
    opened = await Opened.load(broker.bootstrap, names)  # keyed letters are sealed for the key
    lettered = Counter((d.partition, d.offset) for d in letters)
    records = [HistoryRecord.model_validate_json(r.value) for r in history]
    ticks = [r for r in records if r.event.source == "leadflow.sweeper"]
    erased = {r.person_id for r in records if r.erased}
    recorded = Counter(r.event.event_id for r in records if r not in ticks)
    unknown = {c.event_id for c in cases if c.kind == "unknown_type"}
    fault_report.add(
        "bad_input",
        f"{len(invalid)} invalid of {len(cases)} inputs",
        events=len(cases),
        dead_letters=len(letters),
        rss_start_mb=rss_start,
        rss_end_mb=rss_end,
        valid=len(valid),
        recorded=len(records),
        unknown_types=len(unknown),
        sweeper_ticks=len(ticks),
    )

    assert status == 200 and health["events_processed"] >= len(cases) + len(ticks)
    # 100 % of invalid inputs are dead letters, each once, with its raw bytes and a reason.
    unexpected = [
        (d.partition, d.offset, d.error, bytes(d.value)[:300])
        for d in letters
        if (d.partition, d.offset) not in invalid
    ]
    assert set(lettered) == set(invalid), (
        f"missing: {[invalid[p].kind for p in set(invalid) - set(lettered)][:10]}, "
        f"unexpected: {unexpected[:5]}"
    )
    assert max(lettered.values()) == 1
    for letter in letters:
        case = invalid[(letter.partition, letter.offset)]
        value = opened.letter_value(letter)
        if value is None:  # sealed for a person a valid `person_erased` case then erased
            assert letter.sealed and bytes(letter.key).decode() in erased, letter
        else:
            assert value == (case.value or b"")
        assert letter.key == case.key and letter.topic == names.events
        assert letter.error.strip() and "Traceback" not in letter.error
        # A reason from the codec, not an unexpected exception's class name.
        assert not letter.error.split(":")[0].endswith("Error"), letter.error
    # Every valid input is in history exactly once; nothing else is.
    assert recorded == Counter(c.event_id for c in valid)
    assert all(
        r.event.type == "inactivity_timeout" and r.event.event_id.startswith("timeout:")
        for r in ticks
    )
    # Unknown types are valid envelopes: recorded, no effect of their own (arriving after the
    # inactivity window, they still recycle the person as of the window's end, as any event).
    for record in records:
        if record.event.event_id in unknown:
            assert all(c.reason.rule == "inactivity" for c in record.changes), record
            if not record.changes:
                assert record.note is not None and record.note.rule == "unknown_type", record
    policy = load_preset("default")
    report = verify(records, {policy.version: policy})
    assert report.ok, report.mismatches[:3]
    assert "Traceback" not in worker.log.read_text(errors="replace")
