"""The CSV mapping engine, one rule per test: rows of an export → inbound events."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from events.inbound import Event
from streams.cli.main import app
from streams.tools.files import BadLine
from streams.tools.mapping import (
    ImportStats,
    MappingError,
    parse_mapping,
    read_mapped,
    unknown_event_types,
)

runner = CliRunner()

BASE = """\
timezone: UTC
events:
  - event_id: "e-{id}"
    type: form_submitted
    person_id: "{person}"
    occurred_at: {column: at}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def mapped(
    tmp_path: Path, mapping: str, csv: str, *, name: str = "rows.csv", **options: object
) -> tuple[list[Event], ImportStats]:
    rules = parse_mapping(textwrap.dedent(mapping), "map.yaml")
    stats = ImportStats()
    path = write(tmp_path, name, csv)
    events = list(read_mapped([path], rules, stats=stats, **options))  # type: ignore[arg-type]
    return events, stats


def with_field(line: str) -> str:
    """BASE with one more field line under the event."""
    return BASE + f"    {line}\n"


# --- templates and constants ---------------------------------------------------------------


def test_constant_and_templates_fill_the_event(tmp_path: Path):
    (event,), _ = mapped(
        tmp_path,
        with_field('campaign: "{utm} / {{literal}}"'),
        "id,person,at,utm\n1,p-1,2018-02-01T10:00:00,spring\n",
    )
    assert event.event_id == "e-1" and event.person_id == "p-1" and event.type == "form_submitted"
    assert event.campaign == "spring / {literal}"
    assert event.occurred_at == datetime(2018, 2, 1, 10, tzinfo=UTC)


def test_an_empty_optional_template_leaves_the_field_out(tmp_path: Path):
    (event,), stats = mapped(
        tmp_path, with_field('source: "{origin}"'), "id,person,at,origin\n1,p,2018-02-01,\n"
    )
    assert event.source is None and stats.bad == 0


def test_a_template_over_any_empty_column_is_empty_not_half_filled(tmp_path: Path):
    (event,), _ = mapped(
        tmp_path, with_field('campaign: "{a}-{b}"'), "id,person,at,a,b\n1,p,2018-02-01,x,\n"
    )
    assert event.campaign is None


def test_an_empty_required_field_makes_the_row_bad_naming_the_column(tmp_path: Path):
    events, stats = mapped(tmp_path, BASE, "id,person,at\n1,,2018-02-01\n2,p,2018-02-01\n")
    assert [e.event_id for e in events] == ["e-2"]
    assert stats.bad == 1
    assert str(stats.errors[0]).endswith(
        "rows.csv:2: person_id: empty from template '{person}' (it is required)"
    )


def test_cells_are_trimmed_and_header_names_too(tmp_path: Path):
    (event,), _ = mapped(tmp_path, BASE, " id , person ,at\n 7 ,  p-7 ,2018-02-01\n")
    assert (event.event_id, event.person_id) == ("e-7", "p-7")


def test_profile_fields_come_from_columns_flat_or_nested(tmp_path: Path):
    mapping = BASE + '    profile.job_title: "{title}"\n    profile: {employees: "{size}"}\n'
    (event,), _ = mapped(tmp_path, mapping, "id,person,at,title,size\n1,p,2018-02-01,VP,250\n")
    assert event.profile is not None
    assert (event.profile.job_title, event.profile.employees) == ("VP", 250)


def test_a_value_the_event_contract_rejects_makes_the_row_bad_with_field_and_value(
    tmp_path: Path,
):
    events, stats = mapped(
        tmp_path,
        with_field('profile.employees: "{size}"'),
        "id,person,at,size\n1,p,2018-02-01,lots\n",
    )
    assert events == []
    assert "rows.csv:2: profile.employees: Input should be a valid integer" in str(stats.errors[0])
    assert "(value 'lots')" in str(stats.errors[0])


