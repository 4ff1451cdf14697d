"""Partial results (`lifecycle.partials`): shares of a history's partitions combine into the
report one run over the whole history gives, and partials that are not shares of one run
are refused with one line naming the file."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from events.inbound import Event
from events.outbound import HistoryRecord
from lifecycle.cohorts import cohorts
from lifecycle.funnel import funnel_of
from lifecycle.partials import (
    Partial,
    PartialError,
    check_set,
    cohort_piece,
    combine_cohorts,
    combine_funnels,
    combine_simulations,
    combine_verifications,
    funnel_piece,
    replay_rows,
    simulate_piece,
    spans,
    verify_piece,
)
from lifecycle.replay import replay
from lifecycle.simulate import simulate
from lifecycle.verify import verify
from streams.cli.main import app
from streams.cli.partials import parse_partitions
from streams.dev.demo import synthetic_events
from tests.fixtures.core import T0, days, fit_profile, preset, run_events

runner = CliRunner()
PARTITIONS = 4


def partition_of(person: str, partitions: int = PARTITIONS) -> int:
    return zlib.crc32(person.encode()) % partitions


def as_history(decisions: Iterable[Any]) -> list[HistoryRecord]:
    return [
        HistoryRecord.model_validate_json(orjson.dumps(d.to_wire()))
        for d in decisions
        if not d.duplicate
    ]


def synthetic_history(persons: int = 120, count: int = 1_500) -> list[HistoryRecord]:
    events = (Event.model_validate(e) for e in synthetic_events(persons, count, seed=5))
    return as_history(replay(events, preset("default")))


def by_partition(
    records: list[HistoryRecord], where: Callable[[str], int] = partition_of
) -> dict[int, list[HistoryRecord]]:
    """The history as a topic keyed by person holds it: per partition, in history order."""
    parts: dict[int, list[HistoryRecord]] = {p: [] for p in range(PARTITIONS)}
    for record in records:
        parts[where(record.person_id)].append(record)
    return parts


def in_topic_order(parts: dict[int, list[HistoryRecord]]) -> list[HistoryRecord]:
    """What one run over the topic reads: (partition, offset) order."""
    return [r for p in sorted(parts) for r in parts[p]]


def events_of(records: Iterable[HistoryRecord]) -> list[Event]:
    return [r.event for r in records]


def partial(
    command: str, pieces: dict[int, dict[str, Any]], source: str = "a.json", **kw: Any
) -> Partial:
    return Partial(
        source,
        command,
        kw.get("policies", [{"name": "default", "version": preset("default").version}]),
        kw.get("options", {"format": "table", "by": None}),
        kw.get("topic", "leadflow.history"),
        kw.get("topic_partitions", PARTITIONS),
        pieces,
    )


# --- combining gives the single run's result ---------------------------------------------------


def test_funnel_of_partitions_combined_is_the_funnel_of_the_whole_history():
    parts = by_partition(synthetic_history())
    policy = preset("growth")  # restated under another policy, so no output is copied
    pieces = [funnel_piece(events_of(parts[p]), policy)["funnel"] for p in sorted(parts)]

    combined = combine_funnels(pieces).report().to_dict()
    whole = funnel_of(replay(events_of(in_topic_order(parts)), policy)).to_dict()

    assert combined == whole
    assert combined["persons"] > 30 and combined["reached"]["mql"] > 0
    assert any(v is not None for v in combined["median_days"].values())


def test_a_funnel_piece_survives_its_json_document_exactly():
    parts = by_partition(synthetic_history())
    pieces = {
        p: {**funnel_piece(events_of(parts[p]), preset("default")), "invalid": []} for p in parts
    }
    document = orjson.loads(orjson.dumps(partial("funnel", pieces).to_json()))
    read = Partial.from_json(document, "a.json")

    assert read.partitions == [0, 1, 2, 3]
    again = combine_funnels(read.pieces[p]["funnel"] for p in range(PARTITIONS))
    assert again.report() == combine_funnels(pieces[p]["funnel"] for p in pieces).report()


def merge_history(alias_partition: int, survivor_partition: int) -> dict[int, list[HistoryRecord]]:
    """a reached mql by a webinar, b is a lead; a is merged into b; then a asks for sales
    again (forwarded to b), c and d stand alone. a and b on the given partitions."""
    profile = fit_profile()
    events = [
        Event(
            event_id="a-1",
            type="webinar_attended",
            person_id="a",
            occurred_at=T0,
            source="webinar",
            profile=profile,
        ),
        Event(
            event_id="a-2",
            type="demo_requested",
            person_id="a",
            occurred_at=T0 + timedelta(hours=1),
            source="webinar",
            profile=profile,
        ),
        Event(
            event_id="b-1",
            type="content_download",
            person_id="b",
            occurred_at=days(1),
            source="form",
            profile=profile,
        ),
        Event(
            event_id="c-1",
            type="content_download",
            person_id="c",
            occurred_at=days(1),
            source="form",
            profile=profile,
        ),
        Event(
            event_id="m-1",
            type="person_merged",
            person_id="a",
            occurred_at=days(2),
            merged_into="b",
        ),
        Event(event_id="a-3", type="sales_accepted", person_id="a", occurred_at=days(3)),
        Event(event_id="d-1", type="demo_requested", person_id="d", occurred_at=days(4)),
    ]
    records = as_history(run_events(events).decisions)
    where = {"a": alias_partition, "b": survivor_partition, "c": 2, "d": 3}
    return by_partition(records, where.__getitem__)


def test_an_alias_on_one_partition_folds_into_its_survivor_on_another():
    parts = merge_history(alias_partition=0, survivor_partition=1)
    policy = preset("default")
    pieces = [funnel_piece(events_of(parts[p]), policy)["funnel"] for p in sorted(parts)]
    combined = combine_funnels(pieces).report()

    # The two persons the merge touched are kept as funnel inputs, the others as facts.
    assert {op["person_id"] for op in pieces[0]["ops"]} == {"a"}
    assert {op["person_id"] for op in pieces[1]["ops"]} == {"b"}
    assert not {"a", "b"} & {pid for piece in pieces for pid in piece["persons"]}
    # History as recorded, read in topic order (the alias's partition first), in one process.
    whole = funnel_of(replay(events_of(in_topic_order(parts)), policy, follow=False))
    assert combined == whole
    assert combined.persons == 3  # a counts in b
    assert combined.conversion_by_source["webinar"]["mql->sql"]["to"] == 1  # a's lead source


def test_a_piece_read_from_a_one_pass_stream_keeps_the_inputs_of_merged_persons():
    """The CLI hands each partition's events as a generator over its records."""
    parts = merge_history(alias_partition=0, survivor_partition=1)
    policy = preset("default")
    from_lists = [funnel_piece(events_of(parts[p]), policy) for p in sorted(parts)]
    from_streams = [funnel_piece((r.event for r in parts[p]), policy) for p in sorted(parts)]
    assert from_streams == from_lists and from_lists[1]["funnel"]["ops"]
    sims = [simulate_piece((r.event for r in parts[p]), policy, policy) for p in sorted(parts)]
    assert sims[0]["funnel_a"]["ops"] and sims[1]["funnel_b"]["ops"]


