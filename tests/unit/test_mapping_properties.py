"""Whatever an export holds, an import writes only events the wire contract accepts.

Rows are drawn with hostile cells (delimiters, quotes, newlines, NUL, unicode, over-long
text, dates in several formats or none), written with the csv module, imported with the CLI
to JSONL, and every written line is decoded with `events.codec.decode_event`.
"""

from __future__ import annotations

import csv
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from events.codec import decode_event
from streams.cli.main import app
from streams.tools.mapping import ImportStats, parse_mapping, read_mapped

runner = CliRunner()

MAPPING = """\
timezone: Europe/Berlin
events:
  - event_id: "act-{id}"
    person_id: "{person}"
    occurred_at: {column: at, format: ["%d-%m-%Y %H:%M", "%d-%m-%Y", iso, epoch_ms]}
    type:
      column: activity
      map: {Demo request: demo_requested, Webinar attended: webinar_attended, Note: skip}
      default: "{activity}"
    source: {column: origin, map: {unknown: ""}, default: "{origin}"}
    campaign: "{campaign} / {origin}"
    profile.job_title: "{title}"
    profile.employees: "{employees}"
    profile.country: "{country}"
  - event_id: "won-{id}"
    type: deal_won
    person_id: "{person}"
    occurred_at: {column: won, format: "%d-%m-%Y %H:%M"}
    when: {column: won, not_empty: true}
"""
HEADER = ["id", "person", "at", "activity", "origin", "campaign", "title", "employees"]
HEADER += ["country", "won"]

CELL = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r"),
    max_size=12,
) | st.sampled_from(["", " ", ",", '"', "\n", "a,b", 'x"y', "Zoë", "x" * 300, "\x00"])
MOMENT = st.datetimes(min_value=datetime(1899, 1, 1), max_value=datetime(2100, 1, 1))
WHEN = st.one_of(
    MOMENT.map(lambda d: d.strftime("%d-%m-%Y %H:%M")),
    MOMENT.map(lambda d: d.strftime("%d-%m-%Y")),
    MOMENT.map(lambda d: d.isoformat()),
    MOMENT.map(lambda d: str(int(d.replace(tzinfo=UTC).timestamp() * 1000))),
    CELL,
)
ID = st.integers(0, 40).map(str)
ROW = st.fixed_dictionaries(
    {
        "id": st.one_of(ID, ID, st.sampled_from(["", "x" * 300]), CELL),
        "person": st.one_of(st.sampled_from(["p1", "p2", "p3"]), st.just(""), CELL),
        "at": WHEN,
        "activity": st.sampled_from(["Demo request", "Webinar attended", "Note", ""]) | CELL,
        "origin": st.sampled_from(["unknown", "web", ""]) | CELL,
        "campaign": CELL,
        "title": CELL,
        "employees": st.sampled_from(["250", "-1", "1e3", ""]) | CELL,
        "country": st.sampled_from(["NO", "DE", ""]) | CELL,
        "won": st.sampled_from(["", "14-04-2018 13:40"]) | WHEN,
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(ROW, max_size=12))
def test_every_event_an_import_writes_is_accepted_by_decode_event(rows: list[dict[str, str]]):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export, mapping, out = folder / "export.csv", folder / "map.yaml", folder / "out.jsonl"
        with export.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, HEADER)
            writer.writeheader()
            writer.writerows(rows)
        mapping.write_text(MAPPING, encoding="utf-8")
        result = runner.invoke(
            app, ["import", str(export), "-m", str(mapping), "--out", str(out), "--sort-by-time"]
        )
        assert result.exit_code == 0, result.output
        lines = out.read_bytes().splitlines()
        events = [decode_event(line) for line in lines]  # raises on any invalid event
        assert [e.occurred_at for e in events] == sorted(e.occurred_at for e in events)
        assert len({e.event_id for e in events}) == len(events)

        # The same rows always give the same events; every row is accounted for.
        stats = ImportStats()
        again = list(read_mapped([export], parse_mapping(MAPPING), stats=stats, sort_by_time=True))
        assert [e.model_dump_json(exclude_none=True).encode() for e in again] == lines
        assert stats.events.total() == len(lines)
        assert stats.bad + stats.skipped_rows <= stats.lines