# --- times ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ('{column: at, format: "%d-%m-%Y"}', "01-02-2018", datetime(2018, 2, 1, tzinfo=UTC)),
        (
            '{column: at, format: "%d-%m-%Y %H:%M"}',
            "14-04-2018 13:40",
            datetime(2018, 4, 14, 13, 40, tzinfo=UTC),
        ),
        (
            '{column: at, format: "%m/%d/%Y %I:%M %p"}',
            "4/14/2018 1:40 PM",
            datetime(2018, 4, 14, 13, 40, tzinfo=UTC),
        ),
        (
            '{column: at, format: ["%d-%m-%Y %H:%M", "%d-%m-%Y"]}',
            "14-04-2018",
            datetime(2018, 4, 14, tzinfo=UTC),
        ),
        ("{column: at}", "2018-04-14T13:40:00+02:00", datetime(2018, 4, 14, 11, 40, tzinfo=UTC)),
        ("{column: at, format: iso}", "2018-04-14", datetime(2018, 4, 14, tzinfo=UTC)),
    ],
)
def test_strptime_formats_and_iso_by_default(
    tmp_path: Path, rule: str, value: str, expected: datetime
):
    mapping = BASE.replace("occurred_at: {column: at}", f"occurred_at: {rule}")
    (event,), _ = mapped(tmp_path, mapping, f'id,person,at\n1,p,"{value}"\n')
    assert event.occurred_at == expected


def test_a_time_zone_applies_to_times_without_an_offset(tmp_path: Path):
    mapping = BASE.replace(
        "occurred_at: {column: at}",
        'occurred_at: {column: at, format: "%d-%m-%Y %H:%M", timezone: Europe/Berlin}',
    )
    (winter, summer), _ = mapped(
        tmp_path, mapping, "id,person,at\n1,p,14-01-2018 13:40\n2,p,14-07-2018 13:40\n"
    )
    assert winter.occurred_at == datetime(2018, 1, 14, 12, 40, tzinfo=UTC)
    assert summer.occurred_at == datetime(2018, 7, 14, 11, 40, tzinfo=UTC)


def test_an_offset_in_the_value_wins_over_the_mapping_time_zone(tmp_path: Path):
    mapping = BASE.replace("timezone: UTC", "timezone: America/New_York")
    (event,), _ = mapped(tmp_path, mapping, "id,person,at\n1,p,2018-01-14T13:40:00+01:00\n")
    assert event.occurred_at == datetime(2018, 1, 14, 13, 40, tzinfo=timezone(timedelta(hours=1)))


def test_a_time_without_offset_and_no_time_zone_in_the_mapping_is_a_bad_row(tmp_path: Path):
    mapping = BASE.replace("timezone: UTC\n", "")
    events, stats = mapped(tmp_path, mapping, "id,person,at\n1,p,2018-01-14 13:40\n")
    assert events == []
    assert "rows.csv:2: occurred_at: '2018-01-14 13:40' from column 'at' has no time zone" in str(
        stats.errors[0]
    )


@pytest.mark.parametrize(
    ("fmt", "value"),
    [("epoch_s", "1523713200"), ("epoch_ms", "1523713200000"), ("epoch_s", "1523713200.0")],
)
def test_epoch_seconds_and_milliseconds(tmp_path: Path, fmt: str, value: str):
    mapping = BASE.replace(
        "occurred_at: {column: at}", f"occurred_at: {{column: at, format: {fmt}}}"
    )
    (event,), _ = mapped(tmp_path, mapping, f"id,person,at\n1,p,{value}\n")
    assert event.occurred_at == datetime(2018, 4, 14, 13, 40, tzinfo=UTC)


def test_epoch_milliseconds_are_exact(tmp_path: Path):
    mapping = BASE.replace(
        "occurred_at: {column: at}", "occurred_at: {column: at, format: epoch_ms}"
    )
    (event,), _ = mapped(tmp_path, mapping, "id,person,at\n1,p,1523713200123\n")
    assert event.occurred_at.microsecond == 123_000


