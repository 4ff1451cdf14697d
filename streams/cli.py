"""The `leadflow` command line.

Offline commands (replay, verify, funnel, simulate, policy, schema) read files or the history
topic and only call the pure core; runtime commands (worker, dev, send, tail, export-history,
topics) are registered from `streams/commands_*.py`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml
from rich.table import Table

from events.inbound import Event
from lifecycle.funnel import FunnelReport, funnel_of
from lifecycle.policy import PRESETS, Policy, PolicyError, load_policy, load_preset, resolve_policy
from lifecycle.replay import Recorded
from streams import (
    commands_analytics,
    commands_import,
    commands_keys,
    commands_partials,
    commands_token,
    commands_tools,
    commands_worker,
)
from streams.commands_common import (
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
from streams.commands_common import fail as _fail
from streams.commands_partials import PartialOutOpt, PartitionsOpt
from streams.files import BadLine, ReadStats, read_events, read_history
from streams.internals import forbid_auto_creation

app = typer.Typer(
    name="leadflow",
    no_args_is_help=True,
    add_completion=False,
    help="Event-sourced lead lifecycle: one agreed lead definition, applied to every event.",
)
policy_app = typer.Typer(no_args_is_help=True, help="The shared lead definition.")
app.add_typer(policy_app, name="policy")


def _policy(path: Path | None, preset: str | None) -> Policy:
    try:
        return resolve_policy(path, preset)
    except PolicyError as error:
        raise _fail(str(error)) from None


def _named_policy(value: str) -> Policy:
    """A policy given as a file path or a preset name."""
    try:
        if Path(value).is_file():
            return load_policy(value)
        if value in PRESETS:
            return load_preset(value)
    except PolicyError as error:
        raise _fail(str(error)) from None
    raise _fail(f"{value}: no such policy file, and not a preset ({', '.join(PRESETS)})")


class _Reader:
    """Events from a file or the history topic, reporting bad lines as FILE:LINE: reason."""

    def __init__(self, strict: bool, mapping: Path | None = None) -> None:
        self.stats = ReadStats()
        self.strict = strict
        self.mapping = mapping
        self.conflicts = 0
        #: outcomes history kept of personal fields, for persons whose fields are unreadable
        self.recorded: Recorded = {}

    def report(self, error: BadLine) -> None:
        err.print(str(error), highlight=False, markup=False)

    def check(self, decision: Any) -> Any:
        """Report an event id reused with other content (the worker dead-letters it)."""
        if decision.conflict is not None:
            self.conflicts += 1
            err.print(
                f"conflict: person {decision.person_id}: {decision.conflict}; not applied",
                highlight=False,
                markup=False,
            )
        return decision

    def events(self, path: Path | None, broker: str | None, prefix: str) -> Iterator[Event]:
        if broker and self.mapping:
            raise _fail("--mapping reads a CSV file given with --events, not a topic")
        if broker:
            for record in _history_from_broker(broker, prefix):
                if record.outcomes:
                    key = (record.person_id, record.event.event_id)
                    self.recorded[key] = (record.policy_version, record.outcomes)
                yield record.event
            return
        if path is None:
            raise _fail("give --events FILE or --broker URL")
        if not path.exists():
            raise _fail(f"{path}: no such file")
        if self.mapping is not None:
            yield from self._mapped(path, self.mapping)
            return
        try:
            yield from read_events(
                path,
                stats=self.stats,
                on_error=self.report,
                strict=self.strict,
                progress=True,
                recorded=self.recorded,
            )
        except BadLine as error:
            raise _fail(str(error), 1) from None

    def _mapped(self, path: Path, mapping: Path) -> Iterator[Event]:
        from streams.mapping import ImportStats, MappingError, load_mapping, read_mapped

        self.stats = stats = ImportStats()
        try:
            rules = load_mapping(mapping)
            yield from read_mapped(
                [path], rules, stats=stats, on_error=self.report, strict=self.strict, progress=True
            )
        except MappingError as error:
            raise _fail(str(error)) from None
        except BadLine as error:
            raise _fail(str(error), 1) from None

    def history(self, path: Path | None, broker: str | None, prefix: str) -> Iterator[Any]:
        if broker:
            yield from _history_from_broker(broker, prefix)
            return
        if path is None:
            raise _fail("give --history FILE or --broker URL")
        if not path.exists():
            raise _fail(f"{path}: no such file")
        try:
            yield from read_history(
                path, stats=self.stats, on_error=self.report, strict=self.strict, progress=True
            )
        except BadLine as error:
            raise _fail(str(error), 1) from None

    def summary(self) -> None:
        if self.stats.bad:
            err.print(f"{self.stats.bad} bad line(s) skipped of {self.stats.lines}")
        if self.conflicts:
            err.print(f"{self.conflicts} event(s) reusing an event id with other content skipped")


def _history_from_broker(broker: str, prefix: str) -> list[Any]:
    from streams.export import read_history_topic
    from streams.settings import Settings

    settings = Settings(broker=broker, topic_prefix=prefix)
    return asyncio.run(_checked(settings, read_history_topic(settings)))


async def _checked(settings: Any, main: Any) -> Any:
    """`main`, once one connection with the settings' security works (else one line)."""
    from streams.preflight import BrokerAccessError, check_broker

    try:
        await check_broker(settings)
    except BrokerAccessError as error:
        main.close()
        raise _fail(str(error), 1) from None
    from streams.keys import MasterKeyError

    try:
        return await main
    except MasterKeyError as error:  # a malformed LEADFLOW_MASTER_KEY: one line, no key in it
        raise _fail(str(error), 2) from None