def test_a_funnel_combined_does_not_depend_on_which_partition_holds_the_alias():
    policy = preset("default")

    def combined(alias: int, survivor: int) -> dict[str, Any]:
        parts = merge_history(alias, survivor)
        pieces = [funnel_piece(events_of(parts[p]), policy)["funnel"] for p in sorted(parts)]
        return combine_funnels(pieces).report().to_dict()

    assert combined(1, 0) == combined(0, 1) == combined(0, 0)


def test_simulate_with_an_alias_on_the_later_partition_is_the_run_reading_it_first():
    a, b = preset("default"), preset("seed")
    parts = merge_history(alias_partition=1, survivor_partition=0)
    pieces = [simulate_piece(events_of(parts[p]), a, b) for p in sorted(parts)]
    alias_first = merge_history(alias_partition=0, survivor_partition=1)
    whole = simulate(events_of(in_topic_order(alias_first)), a, b, follow=False)

    assert combine_simulations(pieces, a.version, b.version).to_dict(None) == whole.to_dict(None)


def test_simulate_of_partitions_combined_is_the_simulation_of_the_whole_history():
    parts = by_partition(synthetic_history())
    a, b = preset("default"), preset("mature")
    pieces = [simulate_piece(events_of(parts[p]), a, b) for p in sorted(parts)]

    combined = combine_simulations(pieces, a.version, b.version)
    whole = simulate(events_of(in_topic_order(parts)), a, b)

    assert combined.to_dict(limit=None) == whole.to_dict(limit=None)
    assert combined.differing
    assert combined.events == sum(len(records) for records in parts.values())
    assert [o.person_id for o in combined.differing] == sorted(
        o.person_id for o in combined.differing
    )


