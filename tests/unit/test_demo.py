"""The demo stream `leadflow dev` publishes ends at the time dev starts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from streams.dev.demo import synthetic_events


def test_the_demo_stream_can_end_at_a_given_time():
    end = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)

    shifted = list(synthetic_events(200, 2_000, end=end))
    plain = list(synthetic_events(200, 2_000))

    assert shifted[-1]["occurred_at"] == end.isoformat()
    assert max(e["occurred_at"] for e in shifted) == end.isoformat()
    offset = datetime.fromisoformat(shifted[0]["occurred_at"]) - datetime.fromisoformat(
        plain[0]["occurred_at"]
    )
    for a, b in zip(shifted, plain, strict=True):
        moved = datetime.fromisoformat(a["occurred_at"]) - datetime.fromisoformat(b["occurred_at"])
        assert abs(moved - offset) < timedelta(microseconds=2)
        assert {**a, "occurred_at": ""} == {**b, "occurred_at": ""}
    json.dumps(shifted)


def test_leadflow_dev_publishes_a_demo_that_ends_when_it_starts(monkeypatch, tmp_path):
    """Not months ahead: the last event occurs at the time `leadflow dev` publishes it, and
    none later, so the dashboard's dates and the sweeper's wall clock agree with the data."""
    import asyncio
    import types

    import orjson
    from rich.console import Console

    import streams.kafka.publish
    from streams.dev.devstack import DevOptions, DevStack
    from streams.settings import Settings

    sent: list[dict] = []

    async def publish(settings, messages, on_sent=None, rate=0.0):
        sent.extend(orjson.loads(value) for _, value in messages)
        return types.SimpleNamespace(sent=len(sent))

    monkeypatch.setattr(streams.kafka.publish, "publish", publish)
    stack = DevStack(DevOptions(persons=50, events=500, data_dir=tmp_path), Console())
    stack.settings = Settings(broker="kafka://127.0.0.1:9", partitions=1)

    before = datetime.now(UTC)
    assert asyncio.run(stack.publish_demo()) == len(sent) >= 500
    after = datetime.now(UTC)

    last = max(datetime.fromisoformat(e["occurred_at"]) for e in sent)
    assert before <= last <= after
    assert datetime.fromisoformat(sent[-1]["occurred_at"]) == last
