"""Ordering and time: late events, the inactivity window's edge, an SLA due during an outage.

One worker runs a policy with second-long windows (inactivity ~8.6 s, mql SLA ~4.3 s).

* Events dated in the year 2100 (the sweeper, which compares deadlines with the wall clock,
  never fires for them): late events (occurred_at before the person's last event), events
  exactly at and just after the window's end, and a random mix of both. The live decisions
  must equal an offline `replay` of the same events in the same order.
* Two persons moved "now", then the worker is killed (kill -9) before their SLA is due and
  stays down past it and past their inactivity window; nothing is published meanwhile. After
  the restart the sweeper alone must record the SLA breach and the inactivity recycle.

Afterwards the exported history (`leadflow export-history`, as an auditor runs it) verifies
with zero mismatches, and the stage-change topic holds exactly what replay predicts.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from events.inbound import Event
from events.outbound import HistoryRecord, StageChanged
from lifecycle.policy import Policy, load_policy
from lifecycle.replay import replay
from lifecycle.verify import change_facts, verify
from streams.kafka.readers import read_to_end
from streams.kafka.topics import TopicNames
from tests.fixtures.core import custom_policy
from tests.fixtures.worker import LEADFLOW, Worker, event_at, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

INACTIVITY_DAYS = 0.0001  # 8.64 s
SLA_MQL_DAYS = 0.00005  # 4.32 s
FUTURE = datetime(2100, 1, 1, tzinfo=UTC)
FIT = {"seniority": "vp", "industry": "software", "employees": 300, "country": "DE"}
MIX_TYPES = [
    "webinar_attended",
    "page_viewed",
    "content_download",
    "demo_requested",
    "email_clicked",
    "sales_accepted",
    "opportunity_opened",
    "deal_lost",
    "survey_completed",  # unknown type
]


ev = event_at


def scenarios(window: timedelta) -> list[dict[str, Any]]:
    """Hand-written cases at the edges, dated in 2100."""
    t = FUTURE
    s = timedelta(seconds=1)
    return [
        # late events: before the person's last event
        ev("late-1", "late", "webinar_attended", t + 10 * s, profile=FIT),
        ev("late-2", "late", "page_viewed", t + 12 * s),
        ev("late-3", "late", "content_download", t + 1 * s),
        ev("late-4", "late", "demo_requested", t + 5 * s),
        ev("late-2", "late", "page_viewed", t + 12 * s),  # a redelivery of a late one
        # exactly at the window's end: no recycle (only strictly after)
        ev("exact-1", "exact", "webinar_attended", t, profile=FIT),
        ev("exact-2", "exact", "content_download", t + window),
        # one microsecond after it: recycled as of the window's end, then a lead again
        ev("after-1", "after", "webinar_attended", t, profile=FIT),
        ev("after-2", "after", "content_download", t + window + timedelta(microseconds=1)),
        # a late event after a recycle does not recycle again or move time back
        ev("back-1", "back", "webinar_attended", t, profile=FIT),
        ev("back-2", "back", "webinar_attended", t + 2 * window),
        ev("back-3", "back", "demo_requested", t + window / 2),
        # the mql SLA breached by a late sales answer, then an opportunity
        ev("sla-1", "sla", "webinar_attended", t, profile=FIT),
        ev("sla-2", "sla", "demo_requested", t + s),
        ev("sla-3", "sla", "sales_accepted", t + s + window / 2 + s, source="crm"),
        ev("sla-4", "sla", "opportunity_opened", t + 2 * s, source="crm"),  # late, in sql
    ]


def mixed(window: timedelta, persons: int = 40, per_person: int = 12) -> list[dict[str, Any]]:
    """Random journeys whose gaps straddle the window, with ~1 in 4 events arriving late."""
    rng = random.Random(42)
    journeys: list[list[dict[str, Any]]] = []
    for p in range(persons):
        at = FUTURE + timedelta(hours=p + 1)
        journey = []
        for n in range(per_person):
            at += window * rng.uniform(0.05, 1.4)
            type_ = "webinar_attended" if n == 0 else rng.choice(MIX_TYPES)
            extra = {"profile": FIT} if n == 0 else {}
            journey.append(ev(f"m{p}-{n}", f"mix{p}", type_, at, **extra))
        for n in range(2, per_person):
            if rng.random() < 0.25:  # deliver late: swap with an earlier event
                k = rng.randrange(1, n)
                journey[k], journey[n] = journey[n], journey[k]
        journeys.append(journey)
    # Persons interleaved; each person's own (partly late) order kept.
    return [e for step in zip(*journeys, strict=True) for e in step]


async def publish(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for e in events:
            await producer.send(topic, orjson.dumps(e), key=e["person_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def history(bootstrap: str, names: TopicNames) -> list[HistoryRecord]:
    return [
        HistoryRecord.model_validate_json(v)
        for v in await read_to_end(bootstrap, names.history, value_only=True)
    ]


async def wait_history(
    bootstrap: str, names: TopicNames, worker: Worker, done: Any, what: str, timeout: float = 90
) -> list[HistoryRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.alive, f"worker died: {worker.tail()}"
        records = await history(bootstrap, names)
        if done(records):
            return records
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}: {worker.tail()}")


def record_facts(record: Any) -> tuple[Any, ...]:
    return (
        record.person_id,
        record.sequence,
        record.event.event_id,
        tuple(change_facts(c) for c in record.changes),
        tuple((b.stage, b.entered_at, b.due_at, b.detected_at) for b in record.sla_breaches),
        record.last_activity,
    )


def fast_policy(tmp_path: Path) -> tuple[Path, Policy]:
    base = custom_policy(inactivity_days=INACTIVITY_DAYS, sla_days={"mql": SLA_MQL_DAYS, "sql": 30})
    path = tmp_path / "fast.yaml"
    path.write_text(base.to_yaml())
    policy = load_policy(path)
    assert policy.inactivity_days == INACTIVITY_DAYS and policy.sla_days["mql"] == SLA_MQL_DAYS
    return path, policy


async def test_late_and_boundary_events_and_an_sla_due_in_an_outage_replay_exactly(
    broker, make_topics, tmp_path: Path, fault_report
):
    policy_file, policy = fast_policy(tmp_path)
    window = policy.inactivity_window
    sla = timedelta(days=SLA_MQL_DAYS)
    names = await make_topics(partitions=4)
    extra = ("--policy", str(policy_file), "--sweep-interval", "1")
    worker = Worker(broker, names, tmp_path, "ordering", extra=extra)
    try:
        await worker.ready()
        _, health = await asyncio.to_thread(worker.request, "/healthz", token=None)
        assert health["policy_version"] == policy.version

        # 1. late and boundary events (no wall-clock deadline can pass for them)
        dated = scenarios(window) + mixed(window)
        await publish(broker.bootstrap, names.events, dated)
        distinct = {e["event_id"] for e in dated}
        await wait_history(
            broker.bootstrap,
            names,
            worker,
            lambda rs: {r.event.event_id for r in rs} >= distinct,
            "the dated events in history",
        )

        # 2. an SLA and an inactivity window that run out while the worker is down
        at = datetime.now(UTC) + timedelta(seconds=6)  # SLA due ~10 s after publishing
        now_events = [
            ev("out-1", "outage-mql", "webinar_attended", at, profile=FIT),
            ev("out-2", "outage-mql", "demo_requested", at),
            ev("out-3", "outage-lead", "webinar_attended", at, profile=FIT),
        ]
        await publish(broker.bootstrap, names.events, now_events)
        await wait_history(
            broker.bootstrap,
            names,
            worker,
            lambda rs: {"out-1", "out-2", "out-3"} <= {r.event.event_id for r in rs},
            "the outage persons in history",
        )
        worker.kill()
        killed = datetime.now(UTC)
        assert killed < at + sla, "the worker was killed after the SLA was due; too slow here"
        await asyncio.sleep(max((at + window - datetime.now(UTC)).total_seconds(), 0) + 1.5)
        outage_s = (datetime.now(UTC) - killed).total_seconds()
        worker.start()
        await worker.ready()
        swept = await wait_history(
            broker.bootstrap,
            names,
            worker,
            lambda rs: sum(r.event.type == "inactivity_timeout" for r in rs) >= 2,
            "the sweeper's ticks after the restart",
        )
        # Two more sweeps, counted: anything the sweeper should not have published shows too.
        sweeps = await worker.metric("leadflow_sweeps_total")

        async def two_more_sweeps() -> bool:
            return await worker.metric("leadflow_sweeps_total") >= sweeps + 2

        await wait_for(two_more_sweeps, 30, "two more sweeps")
        # ... and every tick on the events topic by then is applied (counted, not slept on).
        published = {
            orjson.loads(v)["event_id"]
            for v in await read_to_end(broker.bootstrap, names.events, value_only=True)
            if b"leadflow.sweeper" in v
        }
        await wait_history(
            broker.bootstrap,
            names,
            worker,
            lambda rs: published <= {r.event.event_id for r in rs},
            "every published tick in history",
        )

        out = tmp_path / "history.jsonl"
        prefix_args = ["--topic-prefix", names.events.removesuffix(".leadflow.events")]
        exported = await asyncio.to_thread(
            subprocess.run,
            [LEADFLOW, "export-history", "--out", str(out), "--broker", broker.url, *prefix_args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        changes_raw = await read_to_end(broker.bootstrap, names.stage_changes, value_only=True)
        alive_at_end = worker.alive
        log = worker.log.read_text(errors="replace")
    finally:
        worker.kill()

    assert exported.returncode == 0, exported.stderr
    records = [HistoryRecord.model_validate_json(line) for line in out.read_bytes().splitlines()]
    assert len(records) >= len(swept)
    by_id = {r.event.event_id: r for r in records}
    assert len(by_id) == len(records), "an event recorded twice"

    # Live decisions on dated events = an offline replay of the same events, same order.
    offline = [d for d in replay([Event.model_validate(e) for e in dated], policy)]
    expected = [record_facts(d) for d in offline if not d.duplicate]
    assert [record_facts(by_id[f[2]]) for f in expected] == expected

    # The edges, spelled out.
    def moves(event_id: str) -> list[tuple[str, str, datetime]]:
        return [(c.to_stage, c.reason.rule, c.occurred_at) for c in by_id[event_id].changes]

    # The latest activity so far (page view at +12 s), not moved back by the late one at +1 s.
    assert by_id["late-3"].last_activity == FUTURE + timedelta(seconds=12)
    assert moves("late-4") == [("mql", "mql.hand_raise", FUTURE + timedelta(seconds=5))]
    assert moves("exact-2") == []
    assert moves("after-2") == [
        ("recycled", "inactivity", FUTURE + window),
        ("lead", "lead.interest", FUTURE + window + timedelta(microseconds=1)),
    ]
    assert moves("back-3")[0][:2] == ("mql", "mql.hand_raise")
    assert [b.stage for b in by_id["sla-3"].sla_breaches] == ["mql"]

    # The outage: the sweeper alone recorded the breach and the recycles, at the deadlines.
    ticks = [r for r in records if r.event.type == "inactivity_timeout"]
    assert sorted(r.person_id for r in ticks) == ["outage-lead", "outage-mql"]
    mql_tick = next(r for r in ticks if r.person_id == "outage-mql")
    assert [(b.stage, b.due_at) for b in mql_tick.sla_breaches] == [("mql", at + sla)]
    for tick in ticks:
        assert [(c.to_stage, c.reason.rule, c.occurred_at) for c in tick.changes] == [
            ("recycled", "inactivity", at + window)
        ]

    # The whole exported history verifies; the topic holds exactly what replay predicts.
    report = verify(records, {policy.version: policy})
    assert report.checked == len(records) and report.ok, report.mismatches[:3]
    predicted = {
        c.change_id: change_facts(c)
        for d in replay([r.event for r in records], policy)
        for c in d.changes
    }
    published = [StageChanged.model_validate_json(v) for v in changes_raw]
    found = {c.change_id: change_facts(c) for c in published}
    assert found == predicted
    duplicates = len(published) - len(found)
    assert all(found[c.change_id] == change_facts(c) for c in published)
    assert alive_at_end and "Traceback" not in log

    fault_report.add(
        "ordering_time",
        f"late events, window edges, kill -9 for {outage_s:.0f}s past an SLA",
        events=len(dated) + len(now_events),
        expected=len(predicted),
        found=len(found),
        duplicates=duplicates,
        late_events=sum(
            1
            for r in records
            if r.last_activity is not None and r.event.occurred_at < r.last_activity
        ),
        sweeper_ticks=len(ticks),
        verify_mismatches=len(report.mismatches),
    )