def test_cohorts_of_partitions_combined_are_the_cohorts_of_the_whole_history():
    parts = by_partition(synthetic_history())
    policy = preset("mature")
    pieces = orjson.loads(orjson.dumps([cohort_piece(parts[p], policy) for p in sorted(parts)]))

    reported, restated = combine_cohorts(pieces, "week", "source")
    history = in_topic_order(parts)
    whole_reported = cohorts((c for r in history for c in r.changes), "week", "source")
    decided = replay(events_of(history), policy)
    whole_restated = cohorts(
        (c for d in decided if not d.duplicate for c in d.changes), "week", "source"
    )

    assert reported.to_dict() == whole_reported.to_dict()
    assert restated.to_dict() == whole_restated.to_dict()
    assert reported.to_dict() != restated.to_dict()  # mature restates what default decided
    assert any(row["days_in_stage"]["p50"] is not None for row in reported.rows)


def test_cohorts_with_an_alias_on_the_later_partition_are_those_of_one_run_reading_it_first():
    policy = preset("default")
    later = merge_history(alias_partition=1, survivor_partition=0)
    first = merge_history(alias_partition=0, survivor_partition=1)
    reported, restated = combine_cohorts(
        [cohort_piece(later[p], policy) for p in sorted(later)], "month", None
    )
    history = in_topic_order(first)
    decided = replay(events_of(history), policy, follow=False)
    assert reported.to_dict() == cohorts(c for r in history for c in r.changes).to_dict()
    assert restated.to_dict() == cohorts(c for d in decided for c in d.changes).to_dict()


def tampered(records: list[HistoryRecord]) -> list[HistoryRecord]:
    """Every 40th record with changes claims another stage; one record under an unknown
    policy version."""
    out = []
    for i, record in enumerate(records):
        if record.changes and i % 40 == 0:
            change = record.changes[0].model_copy(update={"to_stage": "customer"})
            record = record.model_copy(update={"changes": (change, *record.changes[1:])})
        if i == 7:
            record = record.model_copy(update={"policy_version": "0123456789abcdef"})
        out.append(record)
    return out


def test_verify_of_partitions_combined_lists_the_mismatches_of_the_whole_history_in_order():
    parts = by_partition(tampered(synthetic_history()))
    known = {preset("default").version: preset("default")}
    pieces = [verify_piece(parts[p], known) for p in sorted(parts)]
    document = orjson.loads(orjson.dumps(pieces))  # as read back from partial files

    combined = combine_verifications(document)
    whole = verify(in_topic_order(parts), known)

    assert whole.mismatches and whole.missing_policies == {"0123456789abcdef": 1}
    assert combined.checked == whole.checked
    assert combined.missing_policies == whole.missing_policies
    shown = [
        f"{m.person_id} #{m.sequence} ({m.event_id}) {m.field}: {m.recorded!r}, {m.recomputed!r}"
        for m in whole.mismatches
    ]
    assert [
        f"{m.person_id} #{m.sequence} ({m.event_id}) {m.field}: {m.recorded!r}, {m.recomputed!r}"
        for m in combined.mismatches
    ] == shown


def test_replay_lines_of_partitions_in_partition_order_are_one_run_over_the_topic():
    parts = by_partition(synthetic_history())
    policy = preset("growth")
    whole = [
        c for d in replay(events_of(in_topic_order(parts)), policy, follow=False) for c in d.changes
    ]
    conflicts: list[list[str]] = []
    lines = [
        change
        for p in sorted(parts)
        for change in replay_rows(events_of(parts[p]), policy, conflicts=conflicts)
    ]
    assert lines == whole and len(whole) > 50 and conflicts == []


