"""An alias's events forwarded to its survivor are never in the clear on the events topic.

After a merge, an alias's later events (with a job title, an email, a sales note) are
re-keyed to the survivor through `leadflow.events`: the worker seals their personal fields
with the transit key of (survivor, alias), published on `leadflow.keys` at the survivor's
partition. The survivor's worker opens them (its decisions read the title), a redelivery is
a duplicate, and the survivor's erasure tombstones the transit key: the forwarded copies are
unreadable from then on.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from lifecycle.policy import load_preset
from lifecycle.verify import verify
from streams.kafka.keys import MasterKeys, read_keys, transit_record
from streams.kafka.publish import KeyPartitions
from streams.kafka.readers import read_to_end
from tests.fixtures.worker import Opened, Worker, event_at, keyed, publish, wait_for

pytestmark = [pytest.mark.integration]

T0 = datetime(2026, 4, 6, 9, tzinfo=UTC)
MARKERS = (b"zzlater", b"Zztitle", b"zznote")


def ids_on_two_partitions() -> tuple[str, str]:
    """A survivor and an alias whose events partitions differ (of 4)."""
    partition_of = KeyPartitions(range(4))
    survivor = "fw-survivor"
    alias = next(
        f"fw-alias-{n}"
        for n in range(100)
        if partition_of(f"fw-alias-{n}".encode()) != partition_of(survivor.encode())
    )
    return survivor, alias


async def test_forwarded_events_are_sealed_in_transit_and_erased_with_the_survivor(
    broker, make_topics, tmp_path: Path
):
    names = await make_topics(partitions=4)
    worker = Worker(broker, names, tmp_path, "w", extra=("--sweep-interval", "3600"))
    await worker.ready(timeout=120)
    survivor, alias = ids_on_two_partitions()
    firm = {"industry": "software", "employees": 300, "country": "DE"}
    later = {**firm, "email": "zzlater@zzcorp.example", "job_title": "VP Zztitle"}
    stream = [
        event_at("s1", survivor, "webinar_attended", T0, profile=firm),
        event_at("a1", alias, "form_submitted", T0 + timedelta(hours=1), profile=firm),
        event_at("m1", alias, "person_merged", T0 + timedelta(hours=2), merged_into=survivor),
        # Later events for the alias: forwarded to the survivor, with personal fields.
        event_at("a2", alias, "demo_requested", T0 + timedelta(hours=3), profile=later),
        event_at("a3", alias, "sales_accepted", T0 + timedelta(hours=4), reason="zznote call back"),
    ]
    await publish(broker.bootstrap, names.events, [keyed(e) for e in stream])

    async def history_of_survivor(count: int) -> list[bytes] | None:
        records = await read_to_end(broker.bootstrap, names.history)
        mine = [r.value for r in records if r.key == survivor.encode()]
        return mine if len(mine) >= count else None

    # s1, the hand-off (m1), a2 and a3 forwarded
    await wait_for(lambda: history_of_survivor(4), 120, "the forwarded events at the survivor")

    # The forwarded copies on the events topic hold no personal byte, only the sealed part.
    events = await read_to_end(broker.bootstrap, names.events)
    forwarded = [r.value for r in events if b'"forwarded_via"' in r.value]
    assert len(forwarded) == 2, forwarded
    assert all(b'"forwarded_personal"' in v for v in forwarded)
    assert [m for v in forwarded for m in MARKERS if m in v] == []

    # The survivor's worker opened them: its history (opened with the keys) holds the title
    # and the note.
    opened = await Opened.load(broker.bootstrap, names)
    records = [opened.history(v) for v in await history_of_survivor(4) or []]
    by_id = {r.event.event_id: r for r in records}
    assert by_id["a2"].event.profile.job_title == "VP Zztitle"
    assert by_id["a3"].event.reason == "zznote call back"
    record = transit_record(survivor, alias)
    assert record in opened.ring.transit

    # A redelivery of a forwarded event is a duplicate: no new history, no dead letter.
    await publish(broker.bootstrap, names.events, [keyed(stream[3])])
    await publish(
        broker.bootstrap,
        names.events,
        [keyed(event_at("s2", survivor, "page_viewed", T0 + timedelta(hours=5)))],
    )
    await wait_for(lambda: history_of_survivor(5), 120, "the survivor's page view")
    history = await read_to_end(broker.bootstrap, names.history)
    assert sorted(orjson.loads(r.value)["event"]["event_id"] for r in history).count("a2") == 2
    # (a2 twice: the alias's own record, and the survivor's; never a third)
    assert await read_to_end(broker.bootstrap, names.dead_letters) == []

    # The survivor's erasure tombstones the transit key: the forwarded copies stay sealed
    # with a key nobody has.
    await publish(
        broker.bootstrap,
        names.events,
        [keyed(event_at("sx", survivor, "person_erased", T0 + timedelta(days=1)))],
    )
    await wait_for(lambda: history_of_survivor(6), 120, "the erasure")
    worker.terminate()
    ring = await read_keys(broker.bootstrap, names.keys, MasterKeys.from_env())
    assert record not in ring.transit and ring.get(survivor) is None
    assert ring.get_transit(record) is None  # nobody can open the forwarded copies now
    assert await read_to_end(broker.bootstrap, names.dead_letters) == []
    after = await Opened.load(broker.bootstrap, names)
    report = verify(
        [after.history(r.value) for r in await read_to_end(broker.bootstrap, names.history)],
        {load_preset("default").version: load_preset("default")},
    )
    assert report.ok, report.mismatches[:3]
    assert survivor in report.erased


async def test_the_survivors_worker_reads_a_transit_key_another_worker_published(
    broker, make_topics, tmp_path: Path
):
    """Alias and survivor owned by two workers: the survivor's worker learns the transit key
    from the keys topic (a catch-up read of its partitions) before opening the event."""
    names = await make_topics(partitions=4)
    group = [
        Worker(broker, names, tmp_path, f"w{n}", extra=("--sweep-interval", "3600")) for n in (1, 2)
    ]

    async def split() -> list[list[int]] | None:
        owned = [await w.owned() for w in group]
        shared = sorted(p for o in owned for p in o) == [0, 1, 2, 3] and all(owned)
        return owned if shared else None

    owned = await wait_for(split, 120, "two workers to share the partitions")
    partition_of = KeyPartitions(range(4))

    def person_on(partitions: list[int], stem: str) -> str:
        return next(
            f"{stem}-{n}" for n in range(1000) if partition_of(f"{stem}-{n}".encode()) in partitions
        )

    survivor, alias = person_on(owned[0], "fw2-s"), person_on(owned[1], "fw2-a")
    later = {"industry": "software", "email": "zzlater@zzcorp.example", "job_title": "VP Zztitle"}
    stream = [
        event_at("s1", survivor, "webinar_attended", T0),
        event_at("m1", alias, "person_merged", T0 + timedelta(hours=1), merged_into=survivor),
        event_at("a2", alias, "demo_requested", T0 + timedelta(hours=2), profile=later),
    ]
    await publish(broker.bootstrap, names.events, [keyed(e) for e in stream])

    async def forwarded_applied() -> list[bytes] | None:
        records = await read_to_end(broker.bootstrap, names.history)
        mine = [r.value for r in records if r.key == survivor.encode()]
        return mine if len(mine) >= 3 else None

    values = await wait_for(forwarded_applied, 120, "the forwarded event at the survivor")
    for worker in group:
        worker.terminate()
    opened = await Opened.load(broker.bootstrap, names)
    (applied,) = [opened.history(v) for v in values if b'"a2"' in v]
    assert applied.event.profile.job_title == "VP Zztitle"
    assert await read_to_end(broker.bootstrap, names.dead_letters) == []
    raw = [r.value for r in await read_to_end(broker.bootstrap, names.events)]
    assert not any(b"zzlater" in v for v in raw if b'"forwarded_via"' in v)