def _write(rows: Iterable[Any]) -> int:
    write = sys.stdout.buffer.write
    count = 0
    for row in rows:
        write(orjson.dumps(row))
        write(b"\n")
        count += 1
    sys.stdout.buffer.flush()
    return count


def _as_of(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(
            f"--as-of {value!r}: not an ISO 8601 time (e.g. 2026-03-01T00:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise _fail(f"--as-of {value!r}: give a time zone (e.g. Z or +01:00)")
    return moment


@app.command()
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
    jobs: Annotated[
        int,
        typer.Option(
            help="worker processes for a JSONL file (persons sharded, output in input order); "
            "0: one per core for files over 32 MB"
        ),
    ] = 0,
    partitions: PartitionsOpt = None,
    partial_out: PartialOutOpt = None,
) -> None:
    """Replay events under a policy; print the StageChanged records as JSONL on stdout."""
    from lifecycle.replay import Replayer, bulk_gc

    rules = _policy(policy, preset)
    cutoff = _as_of(as_of)
    if partitions is not None or partial_out is not None:
        options = {"person": person, "as_of": as_of, "state": state}
        commands_partials.replay_share(
            broker, topic_prefix, partitions, partial_out, events, rules, cutoff, options
        )
        return
    reader = _Reader(strict, mapping)
    if events is not None and _shardable(events, broker, mapping, strict):
        from streams.sharded import default_jobs, replay_sharded

        jobs = jobs or default_jobs(events)
        if jobs > 1:
            totals = replay_sharded(
                events,
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
    replayer = Replayer(rules, recorded=reader.recorded)

    def changes() -> Iterator[Any]:
        for event in reader.events(events, broker, topic_prefix):
            if person is not None and event.person_id != person:
                continue
            if cutoff is not None and event.occurred_at > cutoff:
                continue
            for decision in replayer.apply_all(event):
                reader.check(decision)
                if not state:
                    yield from decision.changes

    with bulk_gc():
        if state:
            for _ in changes():
                pass
            _write(s.to_wire() for s in replayer.states.values())
        else:
            _write(changes())
    reader.summary()


def _shardable(events: Path, broker: str | None, mapping: Path | None, strict: bool) -> bool:
    """A JSONL file read leniently can be replayed by several processes (`streams.sharded`);
    a topic, a CSV or a mapping, and `--strict` (stop at the first bad line), by one."""
    if broker or mapping is not None or strict:
        return False
    return events.suffix.lower() != ".csv" and events.is_file()


def _print_funnel(report: FunnelReport, title: str) -> None:
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


@app.command("funnel")
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
) -> None:
    """Counts reached per stage, conversion by lead source, median days between stages."""
    from lifecycle.replay import replay as run

    if format not in ("table", "json"):
        raise _fail("--format is table or json")
    rules = _policy(policy, preset)
    if partitions is not None or partial_out is not None:
        options = {"format": format, "by": by}
        if cohort is not None:
            commands_partials.cohort_share(
                broker, topic_prefix, partitions, partial_out, events, rules, cohort, options
            )
            return
        commands_partials.funnel_share(
            broker, topic_prefix, partitions, partial_out, events, rules, options
        )
        return
    if cohort is not None:
        commands_analytics.cohort_funnel(
            events, broker, topic_prefix, rules, cohort, by, format, strict, mapping
        )
        return
    reader = _Reader(strict, mapping)
    report = funnel_of(
        map(reader.check, run(reader.events(events, broker, topic_prefix), rules, reader.recorded))
    )
    if by is not None:
        commands_analytics.attribution(report, by, format)
    elif format == "json":
        out.print_json(data={"policy_version": rules.version, **report.to_dict()})
    else:
        _print_funnel(report, f"policy {rules.name} ({rules.version})")
    reader.summary()


@app.command()
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
) -> None:
    """What would policy B have done with the same events as policy A?"""
    from lifecycle.simulate import simulate as run

    a, b = _named_policy(policy), _named_policy(against)
    if partitions is not None or partial_out is not None:
        options = {"format": format, "limit": limit}
        commands_partials.simulate_share(
            broker, topic_prefix, partitions, partial_out, events, a, b, options
        )
        return
    reader = _Reader(strict, mapping)
    result = run(reader.events(events, broker, topic_prefix), a, b, reader.recorded)
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
    for step in ("mql->sql", "mql->customer"):
        ca, cb = result.funnel_a.conversion[step], result.funnel_b.conversion[step]
        wa, wb = result.funnel_a.conversion_reached[step], result.funnel_b.conversion_reached[step]
        out.print(
            f"{step}: {ca['rate']} → {cb['rate']} over MQLs the policy made "
            f"({ca['from']} → {cb['from']}); with sales-sourced MQLs {wa['rate']} → {wb['rate']}",
            highlight=False,
        )
    shown = result.differing[:limit]
    if result.conflicts:
        err.print(f"{result.conflicts} event(s) reusing an event id with other content skipped")
    out.print(f"{len(result.differing)} persons end differently; first {len(shown)}:")
    for o in shown:
        a_side = f"{o.stage_a} (highest {o.highest_a})"
        b_side = f"{o.stage_b} (highest {o.highest_b})"
        out.print(f"  {o.person_id}: {a_side} → {b_side}", highlight=False)