# --- refusals ---------------------------------------------------------------------------------


def pieces_for(*numbers: int) -> dict[int, dict[str, Any]]:
    return {
        n: {"funnel": {"persons": {}, "ops": []}, "conflicts": [], "invalid": []} for n in numbers
    }


def test_partials_of_two_commands_are_refused_naming_the_file():
    first = partial("funnel", pieces_for(0, 1))
    other = partial("replay", pieces_for(2, 3), "b.json", options={"format": "table", "by": None})
    with pytest.raises(PartialError, match=r"^b\.json: a replay partial, but a\.json is a funnel"):
        check_set([first, other])


def test_partials_under_two_policies_are_refused_naming_the_file():
    first = partial("funnel", pieces_for(0, 1))
    growth = [{"name": "growth", "version": preset("growth").version}]
    other = partial("funnel", pieces_for(2, 3), "b.json", policies=growth)
    with pytest.raises(
        PartialError, match=rf"^b\.json: computed under policy {growth[0]['version']}"
    ):
        check_set([first, other])


def test_partials_with_other_options_or_of_another_topic_are_refused():
    first = partial("funnel", pieces_for(0, 1))
    as_json = partial("funnel", pieces_for(2, 3), "b.json", options={"format": "json", "by": None})
    with pytest.raises(PartialError, match=r"^b\.json: made with options"):
        check_set([first, as_json])
    elsewhere = partial("funnel", pieces_for(2, 3), "c.json", topic="x.leadflow.history")
    with pytest.raises(PartialError, match=r"^c\.json: read x\.leadflow\.history"):
        check_set([first, elsewhere])


def test_overlapping_partitions_are_refused_naming_both_files():
    first = partial("funnel", pieces_for(0, 1))
    other = partial("funnel", pieces_for(1, 2, 3), "b.json")
    with pytest.raises(PartialError, match=r"^b\.json: partition 1 is also in a\.json"):
        check_set([first, other])


def test_a_missing_partition_is_refused_unless_a_partial_report_is_asked_for():
    first = partial("funnel", pieces_for(0))
    other = partial("funnel", pieces_for(3), "b.json")
    with pytest.raises(PartialError, match=r"partitions 1-2 of leadflow\.history .* no partial"):
        check_set([first, other])
    assert check_set([first, other], allow_partial=True) == [1, 2]
    assert check_set([first, partial("funnel", pieces_for(1, 2), "c.json"), other]) == []


def test_a_partition_beyond_the_topic_is_refused():
    with pytest.raises(PartialError, match=r"^a\.json: partition 4 is not a partition"):
        check_set([partial("funnel", pieces_for(0, 1, 2, 3, 4))])


def test_a_document_of_another_format_version_or_no_partial_at_all_is_refused():
    document = partial("funnel", pieces_for(0)).to_json()
    with pytest.raises(PartialError, match=r"^p\.json: partial format 2, this leadflow reads 1"):
        Partial.from_json({**document, "leadflow_partial": 2}, "p.json")
    with pytest.raises(PartialError, match=r"^p\.json: not a leadflow partial result"):
        Partial.from_json({"checked": 3}, "p.json")
    with pytest.raises(PartialError, match=r"^p\.json: not a leadflow partial result: KeyError"):
        Partial.from_json({k: v for k, v in document.items() if k != "topic"}, "p.json")


def test_a_piece_lacking_what_its_command_needs_is_refused_naming_file_and_partition():
    document = partial("funnel", pieces_for(0, 1)).to_json()
    del document["pieces"]["1"]["funnel"]
    with pytest.raises(PartialError, match=r"^p\.json: pieces\.1 lacks funnel of a funnel partial"):
        Partial.from_json(document, "p.json")


@pytest.mark.parametrize(
    ("text", "numbers"),
    [("0-7", list(range(8))), ("0,2,5", [0, 2, 5]), ("0-1, 4", [0, 1, 4]), ("3", [3])],
)
def test_partitions_are_given_as_ranges_and_lists(text: str, numbers: list[int]):
    assert parse_partitions(text) == numbers
    assert parse_partitions(spans(numbers)) == numbers


