"""`leadflow import --broker`: a backfill lands on the events topic, keyed by person id."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from events.codec import decode_event
from streams.cli.main import app
from streams.kafka.readers import read_to_end
from streams.kafka.topics import TopicNames

pytestmark = pytest.mark.integration

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mappings"
BACKFILL = [str(EXAMPLES / "mqls.csv"), str(EXAMPLES / "deals.csv")]
MAPPING = ["--mapping", str(EXAMPLES / "b2b-funnel.yaml"), "--sort-by-time"]


async def test_import_to_the_broker_publishes_the_same_events_as_the_jsonl_import(
    broker, make_topics: Callable[..., Awaitable[TopicNames]], tmp_path: Path
) -> None:
    names = await make_topics(partitions=2)
    prefix = names.events.removesuffix(".leadflow.events")
    out = tmp_path / "events.jsonl"
    written = runner.invoke(app, ["import", *BACKFILL, *MAPPING, "--out", str(out)])
    assert written.exit_code == 0, written.output

    args = ["import", *BACKFILL, *MAPPING, "--broker", broker.url, "--topic-prefix", prefix]
    sent = await asyncio.to_thread(runner.invoke, app, args)
    assert sent.exit_code == 0, sent.output
    assert f"sent to {names.events}" in sent.stderr and "11 events" in sent.stderr

    records = await read_to_end(broker.bootstrap, names.events)
    events = [decode_event(r.value) for r in records]
    assert all(r.key == e.person_id.encode() for r, e in zip(records, events, strict=True))
    expected = sorted(out.read_bytes().splitlines())
    assert sorted(r.value for r in records) == expected
    # per person, the topic holds the events in time order (one partition per person)
    for person in {e.person_id for e in events}:
        times = [e.occurred_at for e in events if e.person_id == person]
        assert times == sorted(times)


async def test_strict_import_with_a_bad_row_sends_nothing_to_the_broker(
    broker, make_topics: Callable[..., Awaitable[TopicNames]], tmp_path: Path
) -> None:
    names = await make_topics(partitions=1)
    prefix = names.events.removesuffix(".leadflow.events")
    bad = tmp_path / "deals-late.csv"
    bad.write_text("mql_id,won_date,business_segment,lead_type\nm9,someday,pet,x\n")
    args = ["import", *BACKFILL, str(bad), *MAPPING, "--strict"]
    result = await asyncio.to_thread(
        runner.invoke, app, [*args, "--broker", broker.url, "--topic-prefix", prefix]
    )
    assert result.exit_code == 1
    assert f"{bad}:2: occurred_at: 'someday'" in result.stderr
    assert await read_to_end(broker.bootstrap, names.events, idle_timeout=5) == []


async def test_send_with_a_mapping_publishes_the_mapped_rows(
    broker, make_topics: Callable[..., Awaitable[TopicNames]]
) -> None:
    names = await make_topics(partitions=1)
    prefix = names.events.removesuffix(".leadflow.events")
    args = ["send", BACKFILL[0], "--mapping", str(EXAMPLES / "b2b-funnel.yaml")]
    result = await asyncio.to_thread(
        runner.invoke, app, [*args, "--broker", broker.url, "--topic-prefix", prefix]
    )
    assert result.exit_code == 0, result.output
    assert "sent 8" in result.stdout and "invalid 0" in result.stdout
    records = await read_to_end(broker.bootstrap, names.events)
    assert {decode_event(r.value).type for r in records} == {"contact_sales"}
