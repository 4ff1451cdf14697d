"""The offline CLI as auditors use it: files in, decisions and reports out."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from events.outbound import StageChanged
from lifecycle.policy import load_preset
from lifecycle.replay import replay
from streams.cli.main import app
from streams.dev.demo import synthetic_events
from streams.tools.files import read_events

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policy-tests"


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    lines = [orjson.dumps(e) for e in synthetic_events(200, 2_000, seed=3)]
    lines.insert(5, b"{not json")
    lines.insert(
        9,
        b'{"event_id":"n1","type":"page_viewed","person_id":"p","occurred_at":"2026-01-01T00:00:00"}',
    )
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def history_file(tmp_path: Path, events: Path) -> Path:
    policy = load_preset("default")
    path = tmp_path / "history.jsonl"
    with path.open("wb") as handle:
        for decision in replay(read_events(events), policy):
            if not decision.duplicate:
                handle.write(orjson.dumps(decision.to_wire()) + b"\n")
    return path


def test_replay_prints_stage_changes_and_reports_bad_lines_with_file_and_line(events_file: Path):
    result = runner.invoke(app, ["replay", "--events", str(events_file)])
    assert result.exit_code == 0, result.output
    changes = [StageChanged.model_validate_json(line) for line in result.stdout.splitlines()]
    assert len(changes) > 100
    assert f"{events_file}:6: not JSON" in result.stderr or f"{events_file}:6:" in result.stderr
    assert f"{events_file}:10: occurred_at: Input should have timezone info" in result.stderr
    assert "2 bad line(s) skipped" in result.stderr


def test_replay_strict_stops_at_the_first_bad_line(events_file: Path):
    result = runner.invoke(app, ["replay", "--events", str(events_file), "--strict"])
    assert result.exit_code == 1
    assert f"{events_file}:6:" in result.stderr


def test_replay_of_one_person_as_of_a_time_stops_there(tmp_path: Path):
    path = tmp_path / "one.jsonl"
    rows = [
        {
            "type": "webinar_attended",
            "occurred_at": "2026-01-01T00:00:00Z",
            "profile": {"seniority": "vp"},
        },
        {"type": "demo_requested", "occurred_at": "2026-01-05T00:00:00Z"},
        {"type": "deal_won", "occurred_at": "2026-02-01T00:00:00Z"},
    ]
    path.write_text(
        "\n".join(
            json.dumps({"event_id": f"e{i}", "person_id": "p1", "source": "webinar", **r})
            for i, r in enumerate(rows)
        )
    )
    result = runner.invoke(
        app, ["replay", "-e", str(path), "--person", "p1", "--as-of", "2026-01-10T00:00:00Z"]
    )
    assert [json.loads(x)["to_stage"] for x in result.stdout.splitlines()] == ["lead", "mql"]
    state = runner.invoke(app, ["replay", "-e", str(path), "--state"])
    assert json.loads(state.stdout)["stage"] == "customer"


def test_funnel_json_counts_reached_stages(events_file: Path):
    result = runner.invoke(app, ["funnel", "-e", str(events_file), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reached"]["mql"] >= report["reached"]["sql"] >= report["reached"]["customer"]
    mqls = report["entered"]["mql"] + report["sales_sourced"]["mql"]
    assert mqls == report["reached"]["mql"]
    assert report["conversion"]["mql->sql"]["from"] == report["entered"]["mql"]
    assert report["conversion_reached"]["mql->sql"]["from"] == report["reached"]["mql"]


def test_simulate_seed_against_default_lists_persons_that_differ(events_file: Path):
    result = runner.invoke(
        app,
        [
            "simulate",
            "-e",
            str(events_file),
            "--policy",
            "default",
            "--against",
            "seed",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["persons_differing"] > 0
    assert data["funnel_b"]["reached"]["mql"] >= data["funnel_a"]["reached"]["mql"]


def test_verify_accepts_an_untouched_history_and_flags_a_tampered_one(
    tmp_path: Path, events_file: Path
):
    history = history_file(tmp_path, events_file)
    ok = runner.invoke(app, ["verify", "--history", str(history)])
    assert ok.exit_code == 0, ok.output
    assert "0 mismatch(es)" in ok.stdout

    lines = history.read_bytes().splitlines()
    for i, line in enumerate(lines):
        record = orjson.loads(line)
        if record["changes"] and record["changes"][0]["to_stage"] == "lead":
            record["changes"][0]["to_stage"] = "mql"
            lines[i] = orjson.dumps(record)
            tampered = record
            break
    history.write_bytes(b"\n".join(lines) + b"\n")
    bad = runner.invoke(app, ["verify", "--history", str(history)])
    assert bad.exit_code == 1
    first = bad.stdout.splitlines()[0]
    assert f"mismatch {tampered['person_id']} #{tampered['sequence']}" in first
    assert "changes: recorded" in first
    # Later records of that person were decided on the true state, so they may disagree with
    # the tampered one too; no other person is affected.
    others = [x for x in bad.stdout.splitlines() if x.startswith("mismatch")]
    assert all(tampered["person_id"] in x for x in others)


def test_policy_check_names_file_line_and_key(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text(
        "name: broken\ninterest_actions: [form_submitted]\nhand_raises: [demo_requested]\n"
        "scoring:\n  weights: {page_viewed: 1}\n  threshold: lots\n"
    )
    result = runner.invoke(app, ["policy", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:6: scoring.threshold:" in result.stderr


def test_policy_diff_shows_rule_changes():
    result = runner.invoke(app, ["policy", "diff", "default", "growth"])
    assert result.exit_code == 0
    assert "gated_sources: +syndication" in result.stdout


def test_policy_diagram_is_mermaid_from_the_machine():
    result = runner.invoke(app, ["policy", "diagram"])
    assert "stateDiagram-v2" in result.stdout
    assert "mql --> sql: accept" in result.stdout


def test_golden_fixtures_document_the_default_policy():
    result = runner.invoke(app, ["policy", "test", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    assert "10/10 cases pass under default" in result.stdout


def test_golden_fixtures_fail_loudly_under_another_policy():
    result = runner.invoke(app, ["policy", "test", str(EXAMPLES), "--preset", "seed"])
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "expected" in result.stdout


def test_schema_writes_json_schemas_openapi_and_asyncapi(tmp_path: Path):
    result = runner.invoke(app, ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 0
    event = json.loads((tmp_path / "schemas" / "event.schema.json").read_text())
    assert "event_id" in event["required"]
    assert (tmp_path / "schemas" / "stage-changed.schema.json").exists()
    assert json.loads((tmp_path / "openapi.json").read_text())["openapi"] == "3.1.0"
    assert "stageChanges" in json.loads((tmp_path / "asyncapi.json").read_text())["channels"]
