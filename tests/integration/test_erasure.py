"""Erased means unreadable: persons erased under load, with kill -9s of the worker in between.

Afterwards every topic is read raw (all but upstream's own `leadflow.events`, which the worker
cannot rewrite; its retention bounds it), and the RocksDB stores (read back and byte by byte),
an export, every route of the published API and the worker's log are searched for the erased
persons' personal bytes: none appear, also not in their dead letters. The other persons'
profiles are still readable, verify is clean (erased persons counted as such) and the funnel
is unchanged. On genuine Kafka, compaction removes an erased person's wrapped data key from
the broker's log segments.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from events.outbound import DeadLetter
from lifecycle.shredding import open_state
from streams.kafka.readers import iter_to_end, read_to_end
from streams.kafka.topics import topic_specs
from streams.settings import Settings
from streams.tools.reconcile import committed_offsets, reconcile
from streams.worker.app import app_id
from tests.fixtures.worker import LEADFLOW, Opened, Worker, event_at, keyed, publish, wait_for

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
PERSONS = 120
ERASED = range(0, PERSONS, 3)  # every third person: 40


def pid(i: int) -> str:
    return f"person-{i:03d}"


def personal(i: int) -> dict[str, str]:
    """Each person's personal values, unique enough to search for byte by byte."""
    return {
        "email": f"zq{i:03d}mail@zqdomain{i:03d}.example",
        "job_title": f"Director of Zqtitle{i:03d}",
        "company": f"Zqcompany{i:03d} GmbH",
        "reason": f"zqnote{i:03d} call on Tuesday",
    }


def markers(i: int) -> list[bytes]:
    p = personal(i)
    return [
        p["email"].encode(),
        p["email"].split("@")[1].encode(),
        f"Zqtitle{i:03d}".encode(),
        f"Zqcompany{i:03d}".encode(),
        f"zqnote{i:03d}".encode(),
    ]


def journey(i: int) -> list[dict[str, Any]]:
    """A decision maker by title (no seniority) at a fitting company: lead, mql, sql."""
    p = personal(i)
    profile = {
        "email": p["email"],
        "job_title": p["job_title"],
        "company": p["company"],
        "industry": "software",
        "employees": 300,
        "country": "DE",
    }
    at = T0 + timedelta(minutes=i)
    person = pid(i)
    events = [event_at(f"{person}-1", person, "webinar_attended", at, profile=profile)]
    events += [
        event_at(f"{person}-v{n}", person, "page_viewed", at + timedelta(hours=1 + n))
        for n in range(4)
    ]
    events.append(event_at(f"{person}-2", person, "demo_requested", at + timedelta(hours=6)))
    events.append(
        event_at(
            f"{person}-3",
            person,
            "sales_accepted",
            at + timedelta(hours=8),
            reason=p["reason"],
        )
    )
    return events


def erasure(i: int) -> dict[str, Any]:
    return event_at(f"{pid(i)}-erase", pid(i), "person_erased", T0 + timedelta(days=2))


def rejected(i: int, tag: str) -> tuple[bytes, bytes]:
    """An invalid event of person i (no timezone) carrying their email: a dead letter."""
    event = {
        "event_id": f"{pid(i)}-{tag}",
        "type": "webinar_attended",
        "person_id": pid(i),
        "occurred_at": "2026-03-02T09:00:00",
        "profile": {"email": personal(i)["email"]},
    }
    return keyed(event)


def prefix_of(worker: Worker) -> str:
    return worker.names.events.removesuffix(".leadflow.events")


def run_cli(worker: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LEADFLOW, *args, "--broker", worker.broker.url, "--topic-prefix", prefix_of(worker)],
        capture_output=True,
        text=True,
        timeout=180,
    )


async def history_count(worker: Worker) -> int:
    return len(await read_to_end(worker.broker.bootstrap, worker.names.history))


def funnel_json(worker: Worker) -> dict[str, Any]:
    done = run_cli(worker, "funnel", "--format", "json")
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


