"""`leadflow keys seal-history`: a history written before crypto-shredding, sealed in place.

The history of an earlier version (plaintext personal fields, no recorded outcomes) and its
plaintext table changelog are written to a real broker; the command seals them with the
workers stopped. Afterwards no byte of anyone's personal data is readable in the history
topic; opened with the keys, every record says what it said; the persons erased before the
upgrade have no key and nothing personal left; verify is clean; and a worker started on the
sealed history rebuilds its table sealed, and erases a person as this version does.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from events.codec import decode_event
from events.outbound import HistoryRecord
from lifecycle.policy import load_preset
from lifecycle.replay import fold, replay
from lifecycle.shredding import open_record, open_state
from lifecycle.verify import verify
from streams.kafka.keys import MasterKeys, read_keys
from streams.kafka.readers import read_to_end
from streams.kafka.topics import CHANGELOG_SUFFIX, TopicNames, app_id, ensure_topics
from streams.settings import Settings
from streams.tools.export import read_history_topic, read_policies_topic
from streams.worker.outputs import to_json
from streams.worker.run import policy_record
from tests.fixtures.worker import LEADFLOW, Worker, event_at, keyed, publish, wait_for

# Genuine Kafka: Tansu deletes no topics and keeps a worker that left in its group listing.
pytestmark = [pytest.mark.integration, pytest.mark.kafka_only]

T0 = datetime(2026, 2, 2, 9, tzinfo=UTC)
PERSONS = 24
ERASED_BEFORE = {0, 5, 10}  # erased under the old version
ERASED_AFTER = 7  # erased by a worker of this version, after the sealing


def pid(i: int) -> str:
    return f"sh-{i:02d}"


def markers(i: int) -> list[bytes]:
    return [f"qx{i:02d}mail".encode(), f"Qxtitle{i:02d}".encode(), f"Qxcorp{i:02d}".encode()]


def journey(i: int) -> list[dict[str, Any]]:
    """A decision maker by title at a fitting company, with a sales note: lead, mql, sql."""
    person, at = pid(i), T0 + timedelta(minutes=i)
    profile = {
        "email": f"qx{i:02d}mail@qxdomain{i:02d}.example",
        "job_title": f"Director of Qxtitle{i:02d}",
        "company": f"Qxcorp{i:02d} AG",
        "industry": "software",
        "employees": 300,
        "country": "DE",
    }
    events = [event_at(f"{person}-1", person, "webinar_attended", at, profile=profile)]
    events.append(event_at(f"{person}-2", person, "demo_requested", at + timedelta(hours=2)))
    events.append(
        event_at(
            f"{person}-3",
            person,
            "sales_accepted",
            at + timedelta(hours=3),
            reason=f"Qxtitle{i:02d} wants a call",
        )
    )
    if i in ERASED_BEFORE:
        events.append(event_at(f"{person}-x", person, "person_erased", at + timedelta(days=1)))
    return events


def old_history() -> list[Any]:
    """The decisions an earlier version recorded: plaintext, no outcomes."""
    events = [decode_event(orjson.dumps(e)) for i in range(PERSONS) for e in journey(i)]
    return list(replay(events, load_preset("default")))


async def write_old_version(bootstrap: str, names: TopicNames, prefix: str) -> list[bytes]:
    """History, policy and table changelog as the earlier version wrote them."""
    policy = load_preset("default")
    decisions = old_history()
    changelog = f"{app_id(prefix)}{CHANGELOG_SUFFIX}"
    await ensure_topics(bootstrap, [(changelog, 4, 1, {"cleanup.policy": "compact"})])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    values = []
    try:
        await producer.send_and_wait(
            names.policies, policy_record(policy)[1], key=policy.version.encode()
        )
        for decision in decisions:
            wire = decision.to_wire()
            wire["outcomes"] = None  # not recorded before crypto-shredding
            values.append(to_json(wire))
            await producer.send(names.history, values[-1], key=decision.person_id.encode())
        for person, state in fold(decisions).items():
            await producer.send(changelog, to_json(state.to_wire()), key=person.encode())
        await producer.flush()
    finally:
        await producer.stop()
    return values


def seal(broker: Any, prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LEADFLOW, "keys", "seal-history", "--broker", broker.url, "--topic-prefix", prefix],
        capture_output=True,
        text=True,
        timeout=300,
    )


async def test_seal_history_of_an_earlier_version_then_a_worker_carries_on(
    broker, make_topics, tmp_path: Path
):
    names = await make_topics(partitions=4)
    prefix = names.events.removesuffix(".leadflow.events")
    settings = Settings(broker=broker.url, topic_prefix=prefix)
    old = await write_old_version(broker.bootstrap, names, prefix)
    assert any(m in v for v in old for m in markers(1))  # plaintext, as written

    # A worker of this version on the old history, before the command ran: an event without
    # personal fields for a person whose table entry holds some makes them a data key, so the
    # entry keeps them, sealed (it would drop them otherwise).
    worker = Worker(
        broker, names, tmp_path, "w", store="rocksdb", extra=("--sweep-interval", "3600")
    )
    await worker.ready(timeout=120)
    viewed = event_at(f"{pid(1)}-v", pid(1), "page_viewed", T0 + timedelta(days=2))
    await publish(broker.bootstrap, names.events, [keyed(viewed)])

    async def viewed_applied() -> bool:
        return len(await read_to_end(broker.bootstrap, names.history)) == len(old) + 1

    await wait_for(viewed_applied, 120, "the page view in history")
    changelog = f"{app_id(prefix)}{CHANGELOG_SUFFIX}"
    entry = [
        r.value for r in await read_to_end(broker.bootstrap, changelog) if r.key == pid(1).encode()
    ][-1]
    assert b"qx01mail" not in entry and b"Qxcorp01" not in entry, entry
    ring = await read_keys(broker.bootstrap, names.keys, MasterKeys.from_env())
    assert pid(1) in ring.wrapped  # (on Tansu, whose changelog restore stops short, the
    # rebuilt persons got one too)
    kept = open_state(orjson.loads(entry), ring.get(pid(1)))["profile"]
    assert kept["job_title"] == "Director of Qxtitle01" and kept["email"].startswith("qx01mail")
    before = await read_to_end(broker.bootstrap, names.history)

    # A worker in the group: refused, nothing touched.
    refused = seal(broker, prefix)
    assert refused.returncode == 2 and "stop every worker first" in refused.stderr, refused
    worker.terminate()
    # (its start rebuilt the table from the plaintext history: the tombstones must cover it)
    assert "run `leadflow keys seal-history` once" in worker.log.read_text()
    logged = len(worker.log.read_text())

    async def sealed() -> subprocess.CompletedProcess[str] | None:
        done = seal(broker, prefix)  # refused until the group has seen the worker leave
        return None if "stop every worker first" in done.stderr else done

    done = await wait_for(sealed, 60, "the worker's group to be empty")
    assert done.returncode == 0, done.stderr
    assert f"{len(before)} records" in done.stdout and "3 erased persons" in done.stdout, (
        done.stdout
    )

    after = await read_to_end(broker.bootstrap, names.history)
    # Same records, same partitions, same order.
    assert [(r.partition, r.key) for r in after] == [(r.partition, r.key) for r in before]
    raw = b"\n".join(r.value for r in after)
    leaked = [m for i in range(PERSONS) for m in markers(i) if m in raw]
    assert leaked == [], leaked[:5]
    ring = await read_keys(broker.bootstrap, names.keys, MasterKeys.from_env())
    assert {pid(i) for i in range(PERSONS)} - set(ring.wrapped) == {pid(i) for i in ERASED_BEFORE}
    originals = {(r.key, i): r.value for i, r in enumerate(before)}
    for i, record in enumerate(after):
        data = open_record(orjson.loads(record.value), ring.get(record.key.decode()))
        want = orjson.loads(originals[(record.key, i)])
        person = int(want["person_id"].split("-")[1])
        got = HistoryRecord.model_validate(data).model_dump(exclude={"outcomes"})
        if person in ERASED_BEFORE:  # nothing personal left, the stage facts kept
            assert "email" not in orjson.dumps(data["event"]).decode()
            assert [c["to_stage"] for c in data["changes"]] == [
                c["to_stage"] for c in want["changes"]
            ]
        else:
            assert got == HistoryRecord.model_validate(want).model_dump(exclude={"outcomes"})
    # Outcomes: recorded wherever the decision read a personal field (as this version does).
    outcomes = Counter(bool(orjson.loads(r.value).get("outcomes")) for r in after)
    assert outcomes[True] == sum(1 for d in old_history() if d.outcomes) > 0

    # The table changelog's plaintext entries are tombstoned.
    latest: dict[bytes, bytes | None] = {}
    for record in await read_to_end(broker.bootstrap, changelog):
        latest[record.key] = record.value
    assert latest and all(v is None for v in latest.values())

    # Verify: every decision reproduced, erased persons counted as such.
    policies = await read_policies_topic(settings)
    report = verify(await read_history_topic(settings), policies)
    assert report.ok, report.mismatches[:3]
    assert report.erased == {pid(i) for i in ERASED_BEFORE}

    # A second run changes nothing.
    again = seal(broker, prefix)
    assert again.returncode == 0, again.stderr
    assert "0 rewritten" in again.stdout, again.stdout
    assert [r.value for r in await read_to_end(broker.bootstrap, names.history)] == [
        r.value for r in after
    ]

    # A worker of this version carries on: rebuilds its table sealed, erases as it should.
    worker.start()
    await worker.ready(timeout=120)
    await publish(
        broker.bootstrap,
        names.events,
        [
            keyed(
                event_at(
                    f"{pid(ERASED_AFTER)}-x",
                    pid(ERASED_AFTER),
                    "person_erased",
                    T0 + timedelta(days=3),
                )
            )
        ],
    )

    async def erased_applied() -> bool:
        return len(await read_to_end(broker.bootstrap, names.history)) == len(before) + 1

    await wait_for(erased_applied, 120, "the erasure in history")
    worker.terminate()
    assert "in the clear" not in worker.log.read_text()[logged:]  # nothing left to seal
    ring = await read_keys(broker.bootstrap, names.keys, MasterKeys.from_env())
    assert pid(ERASED_AFTER) not in ring.wrapped
    # What the table restores from (the superseded plaintext records stay in the changelog's
    # segments until Kafka compacts them: README, Erasure).
    latest = {r.key: r.value for r in await read_to_end(broker.bootstrap, changelog)}
    values = [v for v in latest.values() if v is not None]
    assert len(values) == PERSONS, "the worker rebuilt every person's table entry"
    raw = b"\n".join(values)
    assert [m for i in range(PERSONS) for m in markers(i) if m in raw] == []
    report = verify(await read_history_topic(settings), await read_policies_topic(settings))
    assert report.ok, report.mismatches[:3]
    assert pid(ERASED_AFTER) in report.erased


async def test_a_run_that_died_after_deleting_the_history_is_resumed(broker, make_topics):
    """The crash point that matters: the sealed copy complete, the history topic deleted."""
    from aiokafka import AIOKafkaProducer as Producer

    from streams.tools import seal_history as sh

    names = await make_topics(partitions=4)
    prefix = names.events.removesuffix(".leadflow.events")
    settings = Settings(broker=broker.url, topic_prefix=prefix)
    old = await write_old_version(broker.bootstrap, names, prefix)
    master = MasterKeys.from_env()
    assert master is not None
    producer = Producer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        layout = await sh._topic_layout(settings, names.history)
        await sh._seal_to_staging(settings, master, producer, sh.SealReport(), layout, print)
    finally:
        await producer.stop()
    staged = [r.value for r in await read_to_end(broker.bootstrap, names.history + ".sealing")]
    assert len(staged) == len(old)
    await sh._delete(settings, names.history)

    done = seal(broker, prefix)
    assert done.returncode == 0, done.stderr
    assert "resumed an earlier run at its swap step" in done.stdout, done.stdout
    assert [r.value for r in await read_to_end(broker.bootstrap, names.history)] == staged
    assert await sh._gone(settings, names.history + ".sealing")
    report = verify(await read_history_topic(settings), await read_policies_topic(settings))
    assert report.ok and report.checked == len(old), report.mismatches[:3]
