"""`leadflow replay --jobs N`: the same output as one process, whatever the input holds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lifecycle.policy import load_preset
from lifecycle.replay import replay
from streams.cli.main import app
from streams.dev.demo import synthetic_events
from streams.tools.files import read_events
from streams.tools.repeats import id_of
from streams.tools.sharded import (
    Groups,
    Scans,
    merges_in,
    person_of,
    plain_keys,
    ranges,
    scan_range,
    usual_owners,
    write_range,
)
from tests.unit.test_replay_output_pinned import PINNED, pinned_stream

runner = CliRunner()


def _replay(path: Path, *args: str) -> tuple[bytes, str]:
    result = runner.invoke(app, ["replay", "--events", str(path), *args])
    assert result.exit_code == 0, result.output
    return result.stdout_bytes, result.stderr


def test_a_merge_chain_is_one_group_whichever_way_it_was_written(tmp_path: Path):
    path = tmp_path / "merges.jsonl"
    lines = [
        {"type": "person_merged", "person_id": "a", "merged_into": "b"},
        {"type": "page_viewed", "person_id": "x"},
        {
            "person_id": "c",
            "sequence": 4,
            "event": {"type": "person_merged", "person_id": "c", "merged_into": "a"},
        },
        {"type": "person_merged", "person_id": "d", "merged_into": "e"},
    ]
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    groups = Groups.of_file(path)
    assert groups.root("a") == groups.root("b") == groups.root("c")
    assert groups.root("d") == groups.root("e") != groups.root("a")
    assert groups.root("x") == "x"
    for jobs in (2, 3, 7):
        assert len({groups.shard(p, jobs) for p in "abc"}) == 1


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 20])
@pytest.mark.parametrize("newline_at_end", [True, False])
def test_merges_are_found_across_the_blocks_the_scan_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int, newline_at_end: bool
):
    """Lines longer than a block, merges cut by a block's end, a last line without newline."""
    monkeypatch.setattr("streams.tools.sharded.SCAN_BYTES", block)
    path = tmp_path / "merges.jsonl"
    merges = [("a", "b"), ("c", "a"), ("d", "e"), ("f", "g")]
    lines = [b'{"type":"page_viewed","person_id":"x","padding":"' + b"y" * 100 + b'"}']
    for absorbed, survivor in merges:
        merge = {"type": "person_merged", "person_id": absorbed, "merged_into": survivor}
        lines += [orjson.dumps(merge), b"", b"{not json person_merged"]
    path.write_bytes(b"\n".join(lines) + (b"\n" if newline_at_end else b""))
    groups = Groups.of_file(path)
    assert groups.root("a") == groups.root("b") == groups.root("c")
    assert groups.root("d") == groups.root("e") != groups.root("a")
    assert groups.root("f") == groups.root("g") != groups.root("d")
    assert groups.root("x") == "x"


@pytest.mark.parametrize(
    ("line", "person"),
    [
        (b'{"event_id":"e","person_id":"p1","type":"t"}', "p1"),
        (b'{"person_id":"p1","person_id":"p2"}', "p2"),  # the last key counts, as for pydantic
        (b'{"person_id":"h","sequence":1,"event":{"person_id":"p3"}}', "p3"),  # history record
        (b'{"person_id":"p4","type":"t"}', "p4"),  # looks like history, is not
        (b'{"event_id":"e","person_id":"p5","x":NaN}', "p5"),  # JSON only lenient readers take
        (b'{"person_id":7}', None),
        (b"{not json", None),
    ],
)
def test_the_person_of_a_line_is_the_one_the_reader_will_see(line: bytes, person: str | None):
    assert person_of(line) == person


def test_a_history_export_replays_the_same_sharded(tmp_path: Path):
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(pinned_stream()) + b"\n")
    history = tmp_path / "history.jsonl"
    with history.open("wb") as handle:
        for decision in replay(read_events(events), load_preset("default")):
            if not decision.duplicate:
                handle.write(orjson.dumps(decision.to_wire()) + b"\n")
    one = _replay(history, "--jobs", "1", "--preset", "mature")
    assert one[0].count(b"\n") > 100
    assert _replay(history, "--jobs", "2", "--preset", "mature") == one
    assert (
        _replay(history, "--jobs", "2", "--preset", "mature", "--state")[0]
        == _replay(history, "--jobs", "1", "--preset", "mature", "--state")[0]
    )