def test_a_date_that_does_not_match_the_format_names_field_value_column_and_format(
    tmp_path: Path,
):
    mapping = BASE.replace(
        "occurred_at: {column: at}", 'occurred_at: {column: at, format: "%d-%m-%Y"}'
    )
    events, stats = mapped(tmp_path, mapping, "id,person,at\n1,p,01-02-2018\n2,p,31-02-2018\n")
    assert len(events) == 1 and stats.bad == 1
    assert str(stats.errors[0]).endswith(
        "rows.csv:3: occurred_at: '31-02-2018' from column 'at' does not match '%d-%m-%Y'"
    )


# --- value maps ----------------------------------------------------------------------------

ACTIVITY = BASE.replace(
    "    type: form_submitted\n",
    "    type:\n      column: activity\n"
    "      map: {Webinar attended: webinar_attended, Demo request: demo_requested}\n",
)


def test_a_value_map_turns_column_values_into_event_types(tmp_path: Path):
    events, _ = mapped(
        tmp_path,
        ACTIVITY,
        "id,person,at,activity\n1,p,2018-02-01,Webinar attended\n2,p,2018-02-02,Demo request\n",
    )
    assert [e.type for e in events] == ["webinar_attended", "demo_requested"]


def test_an_unmapped_value_without_default_is_a_bad_row_naming_the_value(tmp_path: Path):
    events, stats = mapped(tmp_path, ACTIVITY, "id,person,at,activity\n1,p,2018-02-01,Call\n")
    assert events == []
    message = str(stats.errors[0])
    assert "rows.csv:2: type: 'Call' from column 'activity' is not in the value map" in message
    assert "Webinar attended, Demo request" in message


def test_default_skip_leaves_the_event_out_and_counts_the_row_as_skipped(tmp_path: Path):
    mapping = ACTIVITY.replace("demo_requested}\n", "demo_requested}\n      default: skip\n")
    events, stats = mapped(
        tmp_path,
        mapping,
        "id,person,at,activity\n1,p,2018-02-01,Call\n2,p,2018-02-01,Demo request\n",
    )
    assert [e.event_id for e in events] == ["e-2"]
    assert stats.bad == 0 and stats.skipped_rows == 1
    assert list(stats.skipped) == ["rows.csv events[0]: type: 'Call' not in map"]


def test_a_default_template_passes_the_value_through(tmp_path: Path):
    mapping = with_field(
        "source: {column: origin, map: {organic_search: organic}, default: '{origin}'}"
    )
    events, _ = mapped(
        tmp_path,
        mapping,
        "id,person,at,origin\n1,p,2018-02-01,organic_search\n2,p,2018-02-01,display\n",
    )
    assert [e.source for e in events] == ["organic", "display"]


def test_a_value_mapped_to_empty_leaves_the_optional_field_out(tmp_path: Path):
    mapping = with_field('source: {column: origin, map: {unknown: ""}}')
    (event,), _ = mapped(tmp_path, mapping, "id,person,at,origin\n1,p,2018-02-01,unknown\n")
    assert event.source is None


def test_a_value_map_can_ignore_case(tmp_path: Path):
    mapping = ACTIVITY.replace("demo_requested}\n", "demo_requested}\n      ignore_case: true\n")
    (event,), _ = mapped(tmp_path, mapping, "id,person,at,activity\n1,p,2018-02-01,DEMO REQUEST\n")
    assert event.type == "demo_requested"


def test_reading_a_mapping_leaves_other_yaml_loading_alone():
    parse_mapping(BASE)
    assert yaml.safe_load("a: true\nb: 1\nc: NO") == {"a": True, "b": 1, "c": False}


