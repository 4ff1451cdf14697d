"""A replay of a file keeps out of its dedup index the events whose id no other line has
(`streams.tools.repeats`, `Replayer(repeats=…)`): the decisions must be exactly those of the
whole path, redeliveries, conflicts and identity merges included."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.inbound import Event
from lifecycle.funnel import funnel_of
from lifecycle.merge import handoff_id, returned_id
from lifecycle.replay import Replayer, replay
from lifecycle.simulate import simulate
from lifecycle.verify import verify
from streams.cli.main import app
from streams.tools.files import ReadStats, read_events, read_history
from streams.tools.repeats import id_of, may_repeat, record_id_of
from tests.fixtures.core import preset
from tests.unit.test_merge import streams_with_merges
from tests.unit.test_replay_output_pinned import pinned_stream, runner

PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _decisions(path: Path, repeats: set[str] | None) -> tuple[list[dict], dict]:
    replayer = Replayer(preset("default"), repeats=repeats)
    decisions = [
        d.to_wire()
        for event in read_events(path, stats=ReadStats())
        for d in replayer.apply_all(event)
    ]
    return decisions, {p: s.to_wire() for p, s in replayer.states.items()}


def _line(event: Event) -> bytes:
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))


@PROPERTY
@given(streams_with_merges(), st.randoms(use_true_random=False), st.integers(0, 8))
def test_skipping_the_index_for_ids_that_occur_once_decides_exactly_the_same(
    tmp_path_factory, events, rng: random.Random, copies: int
):
    lines = [_line(e) for e in events]
    for _ in range(copies):  # redeliveries, and the same id with other content (conflicts)
        original = events[rng.randrange(len(events))]
        if rng.random() < 0.3:
            original = original.model_copy(update={"source": "conflicting"})
        lines.insert(rng.randrange(len(lines) + 1), _line(original))
    merges = [e for e in events if e.type == "person_merged"]
    for merge in merges[:2]:  # inbound ids that equal what a merge's follow-ups are given
        survivor = merge.merged_into or ""
        for ident in (handoff_id(merge.person_id, merge.event_id), returned_id(events[0].event_id)):
            copy = events[0].model_copy(update={"event_id": ident, "person_id": survivor})
            lines.insert(rng.randrange(len(lines) + 1), _line(copy))
    path = _write(tmp_path_factory.mktemp("repeats") / "events.jsonl", lines)

    repeats = may_repeat(path)
    assert _decisions(path, repeats) == _decisions(path, None)


def test_every_repeated_and_derived_id_is_kept_and_few_others(tmp_path: Path):
    lines = [
        orjson.dumps(
            {
                "event_id": f"u{n}",
                "type": "page_viewed",
                "person_id": f"p{n % 97}",
                "occurred_at": "2026-01-01T00:00:00Z",
            }
        )
        for n in range(20_000)
    ]
    lines[5_000] = lines[17] = lines[3]  # one id three times
    lines[9] = lines[9].replace(b'"u9"', b'"handoff:x:y"')
    lines[11] = lines[11].replace(b'"u11"', b'"returned:u2"')
    kept = may_repeat(_write(tmp_path / "events.jsonl", lines))

    assert {"u3", "handoff:x:y", "returned:u2"} <= kept
    assert len(kept) < 1_000  # false positives of the bit array: ~0.5 % here


_BASE = {
    "event_id": "a",
    "type": "page_viewed",
    "person_id": "p1",
    "occurred_at": "2026-01-01T00:00:00Z",
}


@st.composite
def odd_lines(draw) -> bytes:
    """One line as a file may hold it: escapes, a key twice, a history record, garbage."""
    ident = draw(st.text(max_size=12))
    other = draw(st.text(max_size=12))
    event = {**_BASE, "event_id": ident}
    text = json.dumps(event, ensure_ascii=draw(st.booleans()))
    kind = draw(st.sampled_from(["plain", "escaped", "twice", "history", "nan", "junk", "list"]))
    if kind == "escaped":  # the key written with an escape: still `event_id`
        text = text.replace('"event_id"', '"event\\u005fid"')
    elif kind == "twice":  # the last value wins in every decoder
        text = text[:-1] + f', "event_id": {json.dumps(other)}}}'
    elif kind == "history":
        record = {"person_id": "p1", "sequence": 1, "policy_version": "v", "event": event}
        text = json.dumps(record)
    elif kind == "nan":
        text = text[:-1] + ', "extra": NaN}'
    elif kind == "junk":
        text = text[: draw(st.integers(0, len(text)))]
    elif kind == "list":
        text = f"[{text}]"
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None)
@given(st.lists(odd_lines(), min_size=1, max_size=6))
def test_the_id_read_of_a_line_is_the_id_of_the_event_read_events_yields(lines):
    path = Path(f"/tmp/leadflow-repeats-{random.getrandbits(48):x}.jsonl")
    try:
        for line in lines:
            path.write_bytes(line + b"\n")
            events = list(read_events(path, stats=ReadStats()))
            if events:
                assert id_of(line) == events[0].event_id
        many = _write(path, lines)
        read = [e.event_id for e in read_events(many, stats=ReadStats())]
        repeated = {i for i in read if read.count(i) > 1}
        assert repeated <= may_repeat(many)
    finally:
        path.unlink(missing_ok=True)


@st.composite
def record_lines(draw) -> bytes:
    """A line `id_of` reads as a possible history record: the record's parts in any order,
    missing, null or of another type, keys twice, escapes, garbage."""
    ident, other = draw(st.text(max_size=8)), draw(st.text(max_size=8))
    event = draw(
        st.sampled_from(
            [{**_BASE, "event_id": ident}, None, "text", [1], {"no_id": 1}, {"event_id": 7}]
        )
    )
    parts = {"person_id": "p1", "sequence": draw(st.sampled_from([1, None, "x"])), "event": event}
    for name in draw(st.sets(st.sampled_from(["sequence", "event", "person_id"]))):
        del parts[name]
    if draw(st.booleans()):
        parts["event_id"] = other
    items = list(parts.items())
    order = draw(st.permutations(range(len(items))))
    text = "{" + ", ".join(f"{json.dumps(items[i][0])}: {json.dumps(items[i][1])}" for i in order)
    if draw(st.booleans()) and items:  # a key twice: the last value wins
        key, _ = items[draw(st.integers(0, len(items) - 1))]
        text += f", {json.dumps(key)}: {json.dumps(other)}"
    text += "}"
    if draw(st.booleans()):
        text = text.replace('"event_id"', '"event\\u005fid"')
    if draw(st.integers(0, 9)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode()


@settings(max_examples=600, deadline=None)
@given(record_lines())
def test_the_id_of_a_record_line_is_the_one_orjson_reads(line: bytes):
    """`id_of` reads a possible history record (a line that starts with `{"person_id"` or
    names `"sequence"` in its first 200 bytes, as `files.read_events` tells them) with a
    struct: the id the orjson reading gives, wherever orjson reads the line (elsewhere it is a
    bad line, never applied)."""
    if not (line.startswith(b'{"person_id"') or line.find(b'"sequence"', 0, 200) != -1):
        return
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return
    assert id_of(line) == record_id_of(line)


@pytest.fixture(scope="module")
def pinned_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stream `leadflow replay`'s output is pinned on: duplicates, a conflict, merges, an
    erasure, a history line, bad lines."""
    return _write(tmp_path_factory.mktemp("pinned") / "events.jsonl", pinned_stream())