def test_person_and_as_of_filters_apply_the_same_sharded(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    stream = [orjson.dumps(e) for e in synthetic_events(200, 3_000, seed=9, duplicates=0.02)]
    path.write_bytes(b"\n".join(stream) + b"\n")
    for args in (["--person", "p0000042"], ["--as-of", "2026-02-15T00:00:00Z"]):
        one = _replay(path, "--jobs", "1", *args)
        assert one[0]
        assert _replay(path, "--jobs", "3", *args) == one


# --- the skip path's shortcut: a block of lines decoded at once (`plain_keys`) ---------------

PROPERTY = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILES = settings(PROPERTY, max_examples=200)  # a file each

_TEXT = st.text(st.characters(codec="utf-8"), max_size=6)
#: JSON strings as writers write them: raw UTF-8 (orjson) or ASCII with \u escapes (json)
_STRING = st.one_of(_TEXT.map(orjson.dumps), _TEXT.map(lambda t: json.dumps(t).encode()))
_KEYS = st.sampled_from(
    [
        *(b'"event_id"', b'"type"', b'"person_id"', b'"person\\u005fid"', b'"profile"'),
        *(b'"sequence"', b'"seq\\u0075ence"', b'"event"', b'"x"'),
    ]
)
_SPACE = st.sampled_from([b"", b" ", b"\t", b"\r"])


def _object(values: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A JSON object written by hand: any key order, duplicate keys, odd spacing."""
    member = st.tuples(_SPACE, _KEYS, _SPACE, values).map(
        lambda m: m[0] + m[1] + b":" + m[2] + m[3]
    )
    return st.lists(member, max_size=5).map(lambda members: b"{" + b",".join(members) + b"}")


_SCALAR = st.one_of(_STRING, st.sampled_from([b"7", b"null", b"true", b"NaN", b"1e999", b"[]"]))
_VALUE = st.one_of(_SCALAR, _object(_SCALAR))  # a nested person_id, a history record's event


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    """A line of a replay's input: an event, a history record, or something broken."""
    line = draw(_object(_VALUE))
    damage = draw(st.sampled_from(["none"] * 6 + ["cut", "space", "two", "bytes", "blank", "list"]))
    if damage == "cut":
        line = line[: draw(st.integers(0, len(line)))]
    elif damage == "space":
        line = draw(_SPACE) + line + draw(_SPACE)
    elif damage == "two":
        line = line + draw(st.sampled_from([b",", b" "])) + draw(_object(_SCALAR))
    elif damage == "bytes":  # invalid UTF-8, where a reader checks it or where it skips it
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc3"])) + line[at:]
    elif damage == "blank":
        line = draw(_SPACE)
    elif damage == "list":
        line = b"[" + line + b"]"
    return line


@PROPERTY
@given(st.lists(lines(), max_size=8))
@example([b'{"event_id":"e","person_id":"p1","person_id":"p2"}'])  # the last key counts
@example([b'{"x":"\xff","person_id":"p1"}'])  # msgspec skips what orjson refuses
@example([b'{"person_id":"p1","x":"\xff"}'])  # ... and person_of reads this one by orjson
@example([b'{"type":"t"}', b'{"person_id":"p1","x":"\xff"}'])  # ... wherever it is
@example([b'{"person_id":"h","sequence":1,"event":{"person_id":"p3"}}'])
@example([b'{"event_id":"e","person_id":"p","sequence":1,"event":{"person_id":"q"}}'])
def test_a_block_decoded_at_once_names_the_persons_and_ids_person_of_and_id_of_name(
    block: list[bytes],
):
    block = [line + b"\n" for line in block]
    keys = plain_keys(block)
    assert keys is None or keys == [(person_of(line), id_of(line.strip())) for line in block]


#: A line with a string event id and person, in any order, among other members.
_USUAL = st.tuples(_STRING, _STRING, st.booleans(), _object(_SCALAR)).map(
    lambda t: (
        b'{"event_id":%s,"person_id":%s}' % t[:2]
        if t[2]
        else t[3][:-1] + (b"," if len(t[3]) > 2 else b"") + b'"person_id":%s,"event_id":%s}' % t[:2]
    )
)


@PROPERTY
@given(
    st.lists(st.one_of(lines(), _USUAL, _USUAL), max_size=8),
    st.integers(1, 7),
    st.lists(st.booleans(), max_size=8),
)
@example([b'{"event_id":"e","person_id":"p1","person_id":"p2"}'], 2, [])
@example([b'{"event_id":"e%d","person_id":"p%d"}' % (i, i) for i in range(8)], 7, [False, True])
def test_a_usual_block_has_the_owners_and_id_hashes_of_person_of_and_id_of(
    block: list[bytes], jobs: int, joins: list[bool]
):
    """Persons of the block joined in groups (the joined ones share a worker)."""
    block = [line + b"\n" for line in block]
    persons = [p for p in map(person_of, block) if p is not None]
    groups = Groups()
    for a, b, join in zip(persons, persons[1:], joins, strict=False):
        if join:
            groups.join(a, b)
    usual = usual_owners(block, groups, jobs)
    if usual is not None:
        owners, hashes = usual
        assert list(owners) == [groups.shard(person_of(line), jobs) for line in block]
        assert list(hashes) == [hash(id_of(line.strip())) for line in block]


def test_a_block_of_plain_events_is_decoded_at_once():
    block = [orjson.dumps(e) + b"\n" for e in synthetic_events(50, 500, seed=5, duplicates=0.01)]
    assert plain_keys(block) == [(person_of(line), id_of(line.strip())) for line in block]
    groups = Groups()
    owners, hashes = usual_owners(block, groups, 3)  # type: ignore[misc]
    assert list(owners) == [groups.shard(person_of(line), 3) for line in block]
    assert list(hashes) == [hash(id_of(line.strip())) for line in block]


#: Plain lines (blocks of them take the shortcut) and merges (joined persons' lines go to one
#: worker).
_PLAIN = st.sampled_from(
    [b'{"type":"t","person_id":"%s"}' % person.encode() for person in "abcdefgh"]
    + [b'{"type":"person_merged","person_id":"%s","merged_into":"a"}' % p.encode() for p in "bcd"]
    + [
        b'{"event_id":"e%d","type":"t","person_id":"%s"}' % (i, p.encode())
        for i in (1, 2)
        for p in "aef"
    ]
)


@FILES
@given(st.lists(st.one_of(lines(), _PLAIN, _PLAIN), max_size=30), st.integers(1, 200))
def test_each_worker_takes_the_lines_of_its_persons_however_the_file_is_cut(
    tmp_path_factory: pytest.TempPathFactory, file_lines: list[bytes], block: int
):
    """Blocks the shortcut takes and blocks read line by line, blank lines skipped by all."""
    path = tmp_path_factory.mktemp("cut") / "events.jsonl"
    path.write_bytes(b"\n".join(file_lines))
    groups = Groups.of_file(path)
    with path.open("rb") as handle:
        numbered = list(enumerate(handle, start=1))
    size = path.stat().st_size
    with (
        mock.patch("streams.tools.sharded.SCAN_BYTES", block),
        mock.patch("streams.tools.sharded.OWN_BYTES", block),
    ):
        for jobs in (1, 2, 3):
            scratch = tmp_path_factory.mktemp("scans")
            spans = ranges(path, jobs)
            counts = [
                write_range(path, groups, jobs, k, start, end, scratch)
                for k, (start, end) in enumerate(spans)
            ]
            scans = Scans(scratch, jobs, counts)
            assert sum(counts) == len(numbered)
            for shard in range(jobs):
                want = [
                    (number, line)
                    for number, line in numbered
                    if line.strip() and groups.shard(person_of(line), jobs) == shard
                ]
                got = [
                    pair
                    for numbers, block_lines in scans.own_blocks(shard)
                    for pair in zip(numbers, block_lines, strict=True)
                ]
                assert got == want
                kept = scans.repeats(shard, size)
                ids = [id_of(line.strip()) for _, line in want]
                assert all(i in kept for i in ids if isinstance(i, str) and ids.count(i) > 1)
            # what the searches and the scanners find, each over its own range, is what one
            # search and one scan find
            merges = [merge for start, end in spans for merge in merges_in(path, start, end)]
            assert merges == merges_in(path, 0, size)
            whole = list(scan_range(path, groups, jobs, 0, size))
            parts = [
                part for start, end in spans for part in scan_range(path, groups, jobs, start, end)
            ]
            assert [line for p in parts for line in p[0]] == [line for w in whole for line in w[0]]
            for i in (1, 2):  # the owner bytes, the id hashes
                assert [x for p in parts for x in p[i]] == [x for w in whole for x in w[i]]


@pytest.mark.parametrize("jobs", [2, 3])
def test_a_replay_read_in_small_blocks_prints_what_main_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int
):
    """Most blocks of the pinned stream are plain (the shortcut), some hold a bad line, a
    history record or a merge (line by line)."""
    monkeypatch.setattr("streams.tools.sharded.SCAN_BYTES", 2048)
    monkeypatch.setattr("streams.tools.sharded.OWN_BYTES", 2048)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(pinned_stream()) + b"\n")
    out, err = _replay(path, "--jobs", str(jobs))
    assert hashlib.sha256(out).hexdigest() == PINNED["default", False]
    assert err == _replay(path, "--jobs", "1")[1]