def test_yaml_values_stay_text_so_norway_is_no(tmp_path: Path):
    mapping = with_field("profile.country: {column: c, map: {Norway: NO, Sweden: SE}}")
    (event,), _ = mapped(tmp_path, mapping, "id,person,at,c\n1,p,2018-02-01,Norway\n")
    assert event.profile is not None and event.profile.country == "NO"


# --- conditions and several events per row -------------------------------------------------


def test_when_not_empty_skips_rows_with_an_empty_column(tmp_path: Path):
    mapping = BASE + "    when: {column: origin, not_empty: true}\n"
    events, stats = mapped(
        tmp_path, mapping, "id,person,at,origin\n1,p,2018-02-01,email\n2,p,2018-02-01,\n"
    )
    assert [e.event_id for e in events] == ["e-1"]
    assert stats.skipped == {"rows.csv events[0]: when origin not_empty": 1}


@pytest.mark.parametrize(
    ("condition", "kept"),
    [
        ("{column: stage, equals: won}", ["e-1"]),
        ("{column: stage, not_equals: won}", ["e-2", "e-3"]),
        ("{column: stage, in: [won, lost]}", ["e-1", "e-2"]),
        ("{column: stage, not_in: [won, lost]}", ["e-3"]),
        ("{column: stage, empty: true}", ["e-3"]),
        ("[{column: stage, not_empty: true}, {column: stage, not_equals: lost}]", ["e-1"]),
    ],
)
def test_conditions_equals_in_empty_and_lists_of_them(
    tmp_path: Path, condition: str, kept: list[str]
):
    mapping = BASE + f"    when: {condition}\n"
    events, _ = mapped(
        tmp_path,
        mapping,
        "id,person,at,stage\n1,p,2018-02-01,won\n2,p,2018-02-01,lost\n3,p,2018-02-01,\n",
    )
    assert [e.event_id for e in events] == kept


def test_one_row_becomes_several_events_each_with_its_own_condition(tmp_path: Path):
    mapping = """\
    timezone: UTC
    events:
      - {event_id: "lead-{id}", type: form_submitted, person_id: "{id}",
         occurred_at: {column: lead_at}}
      - event_id: "won-{id}"
        type: deal_won
        person_id: "{id}"
        occurred_at: {column: won_at}
        when: {column: won_at, not_empty: true}
    """
    events, stats = mapped(
        tmp_path, mapping, "id,lead_at,won_at\n1,2018-01-01,2018-03-01\n2,2018-01-02,\n"
    )
    assert [e.event_id for e in events] == ["lead-1", "won-1", "lead-2"]
    assert stats.events == {"form_submitted": 2, "deal_won": 1}
    assert stats.skipped_rows == 0  # row 2 still made an event


def test_a_row_is_never_half_imported(tmp_path: Path):
    mapping = """\
    timezone: UTC
    events:
      - {event_id: "lead-{id}", type: form_submitted, person_id: "{id}",
         occurred_at: {column: lead_at}}
      - {event_id: "won-{id}", type: deal_won, person_id: "{id}", occurred_at: {column: won_at}}
    """
    events, stats = mapped(tmp_path, mapping, "id,lead_at,won_at\n1,2018-01-01,someday\n")
    assert events == [] and stats.bad == 1


# --- file rules, order, ids ----------------------------------------------------------------

TWO_FILES = """\
timezone: UTC
files:
  - match: "mqls*.csv"
    events:
      - {event_id: "mql-{mql_id}", type: contact_sales, person_id: "{mql_id}",
         occurred_at: {column: first_contact_date, format: "%d-%m-%Y"}}
  - match: "deals*.csv"
    events:
      - {event_id: "won-{mql_id}", type: deal_won, person_id: "{mql_id}",
         occurred_at: {column: won_date, format: "%d-%m-%Y %H:%M"}}
"""


def two_files(tmp_path: Path) -> list[Path]:
    return [
        write(tmp_path, "mqls.csv", "mql_id,first_contact_date\nm1,01-02-2018\nm2,20-04-2018\n"),
        write(tmp_path, "deals.csv", "mql_id,won_date\nm1,14-04-2018 13:40\n"),
    ]


