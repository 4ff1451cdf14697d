"""The ready-made mappings in examples/mappings/: each imports its sample export cleanly and
gives the funnel the default policy should give those people."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lifecycle.funnel import funnel
from lifecycle.policy import load_preset
from lifecycle.replay import replay
from streams.cli.main import app
from streams.tools.mapping import ImportStats, load_mapping, parse_mapping, read_mapped

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mappings"

#: mapping → (its sample files, reached per stage under the default policy)
CASES = {
    "hubspot-contacts.yaml": (
        ["hubspot-contacts.csv"],
        {"subscriber": 1, "lead": 5, "mql": 5, "sql": 4, "opportunity": 3, "customer": 2},
    ),
    "salesforce.yaml": (
        ["salesforce-leads.csv", "salesforce-opportunities.csv"],
        {"lead": 5, "mql": 4, "sql": 3, "opportunity": 3, "customer": 1, "recycled": 2},
    ),
    "activity-log.yaml": (
        ["activity-log.csv"],
        {
            "subscriber": 1,
            "lead": 3,
            "mql": 3,
            "sql": 1,
            "opportunity": 1,
            "customer": 1,
            "recycled": 1,
        },
    ),
    "b2b-funnel.yaml": (
        ["mqls.csv", "deals.csv"],
        {"lead": 8, "mql": 8, "sql": 3, "opportunity": 3, "customer": 3},
    ),
}


def imported(name: str) -> tuple[list, ImportStats]:
    files, _ = CASES[name]
    stats = ImportStats()
    events = list(
        read_mapped([EXAMPLES / f for f in files], load_mapping(EXAMPLES / name), stats=stats)
    )
    return events, stats


def test_every_shipped_mapping_has_a_case_here():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_mapping_imports_its_sample_without_a_bad_row(name: str):
    events, stats = imported(name)
    assert stats.bad == 0, stats.errors
    assert events and len({e.event_id for e in events}) == len(events)


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_mapping_gives_the_expected_funnel_under_the_default_policy(name: str):
    events, _ = imported(name)
    changes = [c for d in replay(events, load_preset("default")) for c in d.changes]
    reached = {stage: n for stage, n in funnel(changes).reached.items() if n}
    assert reached == CASES[name][1]


def test_hubspot_ucp_student_and_non_decision_maker_never_reach_lead():
    events, _ = imported("hubspot-contacts.yaml")
    changes = [c for d in replay(events, load_preset("default")) for c in d.changes]
    moved = {c.person_id for c in changes}
    assert "hubspot-104" not in moved  # a student at a university: unacceptable profile
    assert "hubspot-103" not in moved  # a software engineer: not a decision maker


def test_activity_log_exported_newest_first_is_imported_in_time_order():
    events, stats = imported("activity-log.yaml")
    assert [e.occurred_at for e in events] == sorted(e.occurred_at for e in events)
    assert stats.skipped == {"activity-log.csv events[0]: type: 'Internal note' not in map": 1}


def test_two_file_backfill_end_to_end_through_the_cli(tmp_path: Path):
    out = tmp_path / "events.jsonl"
    args = ["import", str(EXAMPLES / "mqls.csv"), str(EXAMPLES / "deals.csv")]
    args += ["--mapping", str(EXAMPLES / "b2b-funnel.yaml"), "--sort-by-time", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "11 events in time order (stable): contact_sales 8, deal_won 3" in result.stderr
    report = runner.invoke(app, ["funnel", "--events", str(out), "--format", "json"])
    data = json.loads(report.stdout)
    assert data["reached"]["mql"] == 8 and data["reached"]["customer"] == 3
    assert data["conversion"]["mql->customer"]["rate"] == pytest.approx(3 / 8)


def test_the_readme_backfill_mapping_is_a_valid_mapping():
    readme = (EXAMPLES.parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("# examples/mappings/b2b-funnel.yaml (abridged)\n", 1)[1]
    mapping = parse_mapping(block.split("```", 1)[0], "README.md")
    assert [rule.match for rule in mapping.files] == ["*mqls*.csv", "*deals*.csv"]


def test_calibrate_and_cohort_funnel_read_a_csv_with_a_mapping():
    csv, mapping = str(EXAMPLES / "mqls.csv"), str(EXAMPLES / "b2b-funnel.yaml")
    calibrated = runner.invoke(
        app,
        ["calibrate", "--events", csv, "--mapping", mapping, "--min-mqls", "1", "--format", "json"],
    )
    assert calibrated.exit_code == 0, calibrated.output
    sources = json.loads(calibrated.stdout)["sources"]
    assert sum(s["mqls"] for s in sources) == 8  # every hand-raise of the file is an MQL
    cohorts = runner.invoke(
        app,
        ["funnel", "--events", csv, "--mapping", mapping, "--cohort", "month", "--format", "json"],
    )
    assert cohorts.exit_code == 0, cohorts.output
    assert json.loads(cohorts.stdout)