# --- simulate of a file on every core (`streams.tools.sharded.simulate_sharded`) ------------


def _simulate(path: Path, *args: str) -> tuple[bytes, str]:
    result = runner.invoke(
        app, ["simulate", "-p", "default", "--against", "mature", "--events", str(path), *args]
    )
    assert result.exit_code == 0, result.output
    return result.stdout_bytes, result.stderr


@pytest.mark.parametrize("format", ["json", "table"])
def test_a_sharded_simulate_prints_what_one_process_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, format: str
):
    """The pinned stream: merges (their groups in one worker), redeliveries, a conflict, bad
    lines (reported in file order), a history line; blocks small enough that some are plain
    and some read line by line."""
    monkeypatch.setattr("streams.tools.sharded.SCAN_BYTES", 4096)
    monkeypatch.setattr("streams.tools.sharded.OWN_BYTES", 4096)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(pinned_stream()) + b"\n")
    args = ("--format", format, "--limit", "1000")
    one = _simulate(path, "--jobs", "1", *args)
    assert "persons" in one[0].decode() and "2 bad line(s) skipped" in one[1]
    if format == "json":
        assert json.loads(one[0])["conflicts"] == 1
    else:
        assert "1 event(s) reusing an event id with other content skipped" in one[1]
    for jobs in ("2", "3"):
        assert _simulate(path, "--jobs", jobs, *args) == one