def test_each_file_is_read_by_the_first_rule_matching_its_name(tmp_path: Path):
    events = list(read_mapped(two_files(tmp_path), parse_mapping(TWO_FILES)))
    assert [e.event_id for e in events] == ["mql-m1", "mql-m2", "won-m1"]


def test_sort_by_time_orders_all_files_by_occurred_at_and_ties_keep_file_order(tmp_path: Path):
    paths = two_files(tmp_path)
    write(tmp_path, "deals-2.csv", "mql_id,won_date\nm2,20-04-2018 00:00\n")
    events = list(
        read_mapped([*paths, tmp_path / "deals-2.csv"], parse_mapping(TWO_FILES), sort_by_time=True)
    )
    assert [e.event_id for e in events] == ["mql-m1", "won-m1", "mql-m2", "won-m2"]


def test_order_time_in_the_mapping_sorts_too(tmp_path: Path):
    rules = parse_mapping("order: time\n" + TWO_FILES)
    events = list(read_mapped(two_files(tmp_path), rules))
    assert [e.event_id for e in events] == ["mql-m1", "won-m1", "mql-m2"]


def test_a_file_no_rule_matches_is_a_mapping_error(tmp_path: Path):
    path = write(tmp_path, "contacts.csv", "a\n1\n")
    with pytest.raises(
        MappingError, match=r"contacts.csv: no file rule .* \(mqls\*.csv, deals\*.csv\)"
    ):
        list(read_mapped([path], parse_mapping(TWO_FILES)))


def test_a_column_missing_from_the_header_is_a_mapping_error_before_any_row(tmp_path: Path):
    path = write(tmp_path, "mqls.csv", "id,first_contact_date\nm1,01-02-2018\n")
    with pytest.raises(MappingError, match=r"needs column\(s\) 'mql_id' that the header does not"):
        list(read_mapped([path], parse_mapping(TWO_FILES)))


def test_the_same_event_twice_is_kept_once(tmp_path: Path):
    events, stats = mapped(tmp_path, BASE, "id,person,at\n1,p,2018-02-01\n1,p,2018-02-01\n")
    assert len(events) == 1 and stats.duplicates == 1 and stats.bad == 0


def test_one_event_id_for_two_different_events_is_a_bad_row_naming_both_lines(tmp_path: Path):
    events, stats = mapped(tmp_path, BASE, "id,person,at\n1,p,2018-02-01\n1,q,2018-02-01\n")
    assert len(events) == 1 and stats.bad == 1
    assert "rows.csv:3: event_id 'e-1' was already given to a different event at" in str(
        stats.errors[0]
    )
    assert "rows.csv:2" in str(stats.errors[0])


