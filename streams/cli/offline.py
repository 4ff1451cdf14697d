"""The offline commands: replay, funnel, simulate, verify and schema. They read files or the
history topic (`streams.cli.reading`) and only call the pure core."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from events.inbound import Event
from lifecycle.funnel import FunnelReport, funnel_of
from lifecycle.policy import PRESETS, Policy, PolicyError, load_policy, load_preset
from streams.cli import analytics as commands_analytics
from streams.cli import partials as commands_partials
from streams.cli.common import (
    EventsOpt,
    HistoryBrokerOpt,
    HistoryPrefixOpt,
    MappingOpt,
    PolicyOpt,
    PresetOpt,
    StrictOpt,
    err,
    out,
)
from streams.cli.common import fail as _fail
from streams.cli.partials import PartialOutOpt, PartitionsOpt, Share
from streams.cli.reading import (
    EventReader,
    checked,
    history_from_broker,
    named_policy,
    one_file,
    parse_as_of,
    policy_of,
    write_rows,
)

#: `--jobs` of the commands that read a JSONL file on every core (`streams.tools.sharded`).
JobsOpt = Annotated[
    int,
    typer.Option(
        help="worker processes for a JSONL file (persons sharded, output as one process's); "
        "0: one per core for files over 32 MB",
        min=0,
        max=64,
    ),
]


def replay(
    events: EventsOpt = None,
    policy: PolicyOpt = None,
    preset: PresetOpt = None,
    person: Annotated[str | None, typer.Option(help="only this person")] = None,
    as_of: Annotated[str | None, typer.Option(help="only events that occurred by then")] = None,
    state: Annotated[bool, typer.Option(help="print final states instead of changes")] = False,
    broker: HistoryBrokerOpt = None,
    topic_prefix: HistoryPrefixOpt = "",
    strict: StrictOpt = False,
    mapping: MappingOpt = None,
    jobs: JobsOpt = 0,
    partitions: PartitionsOpt = None,
    partial_out: PartialOutOpt = None,
) -> None:
    """Replay events under a policy; print the StageChanged records as JSONL on stdout."""
    from lifecycle.replay import Replayer, bulk_gc

    rules = policy_of(policy, preset)
    cutoff = parse_as_of(as_of)
    file = one_file(events, mapping)
    if partitions is not None or partial_out is not None:
        options = {"person": person, "as_of": as_of, "state": state}
        share = Share(broker, topic_prefix, partitions, partial_out, file)
        commands_partials.replay_share(share, rules, cutoff, options)
        return
    reader = EventReader(strict, mapping)
    if file is not None and _shardable(file, broker, mapping, strict):
        from streams.tools.sharded import replay_sharded

        jobs = _workers(file, jobs)
        if jobs > 1:
            totals = replay_sharded(
                file,
                rules,
                jobs,
                person=person,
                cutoff=cutoff,
                state=state,
                write=sys.stdout.buffer.write,
                warn=lambda text: err.print(text, highlight=False, markup=False),
            )
            sys.stdout.buffer.flush()
            reader.stats.lines, reader.stats.bad = totals["lines"], totals["bad"]
            reader.conflicts = totals["conflicts"]
            reader.summary()
            return
    replayer = Replayer(rules, recorded=reader.recorded, repeats=reader.repeats(events, broker))

    read: Iterable[Event] = reader.events(events, broker, topic_prefix)
    if person is not None:
        read = (event for event in read if event.person_id == person)
    if cutoff is not None:
        read = (event for event in read if not event.occurred_at > cutoff)
    apply_all, check = replayer.apply_all, reader.check
    # each change as `write_rows` writes it (its JSON, then a newline), in one call
    write, dumps, newline = sys.stdout.buffer.write, orjson.dumps, orjson.OPT_APPEND_NEWLINE
    with bulk_gc():
        for event in read:  # once per event: the checks most events skip come first
            for decision in apply_all(event):
                if decision.conflict is not None:
                    check(decision)
                if decision.changes and not state:
                    for change in decision.changes:
                        write(dumps(change, option=newline))
        if state:
            write_rows(s.to_wire() for s in replayer.states.values())
        sys.stdout.buffer.flush()
    reader.summary()


def _shardable(events: Path, broker: str | None, mapping: Path | None, strict: bool) -> bool:
    """A JSONL file read leniently can be replayed by several processes (`streams.tools.sharded`);
    a topic, a CSV or a mapping, and `--strict` (stop at the first bad line), by one."""
    if broker or mapping is not None or strict:
        return False
    return events.suffix.lower() != ".csv" and events.is_file()


def _workers(file: Path, jobs: int) -> int:
    """The worker processes for a sharded read of `file` (`--jobs`, 0: one per core for a
    large file), or 1 when the shards' scratch files would not fit in the temporary
    directory (said on stderr)."""
    from streams.tools.sharded import default_jobs, scratch_short

    jobs = jobs or default_jobs(file)
    if jobs > 1 and (short := scratch_short(file)) is not None:
        err.print(f"{short}: reading {file} in one process", highlight=False, markup=False)
        return 1
    return jobs


def print_funnel(report: FunnelReport, title: str) -> None:
    table = Table(title=f"{title}: {report.persons} persons")
    table.add_column("stage")
    table.add_column("reached", justify="right")
    table.add_column("of them sales-sourced", justify="right")
    table.add_column("current", justify="right")
    for stage, count in report.reached.items():
        sourced = report.sales_sourced.get(stage, 0)
        table.add_row(stage, str(count), str(sourced), str(report.current.get(stage, 0)))
    out.print(table)
    out.print("conversion counts from the persons who entered a stage, not the sales-sourced")
    conv = Table(title="conversion")
    conv.add_column("lead source")
    steps = list(report.conversion)
    for step in steps:
        conv.add_column(step, justify="right")

    def cell(entry: dict[str, Any]) -> str:
        rate = entry["rate"]
        return "–" if rate is None else f"{rate:.1%} ({entry['to']}/{entry['from']})"

    conv.add_row("[b]all[/b]", *(cell(report.conversion[s]) for s in steps))
    for source, rows in report.conversion_by_source.items():
        conv.add_row(source, *(cell(rows[s]) if s in rows else "" for s in steps))
    out.print(conv)
    days = ", ".join(
        f"{k}: {'–' if v is None else f'{v:g} d'}" for k, v in report.median_days.items()
    )
    out.print(f"median days between stages: {days}")


def funnel_command(
    events: EventsOpt = None,
    policy: PolicyOpt = None,
    preset: PresetOpt = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    broker: HistoryBrokerOpt = None,
    topic_prefix: HistoryPrefixOpt = "",
    strict: StrictOpt = False,
    mapping: MappingOpt = None,
    cohort: Annotated[
        str | None, typer.Option(help="month or week: cohorts as reported and restated")
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(help="conversion by source, first_touch, last_touch or touches"),
    ] = None,
    partitions: PartitionsOpt = None,
    partial_out: PartialOutOpt = None,
    jobs: JobsOpt = 0,
) -> None:
    """Counts reached per stage, conversion by lead source, median days between stages."""
    from lifecycle.replay import replay as run

    if format not in ("table", "json"):
        raise _fail("--format is table or json")
    rules = policy_of(policy, preset)
    file = one_file(events, mapping)
    if partitions is not None or partial_out is not None:
        options = {"format": format, "by": by}
        share = Share(broker, topic_prefix, partitions, partial_out, file)
        if cohort is not None:
            commands_partials.cohort_share(share, rules, cohort, options)
            return
        commands_partials.funnel_share(share, rules, options)
        return
    if cohort is not None:
        commands_analytics.cohort_funnel(
            events, broker, topic_prefix, rules, cohort, by, format, strict, mapping
        )
        return
    reader = EventReader(strict, mapping)
    sharded = _sharded_funnel(file, rules, reader, broker, mapping, strict, jobs)
    if sharded is not None:
        report = sharded
    else:
        read = reader.events(events, broker, topic_prefix)
        repeats = reader.repeats(events, broker)
        report = funnel_of(map(reader.check, run(read, rules, reader.recorded, repeats=repeats)))
    if by is not None:
        commands_analytics.attribution(report, by, format)
    elif format == "json":
        out.print_json(data={"policy_version": rules.version, **report.to_dict()})
    else:
        print_funnel(report, f"policy {rules.name} ({rules.version})")
    reader.summary()


def _sharded_funnel(
    file: Path | None,
    rules: Policy,
    reader: EventReader,
    broker: str | None,
    mapping: Path | None,
    strict: bool,
    jobs: int,
) -> FunnelReport | None:
    """The funnel of a JSONL file by several processes (`streams.tools.sharded`), its bad
    lines and conflicts reported in file order as one process reports them; None when one
    process reads it (a topic, a CSV, a small file, `--jobs 1`)."""
    if file is None or not _shardable(file, broker, mapping, strict):
        return None
    from streams.tools.sharded import funnel_sharded

    jobs = _workers(file, jobs)
    if jobs < 2:
        return None
    report, conflicts, read = funnel_sharded(file, rules, jobs)
    said = [(error.line, str(error)) for error in read.errors] + conflicts
    for _, text in sorted(said, key=lambda entry: entry[0]):
        err.print(text, highlight=False, markup=False)
    reader.stats.lines, reader.stats.bad = read.lines, read.bad
    reader.conflicts = len(conflicts)
    return report


def simulate(
    policy: Annotated[str, typer.Option("--policy", "-p", help="policy A: file or preset")],
    against: Annotated[str, typer.Option("--against", help="policy B: file or preset")],
    events: EventsOpt = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    limit: Annotated[int, typer.Option(help="persons listed whose outcome differs")] = 20,
    broker: HistoryBrokerOpt = None,
    topic_prefix: HistoryPrefixOpt = "",
    strict: StrictOpt = False,
    mapping: MappingOpt = None,
    partitions: PartitionsOpt = None,
    partial_out: PartialOutOpt = None,
    jobs: JobsOpt = 0,
) -> None:
    """What would policy B have done with the same events as policy A?"""
    from lifecycle.simulate import simulate as run

    a, b = named_policy(policy), named_policy(against)
    file = one_file(events, mapping)
    if partitions is not None or partial_out is not None:
        options = {"format": format, "limit": limit}
        share = Share(broker, topic_prefix, partitions, partial_out, file)
        commands_partials.simulate_share(share, a, b, options)
        return
    reader = EventReader(strict, mapping)
    if file is not None and _shardable(file, broker, mapping, strict):
        from streams.tools.sharded import simulate_sharded

        jobs = _workers(file, jobs)
        if jobs > 1:
            result, read = simulate_sharded(file, a, b, jobs)
            for error in read.errors:
                reader.report(error)
            print_simulation(result, a.name, b.name, limit, format)
            reader.stats.lines, reader.stats.bad = read.lines, read.bad
            reader.summary()
            return
    read, repeats = reader.events(events, broker, topic_prefix), reader.repeats(events, broker)
    result = run(read, a, b, reader.recorded, repeats=repeats)
    print_simulation(result, a.name, b.name, limit, format)
    reader.summary()


def print_simulation(result: Any, name_a: str, name_b: str, limit: int, format: str) -> None:
    """The what-if report (`simulate`), as a table or JSON."""
    if format == "json":
        out.print_json(data=result.to_dict(limit))
        return
    a_title = f"{name_a} ({result.policy_a})"
    b_title = f"{name_b} ({result.policy_b})"
    table = Table(title=f"{result.events} events: {a_title} vs {b_title}")
    table.add_column("stage")
    table.add_column(f"reached under {name_a}", justify="right")
    table.add_column(f"reached under {name_b}", justify="right")
    table.add_column("difference", justify="right")

    def reached(report: FunnelReport, stage: str) -> str:
        sourced = report.sales_sourced.get(stage, 0)
        count = report.reached.get(stage, 0)
        return f"{count} ({sourced} sales-sourced)" if sourced else str(count)

    for stage, count in result.funnel_a.reached.items():
        other = result.funnel_b.reached.get(stage, 0)
        a_cell, b_cell = reached(result.funnel_a, stage), reached(result.funnel_b, stage)
        table.add_row(stage, a_cell, b_cell, f"{other - count:+d}")
    out.print(table)

    def rate(entry: dict[str, Any]) -> str:
        return "– (no MQLs)" if entry["rate"] is None else str(entry["rate"])

    for step in ("mql->sql", "mql->customer"):
        ca, cb = result.funnel_a.conversion[step], result.funnel_b.conversion[step]
        wa, wb = result.funnel_a.conversion_reached[step], result.funnel_b.conversion_reached[step]
        out.print(
            f"{step}: {rate(ca)} → {rate(cb)} over MQLs the policy made "
            f"({ca['from']} → {cb['from']}); with sales-sourced MQLs {rate(wa)} → {rate(wb)}",
            highlight=False,
        )
    shown = result.differing[:limit]
    if result.conflicts:
        err.print(f"{result.conflicts} event(s) reusing an event id with other content skipped")
    out.print(f"{len(result.differing)} persons end differently; first {len(shown)}:")

    def outcome(stage: str | None, highest: str | None) -> str:
        return "no stage" if stage is None else f"{stage} (highest {highest})"

    for o in shown:
        a_side, b_side = outcome(o.stage_a, o.highest_a), outcome(o.stage_b, o.highest_b)
        out.print(f"  {o.person_id}: {a_side} → {b_side}", highlight=False)


def verify(
    history: Annotated[
        Path | None, typer.Option("--history", help="exported history JSONL", dir_okay=False)
    ] = None,
    policy: Annotated[
        list[Path] | None, typer.Option("--policy", "-p", help="extra policy files (repeatable)")
    ] = None,
    policies: Annotated[
        Path | None, typer.Option(help="policies JSONL from export-history", dir_okay=False)
    ] = None,
    broker: HistoryBrokerOpt = None,
    topic_prefix: HistoryPrefixOpt = "",
    strict: StrictOpt = False,
    partitions: PartitionsOpt = None,
    partial_out: PartialOutOpt = None,
    jobs: JobsOpt = 0,
) -> None:
    """Recompute every recorded decision under its recorded policy version; list mismatches."""
    from lifecycle.verify import verify as run

    known: dict[str, Policy] = {p.version: p for p in (load_preset(n) for n in PRESETS)}
    for path in policy or []:
        try:
            rules = load_policy(path)
        except PolicyError as error:
            raise _fail(str(error)) from None
        known[rules.version] = rules
    if policies is None and history is not None:
        candidate = history.with_name(history.name + ".policies.jsonl")
        policies = candidate if candidate.exists() else None
    if policies is not None:
        known.update(_policies_file(policies))
    if broker:
        from streams.settings import Settings
        from streams.tools.export import read_policies_topic

        settings = Settings(broker=broker, topic_prefix=topic_prefix)
        known.update(asyncio.run(checked(settings, read_policies_topic(settings))))
    if partitions is not None or partial_out is not None:
        share = Share(broker, topic_prefix, partitions, partial_out, history)
        commands_partials.verify_share(share, known)
        return
    if broker and jobs > 1:
        _verify_topic_sharded(broker, topic_prefix, known, jobs)
        return
    reader = EventReader(strict)
    report = _sharded_verify(history, known, reader, broker, strict, jobs)
    if report is None:
        repeats = reader.repeats([history] if history is not None else None, broker)
        report = run(reader.history(history, broker, topic_prefix), known, repeats)
    print_verification(report)
    reader.summary()
    if not report.ok:
        raise typer.Exit(1)


def _verify_topic_sharded(broker: str, prefix: str, known: dict[str, Policy], jobs: int) -> None:
    """`verify --broker … --jobs N`: the history topic's partitions split among N processes
    (`streams.tools.sharded_verify`), the report and the warnings one process prints."""
    from streams.kafka.topics import TopicNotFound
    from streams.settings import Settings
    from streams.tools.export import topic_partitions, warn
    from streams.tools.sharded_verify import positioned, runs_of, verify_runs

    settings = Settings(broker=broker, topic_prefix=prefix)
    topic = settings.topics.history
    try:
        present = asyncio.run(checked(settings, topic_partitions(settings, topic)))
    except TopicNotFound:
        raise _fail(f"history topic {topic} not found on {broker}") from None

    def read(partitions: set[int], on_error: Any) -> Any:
        return history_from_broker(
            broker, prefix, positioned, partitions=partitions, on_error=on_error
        )

    report, said = verify_runs(runs_of(present, jobs), read, known)
    for line in said:
        warn(line)
    print_verification(report)
    if not report.ok:
        raise typer.Exit(1)


def _sharded_verify(
    history: Path | None,
    known: dict[str, Policy],
    reader: EventReader,
    broker: str | None,
    strict: bool,
    jobs: int,
) -> Any:
    """The verify report of a history file by several processes (`streams.tools.sharded_verify`),
    its bad lines reported in file order as one process reports them; None when one process
    reads it (a topic, a small file, `--strict`, `--jobs 1`)."""
    if history is None or not _shardable(history, broker, None, strict):
        return None
    from streams.tools.sharded import default_jobs
    from streams.tools.sharded_verify import verify_sharded

    jobs = jobs or default_jobs(history)
    if jobs < 2:
        return None
    report, read = verify_sharded(history, known, jobs)
    for error in read.errors:
        reader.report(error)
    reader.stats.lines, reader.stats.bad = read.lines, read.bad
    return report


def print_verification(report: Any) -> None:
    """The verify report: the first 50 mismatches, the unchecked records, the totals."""
    for m in report.mismatches[:50]:
        out.print(
            f"[red]mismatch[/red] {m.person_id} #{m.sequence} ({m.event_id}) {m.field}: "
            f"recorded {m.recorded!r}, recomputed {m.recomputed!r}",
            highlight=False,
        )
    for version, count in report.missing_policies.items():
        err.print(f"policy {version} unknown: {count} record(s) not checked (pass --policy FILE)")
    out.print(
        f"checked {report.checked} records: {len(report.mismatches)} mismatch(es), "
        f"{sum(report.missing_policies.values())} unchecked; {len(report.erased)} erased "
        f"person(s), {report.withheld} record(s) with a withheld sentence compared by rule",
        highlight=False,
    )


def _policies_file(path: Path) -> dict[str, Policy]:
    from lifecycle.policy import Policy as Model

    found: dict[str, Policy] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
            rules = Model.model_validate(data.get("policy", data))
        except Exception as error:  # a bad line is reported and skipped, like events
            err.print(f"{path}:{number}: {error}".splitlines()[0], markup=False)
            continue
        found[rules.version] = rules
    return found


def schema(
    out_dir: Annotated[Path, typer.Option("--out", help="directory for the JSON Schema files")],
) -> None:
    """Write the JSON Schema of every message (and the policy) into a directory."""
    from streams.web.documents import write_schemas

    written = write_schemas(out_dir)
    for path in written:
        out.print(str(path))


def register(app: typer.Typer) -> None:
    """Add the offline commands to the `leadflow` app."""
    app.command()(replay)
    app.command("funnel")(funnel_command)
    app.command()(simulate)
    app.command()(verify)
    app.command()(schema)