def test_a_sharded_simulate_of_a_synthetic_year_equals_one_process(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    stream = synthetic_events(400, 8_000, seed=13, duplicates=0.02)
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in stream) + b"\n")
    one = _simulate(path, "--jobs", "1", "--format", "json", "--limit", "100000")
    assert json.loads(one[0])["persons_differing"] > 0  # the policies disagree somewhere
    assert _simulate(path, "--jobs", "2", "--format", "json", "--limit", "100000") == one


def test_a_sharded_simulate_reports_bad_lines_in_file_order(tmp_path: Path):
    """A bad line of a person another worker decides, before one no worker can read (worker
    0's): reported in file order, as one process reports them."""
    other = next(p for p in (f"p{n}" for n in range(100)) if Groups().shard(p, 2) == 1)
    lines = [
        orjson.dumps({"event_id": "e1", "type": "form_fill", "person_id": "p0x"}),  # no time
        orjson.dumps(
            {"event_id": "e2", "type": "t", "person_id": other, "occurred_at": "2026-01-01"}
        ),
        b"not json",
        orjson.dumps(
            {
                "event_id": "e3",
                "type": "demo_request",
                "person_id": other,
                "occurred_at": "2026-01-02T00:00:00Z",
            }
        ),
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    one = _simulate(path, "--jobs", "1")
    assert [line.split(": ")[0].rsplit(":", 1)[1] for line in one[1].splitlines()[:3]] == [
        "1",
        "2",
        "3",
    ]
    assert _simulate(path, "--jobs", "2") == one


# --- funnel of a file on every core (`streams.tools.sharded.funnel_sharded`) -----------------


def _funnel(path: Path, *args: str) -> tuple[bytes, str]:
    result = runner.invoke(app, ["funnel", "--preset", "default", "--events", str(path), *args])
    assert result.exit_code == 0, result.output
    return result.stdout_bytes, result.stderr


@pytest.mark.parametrize("args", [("--format", "json"), ("--by", "source"), ()])
def test_a_sharded_funnel_prints_what_one_process_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
):
    monkeypatch.setattr("streams.tools.sharded.SCAN_BYTES", 4096)
    monkeypatch.setattr("streams.tools.sharded.OWN_BYTES", 4096)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(pinned_stream()) + b"\n")
    one = _funnel(path, "--jobs", "1", *args)
    assert "2 bad line(s) skipped" in one[1] and "conflict: person" in one[1]
    for jobs in ("2", "3"):
        assert _funnel(path, "--jobs", jobs, *args) == one