@app.command()
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
        from streams.export import read_policies_topic
        from streams.settings import Settings

        settings = Settings(broker=broker, topic_prefix=topic_prefix)
        known.update(asyncio.run(_checked(settings, read_policies_topic(settings))))
    if partitions is not None or partial_out is not None:
        commands_partials.verify_share(
            broker, topic_prefix, partitions, partial_out, history, known
        )
        return
    reader = _Reader(strict)
    report = run(reader.history(history, broker, topic_prefix), known)
    print_verification(report)
    reader.summary()
    if not report.ok:
        raise typer.Exit(1)


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


@app.command()
def schema(
    out_dir: Annotated[Path, typer.Option("--out", help="directory for the JSON Schema files")],
) -> None:
    """Write the JSON Schema of every message (and the policy) into a directory."""
    from streams.contracts import write_schemas

    written = write_schemas(out_dir)
    for path in written:
        out.print(str(path))


# --- policy --------------------------------------------------------------------------------


@policy_app.command("check")
def policy_check(
    file: Annotated[Path | None, typer.Argument(dir_okay=False)] = None,
    preset: PresetOpt = None,
) -> None:
    """Validate a policy; print its version and warnings."""
    rules = _policy(file, preset)
    out.print(f"{file or rules.name}: ok, version {rules.version}", highlight=False)
    for name in rules.unknown_event_types():
        err.print(f"warning: event type {name!r} is not a known type (typo?)")


