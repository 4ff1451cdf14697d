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