def test_a_sharded_funnel_reports_bad_lines_and_conflicts_in_file_order(tmp_path: Path):
    """A conflict of a person another worker decides, between two bad lines worker 0
    reports: stderr in file order, as one process writes it."""
    other = next(p for p in (f"p{n}" for n in range(100)) if Groups().shard(p, 2) == 1)
    event = {"type": "demo_request", "person_id": other, "occurred_at": "2026-01-02T00:00:00Z"}
    lines = [
        orjson.dumps({**event, "event_id": "e1"}),
        b"not json",
        orjson.dumps({**event, "event_id": "e1", "type": "form_fill"}),  # e1 reused
        b"[]",
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    one = _funnel(path, "--jobs", "1", "--format", "json")
    said = one[1].splitlines()
    assert ":2: " in said[0] and said[1].startswith("conflict: person") and ":4: " in said[2]
    assert _funnel(path, "--jobs", "2", "--format", "json") == one


@pytest.mark.parametrize("command", ["replay", "funnel", "simulate"])
def test_without_room_for_the_scratch_files_one_process_reads_the_file(
    tmp_path: Path, command: str
):
    """The scanners copy each worker's lines to `$TMPDIR`, about the file's size: when it has
    not that much free, the command says so and reads the file in one process, with the
    same output, instead of failing half way."""
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(pinned_stream()) + b"\n")
    args = {
        "replay": ["replay", "--events", str(events)],
        "funnel": ["funnel", "--events", str(events), "--format", "json"],
        "simulate": ["simulate", "-e", str(events), "-p", "default", "--against", "mature"],
    }[command]
    one = runner.invoke(app, [*args, "--jobs", "1"])
    assert one.exit_code == 0, one.output
    full = mock.Mock(free=events.stat().st_size)  # less than the file and a margin
    with (
        mock.patch("streams.tools.sharded.shutil.disk_usage", return_value=full),
        mock.patch("streams.tools.sharded._forked", side_effect=AssertionError("forked")),
    ):
        cramped = runner.invoke(app, [*args, "--jobs", "2"])
    assert cramped.exit_code == 0, cramped.output
    assert cramped.stdout_bytes == one.stdout_bytes
    said = "the shards' scratch files need ~"
    assert said in cramped.stderr and f"reading {events} in one process" in cramped.stderr
    assert cramped.stderr.replace(cramped.stderr.splitlines()[0] + "\n", "", 1) == one.stderr
