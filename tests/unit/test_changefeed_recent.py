"""The change feed's recent list: each change id once while it is in the list, newest last."""

from __future__ import annotations

import random
from collections import deque

import orjson

from streams.web.changefeed import ChangeFeed


def change(person: str, sequence: int) -> bytes:
    at = "2026-01-01T00:00:00Z"
    return orjson.dumps(
        {
            "change_id": f"{person}:{sequence}:0",
            "person_id": person,
            "sequence": sequence,
            "from_stage": None,
            "to_stage": "lead",
            "occurred_at": at,
            "event_id": f"e-{person}-{sequence}",
            "reason": {"rule": "lead.interest", "text": "interest"},
            "policy_version": "v",
            "id": f"{person}:{sequence}:0",
            "time": at,
        }
    )


def test_redeliveries_appear_once_in_recent_as_a_scan_of_the_list_keeps_them():
    feed = ChangeFeed("t", client_options={}, recent=20)
    model: deque[str] = deque(maxlen=20)  # what the list held when each id was scanned for
    rng = random.Random(5)
    for _ in range(2_000):
        person, sequence = f"p{rng.randrange(15)}", rng.randrange(1, 4)
        feed._add(change(person, sequence))
        change_id = f"{person}:{sequence}:0"
        if change_id not in model:
            model.append(change_id)
        assert [c.change_id for c in feed.recent] == list(model)
    assert feed.seen == 2_000
