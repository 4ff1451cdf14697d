"""Operator tools: `topics create`, `tail`, `export-history`, `reconcile`.

Commands parse options, build `Settings` (flags win over `LEADFLOW_*` variables) and call the
modules that do the work (`streams.tools.tail`, `streams.tools.export`,
`streams.tools.reconcile`); nothing here holds a rule. `send` is in `streams.cli.send`,
`dev` and `broker` in `streams.cli.dev`.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from streams.cli.common import BrokerOpt, PrefixOpt, err, fail, out
from streams.cli.running import (
    TopicChoice,
    check_broker_or_exit,
    problem,
    run_against_broker,
    settings_from,
)

# --- topics -------------------------------------------------------------------------------

topics_app = typer.Typer(no_args_is_help=True, help="The leadflow topics.")


@topics_app.command("create")
def topics_create(
    broker: BrokerOpt = None,
    topic_prefix: PrefixOpt = None,
    partitions: Annotated[int | None, typer.Option(min=1, help="default 4")] = None,
    replication: Annotated[int | None, typer.Option(min=1, help="default 1")] = None,
) -> None:
    """Create every leadflow topic that is missing, with its retention and cleanup configs.

    Safe to run again: existing topics are left alone, but one whose partition count or
    configs differ from the spec is reported (exit code 1).
    """
    from streams.kafka.topics import TopicSpecMismatch, changelog_spec, ensure_topics, topic_specs

    s = settings_from(
        broker=broker, topic_prefix=topic_prefix, partitions=partitions, replication=replication
    )
    specs = [
        *topic_specs(s.topics, s.partitions, s.replication),
        changelog_spec(s.topic_prefix, s.partitions, s.replication),
    ]
    from streams.kafka.preflight import BrokerAccessError, check_broker

    async def create() -> Any:
        await check_broker(s)
        return await ensure_topics(s.bootstrap, specs, client_options=s.aiokafka_kwargs())

    try:
        result = asyncio.run(create())
    except (TopicSpecMismatch, BrokerAccessError) as error:
        raise fail(str(error), 1) from None
    except Exception as error:  # connection problems: say where we tried
        raise fail(f"{s.bootstrap}: {problem(error)}", 1) from None
    for spec in specs:
        state = "[green]created[/green]" if spec.name in result.created else "exists "
        details = [f"{spec.partitions} partition{'s' if spec.partitions != 1 else ''}"]
        details += [f"{k}={v}" for k, v in spec.configs.items()]
        out.print(f"{state}  {spec.name}  ({', '.join(details)})", highlight=False)
    out.print(f"{len(result.created)} created, {len(result.existing)} already existed")


# --- tail ---------------------------------------------------------------------------------


def tail(
    topic: Annotated[TopicChoice, typer.Option("--topic", help="which topic")] = (
        TopicChoice.stage_changes
    ),
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="start at the oldest record")
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="exit after this many records")] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="print raw JSON lines")] = False,
    idle_timeout: Annotated[
        float | None, typer.Option(help="exit after this many seconds without a record")
    ] = None,
    broker: BrokerOpt = None,
    topic_prefix: PrefixOpt = None,
) -> None:
    """Follow a topic in readable form (Ctrl-C to stop). No consumer group is used."""
    import sys

    from streams.tools.tail import as_json, follow, render

    s = settings_from(broker=broker, topic_prefix=topic_prefix)
    which = topic.value

    def emit(record: Any) -> None:
        if json_lines:
            sys.stdout.write(as_json(record) + "\n")
            sys.stdout.flush()
        else:
            out.print(render(which, record), highlight=False)

    run_against_broker(
        s,
        follow(
            s,
            which,
            emit,
            from_beginning=from_beginning,
            limit=limit,
            idle_timeout=idle_timeout,
        ),
    )


# --- export-history -----------------------------------------------------------------------


def export_history(
    out_file: Annotated[Path, typer.Option("--out", help="history JSONL to write", dir_okay=False)],
    policies_out: Annotated[
        Path | None,
        typer.Option(
            help="policies JSONL to write (default: <out>.policies.jsonl)", dir_okay=False
        ),
    ] = None,
    broker: BrokerOpt = None,
    topic_prefix: PrefixOpt = None,
) -> None:
    """Dump the whole history topic (and every policy version) to JSONL for verify/replay.

    Reads each partition to its true end, in partition and offset order.
    """
    from streams.tools.export import export_history as run

    s = settings_from(broker=broker, topic_prefix=topic_prefix)
    policies_out = policies_out or out_file.with_name(out_file.name + ".policies.jsonl")
    progress = Progress(
        TextColumn("{task.description}"), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    )
    check_broker_or_exit(s)  # before the progress bar: a refused start is one line
    with progress:
        task = progress.add_task(f"reading {s.topics.history}", total=None)

        def report(message: str) -> None:
            progress.console.print(message, markup=False, highlight=False)

        stats, interrupted = run_against_broker(
            s,
            run(
                s,
                out_file,
                policies_out,
                on_error=report,
                on_record=lambda n: progress.advance(task, n),
            ),
        )
    if interrupted or stats is None:
        out.print("interrupted: nothing written")
        raise typer.Exit(130)
    partitions = ", ".join(f"{p}: {n:,}" for p, n in sorted(stats.per_partition.items()))
    out.print(
        f"exported {stats.records:,} history records ({len(stats.persons):,} persons, "
        f"{stats.changes:,} stage changes) to {out_file} in {stats.seconds:.1f}s",
        highlight=False,
    )
    out.print(f"per partition: {partitions or 'none'}", highlight=False)
    out.print(f"wrote {stats.policies} policy version(s) to {policies_out}", highlight=False)
    if stats.invalid:
        err.print(f"{stats.invalid} invalid record(s) skipped")
        raise typer.Exit(1)


# --- reconcile ----------------------------------------------------------------------------


class ReportFormat(StrEnum):
    table = "table"
    json = "json"


def reconcile(
    repair: Annotated[
        bool, typer.Option("--repair", help="re-publish every gap to its original partition")
    ] = False,
    group: Annotated[
        str | None,
        typer.Option(help="the worker's consumer group (default: its app id from the prefix)"),
    ] = None,
    fmt: Annotated[ReportFormat, typer.Option("--format")] = ReportFormat.table,
    broker: BrokerOpt = None,
    topic_prefix: PrefixOpt = None,
) -> None:
    """Find inbound events the worker committed but never applied; re-drive them with --repair.

    Reads the group's committed offsets, then history and dead letters, then the events topic
    to its true end. An event below the committed offset that is neither in history (by event
    id) nor dead-lettered is a gap. Exit status: 0 when there is no gap left unrepaired, 1
    otherwise.
    """
    from streams.tools.reconcile import reconcile as run

    s = settings_from(broker=broker, topic_prefix=topic_prefix)
    report, interrupted = run_against_broker(s, run(s, repair=repair, group=group))
    if interrupted or report is None:
        out.print("interrupted")
        raise typer.Exit(130)
    if fmt is ReportFormat.json:
        out.print_json(data=report.to_json())
    else:
        _print_reconcile(report, repair)
    raise typer.Exit(1 if report.unrepaired else 0)


def _print_reconcile(report: Any, repair: bool) -> None:
    from rich.table import Table

    table = Table(title=f"{report.events_topic} vs history (group {report.group})")
    for column in ("partition", "committed", "below", "applied", "dead-lettered", "gaps"):
        table.add_column(column, justify="right")
    table.add_column("pending", justify="right")
    for partition, c in sorted(report.partitions.items()):
        table.add_row(
            str(partition),
            "never" if c.committed is None else f"{c.committed:,}",
            f"{c.below:,}",
            f"{c.applied:,}",
            f"{c.dead_lettered:,}",
            f"[red]{c.gaps:,}[/red]" if c.gaps else "0",
            f"{c.pending:,}",
        )
    out.print(table)
    out.print(
        f"{report.history_records:,} history records, {report.dead_letters:,} dead letters, "
        f"read in {report.seconds:.1f}s",
        highlight=False,
    )
    if not report.gaps:
        out.print("[green]no gaps[/green]: every committed event reached history or dead letters")
        return
    shown = ", ".join(report.gap_ids(10)) + (" …" if len(report.gaps) > 10 else "")
    out.print(f"[red]{len(report.gaps):,} gap(s)[/red]: {shown}", highlight=False)
    if repair:
        out.print(
            f"re-published {report.repaired:,} to their original partitions"
            + (f", {report.repair_failed:,} failed" if report.repair_failed else "")
            + "; the worker applies them as new arrivals",
            highlight=False,
        )
    else:
        out.print("run again with --repair to re-drive them through the worker")


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.add_typer(topics_app, name="topics")
    app.command()(tail)
    app.command("export-history")(export_history)
    app.command()(reconcile)
