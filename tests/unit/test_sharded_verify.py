"""`leadflow verify --history FILE --jobs N`: the same report as one process, whatever the
history holds."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from events.outbound import HistoryRecord
from lifecycle.policy import load_preset
from lifecycle.replay import replay
from streams.cli.main import app
from streams.tools.files import read_events
from streams.tools.sharded_verify import keys_of, verify_sharded
from tests.unit.test_replay_output_pinned import pinned_stream

runner = CliRunner()


def _history(tmp_path: Path) -> list[bytes]:
    """The history a worker writes for the pinned stream (merges, an erasure, a conflict)."""
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(pinned_stream()) + b"\n")
    policy = load_preset("default")
    return [
        orjson.dumps(decision.to_wire())
        for decision in replay(read_events(events), policy)
        if not decision.duplicate
    ]


def _tampered(lines: list[bytes]) -> list[bytes]:
    """Mismatches all over the file (so in every worker), unknown policy versions first met
    in different workers, a repeated record, a reused event id, bad and blank lines."""
    out = list(lines)
    for i in range(0, len(out), 37):
        record = orjson.loads(out[i])
        if record["changes"]:
            record["changes"][0]["to_stage"] = "customer"
        else:
            record["score"] = record["score"] + 1.5
        out[i] = orjson.dumps(record)
    for i in range(5, len(out), 211):
        record = orjson.loads(out[i])
        record["policy_version"] = f"unknown-{i % 3}"
        out[i] = orjson.dumps(record)
    repeated = out[700]
    reused = orjson.loads(out[900])
    reused["event"]["type"] = "deal_won"
    out.insert(1500, repeated)  # the same record again: `duplicate`
    out.insert(1700, orjson.dumps({**reused, "sequence": reused["sequence"] + 50}))  # `conflict`
    out.insert(40, b"{not json")
    out.insert(80, b"")
    out.insert(120, b'{"person_id": 7, "sequence": 1, "event": {"event_id": "x"}}')
    out.insert(160, b'["a list"]')
    return out


def _verify(path: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["verify", "--history", str(path), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("jobs", [2, 3])
def test_a_sharded_verify_prints_what_one_process_prints(tmp_path: Path, jobs: int):
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join(_tampered(_history(tmp_path))) + b"\n")
    one = _verify(path, "--jobs", "1")
    assert _verify(path, "--jobs", str(jobs)) == one
    code, stdout, stderr = one
    assert code == 1
    mismatches = [line for line in stdout.splitlines() if line.startswith("mismatch")]
    assert len(mismatches) == 50  # the first 50 of more, in file order
    assert "1 erased person(s)" in stdout
    unknown = [line for line in stderr.splitlines() if line.startswith("policy unknown-")]
    assert len(unknown) == 3
    assert stderr.count(f"{path}:") == 3  # the three bad lines, with their line numbers
    assert "3 bad line(s) skipped" in stderr


def test_the_sharded_report_is_the_report_of_one_process(tmp_path: Path):
    """All mismatches (not only the 50 printed) in order, and every count."""
    from lifecycle.verify import verify
    from streams.cli.offline import PRESETS
    from streams.tools.files import read_history
    from streams.tools.repeats import may_repeat

    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join(_tampered(_history(tmp_path))) + b"\n")
    known = {p.version: p for p in (load_preset(n) for n in PRESETS)}
    one = verify(read_history(path, on_error=lambda error: None), known, may_repeat(path))
    for jobs in (2, 3, 5):
        many, read = verify_sharded(path, known, jobs)
        assert many.mismatches == one.mismatches
        assert len(one.mismatches) > 100
        assert {m.field for m in one.mismatches} >= {"changes", "score", "duplicate", "conflict"}
        assert list(many.missing_policies.items()) == list(one.missing_policies.items())
        assert (many.checked, many.withheld, many.erased) == (one.checked, one.withheld, one.erased)
        assert [e.line for e in read.errors] == sorted(e.line for e in read.errors)
        assert read.bad == 3


def test_an_untouched_history_verifies_sharded(tmp_path: Path):
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join(_history(tmp_path)) + b"\n")
    code, stdout, _ = _verify(path, "--jobs", "2")
    assert code == 0, stdout
    assert " 0 mismatch(es)" in stdout


def test_the_owner_of_a_line_is_the_person_pydantic_reads(tmp_path: Path):
    lines = _history(tmp_path)
    for line in lines[:2000]:
        record = HistoryRecord.model_validate_json(line)
        assert keys_of(line) == (record.person_id, record.event.event_id)
    event = orjson.loads(lines[0])["event"]
    odd = {
        # the last key wins, in pydantic as here
        b'{"person_id": "a", "person_id": "b", "event": {"event_id": "1", "event_id": "2"}}': (
            "b",
            "2",
        ),
        b'{"person_id": "p\\u0041", "event": {"event_id": "e\\n"}}': ("pA", "e\n"),
        b'{"person_id": "p", "event": "not an object"}': ("p", None),
        b'{"person_id": "p"}': ("p", None),
        b'{"event": ' + orjson.dumps(event) + b"}": (None, event["event_id"]),
        b'{"person_id": 7, "event": {"event_id": 8}}': (7, 8),  # not a string: no owner
        b"[1, 2]": (None, None),
        b"{nope": (None, None),
    }
    for line, expected in odd.items():
        assert keys_of(line) == expected, line