async def test_erased_persons_personal_bytes_are_unreadable_everywhere(
    broker, make_topics, tmp_path: Path
):
    names = await make_topics(partitions=4)
    worker = Worker(
        broker, names, tmp_path, "w", store="rocksdb", extra=("--sweep-interval", "3600")
    )
    await worker.ready(timeout=120)
    journeys = [journey(i) for i in range(PERSONS)]
    applied = sum(len(j) for j in journeys) + len(ERASED)

    # Load, with a kill -9 once part of it is applied.
    first = [keyed(e) for j in journeys[: PERSONS // 2] for e in j]
    rest = [keyed(e) for j in journeys[PERSONS // 2 :] for e in j]
    # Rejected events with personal data: of a person erased later, and of one kept.
    before = [rejected(0, "bad"), rejected(1, "bad")]
    await publish(broker.bootstrap, names.events, before + first)
    await wait_for(lambda: _at_least(worker, 50), 120, "part of the load in history")
    worker.kill()
    worker.start()
    await worker.ready(timeout=120)
    await publish(broker.bootstrap, names.events, rest)
    expected = applied - len(ERASED)
    await all_in_history(worker, names, expected)
    funnel_before = funnel_json(worker)
    status, api_funnel_before = worker.request("/funnel")
    assert status == 200

    # Erasures interleaved with more load: redeliveries of the erased persons' events (with
    # their personal fields, as upstream replays a backlog), a kill -9 once some erasures are
    # applied; the last five erasures come through the API (POST /events, admin scope).
    erasures = [keyed(erasure(i)) for i in ERASED]
    redelivered = [keyed(e) for i in range(PERSONS) for e in journeys[i][:2]]
    await publish(broker.bootstrap, names.events, erasures[:20] + redelivered[:30])
    await wait_for(lambda: _at_least(worker, expected + 5), 120, "some erasures in history")
    worker.kill()
    worker.start()
    await worker.ready(timeout=120)
    after = [rejected(3, "bad-after")]  # after person 3's erasure (same partition, later)
    await publish(broker.bootstrap, names.events, erasures[20:-5] + redelivered[30:] + after)
    for _, value in erasures[-5:]:
        status, body = worker.request("/events", body=value)
        assert status == 202, body
    await wait_for(lambda: _at_least(worker, applied), 120, "every erasure in history")
    await wait_for(lambda: _consumed(worker), 120, "the worker's group at the events' end")
    assert await history_count(worker) == applied, "a redelivery writes no history"
    # Dead letters: the three rejected events only (a redelivered sealed event is a
    # duplicate, not a conflict), each sealed for its person: the kept one's opens, the
    # erased one's does not, and nothing is kept of one rejected after the erasure.
    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await read_to_end(broker.bootstrap, names.dead_letters)
    ]
    # (A batch re-processed after a kill -9 writes its dead letters again: at least once.)
    assert len({(d.partition, d.offset) for d in letters}) == 3, letters
    assert all(d.sealed for d in letters)
    opened = await Opened.load(broker.bootstrap, names)
    for d in letters:
        person = bytes(d.key).decode()
        if person == pid(1):
            assert opened.letter_value(d) == before[1][1]
        elif person == pid(0):  # sealed with the destroyed key, or (a copy re-processed
            # after the erasure, as a kill -9 can make happen) kept empty
            assert opened.ring.get(person) is None
            assert not d.value or bytes(d.value).startswith(b"v1."), d
        else:
            assert person == pid(3) and bytes(d.value) == b"", "nothing kept once erased"

    erased_markers = [m for i in ERASED for m in markers(i)]
    kept = [i for i in range(PERSONS) if i not in ERASED]

    # Every topic, raw, but upstream's events topic (the worker never writes personal fields
    # there; upstream's own records age out with its retention: README, Erasure).
    topics = [t for t in names.all() if t != names.events]
    topics.append(f"{prefix_of(worker)}.leadflow-persons-changelog")
    seen_bytes = 0
    for topic in topics:
        for record in await read_to_end(broker.bootstrap, topic):
            raw = (record.key or b"") + (record.value or b"")
            seen_bytes += len(raw)
            found = [m for m in erased_markers if m in raw]
            assert not found, f"{topic}/{record.partition}@{record.offset} holds {found}"
    assert seen_bytes > 100_000
    keys = await read_to_end(broker.bootstrap, names.keys)
    latest = {r.key: r.value for r in keys}
    assert all(latest[pid(i).encode()] is None for i in ERASED), "erasure writes a tombstone"
    assert all(latest[pid(i).encode()] is not None for i in kept)
    written = {r.key for r in await read_to_end(broker.bootstrap, names.events)}
    assert written == {pid(i).encode() for i in range(PERSONS)}, "only upstream's records"

    # The store (table and dedup store), as RocksDB reads it and byte by byte on disk; the
    # worker stopped first, so what it holds is all on disk.
    worker.terminate()
    table = store_values(worker.data / "v1" / "tables")
    assert {k.decode() for k in table} == {pid(i) for i in range(PERSONS)}
    for person, value in table.items():
        found = [m for m in erased_markers if m in value]
        assert not found, f"the table's {person!r} holds {found}"
    for i in kept:
        data = open_state(orjson.loads(table[pid(i).encode()]), opened.ring.get(pid(i)))
        assert data["profile"]["email"] == personal(i)["email"], "a kept person opens"
    for i in ERASED:
        data = orjson.loads(table[pid(i).encode()])
        assert data["erased"] and "personal" not in data and data["profile"] == {}
    dedup = store_values(worker.data / "dedup")
    assert len(dedup) >= applied - len(ERASED)
    assert not [m for v in dedup.values() for m in erased_markers if m in v]
    files = [p for p in worker.data.rglob("*") if p.is_file()]
    store = b"".join(p.read_bytes() for p in files)
    assert pid(kept[0]).encode() in store, "the store files hold the persons"
    assert not [m for m in erased_markers if m in store]
    worker.start()
    await worker.ready(timeout=120)

    # The export, and verify and the funnel on it and on the topic.
    out = tmp_path / "history.jsonl"
    done = run_cli(worker, "export-history", "--out", str(out))
    assert done.returncode == 0, done.stderr
    exported = out.read_bytes()
    assert not [m for m in erased_markers if m in exported]
    # The export is sealed as stored (one taken before an erasure is shredded by it too);
    # the others' records open with their key.
    assert personal(kept[0])["email"].encode() not in exported
    lines = [orjson.loads(line) for line in exported.splitlines()]
    events = [
        opened.history(orjson.dumps(r)).event
        for r in lines
        if r["person_id"] == pid(kept[0]) and "personal" in r["event"]
    ]
    assert {e.profile.email for e in events if e.profile} == {personal(kept[0])["email"]}
    assert {e.reason for e in events if e.reason} == {personal(kept[0])["reason"]}
    done = run_cli(worker, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 mismatch(es)" in done.stdout
    assert f"{len(ERASED)} erased" in done.stdout
    done = subprocess.run(
        [LEADFLOW, "verify", "--history", str(out)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 mismatch(es)" in done.stdout and f"{len(ERASED)} erased" in done.stdout
    assert funnel_json(worker) == funnel_before
    status, api_funnel = worker.request("/funnel")
    assert api_funnel["reached"] == api_funnel_before["reached"]

    # Every API route the published contract lists (and the dashboard page), every person.
    served = b"".join(api_bodies(worker))
    assert not [m for m in erased_markers if m in served]
    assert not [m for m in erased_markers if m in worker.log.read_bytes()]
    master = os.environ["LEADFLOW_MASTER_KEY"].split(":", 1)[1].encode()
    assert master not in worker.log.read_bytes(), "the master key is never logged"

    # The others are still readable where they are meant to be.
    for i in kept[:10]:
        status, body = worker.request(f"/people/{pid(i)}")
        assert body["profile"]["email"] == personal(i)["email"]
        assert body["profile"]["job_title"] == personal(i)["job_title"]
        status, body = worker.request(f"/people/{pid(i)}/history")
        texts = [c["reason"]["text"] for r in body["records"] for c in r["changes"]]
        assert any(personal(i)["reason"] in t for t in texts), texts
    for i in list(ERASED)[:5]:
        status, body = worker.request(f"/people/{pid(i)}")
        assert body["erased"] and body["profile"] == {} and body["stage"] == "sql"


def store_values(root: Path) -> dict[bytes, bytes]:
    """Every value of the RocksDB stores under `root` (Faust's offset keys left out)."""
    from rocksdict import AccessType, Options, Rdict

    values: dict[bytes, bytes] = {}
    for path in sorted(p.parent for p in root.rglob("CURRENT")):
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            values.update((k, v) for k, v in db.items() if not k.startswith(b"__faust"))
        finally:
            db.close()
    assert values, f"no RocksDB store under {root}"
    return values


def api_bodies(worker: Worker) -> list[bytes]:
    """The body of every route in docs/openapi.json for every person (and the dashboard)."""
    contract = orjson.loads((ROOT / "docs" / "openapi.json").read_bytes())
    as_of = (T0 + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    persons = [pid(i) for i in range(PERSONS)]
    concrete = {
        "/people/{person_id}": [f"/people/{p}" for p in persons],
        "/people/{person_id}/history": [
            path
            for p in persons
            for path in (f"/people/{p}/history", f"/people/{p}/history?as_of={as_of}")
        ],
        "/changes/recent": ["/changes/recent?limit=200"],
        "/policies/{version}": [f"/policies/{worker.request('/policies')[1][0]['version']}"],
    }
    bodies: list[bytes] = []
    for route, methods in {**contract["paths"], "/": {"get": {}}}.items():
        if "post" in methods:  # POST /events: an erasure was posted above; one more here
            status, body = worker.request("/events", body=keyed(erasure(ERASED[-1]))[1])
            assert status == 202, (route, body)
            bodies.append(orjson.dumps(body))
            continue
        for path in concrete.get(route, [route]):
            status, body = worker.request(path)
            assert status == 200, (path, body)
            bodies.append(body.encode() if isinstance(body, str) else orjson.dumps(body))
    status, body = worker.request("/internal/erased", body=orjson.dumps(persons))
    assert status == 200 and sorted(body) == sorted(pid(i) for i in ERASED), body
    return bodies


async def _consumed(worker: Worker) -> bool:
    """Whether the worker's group committed every events partition up to its end."""
    settings = Settings(broker=worker.broker.url, topic_prefix=prefix_of(worker))
    ends: dict[int, int] = {}
    async for record in iter_to_end(settings.bootstrap, settings.topics.events):
        ends[record.partition] = record.offset + 1
    committed = await committed_offsets(settings, app_id(settings), sorted(ends))
    return all((committed[p] or 0) >= end for p, end in ends.items())


async def _at_least(worker: Worker, count: int) -> bool:
    return await history_count(worker) >= count


async def all_in_history(worker: Worker, names: Any, count: int) -> None:
    """Wait for `count` history records. After a kill -9, Faust may commit inputs it never
    applied (the gap `leadflow reconcile` exists for); the product's answer is
    `reconcile --repair`, so a wait that runs out repairs once (re-driving what it finds;
    a slow worker has no gap) and waits again. Everything else the test checks holds on
    the repaired history."""
    try:
        await wait_for(lambda: _at_least(worker, count), 60, "every journey in history")
        return
    except AssertionError:
        pass
    prefix = names.events.removesuffix(".leadflow.events")
    report = await reconcile(Settings(broker=worker.broker.url, topic_prefix=prefix), repair=True)
    print(f"erasure test: reconcile re-drove {len(report.gaps)} gap record(s) after the kill -9")
    await wait_for(lambda: _at_least(worker, count), 120, "every journey after the repair")


@pytest.mark.kafka_only
async def test_compaction_removes_an_erased_persons_data_key(broker, make_topics, tmp_path):
    """The worker writes keys and tombstones to a topic made from its spec; the test then
    makes this test's keys topic roll and clean fast (the cleaner never touches the active
    segment; production rolls hourly and bounds the wait with max.compaction.lag.ms) and
    waits on the broker's log segments until no wrapped key of an erased person is in them."""
    names = await make_topics(partitions=4)
    worker = Worker(broker, names, tmp_path, "w", extra=("--sweep-interval", "3600"))
    await worker.ready(timeout=120)
    await publish(broker.bootstrap, names.events, [keyed(journey(i)[0]) for i in range(8)])
    await wait_for(lambda: _at_least(worker, 8), 60, "8 persons in history")
    erased = [pid(i).encode() for i in (1, 4, 6)]
    await publish(broker.bootstrap, names.events, [keyed(erasure(i)) for i in (1, 4, 6)])
    await wait_for(lambda: _at_least(worker, 11), 60, "3 erasures in history")
    written = await read_to_end(broker.bootstrap, names.keys)
    assert {r.key for r in written if r.value is None} == set(erased)
    #: the tombstones' predecessors: each erased person's wrapped data key
    wrapped = {r.key: r.value for r in written if r.value is not None and r.key in erased}
    assert wrapped.keys() == set(erased), "before compaction the wrapped keys are there"
    worker.kill()

    def segments() -> dict[int, list[Path]]:
        found: dict[int, list[Path]] = {}
        for path in broker.log_dir.glob(f"{names.keys}-*/*.log"):  # live segments only
            found.setdefault(int(path.parent.name.rsplit("-", 1)[1]), []).append(path)
        return found

    def on_disk() -> set[bytes]:
        data = b"".join(p.read_bytes() for paths in segments().values() for p in paths)
        return {key for key, value in wrapped.items() if value in data}

    assert on_disk() == set(erased), "the segment files hold the wrapped keys uncompressed"

    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        fast = {
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "min.compaction.lag.ms": "0",
            "max.compaction.lag.ms": "100",
        }
        # AlterConfigs replaces a topic's whole config: the spec's, with the fast roll.
        (spec,) = [s for s in topic_specs(names) if s.name == names.keys]
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, names.keys, {**spec.configs, **fast})]
        )
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()

    async def cleaned() -> bool:
        # A partition whose only segment is the active one gets a record: the append rolls
        # it (older than segment.ms), and the cleaner may then compact the rolled one.
        alone = [p for p, paths in segments().items() if len(paths) < 2]
        for partition in alone:
            await producer.send_and_wait(names.keys, None, key=b"roll", partition=partition)
        return not on_disk()

    try:
        await wait_for(cleaned, 120, "the log cleaner to remove the erased persons' keys")
    finally:
        await producer.stop()
    latest = await read_to_end(broker.bootstrap, names.keys)
    assert not [r for r in latest if r.key in erased and r.value is not None]
    left = {r.key for r in latest if r.value}
    assert {pid(i).encode() for i in (0, 2, 3, 5, 7)} <= left, "the other keys stay"


async def test_master_key_rotation_rewraps_every_key_and_the_old_key_can_go(
    broker, make_topics, tmp_path, monkeypatch
):
    from streams.kafka.keys import generate_master_key

    old, new = generate_master_key("old"), generate_master_key("new")
    names = await make_topics(partitions=4)
    monkeypatch.setenv("LEADFLOW_MASTER_KEY", old)
    worker = Worker(broker, names, tmp_path, "w", extra=("--sweep-interval", "3600"))
    await worker.ready(timeout=120)
    await publish(broker.bootstrap, names.events, [keyed(journey(i)[0]) for i in range(12)])
    await wait_for(lambda: _at_least(worker, 12), 60, "12 persons in history")

    def kids(records: list[Any]) -> set[str]:
        latest = {r.key: r.value for r in records}
        return {orjson.loads(v)["kid"] for v in latest.values() if v is not None}

    assert kids(await read_to_end(broker.bootstrap, names.keys)) == {"old"}

    # Rotation: the new key first, the old one kept; the worker rewraps at assignment.
    worker.terminate()
    monkeypatch.setenv("LEADFLOW_MASTER_KEY", f"{new},{old}")
    worker.start()
    await worker.ready(timeout=120)

    async def all_new() -> bool:
        return kids(await read_to_end(broker.bootstrap, names.keys)) == {"new"}

    await wait_for(all_new, 60, "every data key rewrapped under the new master key")
    # The old master key can go: everything still opens.
    worker.terminate()
    monkeypatch.setenv("LEADFLOW_MASTER_KEY", new)
    worker.start()
    await worker.ready(timeout=120)
    status, body = worker.request(f"/people/{pid(3)}")
    assert status == 200 and body["profile"]["email"] == personal(3)["email"]
    done = run_cli(worker, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_cli(worker, "keys", "rewrap")
    assert done.returncode == 0 and "rewrapped 0" in done.stdout, done.stdout + done.stderr

    # A malformed master key: every command that opens sealed data says so in one line.
    monkeypatch.setenv("LEADFLOW_MASTER_KEY", "new:not-base64")
    for command in (("verify",), ("funnel", "--format", "json")):
        done = run_cli(worker, *command)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "LEADFLOW_MASTER_KEY: entry 1 is not kid:base64" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr

    # Without any master key the worker refuses to start, in one line.
    monkeypatch.delenv("LEADFLOW_MASTER_KEY")
    refused = subprocess.run(
        [LEADFLOW, "worker", "--broker", broker.url, "--topic-prefix", prefix_of(worker)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith("leadflow worker: no master key: set LEADFLOW_")
