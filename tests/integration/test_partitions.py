"""Beyond one machine: two `leadflow` processes each read half of the history topic's
partitions and write a partial result; `leadflow merge-results` prints what one run over
every partition prints, for funnel, verify, simulate and replay."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from events.inbound import Event
from lifecycle.funnel import funnel_of
from lifecycle.policy import load_preset
from lifecycle.replay import replay
from streams.dev.broker import LocalBroker
from streams.dev.demo import synthetic_events
from streams.kafka.topics import TopicNames
from tests.integration.test_tools import MakeTopics, prefix_of, produce

pytestmark = pytest.mark.integration

#: What verify adds after the counts (crypto-shredding): none erased, nothing withheld.
CLEAN_TAIL = "0 erased person(s), 0 record(s) with a withheld sentence compared by rule\n"

LEADFLOW = str(Path(sys.executable).with_name("leadflow"))
PARTITIONS = 4
#: Each command as an analyst runs it, without the broker options.
COMMANDS = {
    "funnel": ["funnel"],
    "verify": ["verify"],
    "simulate": ["simulate", "--policy", "default", "--against", "growth", "--limit", "500"],
    "replay": ["replay", "--preset", "growth"],
    "funnel-json": ["funnel", "--preset", "growth", "--format", "json"],
    "cohorts": ["funnel", "--cohort", "month", "--by", "source", "--preset", "growth"],
}


def partition_of(person: str) -> int:
    """Where the producer's default partitioner (murmur2 of the key) puts a person."""
    every = list(range(PARTITIONS))
    return DefaultPartitioner()(person.encode(), every, every)


def synthetic() -> list[Event]:
    return [Event.model_validate(e) for e in synthetic_events(300, 3_000, seed=9)]


def alias_first(events: list[Event], alias: str) -> list[Event]:
    """The recorded history's events in topic order, but the alias's partition read first:
    what one process reading history as recorded folds without waiting for anything."""
    decisions = [d for d in replay(events, load_preset("default")) if not d.duplicate]
    first = partition_of(alias)
    order = [first, *(p for p in range(PARTITIONS) if p != first)]
    return [d.event for p in order for d in decisions if partition_of(d.person_id) == p]


def with_a_merge_across_processes(events: list[Event]) -> list[Event]:
    """A person of partitions 2-3 who reached mql merged into one of partitions 0-1 who has
    not, then a sales event for the alias (forwarded to the survivor)."""
    history = list(replay(events, load_preset("default")))
    reached = {c.person_id for d in history for c in d.changes if c.to_stage == "mql"}
    persons = sorted({e.person_id for e in events})
    alias = next(p for p in persons if partition_of(p) >= 2 and p in reached)
    survivor = next(p for p in persons if partition_of(p) < 2 and p not in reached)
    last = max(e.occurred_at for e in events)
    return [
        *events,
        Event(
            event_id="merge-1",
            type="person_merged",
            person_id=alias,
            occurred_at=last + timedelta(days=1),
            merged_into=survivor,
        ),
        Event(
            event_id="after-merge-1",
            type="sales_accepted",
            person_id=alias,
            occurred_at=last + timedelta(days=2),
        ),
    ]


async def publish_history(broker: LocalBroker, names: TopicNames, events: list[Event]) -> int:
    """What a worker under the default policy records, keyed by person; returns the count."""
    messages = [
        (d.person_id.encode(), orjson.dumps(d.to_wire()))
        for d in replay(events, load_preset("default"))
        if not d.duplicate
    ]
    await produce(broker.bootstrap, names.history, messages)
    return len(messages)


def leadflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LEADFLOW, *args], capture_output=True, text=True, timeout=300)


