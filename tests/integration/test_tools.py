"""Operator tools against a real (Tansu) broker: topics, send, tail, export-history."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from typer.testing import CliRunner

from events.inbound import Event
from events.outbound import DeadLetter, HistoryRecord, Reason, StageChanged
from lifecycle.policy import load_preset
from lifecycle.replay import replay
from streams.cli.main import app
from streams.dev.broker import LocalBroker, free_port
from streams.dev.demo import synthetic_events
from streams.kafka.publish import encode_event, publish
from streams.kafka.readers import partitions_of, read_to_end
from streams.kafka.topics import TopicNames
from streams.settings import Settings
from streams.tools.export import read_history_topic, read_policies_topic
from streams.tools.tail import follow

pytestmark = pytest.mark.integration

runner = CliRunner()
MakeTopics = Callable[..., Awaitable[TopicNames]]


def prefix_of(names: TopicNames) -> str:
    return names.events.removesuffix(".leadflow.events")


def cli(broker: LocalBroker, names: TopicNames, *args: str) -> list[str]:
    return [*args, "--broker", broker.url, "--topic-prefix", prefix_of(names)]


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Produce in flushed chunks of 250, so the topic holds many batches per partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        for i, (key, value) in enumerate(messages, start=1):
            await producer.send(topic, value, key=key)
            if i % 250 == 0:
                await producer.flush()
        await producer.flush()
    finally:
        await producer.stop()


def stage_change(person: str = "p-ada", sequence: int = 3) -> StageChanged:
    at = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    change_id = f"{person}:{sequence}:0"
    return StageChanged(
        change_id=change_id,
        person_id=person,
        sequence=sequence,
        from_stage="lead",
        to_stage="customer",
        passed_through=("mql", "sql", "opportunity"),
        occurred_at=at,
        event_id="e-won-1",
        reason=Reason(rule="sales.deal_won", text="Sales closed the deal as won."),
        lead_source="webinar",
        temperature="hot",
        policy_version="abc123def456",
        id=change_id,
        time=at,
    )


# --- topics create ------------------------------------------------------------------------


def test_topics_create_is_idempotent_and_reports_a_spec_mismatch(
    broker: LocalBroker, new_topic_names: Callable[[], TopicNames]
) -> None:
    names = new_topic_names()
    first = runner.invoke(app, cli(broker, names, "topics", "create"))
    assert first.exit_code == 0, first.output
    assert "8 created, 0 already existed" in first.stdout  # with the changelog, aliases, keys
    history = f"{names.history}  (4 partitions, cleanup.policy=delete, retention.ms=-1,"
    assert history in first.stdout
    again = runner.invoke(app, cli(broker, names, "topics", "create"))
    assert again.exit_code == 0, again.output
    assert "0 created, 8 already existed" in again.stdout
    different = runner.invoke(app, cli(broker, names, "topics", "create", "--partitions", "2"))
    assert different.exit_code == 1
    assert f"{names.events}: 4 partitions, spec says 2" in different.stderr


# --- send ---------------------------------------------------------------------------------


def events_file(tmp_path: Path, count: int = 300) -> tuple[Path, list[dict]]:
    events = list(synthetic_events(40, count, seed=5))
    lines = [orjson.dumps(e) for e in events]
    lines.insert(10, b'{"event_id":"bad-1","type":"demo_requested"}')  # line 11
    lines.insert(20, b"{not json")  # line 21
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, events


async def test_send_publishes_every_valid_line_keyed_by_person_and_reports_bad_lines(
    broker: LocalBroker, make_topics: MakeTopics, tmp_path: Path
) -> None:
    names = await make_topics()
    path, events = events_file(tmp_path)
    result = await asyncio.to_thread(runner.invoke, app, cli(broker, names, "send", str(path)))
    assert result.exit_code == 0, result.output
    assert f"{path}:11: person_id: Field required" in result.stderr
    assert f"{path}:21: " in result.stderr
    assert f"sent {len(events)} to {names.events}" in result.stdout
    assert "invalid 2" in result.stdout
    records = await read_to_end(broker.bootstrap, names.events)
    assert len(records) == len(events)
    assert all(r.key == Event.model_validate_json(r.value).person_id.encode() for r in records)
    assert {Event.model_validate_json(r.value).event_id for r in records} == {
        e["event_id"] for e in events
    }


async def test_send_strict_sends_nothing_and_exits_1_when_a_line_is_invalid(
    broker: LocalBroker, make_topics: MakeTopics, tmp_path: Path
) -> None:
    names = await make_topics()
    path, _ = events_file(tmp_path, 50)
    args = cli(broker, names, "send", str(path), "--strict")
    result = await asyncio.to_thread(runner.invoke, app, args)
    assert result.exit_code == 1
    assert f"{path}:11:" in result.stderr and f"{path}:21:" in result.stderr
    assert "sent 0, invalid 2" in result.stdout
    assert await read_to_end(broker.bootstrap, names.events, idle_timeout=5) == []


async def test_send_csv_maps_columns_to_event_and_profile_fields(
    broker: LocalBroker, make_topics: MakeTopics, tmp_path: Path
) -> None:
    names = await make_topics()
    path = tmp_path / "crm.csv"
    path.write_text(
        "Contact ID,Activity,When,Activity ID,Title,source\n"
        "c-1,demo_requested,2026-01-02T10:00:00Z,a-1,VP Sales,webinar\n"
        "c-2,form_submitted,2026-01-02T11:00:00+01:00,a-2,Director,form\n"
        "c-3,form_submitted,yesterday,a-3,Director,form\n",
        encoding="utf-8",
    )
    mapping = [
        "person_id=Contact ID",
        "type=Activity",
        "occurred_at=When",
        "event_id=Activity ID",
        "profile.job_title=Title",
    ]
    args = cli(broker, names, "send", str(path))
    for pair in mapping:
        args += ["--csv-map", pair]
    result = await asyncio.to_thread(runner.invoke, app, args)
    assert result.exit_code == 0, result.output
    assert f"{path}:4: occurred_at:" in result.stderr
    assert "sent 2" in result.stdout and "invalid 1" in result.stdout
    records = await read_to_end(broker.bootstrap, names.events)
    events = sorted((Event.model_validate_json(r.value) for r in records), key=lambda e: e.event_id)
    assert [(e.person_id, e.type, e.source) for e in events] == [
        ("c-1", "demo_requested", "webinar"),
        ("c-2", "form_submitted", "form"),
    ]
    assert events[0].profile is not None and events[0].profile.job_title == "VP Sales"
    assert events[1].occurred_at == datetime(2026, 1, 2, 10, 0, tzinfo=UTC)


async def test_send_demo_publishes_the_synthetic_stream(
    broker: LocalBroker, make_topics: MakeTopics
) -> None:
    names = await make_topics()
    args = cli(broker, names, "send", "--demo", "500", "--persons", "50")
    result = await asyncio.to_thread(runner.invoke, app, args)
    assert result.exit_code == 0, result.output
    assert "sent 500" in result.stdout and "invalid 0" in result.stdout
    records = await read_to_end(broker.bootstrap, names.events)
    assert len({r.key for r in records}) == 50
    assert all(Event.model_validate_json(r.value).person_id.encode() == r.key for r in records)


def test_send_rejects_a_csv_map_naming_no_event_field(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a\n1\n")
    result = runner.invoke(app, ["send", str(path), "--csv-map", "persn_id=a"])
    assert result.exit_code == 2
    assert "'persn_id' is not an event field" in result.stderr


# --- export-history -----------------------------------------------------------------------


def history_messages(count_events: int = 3_000) -> list[tuple[bytes, bytes]]:
    """Real history records: the default policy applied to a synthetic stream."""
    policy = load_preset("default")
    events = (Event.model_validate(e) for e in synthetic_events(300, count_events, seed=9))
    return [
        (d.person_id.encode(), orjson.dumps(d.to_wire()))
        for d in replay(events, policy)
        if not d.duplicate
    ]


async def end_offsets_total(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic) or ())]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


@pytest.mark.smoke
async def test_export_history_reads_every_record_past_what_end_offsets_reports(
    broker: LocalBroker, make_topics: MakeTopics, tmp_path: Path
) -> None:
    names = await make_topics()
    messages = history_messages()
    await produce(broker.bootstrap, names.history, messages)
    policy = load_preset("default")
    policy_value = orjson.dumps({"version": policy.version, "policy": policy.model_dump()})
    await produce(broker.bootstrap, names.policies, [(policy.version.encode(), policy_value)])
    reported = await end_offsets_total(broker.bootstrap, names.history)
    # Tansu's ListOffsets stops at the last batch's first offset; Kafka would say len().
    assert reported <= len(messages)
    print(f"end_offsets says {reported}, the topic holds {len(messages)}")

    settings = Settings(broker=broker.url, topic_prefix=prefix_of(names))
    history = await read_history_topic(settings)
    assert len(history) == len(messages)
    assert all(isinstance(h, HistoryRecord) for h in history)
    assert await read_policies_topic(settings) == {policy.version: policy}

    out = tmp_path / "history.jsonl"
    result = await asyncio.to_thread(
        runner.invoke, app, cli(broker, names, "export-history", "--out", str(out))
    )
    assert result.exit_code == 0, result.output
    assert f"exported {len(messages):,} history records" in result.stdout
    lines = out.read_bytes().splitlines()
    assert len(lines) == len(messages)
    exported = [HistoryRecord.model_validate_json(line) for line in lines]
    assert sorted((h.person_id, h.sequence) for h in exported) == sorted(
        (h.person_id, h.sequence) for h in history
    )
    for person in {h.person_id for h in exported[:50]}:  # per-person history order kept
        sequences = [h.sequence for h in exported if h.person_id == person]
        assert sequences == sorted(sequences) == list(range(1, len(sequences) + 1))
    policies_file = out.with_name("history.jsonl.policies.jsonl")
    assert "wrote 1 policy version(s)" in result.stdout
    (line,) = policies_file.read_bytes().splitlines()
    assert orjson.loads(line)["version"] == policy.version

    verify = await asyncio.to_thread(runner.invoke, app, ["verify", "--history", str(out)])
    assert verify.exit_code == 0, verify.output
    assert f"checked {len(messages)} records: 0 mismatch(es), 0 unchecked" in verify.stdout


async def test_an_offline_command_on_a_missing_history_topic_says_so_in_one_line(
    broker: LocalBroker,
) -> None:
    """`replay | funnel --broker` with no history topic under the prefix: one line naming
    the topic and the broker, exit 2, no traceback (the history is read as a stream)."""
    names = TopicNames.prefixed(f"absent-{uuid.uuid4().hex[:6]}")
    for command in ("replay", "funnel"):
        result = await asyncio.to_thread(runner.invoke, app, cli(broker, names, command))
        assert result.exit_code == 2, result.output
        assert f"history topic {names.history} not found on {broker.url}" in result.stderr
        assert "Traceback" not in result.output


# --- tail ---------------------------------------------------------------------------------


@pytest.mark.smoke
async def test_tail_prints_a_stage_change_as_a_sentence(
    broker: LocalBroker, make_topics: MakeTopics
) -> None:
    names = await make_topics()
    change = stage_change()
    await produce(
        broker.bootstrap, names.stage_changes, [(b"p-ada", change.model_dump_json().encode())]
    )
    args = cli(broker, names, "tail", "--from-beginning", "--limit", "1", "--idle-timeout", "20")
    result = await asyncio.to_thread(runner.invoke, app, args)
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith(
        "2026-03-01 09:30:00  p-ada  lead → customer (via mql, sql, opportunity)"
    )
    assert "sales.deal_won: Sales closed the deal as won." in line
    assert "source webinar" in line and "hot" in line


async def test_tail_prints_a_dead_letter_with_its_error_and_origin(
    broker: LocalBroker, make_topics: MakeTopics
) -> None:
    names = await make_topics()
    letter = DeadLetter(
        error="person_id: Field required",
        topic=names.events,
        partition=2,
        offset=41,
        value=base64.b64encode(b'{"event_id":"x"}'),  # Base64Bytes takes the encoded form
    )
    await produce(broker.bootstrap, names.dead_letters, [(b"x", letter.model_dump_json().encode())])
    args = cli(broker, names, "tail", "--topic", "dead-letters", "--from-beginning", "--limit", "1")
    result = await asyncio.to_thread(runner.invoke, app, args)
    assert result.exit_code == 0, result.output
    assert f"person_id: Field required  from {names.events}/2@41" in result.stdout
    assert '{"event_id":"x"}' in result.stdout


async def test_tail_json_prints_the_records_as_they_are(
    broker: LocalBroker, make_topics: MakeTopics
) -> None:
    names = await make_topics()
    value = stage_change().model_dump_json().encode()
    await produce(broker.bootstrap, names.stage_changes, [(b"p-ada", value)])
    args = cli(broker, names, "tail", "--from-beginning", "--limit", "1", "--json")
    result = await asyncio.to_thread(runner.invoke, app, args)
    assert result.exit_code == 0, result.output
    assert StageChanged.model_validate_json(result.stdout) == stage_change()


@pytest.mark.smoke
async def test_tail_from_now_skips_every_old_record_of_the_last_batch(
    broker: LocalBroker, make_topics: MakeTopics
) -> None:
    """`seek_to_end` lands inside the last batch on Tansu; tail must start at the true end."""
    names = await make_topics()
    old = [
        (f"p{i % 7}".encode(), stage_change(f"old-{i}", 1).model_dump_json().encode())
        for i in range(1_000)
    ]
    await produce(broker.bootstrap, names.stage_changes, old)
    settings = Settings(broker=broker.url, topic_prefix=prefix_of(names))
    seen: list[str] = []
    task = asyncio.create_task(
        follow(
            settings,
            "stage-changes",
            lambda r: seen.append(StageChanged.model_validate_json(r.value).person_id),
            limit=1,
        )
    )
    for n in range(60):  # keep adding new records until tail prints one (it needs a fetch first)
        if task.done():
            break
        new = stage_change(f"new-{n}", 1).model_dump_json().encode()
        await produce(broker.bootstrap, names.stage_changes, [(b"p-new", new)])
        await asyncio.sleep(0.5)
    assert await asyncio.wait_for(task, 10) == 1
    assert seen[0].startswith("new-"), seen


# --- dev ----------------------------------------------------------------------------------


class Lines:
    """A child's stdout, read by a thread so the test can wait for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    async def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"no line matching {pattern!r} in {timeout}s:\n" + "\n".join(self.lines)
        )


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("kind", ["tansu", "kafka"])
async def test_dev_runs_broker_and_worker_and_sigint_stops_both(tmp_path: Path, kind: str) -> None:
    command = [sys.executable, "-m", "streams.cli", "dev", "--no-demo", "--broker-kind", kind]
    command += ["--web-port", str(free_port()), "--data-dir", str(tmp_path / "dev")]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
    )
    out = Lines(proc)
    try:
        broker = await out.wait_for(rf"^broker\s+(kafka://\S+)\s+\({kind}, pid (\d+)", 60)
        worker = await out.wait_for(r"^worker\s+starting \(pid (\d+)", 30)
        await out.wait_for(r"leadflow dev is up", 90)
        await out.wait_for(r"^\s+dashboard\s+http://127\.0\.0\.1:\d+/", 1)
        url, broker_pid, worker_pid = broker[1], int(broker[2]), int(worker[1])

        settings = Settings(broker=url)
        events = [encode_event(e) for e in synthetic_events(20, 200, seed=4)]
        assert (await publish(settings, events)).sent == len(events)
        await out.wait_for(r"history records: 200 .*stage changes: [1-9]", 60)
        changes = await read_to_end(settings.bootstrap, settings.topics.stage_changes)
        assert changes and all(StageChanged.model_validate_json(r.value) for r in changes)
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0, "\n".join(out.lines)
    await out.wait_for(r"worker and broker stopped", 5)
    assert gone(broker_pid) and gone(worker_pid)
    if kind == "kafka":  # its data under the dev data dir
        assert (tmp_path / "dev" / "kafka" / "log" / "meta.properties").exists()