@pytest.mark.parametrize("text", ["3-1", "a", "1-", "-1", ""])
def test_a_partitions_option_that_is_no_list_of_ranges_is_refused(text: str):
    with pytest.raises(ValueError, match="--partitions"):
        parse_partitions(text)


# --- merge-results prints what the command prints ------------------------------------------------


def write_partials(
    tmp_path: Path, command: str, pieces: dict[int, dict[str, Any]], **kw: Any
) -> list[Path]:
    """Two partial files, partitions 0-1 and 2-3, as two processes write them."""
    paths = []
    for name, share in (("low", (0, 1)), ("high", (2, 3))):
        path = tmp_path / f"{command}-{name}.json"
        doc = partial(command, {p: {**pieces[p], "invalid": []} for p in share}, **kw).to_json()
        path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        paths.append(path)
    return paths


def history_file(tmp_path: Path, parts: dict[int, list[HistoryRecord]]) -> Path:
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(r.model_dump_json().encode() + b"\n" for r in in_topic_order(parts)))
    return path


def test_merge_results_prints_the_funnel_table_one_run_prints(tmp_path: Path):
    parts = by_partition(synthetic_history())
    policy = preset("default")
    pieces = {p: funnel_piece(events_of(parts[p]), policy) for p in parts}
    paths = write_partials(tmp_path, "funnel", pieces)

    merged = runner.invoke(app, ["merge-results", *map(str, paths)])
    single = runner.invoke(app, ["funnel", "--events", str(history_file(tmp_path, parts))])

    assert merged.exit_code == 0, merged.output
    assert merged.stdout == single.stdout
    persons = funnel_of(replay(events_of(in_topic_order(parts)), policy)).persons
    assert f": {persons} persons" in merged.stdout


def test_merge_results_prints_the_verify_report_and_fails_as_one_run_does(tmp_path: Path):
    parts = by_partition(tampered(synthetic_history()))
    known = {preset(n).version: preset(n) for n in ("default", "growth", "mature", "seed")}
    pieces = {p: verify_piece(parts[p], known) for p in parts}
    named = [{"name": known[v].name, "version": v} for v in sorted(known)]
    paths = write_partials(tmp_path, "verify", pieces, policies=named, options={})

    merged = runner.invoke(app, ["merge-results", *map(str, paths)])
    single = runner.invoke(app, ["verify", "--history", str(history_file(tmp_path, parts))])

    assert single.exit_code == merged.exit_code == 1
    assert merged.stdout == single.stdout
    assert "mismatch" in merged.stdout and "1 unchecked" in merged.stdout


def test_merge_results_refuses_a_file_that_is_not_json_naming_its_line(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "leadflow_partial": 1,\n  "command": funnel\n}\n')
    result = runner.invoke(app, ["merge-results", str(bad)])
    assert result.exit_code == 2
    assert f"error: {bad}:3:14: not JSON: Expecting value" in result.stderr


def test_merge_results_refuses_an_incomplete_set_naming_the_file(tmp_path: Path):
    parts = by_partition(synthetic_history())
    pieces = {p: funnel_piece(events_of(parts[p]), preset("default")) for p in parts}
    low, _ = write_partials(tmp_path, "funnel", pieces)

    refused = runner.invoke(app, ["merge-results", str(low)])
    assert refused.exit_code == 2
    assert refused.stderr.count("\n") == 1
    assert f"error: {low}: partitions 2-3 of leadflow.history (4 partitions)" in refused.stderr

    allowed = runner.invoke(app, ["merge-results", str(low), "--allow-partial"])
    assert allowed.exit_code == 0, allowed.output
    assert "partitions 2-3 of leadflow.history left out" in allowed.stderr
    share = funnel_of(replay(events_of(parts[0] + parts[1]), preset("default"))).persons
    assert f"{share} persons" in allowed.stdout