async def two_shares_merged(
    where: list[str], tmp_path: Path, name: str
) -> subprocess.CompletedProcess[str]:
    """Partitions 0-1 and 2-3 in two processes at once, then merge-results."""
    command = COMMANDS[name]
    label = "funnel-cohort" if "--cohort" in command else command[0]
    parts = [tmp_path / f"{name}-0-1.json", tmp_path / f"{name}-2-3.json"]
    runs = [
        subprocess.Popen(
            [LEADFLOW, *command, *where, "--partitions", share, "--partial-out", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for share, path in zip(("0-1", "2-3"), parts, strict=True)
    ]
    for run in runs:
        _out, errors = await asyncio.to_thread(run.communicate, timeout=300)
        assert run.returncode == 0, errors
    for share, path in zip(([0, 1], [2, 3]), parts, strict=True):
        document = orjson.loads(path.read_bytes())
        assert (document["leadflow_partial"], document["command"]) == (1, label)
        assert (document["partitions"], document["topic_partitions"]) == (share, PARTITIONS)
    return await asyncio.to_thread(leadflow, "merge-results", *map(str, parts))


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.smoke) if n == "funnel-json" else n for n in COMMANDS],
)
async def test_two_processes_on_half_the_partitions_merge_into_the_single_run_report(
    broker: LocalBroker, make_topics: MakeTopics, tmp_path: Path, name: str
) -> None:
    names = await make_topics(partitions=PARTITIONS)
    events = with_a_merge_across_processes(synthetic())
    records = await publish_history(broker, names, events)
    where = ["--broker", broker.url, "--topic-prefix", prefix_of(names)]

    merged = await two_shares_merged(where, tmp_path, name)
    single = await asyncio.to_thread(leadflow, *COMMANDS[name], *where, "--partitions", "0-3")

    assert single.returncode == 0, single.stderr
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout == single.stdout
    if name == "verify":  # history as recorded either way: the run without --partitions too
        plain = await asyncio.to_thread(leadflow, *COMMANDS[name], *where)
        assert plain.stdout == merged.stdout
        assert f"checked {records} records: 0 mismatch(es), 0 unchecked" in merged.stdout
    if name == "replay":
        changes = [orjson.loads(line) for line in merged.stdout.splitlines()]
        assert any(c["reason"]["rule"] == "identity.merged" for c in changes)
        assert len({c["person_id"] for c in changes}) > 100
    if name == "funnel-json":  # the alias (partitions 2-3) folds into its survivor (0-1)
        growth = load_preset("growth")
        alias = events[-1].person_id
        expected = funnel_of(replay(alias_first(events, alias), growth, follow=False))
        assert orjson.loads(merged.stdout) == orjson.loads(
            orjson.dumps({"policy_version": growth.version, **expected.to_dict()})
        )


@pytest.mark.parametrize("name", list(COMMANDS))
async def test_without_merges_the_merged_report_is_what_the_command_prints_on_the_topic(
    broker: LocalBroker, make_topics: MakeTopics, tmp_path: Path, name: str
) -> None:
    """With no identity merge, reading history as recorded and re-deriving hand-offs agree:
    the combined report is the command's own output on the whole topic."""
    names = await make_topics(partitions=PARTITIONS)
    records = await publish_history(broker, names, synthetic())
    where = ["--broker", broker.url, "--topic-prefix", prefix_of(names)]

    merged = await two_shares_merged(where, tmp_path, name)
    plain = await asyncio.to_thread(leadflow, *COMMANDS[name], *where)

    assert plain.returncode == merged.returncode == 0, merged.stderr
    assert merged.stdout == plain.stdout
    if name == "verify":
        assert (
            merged.stdout
            == f"checked {records} records: 0 mismatch(es), 0 unchecked; " + CLEAN_TAIL
        )
    else:
        assert len(merged.stdout.splitlines()) > 5


