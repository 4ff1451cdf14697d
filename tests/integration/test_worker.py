"""The worker as users run it (`leadflow worker`), against the real broker.

Each test starts its own worker process on fresh topics and kills it by PID at the end.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
import pytest
from typer.testing import CliRunner

from events.outbound import DeadLetter, HistoryRecord, StageChanged
from lifecycle.policy import load_policy, load_preset
from lifecycle.replay import replay
from lifecycle.verify import verify
from streams.cli.main import app as cli_app
from streams.dev.broker import LocalBroker, free_port
from streams.dev.demo import synthetic_events
from streams.dev.process import ChildProcess
from streams.kafka.readers import read_to_end
from streams.kafka.topics import TopicNames
from tests.fixtures.worker import Opened, caught_up, event_at, keyed, publish

pytestmark = pytest.mark.integration

LEADFLOW = str(Path(sys.executable).with_name("leadflow"))
VP = {"seniority": "vp", "industry": "software", "employees": 300, "country": "DE"}
WITH_EMAIL = {**VP, "email": "k2@example.com", "job_title": "VP Sales"}


def prefix_of(names: TopicNames) -> str:
    return names.events.removesuffix(".leadflow.events")


class WorkerProcess:
    def __init__(
        self, broker: LocalBroker, names: TopicNames, data: Path, log: Path, *extra: str
    ) -> None:
        self.port = free_port()
        self.args = [
            LEADFLOW,
            "worker",
            "--broker",
            broker.url,
            "--topic-prefix",
            prefix_of(names),
            "--data-dir",
            str(data),
            "--web-port",
            str(self.port),
            "--web-host",
            "127.0.0.1",
            "--session-timeout",
            "6",
            *extra,
        ]
        self.log = log
        self.child = ChildProcess(self.args, log).start()
        self.proc = self.child.proc

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return orjson.loads(r.read())
        except OSError:
            return None

    async def ready(self, partitions: int = 4, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited: {self.log.read_text()[-2000:]}")
            health = await asyncio.to_thread(self.health)
            if health and len(health.get("partitions", [])) == partitions:
                return
            await asyncio.sleep(0.3)
        raise AssertionError(f"worker not ready in {timeout} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        self.child.kill()


@pytest.fixture
def spawn(broker: LocalBroker, tmp_path: Path) -> Iterator[Any]:
    started: list[WorkerProcess] = []

    def start(names: TopicNames, *extra: str, data: Path | None = None) -> WorkerProcess:
        worker = WorkerProcess(
            broker, names, data or tmp_path / "data", tmp_path / "worker.log", *extra
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def ev(event_id: str, person: str, type_: str, day: int, **extra: Any) -> dict[str, Any]:
    at = datetime(2026, 1, 1, 9, tzinfo=UTC) + timedelta(days=day)
    return event_at(event_id, person, type_, at, **extra)


async def records(bootstrap: str, topic: str, want: int, timeout: float = 60) -> list[bytes]:
    """All values of `topic` once it holds at least `want` records (read to the true end)."""
    deadline = time.monotonic() + timeout
    values: list[bytes] = []
    while time.monotonic() < deadline:
        values = await read_to_end(bootstrap, topic, value_only=True)
        if len(values) >= want:
            return values
        await asyncio.sleep(0.5)
    raise AssertionError(f"{topic}: {len(values)} records after {timeout} s, wanted {want}")


def history_of(values: list[bytes]) -> list[HistoryRecord]:
    return [HistoryRecord.model_validate_json(v) for v in values]


def changes_of(values: list[bytes]) -> list[StageChanged]:
    return [StageChanged.model_validate_json(v) for v in values]


@pytest.mark.smoke
async def test_events_become_stage_changes_and_history_and_duplicates_reemit_same_ids(
    broker, make_topics, spawn
):
    names = await make_topics(partitions=4)
    worker = spawn(names, "--store", "memory")
    await worker.ready()
    journey = [
        ev("e1", "ada", "newsletter_signup", 0, source="email"),
        ev("e2", "ada", "webinar_attended", 1, profile=VP),
        ev("e3", "ada", "demo_requested", 2),
        ev("e4", "ada", "deal_won", 20, source="crm"),
    ]
    await publish(broker.bootstrap, names.events, [keyed(e) for e in journey])
    history = history_of(await records(broker.bootstrap, names.history, 4))
    changes = changes_of(await records(broker.bootstrap, names.stage_changes, 4))

    assert [(r.sequence, r.event.event_id) for r in history] == [
        (1, "e1"),
        (2, "e2"),
        (3, "e3"),
        (4, "e4"),
    ]
    assert [(c.from_stage, c.to_stage, c.passed_through) for c in changes] == [
        (None, "subscriber", ()),
        ("subscriber", "lead", ()),
        ("lead", "mql", ()),
        ("mql", "customer", ("sql", "opportunity")),
    ]
    won = changes[-1]
    assert won.change_id == "ada:4:0" and won.event_id == "e4" and won.lead_source == "webinar"
    assert won.first_touch_source == "email" and won.id == won.change_id
    assert "hand-raise" in changes[2].reason.text

    # A redelivery of e3 and e4: the same changes again, same ids and payload, no new history.
    await publish(broker.bootstrap, names.events, [keyed(journey[2]), keyed(journey[3])])
    again = changes_of(await records(broker.bootstrap, names.stage_changes, 6))
    assert [c.model_dump() for c in again[4:]] == [c.model_dump() for c in changes[2:]]
    await caught_up(broker.bootstrap, names)
    assert len(await read_to_end(broker.bootstrap, names.history, value_only=True)) == 4


@pytest.mark.smoke
async def test_garbage_goes_to_dead_letters_and_the_next_event_is_processed(
    broker, make_topics, spawn
):
    names = await make_topics(partitions=4)
    worker = spawn(names, "--store", "memory")
    await worker.ready()
    garbage = [
        (b"zed", b"\xff\xfe not json"),
        (
            b"zed",
            b'{"event_id": "n1", "type": "page_viewed", "person_id": "zed",'
            b' "occurred_at": "2026-01-01T00:00:00"}',
        ),
        (b"other", orjson.dumps(ev("k1", "zed", "page_viewed", 0))),  # key is not the person
        # No key: nobody's data key can seal it, so its letter keeps a digest, not the bytes
        (None, orjson.dumps(ev("k2", "zed", "form_submitted", 0, profile=WITH_EMAIL))),
    ]
    await publish(
        broker.bootstrap,
        names.events,
        [*garbage, keyed(ev("ok1", "zed", "webinar_attended", 1, profile=VP))],
    )
    raw_letters = await records(broker.bootstrap, names.dead_letters, 4)
    assert not any(b"k2@example.com" in v or b"VP Sales" in v for v in raw_letters)
    letters = [DeadLetter.model_validate_json(v) for v in raw_letters]
    opened = await Opened.load(broker.bootstrap, names)  # keyed ones are sealed for the key
    assert all(d.sealed for d in letters if d.key is not None)
    (keyless,) = [d for d in letters if d.key is None]
    assert not keyless.sealed and keyless.value == b"" and keyless.value_sha256
    assert sorted(opened.letter_value(d) for d in letters) == sorted(v for _, v in garbage)
    reasons = " | ".join(d.error for d in letters)
    assert "not valid UTF-8" in reasons and "timezone" in reasons and "person_id" in reasons
    assert all(d.topic == names.events and d.offset >= 0 for d in letters)
    history = history_of(await records(broker.bootstrap, names.history, 1))
    assert [r.event.event_id for r in history] == ["ok1"]
    assert worker.proc.poll() is None


@pytest.mark.parametrize("keep_store", [True, False], ids=["store-kept", "store-deleted"])
@pytest.mark.smoke
async def test_restart_resumes_with_no_lost_or_redecided_person(
    broker, make_topics, spawn, tmp_path, keep_store
):
    names = await make_topics(partitions=4)
    data = tmp_path / "store"
    first = spawn(names, "--store", "rocksdb", data=data)
    await first.ready()
    events = list(synthetic_events(200, 2_000, seed=9))
    half = len(events) // 2
    await publish(broker.bootstrap, names.events, [keyed(e) for e in events[:half]])
    await records(broker.bootstrap, names.history, half)
    first.kill()
    if not keep_store:
        shutil.rmtree(data)
    second = spawn(names, "--store", "rocksdb", data=data)
    await second.ready(timeout=90)
    await publish(broker.bootstrap, names.events, [keyed(e) for e in events[half:]])
    history = history_of(await records(broker.bootstrap, names.history, len(events), 90))

    assert len(history) == len(events)
    sequences: dict[str, list[int]] = defaultdict(list)
    for record in history:
        sequences[record.person_id].append(record.sequence)
    assert all(seq == list(range(1, len(seq) + 1)) for seq in sequences.values())
    assert Counter(r.event.event_id for r in history) == Counter(e["event_id"] for e in events)
    # Nothing re-decided: every stage change is exactly what a replay of the same events says.
    policy = load_preset("default")
    applied = [r.event for r in history]
    expected = {c.change_id: c.to_stage for d in replay(applied, policy) for c in d.changes}
    changes = changes_of(await read_to_end(broker.bootstrap, names.stage_changes, value_only=True))
    assert {c.change_id: c.to_stage for c in changes} == expected
    assert verify(history, {policy.version: policy}).ok


async def test_sweeper_recycles_an_inactive_person_and_exported_history_verifies(
    broker, make_topics, spawn, tmp_path
):
    policy_file = tmp_path / "fast.yaml"
    text = (
        load_preset("default").to_yaml().replace("inactivity_days: 90.0", "inactivity_days: 0.0001")
    )
    policy_file.write_text(text)
    policy = load_policy(policy_file)
    assert policy.inactivity_days == 0.0001  # ≈ 9 s
    names = await make_topics(partitions=4)
    worker = spawn(
        names, "--store", "memory", "--policy", str(policy_file), "--sweep-interval", "1"
    )
    await worker.ready()
    now = datetime.now(UTC)
    lead = {**ev("s1", "sam", "webinar_attended", 0, profile=VP), "occurred_at": now.isoformat()}
    await publish(broker.bootstrap, names.events, [keyed(lead)])
    changes = changes_of(await records(broker.bootstrap, names.stage_changes, 2, timeout=60))
    assert [(c.to_stage, c.reason.rule) for c in changes] == [
        ("lead", "lead.interest"),
        ("recycled", "inactivity"),
    ]
    assert changes[1].occurred_at == changes[0].occurred_at + policy.inactivity_window

    out = tmp_path / "history.jsonl"
    prefix = prefix_of(names)
    export = await asyncio.to_thread(  # the command runs its own event loop
        CliRunner().invoke,
        cli_app,
        ["export-history", "--out", str(out), "--broker", broker.url, "--topic-prefix", prefix],
    )
    assert export.exit_code == 0, export.output
    lines = out.read_bytes().splitlines()
    assert len(lines) == 2  # the lead's event and the sweeper's recorded tick
    assert orjson.loads(lines[1])["event"]["type"] == "inactivity_timeout"
    result = CliRunner().invoke(
        cli_app, ["verify", "--history", str(out), "--policy", str(policy_file)]
    )
    assert result.exit_code == 0, result.output
    assert "checked 2 records: 0 mismatch(es)" in result.output


@pytest.mark.tansu_only
async def test_exactly_once_fails_fast_and_clearly_on_a_broker_without_transactions(
    broker, make_topics, tmp_path
):
    names = await make_topics(partitions=4)
    started = time.monotonic()
    proc = subprocess.run(
        [
            LEADFLOW,
            "worker",
            "--broker",
            broker.url,
            "--topic-prefix",
            prefix_of(names),
            "--exactly-once",
            "--data-dir",
            str(tmp_path),
            "--web-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "transactions" in proc.stderr
    assert time.monotonic() - started < 30


async def test_librdkafka_clients_produce_events_and_read_stage_changes(broker, make_topics, spawn):
    names = await make_topics(partitions=4)
    worker = spawn(names, "--store", "memory")
    await worker.ready()
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
    for event in (
        ev("c1", "cleo", "webinar_attended", 0, profile=VP),
        ev("c2", "cleo", "contact_sales", 1),
    ):
        producer.produce(names.events, key=b"cleo", value=orjson.dumps(event))
    assert producer.flush(10) == 0

    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "librdkafka-reader",
            "enable.auto.commit": False,
        }
    )
    consumer.assign(
        [
            confluent_kafka.TopicPartition(names.stage_changes, p, confluent_kafka.OFFSET_BEGINNING)
            for p in range(4)
        ]
    )
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    try:
        while len(seen) < 2 and time.monotonic() < deadline:
            message = await asyncio.to_thread(consumer.poll, 0.5)
            if message is not None and message.error() is None:
                assert message.key() == b"cleo"
                seen.append(orjson.loads(message.value()))
    finally:
        consumer.close()
    assert [(c["from_stage"], c["to_stage"]) for c in seen] == [(None, "lead"), ("lead", "mql")]
    assert seen[1]["reason"]["rule"] == "mql.hand_raise"