def test_reimporting_the_same_rows_gives_identical_events(tmp_path: Path):
    paths = two_files(tmp_path)
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    mapping = write(tmp_path, "map.yaml", TWO_FILES)
    for out in (out_a, out_b):
        result = runner.invoke(
            app, ["import", *map(str, paths), "--mapping", str(mapping), "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
    assert out_a.read_bytes() == out_b.read_bytes() and out_a.read_bytes().count(b"\n") == 3


# --- CSV shape -----------------------------------------------------------------------------


def test_quoted_newlines_keep_the_line_number_of_the_row_start(tmp_path: Path):
    mapping = with_field('campaign: "{note}"')
    events, stats = mapped(
        tmp_path,
        mapping,
        'id,person,at,note\n1,p,2018-02-01,"two\nlines"\n2,,2018-02-01,x\n',
    )
    assert events[0].campaign == "two\nlines"
    assert str(stats.errors[0]).endswith(
        "rows.csv:4: person_id: empty from template '{person}' (it is required)"
    )


def test_a_row_with_more_fields_than_the_header_is_bad(tmp_path: Path):
    events, stats = mapped(tmp_path, BASE, "id,person,at\n1,p,2018-02-01,extra\n")
    assert events == [] and "rows.csv:2: 4 fields, the header has 3" in str(stats.errors[0])


def test_delimiter_and_encoding_per_file(tmp_path: Path):
    mapping = BASE.replace("events:", "delimiter: ';'\nencoding: latin-1\nevents:")
    path = tmp_path / "rows.csv"
    path.write_bytes("id;person;at\n1;Zoë;2018-02-01\n".encode("latin-1"))
    (event,) = read_mapped([path], parse_mapping(mapping))
    assert event.person_id == "Zoë"


def test_bytes_that_are_not_the_files_encoding_make_that_row_bad(tmp_path: Path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"id,person,at\n1,Zo\xeb,2018-02-01\n2,p,2018-02-01\n")
    stats = ImportStats()
    events = list(read_mapped([path], parse_mapping(BASE), stats=stats))
    assert [e.event_id for e in events] == ["e-2"]
    assert "rows.csv:2: not valid utf-8" in str(stats.errors[0])


def test_strict_raises_at_the_first_bad_row(tmp_path: Path):
    path = write(tmp_path, "rows.csv", "id,person,at\n1,,2018-02-01\n")
    with pytest.raises(BadLine, match=r"rows\.csv:2: person_id"):
        list(read_mapped([path], parse_mapping(BASE), strict=True))


# --- the mapping file ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            BASE.replace('  - event_id: "e-{id}"\n    type', "  - type"),
            "map.yaml:3: events.0.event_id: missing: give an id built from the row",
        ),
        (
            BASE.replace('"e-{id}"', "same-for-all"),
            "map.yaml:3: events.0.event_id: 'same-for-all' is a constant",
        ),
        (with_field('persn_id: "{x}"'), "map.yaml:7: events.0.persn_id: not a known key here"),
        (
            with_field('profile.job: "{x}"'),
            "map.yaml:7: events.0.profile.job: not a profile field (email, job_title",
        ),
        (
            BASE.replace("{column: at}", "{column: at, timezone: Mars/Olympus}"),
            "map.yaml:6: events.0.occurred_at.timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            BASE.replace("{column: at}", "{column: at, format: dd-mm-yyyy}"),
            "a strptime format (%d-%m-%Y), iso, epoch_s or epoch_ms",
        ),
        (  # a directive strptime lacks would fail every row: said once, at its line
            BASE.replace("{column: at}", '{column: at, format: [iso, "%d-%m-%Y %Q"]}'),
            "map.yaml:6: events.0.occurred_at.format: '%d-%m-%Y %Q': 'Q' is a bad directive",
        ),
        (with_field('campaign: "{unclosed"'), "map.yaml:7: events.0.campaign: template"),
        (
            with_field("source: {column: s, default: skip}"),
            "events.0.source: default: applies to a value map",
        ),
        (with_field("source: {map: {a: b}}"), "give column: or template:"),
        (
            BASE + "    when: {column: origin}\n",
            "map.yaml:7: events.0.when.0: give exactly one test",
        ),
        ("files:\n  - match: '*.csv'\n", "map.yaml:2: files.0.events: Field required"),
        ("events: [\n", "map.yaml:2: not valid YAML"),
    ],
)
def test_mapping_errors_name_the_file_line_and_key(text: str, expected: str):
    with pytest.raises(MappingError) as caught:
        parse_mapping(text, "map.yaml")
    assert expected in str(caught.value)


# --- the command ---------------------------------------------------------------------------


