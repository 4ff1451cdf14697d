"""`leadflow replay --jobs N`: the same output as one process, whatever the input holds."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from lifecycle.policy import load_preset
from lifecycle.replay import replay
from streams.cli.main import app
from streams.dev.demo import synthetic_events
from streams.tools.files import read_events
from streams.tools.sharded import Groups, person_of
from tests.unit.test_replay_output_pinned import pinned_stream

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