def test_funnel_and_simulate_of_a_file_report_what_the_whole_path_reports(pinned_file: Path):
    """The commands read the file whole (`EventReader.repeats`); the reports are those of a
    replay that indexes every event."""
    rules, other = preset("default"), preset("mature")
    assert may_repeat(pinned_file)  # the stream's redeliveries and its conflict

    def events() -> list[Event]:
        return list(read_events(pinned_file, stats=ReadStats()))

    funnel = runner.invoke(app, ["funnel", "--events", str(pinned_file), "--format", "json"])
    assert funnel.exit_code == 0, funnel.output
    whole = funnel_of(replay(events(), rules)).to_dict()
    assert json.loads(funnel.stdout) == {"policy_version": rules.version, **whole}

    args = ["simulate", "--events", str(pinned_file), "--format", "json", "--limit", "500"]
    what_if = runner.invoke(app, [*args, "--policy", "default", "--against", "mature"])
    assert what_if.exit_code == 0, what_if.output
    assert json.loads(what_if.stdout) == simulate(events(), rules, other).to_dict(500)


def test_verify_of_a_history_file_reports_what_the_whole_path_reports(
    pinned_file: Path, tmp_path: Path
):
    """`verify --history F` reads the file whole too: a record applied twice and an id reused
    with other content are still found, and every count is the whole path's."""
    rules = preset("default")
    history = [
        orjson.dumps(d.to_wire())
        for d in replay(list(read_events(pinned_file, stats=ReadStats())), rules)
        if not d.duplicate
    ]
    history.insert(500, history[120])  # a record applied twice
    reused = orjson.loads(history[300])
    reused["event"]["source"] = "other"
    history.insert(900, orjson.dumps(reused))  # the same id with other content
    path = _write(tmp_path / "history.jsonl", history)

    result = runner.invoke(app, ["verify", "--history", str(path)])
    records = list(read_history(path))
    whole = verify(records, {rules.version: rules})
    fields = sorted(m.field for m in whole.mismatches)
    assert {"duplicate", "conflict"} <= set(fields)
    assert f"checked {whole.checked} records: {len(whole.mismatches)} mismatch(es)" in (
        result.stdout
    )
    quick = verify(records, {rules.version: rules}, may_repeat(path))
    assert sorted(m.field for m in quick.mismatches) == fields
    assert (quick.checked, quick.withheld) == (whole.checked, whole.withheld)
