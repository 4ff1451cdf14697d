"""`leadflow calibrate` as an analyst runs it: events in, a checked proposal and its what-if out."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from streams.cli.main import app
from tests.fixtures.core import T0, EventFactory, days, fit_profile

runner = CliRunner()


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    """Referral and webinar convert at 30 % and 25 %, syndication at under 1 %."""
    make = EventFactory()
    lines = []
    for source, mqls, won in (("referral", 120, 36), ("webinar", 120, 30), ("syndication", 120, 1)):
        for n in range(mqls):
            person = f"{source}-{n}"
            lines.append(
                make(
                    "demo_requested", person_id=person, at=T0, source=source, profile=fit_profile()
                )
            )
            if n < won:
                lines.append(make("deal_won", person_id=person, at=days(20), source="crm"))
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e.model_dump(mode="json")) for e in lines) + b"\n")
    return path


def test_calibrate_writes_a_proposal_that_policy_check_accepts(tmp_path: Path, events_file: Path):
    proposed = tmp_path / "proposed.yaml"

    result = runner.invoke(
        app, ["calibrate", "-e", str(events_file), "--preset", "default", "--out", str(proposed)]
    )

    assert result.exit_code == 0, result.output
    assert "open →" in result.stdout  # syndication's gate (the table wraps at 80 columns)
    assert "expected customers lost 1" in result.stdout
    check = runner.invoke(app, ["policy", "check", str(proposed)])
    assert check.exit_code == 0, check.output
    assert proposed.read_text().startswith("# Proposed by `leadflow calibrate` from 427 events")


def test_calibrate_json_carries_every_number(events_file: Path):
    result = runner.invoke(
        app, ["calibrate", "-e", str(events_file), "--preset", "growth", "--format", "json"]
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["data"]["events"] == 427
    by = {s["source"]: s for s in data["sources"]}
    assert by["referral"]["mql_to_customer"] == {
        "hits": 36,
        "base": 120,
        "rate": 0.3,
        "low": 0.2253,
        "high": 0.3872,
    }
    assert by["syndication"]["gated_proposed"] and by["syndication"]["enough_data"]
    # growth gates purchased_list by hand: no data on it here, so the gate stays
    assert data["proposed_policy"]["gated_sources"] == ["purchased_list", "syndication"]
    assert data["what_if"]["mqls_kept"] == 240  # syndication was gated already
    assert {"key", "before", "after"} <= set(data["diff"][0])


def test_calibrate_refuses_an_unknown_maturity(events_file: Path):
    result = runner.invoke(app, ["calibrate", "-e", str(events_file), "--maturity", "unicorn"])

    assert result.exit_code == 2
    assert "choose one of seed, growth, mature" in result.stderr