def test_merge_results_prints_attribution_as_funnel_by_prints_it(tmp_path: Path):
    parts = by_partition(synthetic_history())
    pieces = {p: funnel_piece(events_of(parts[p]), preset("default")) for p in parts}
    options = {"format": "json", "by": "first_touch"}
    paths = write_partials(tmp_path, "funnel", pieces, options=options)

    merged = runner.invoke(app, ["merge-results", *map(str, paths)])
    history = str(history_file(tmp_path, parts))
    single = runner.invoke(
        app, ["funnel", "--events", history, "--by", "first_touch", "--format", "json"]
    )

    assert merged.exit_code == 0, merged.output
    assert merged.stdout == single.stdout
    assert orjson.loads(merged.stdout)["by"] == "first_touch"


def test_merge_results_prints_the_what_if_table_one_run_prints(tmp_path: Path):
    parts = by_partition(synthetic_history())
    a, b = preset("default"), preset("mature")
    pieces = {p: simulate_piece(events_of(parts[p]), a, b) for p in parts}
    named = [{"name": a.name, "version": a.version}, {"name": b.name, "version": b.version}]
    options = {"format": "table", "limit": 7}
    paths = write_partials(tmp_path, "simulate", pieces, policies=named, options=options)

    merged = runner.invoke(app, ["merge-results", *map(str, paths)])
    history = str(history_file(tmp_path, parts))
    single = runner.invoke(
        app,
        ["simulate", "-p", "default", "--against", "mature", "--events", history, "--limit", "7"],
    )

    assert merged.exit_code == single.exit_code == 0, merged.output
    assert merged.stdout == single.stdout
    assert "persons end differently; first 7:" in merged.stdout


def test_merge_results_prints_replay_lines_as_one_run_over_the_topic_prints_them(tmp_path: Path):
    parts = by_partition(synthetic_history())
    policy = preset("growth")
    pieces = {}
    for p in parts:
        conflicts: list[list[str]] = []
        rows = replay_rows(events_of(parts[p]), policy, state=True, conflicts=conflicts)
        pieces[p] = {"lines": [orjson.dumps(r).decode() for r in rows], "conflicts": conflicts}
    options = {"person": None, "as_of": None, "state": True}
    named = [{"name": policy.name, "version": policy.version}]
    paths = write_partials(tmp_path, "replay", pieces, policies=named, options=options)

    merged = runner.invoke(app, ["merge-results", *map(str, paths)])
    history = str(history_file(tmp_path, parts))
    single = runner.invoke(
        app, ["replay", "--preset", "growth", "--state", "--jobs", "1", "--events", history]
    )

    assert merged.exit_code == single.exit_code == 0, merged.output
    assert merged.stdout == single.stdout
    assert len(merged.stdout.splitlines()) == len({r.person_id for r in in_topic_order(parts)})


def test_partitions_need_the_history_topic_not_a_file(tmp_path: Path):
    history = history_file(tmp_path, by_partition(synthetic_history(20, 100)))
    result = runner.invoke(app, ["funnel", "--events", str(history), "--partitions", "0-1"])
    assert result.exit_code == 2
    assert "--partitions and --partial-out read the history topic: give --broker" in result.stderr
    result = runner.invoke(app, ["funnel", "--broker", "kafka://x:1", "--partitions", "1-0"])
    assert result.exit_code == 2
    assert "--partitions '1-0': '1-0' is not a range of partitions" in result.stderr


def test_merge_results_prints_the_cohort_tables_funnel_cohort_prints(tmp_path: Path):
    parts = by_partition(synthetic_history())
    policy = preset("growth")
    pieces = {p: cohort_piece(parts[p], policy) for p in parts}
    named = [{"name": policy.name, "version": policy.version}]
    options = {"format": "table", "by": None, "cohort": "month"}
    paths = write_partials(tmp_path, "funnel-cohort", pieces, policies=named, options=options)

    merged = runner.invoke(app, ["merge-results", *map(str, paths)])
    history = str(history_file(tmp_path, parts))
    single = runner.invoke(
        app, ["funnel", "--events", history, "--preset", "growth", "--cohort", "month"]
    )

    assert merged.exit_code == single.exit_code == 0, merged.output
    assert merged.stdout == single.stdout
    assert "as reported (policy versions live:" in merged.stdout