def test_import_writes_jsonl_and_a_summary(tmp_path: Path):
    paths = two_files(tmp_path)
    write(tmp_path, "deals-bad.csv", "mql_id,won_date\nm2,someday\n")
    mapping = write(tmp_path, "map.yaml", TWO_FILES)
    out = tmp_path / "events.jsonl"
    args = ["import", *map(str, paths), str(tmp_path / "deals-bad.csv"), "-m", str(mapping)]
    result = runner.invoke(app, [*args, "--out", str(out), "--sort-by-time"])
    assert result.exit_code == 0, result.output
    assert [Event.model_validate_json(x).event_id for x in out.read_text().splitlines()] == [
        "mql-m1",
        "won-m1",
        "mql-m2",
    ]
    assert f"{tmp_path / 'deals-bad.csv'}:2: occurred_at: 'someday'" in result.stderr
    assert "read 4 rows (mqls.csv 2, deals.csv 1, deals-bad.csv 1)" in result.stderr
    assert "3 events in time order (stable): contact_sales 2, deal_won 1" in result.stderr
    assert "skipped by condition: 0 rows" in result.stderr  # said even when none
    assert "bad rows: 1" in result.stderr


def test_import_without_sort_says_it_keeps_file_order_and_writes_stdout(tmp_path: Path):
    mapping = write(tmp_path, "map.yaml", TWO_FILES)
    result = runner.invoke(app, ["import", *map(str, two_files(tmp_path)), "-m", str(mapping)])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3
    assert "in file order (--sort-by-time orders them by occurred_at)" in result.stderr


def test_strict_import_with_a_bad_row_writes_nothing(tmp_path: Path):
    paths = two_files(tmp_path)
    write(tmp_path, "deals-bad.csv", "mql_id,won_date\nm2,someday\n")
    mapping = write(tmp_path, "map.yaml", TWO_FILES)
    out = tmp_path / "events.jsonl"
    args = ["import", *map(str, paths), str(tmp_path / "deals-bad.csv"), "-m", str(mapping)]
    result = runner.invoke(app, [*args, "--out", str(out), "--strict"])
    assert result.exit_code == 1
    assert "deals-bad.csv:2: occurred_at" in result.stderr
    assert "--strict: nothing written" in result.stderr
    assert not out.exists() and list(tmp_path.glob(".*partial")) == []


def test_a_type_no_schema_defines_is_warned_of_as_a_likely_typo(tmp_path: Path):
    """`demo_requestd` would import events the core records with no effect."""
    typo = BASE.replace("type: form_submitted", "type: form_submited")
    mapped_type = BASE.replace(
        "type: form_submitted",
        "type: {column: kind, map: {Demo: demo_requestd, Note: skip}, default: '{kind}'}",
    )
    assert unknown_event_types(parse_mapping(typo)) == ["form_submited"]
    assert unknown_event_types(parse_mapping(mapped_type)) == ["demo_requestd"]
    assert unknown_event_types(parse_mapping(BASE)) == []

    mapping = write(tmp_path, "map.yaml", typo)
    path = write(tmp_path, "rows.csv", "id,person,at\n1,p1,2026-01-01T00:00:00Z\n")
    send = ["send", str(path), "--broker", "kafka://127.0.0.1:9"]  # nothing listens there
    for args in (["import", str(path)], ["funnel", "-e", str(path)], send):
        result = runner.invoke(app, [*args, "-m", str(mapping)])
        assert result.exit_code == (1 if args is send else 0), result.output
        assert f"warning: {mapping}: event type 'form_submited' is not a known type" in (
            result.stderr
        )


def test_import_with_a_broken_mapping_exits_2_naming_the_line(tmp_path: Path):
    mapping = write(tmp_path, "map.yaml", BASE.replace('"e-{id}"', "x"))
    path = write(tmp_path, "rows.csv", "id,person,at\n")
    result = runner.invoke(app, ["import", str(path), "-m", str(mapping)])
    assert result.exit_code == 2
    assert f"{mapping}:3: events.0.event_id: 'x' is a constant" in result.stderr