@policy_app.command("show")
def policy_show(
    file: Annotated[Path | None, typer.Argument(dir_okay=False)] = None,
    preset: PresetOpt = None,
) -> None:
    """Print the validated policy (every default filled in) and its version."""
    rules = _policy(file, preset)
    out.print(f"# version {rules.version}", highlight=False)
    out.print(rules.to_yaml(), highlight=False, markup=False)


@policy_app.command("diff")
def policy_diff(a: str, b: str) -> None:
    """Rule-by-rule differences between two policies (files or presets)."""
    from lifecycle.policy import policy_changes

    pa, pb = _named_policy(a), _named_policy(b)
    out.print(f"{a} ({pa.version}) → {b} ({pb.version})", highlight=False)
    changed = policy_changes(pa, pb)
    for key, va, vb in changed:
        if isinstance(va, list) and isinstance(vb, list):
            added = [x for x in vb if x not in va]
            removed = [x for x in va if x not in vb]
            parts = [f"+{x}" for x in added] + [f"-{x}" for x in removed]
            out.print(f"  {key}: {' '.join(map(str, parts)) or '(order only)'}", highlight=False)
        else:
            out.print(f"  {key}: {json.dumps(va)} → {json.dumps(vb)}", highlight=False)
    if not changed:
        out.print("  identical rules")


@policy_app.command("diagram")
def policy_diagram() -> None:
    """The lifecycle as a mermaid state diagram, drawn from the transitions machine."""
    from lifecycle.machine import diagram

    print(diagram())


@policy_app.command("test")
def policy_test(
    path: Annotated[Path, typer.Argument(help="a fixture file or a directory of them")],
    policy: PolicyOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Run golden fixtures (events → expected stages per person) against a policy."""
    from lifecycle.policytest import FixtureError, run_fixture

    files = sorted(path.glob("*.y*ml")) + sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise _fail(f"{path}: no fixture files (*.yaml, *.yml, *.json)")
    failed = total = 0
    for file in files:
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise _fail(f"{file}: {error}") from None
        if policy is None and preset is None and isinstance(data, dict) and data.get("policy"):
            named = str(data["policy"])
            relative = file.parent / named
            rules = _named_policy(str(relative) if relative.is_file() else named)
        else:
            rules = _policy(policy, preset)
        try:
            results = run_fixture(data, rules)
        except FixtureError as error:
            raise _fail(f"{file}: {error}") from None
        for result in results:
            total += 1
            if result.passed:
                out.print(f"[green]PASS[/green] {file.name}: {result.name}", highlight=False)
                continue
            failed += 1
            out.print(f"[red]FAIL[/red] {file.name}: {result.name}", highlight=False)
            for person, want in result.expected.items():
                got = result.actual.get(person, [])
                if got != want:
                    out.print(f"    {person}: expected {want}, got {got}", highlight=False)
                    for why in result.reasons.get(person, []):
                        out.print(f"      · {why}", highlight=False, markup=False)
    out.print(f"{total - failed}/{total} cases pass under {rules.name} ({rules.version})")
    if failed:
        raise typer.Exit(1)


commands_worker.register(app)
commands_tools.register(app)
commands_import.register(app)
commands_analytics.register(app)
commands_keys.register(app)
commands_partials.register(app)
commands_token.register(app)


def main() -> None:
    forbid_auto_creation()
    app()


if __name__ == "__main__":
    main()