async def test_merge_results_refuses_half_the_partitions_naming_the_file(
    broker: LocalBroker, make_topics: MakeTopics, tmp_path: Path
) -> None:
    names = await make_topics(partitions=PARTITIONS)
    await publish_history(broker, names, synthetic())
    low = tmp_path / "funnel-0-1.json"
    share = await asyncio.to_thread(
        leadflow,
        "funnel",
        "--broker",
        broker.url,
        "--topic-prefix",
        prefix_of(names),
        "--partitions",
        "0-1",
        "--partial-out",
        str(low),
    )
    assert share.returncode == 0, share.stderr

    beyond = await asyncio.to_thread(
        leadflow, "verify", "--broker", broker.url, "--topic-prefix", prefix_of(names),
        "--partitions", "3-5",
    )  # fmt: skip
    assert beyond.returncode == 2
    assert beyond.stderr.strip() == (
        f"error: --partitions: 4-5 not partitions of {names.history} (it has 0-3)"
    )

    refused = await asyncio.to_thread(leadflow, "merge-results", str(low))

    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr.strip() == (
        f"error: {low}: partitions 2-3 of {names.history} (4 partitions) are in no partial "
        "given; add their partial, or pass --allow-partial for the report of the partitions given"
    )


async def test_a_record_that_is_no_history_record_is_reported_once_with_where_it_is(
    broker: LocalBroker, make_topics: MakeTopics, tmp_path: Path
) -> None:
    names = await make_topics(partitions=PARTITIONS)
    records = await publish_history(broker, names, synthetic())
    await produce(broker.bootstrap, names.history, [(b"p-bad", b"{not json")])
    where = ["--broker", broker.url, "--topic-prefix", prefix_of(names)]

    single = await asyncio.to_thread(leadflow, "verify", *where, "--partitions", "0-3")
    merged = await two_shares_merged(where, tmp_path, "verify")

    at = rf"{re.escape(names.history)}/{partition_of('p-bad')}@\d+: "
    for run in (single, merged):
        assert run.returncode == 0, run.stderr
        assert len(re.findall(at, run.stderr)) == 1, run.stderr
        assert (
            run.stdout == f"checked {records} records: 0 mismatch(es), 0 unchecked; " + CLEAN_TAIL
        )


async def test_verify_of_the_topic_on_every_core_prints_what_one_process_prints(
    broker: LocalBroker, make_topics: MakeTopics
) -> None:
    """`verify --broker … --jobs N`: the partitions split over N processes, each a share,
    combined in partition order; mismatches in every partition come out as one run's."""
    names = await make_topics(partitions=PARTITIONS)
    events = with_a_merge_across_processes(synthetic())
    messages, tampered = [], set()
    for n, decision in enumerate(
        d for d in replay(events, load_preset("default")) if not d.duplicate
    ):
        wire = decision.to_wire()
        if n % 53 == 0:  # tampered: a mismatch, in every partition (more than the 50 shown)
            wire["score"] = wire["score"] + 1.0
            tampered.add(partition_of(decision.person_id))
        if n % 401 == 7:  # a version no one knows: unchecked
            wire["policy_version"] = f"unknown-{n % 3}"
        messages.append((decision.person_id.encode(), orjson.dumps(wire)))
    await produce(broker.bootstrap, names.history, messages)
    assert tampered == set(range(PARTITIONS))
    where = ["--broker", broker.url, "--topic-prefix", prefix_of(names)]

    plain = await asyncio.to_thread(leadflow, "verify", *where)
    assert plain.returncode == 1, plain.stderr
    assert "50 mismatch" not in plain.stdout and len(plain.stdout.splitlines()) == 51
    assert "unknown: " in plain.stderr
    for jobs in ("2", "3", "8"):
        sharded = await asyncio.to_thread(leadflow, "verify", *where, "--jobs", jobs)
        assert (sharded.returncode, sharded.stdout) == (plain.returncode, plain.stdout), jobs
        unknown = [line for line in sharded.stderr.splitlines() if " unknown: " in line]
        assert unknown == [line for line in plain.stderr.splitlines() if " unknown: " in line]