def test_funnel_reads_a_csv_directly_with_a_mapping(tmp_path: Path):
    mapping = write(tmp_path, "map.yaml", TWO_FILES)
    path = two_files(tmp_path)[0]
    result = runner.invoke(
        app, ["funnel", "-e", str(path), "-m", str(mapping), "--preset", "seed", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert '"mql": 2' in result.stdout


def test_funnel_reads_several_exports_with_one_mapping_as_import_does(tmp_path: Path):
    """The day-one backfill is two files (hand-raises, won deals): both are read, not the
    last `--events` alone."""
    mapping = write(tmp_path, "map.yaml", TWO_FILES)
    files = [a for path in two_files(tmp_path) for a in ("-e", str(path))]
    result = runner.invoke(app, ["funnel", *files, "-m", str(mapping), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"mql": 2' in result.stdout and '"customer": 1' in result.stdout
    calibrated = runner.invoke(app, ["calibrate", *files, "-m", str(mapping), "--format", "json"])
    assert calibrated.exit_code == 0, calibrated.output
    assert '"events": 3' in calibrated.stdout


def test_several_events_files_without_a_mapping_are_refused_not_dropped(tmp_path: Path):
    one, two = write(tmp_path, "a.jsonl", ""), write(tmp_path, "b.jsonl", "")
    result = runner.invoke(app, ["funnel", "-e", str(one), "-e", str(two)])
    assert result.exit_code == 2
    assert "2 --events files: several are read together only as CSV exports" in result.stderr


def test_a_csv_without_a_mapping_is_rejected_once_with_a_hint_not_per_line(tmp_path: Path):
    path = two_files(tmp_path)[0]
    result = runner.invoke(app, ["funnel", "-e", str(path)])
    assert result.exit_code == 1
    assert "needs column(s) 'event_id', 'occurred_at', 'person_id', 'type'" in result.stderr
    assert "--mapping MAP.yaml" in result.stderr


def test_send_checks_a_mapping_against_the_header_before_connecting(tmp_path: Path):
    mapping = write(tmp_path, "map.yaml", TWO_FILES)
    path = write(tmp_path, "mqls.csv", "id,first_contact_date\nm1,01-02-2018\n")
    result = runner.invoke(app, ["send", str(path), "--mapping", str(mapping)])
    assert result.exit_code == 2
    assert "needs column(s) 'mql_id'" in result.stderr


def test_send_takes_a_mapping_or_the_csv_map_shorthand_for_csv_files_only(tmp_path: Path):
    mapping = write(tmp_path, "map.yaml", TWO_FILES)
    path = write(tmp_path, "events.jsonl", "")
    result = runner.invoke(app, ["send", str(path), "--mapping", str(mapping)])
    assert result.exit_code == 2 and "apply to .csv files only" in result.stderr
    csv_path = two_files(tmp_path)[0]
    both = ["send", str(csv_path), "--mapping", str(mapping), "--csv-map", "person_id=mql_id"]
    result = runner.invoke(app, both)
    assert result.exit_code == 2 and "not both" in result.stderr


def test_replay_and_simulate_read_a_csv_directly_with_a_mapping(tmp_path: Path):
    mapping = write(tmp_path, "map.yaml", TWO_FILES)
    path = two_files(tmp_path)[0]
    replayed = runner.invoke(app, ["replay", "-e", str(path), "-m", str(mapping), "--state"])
    assert replayed.exit_code == 0, replayed.output
    assert len(replayed.stdout.splitlines()) == 2
    args = ["simulate", "-e", str(path), "-m", str(mapping), "-p", "default", "--against", "seed"]
    simulated = runner.invoke(app, [*args, "--format", "json"])
    assert simulated.exit_code == 0, simulated.output
    assert '"events": 2' in simulated.stdout


def test_a_mapping_cannot_read_the_history_topic():
    result = runner.invoke(app, ["funnel", "--broker", "kafka://x:1", "-m", "map.yaml"])
    assert result.exit_code == 2 and "--mapping reads a CSV file" in result.stderr
