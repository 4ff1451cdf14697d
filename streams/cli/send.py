"""`leadflow send`: publish JSONL or CSV events (a mapping, or the `--csv-map` shorthand of
one) to the events topic, keyed by person id, with a progress bar and `FILE:LINE: reason`
for every bad line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from events.inbound import Event, Profile
from streams.cli.common import BrokerOpt, PrefixOpt, err, fail, out
from streams.cli.running import (
    check_broker_or_exit,
    run_against_broker,
    settings_from,
)

# --- send ---------------------------------------------------------------------------------

_CSV_TARGETS = set(Event.model_fields) | {f"profile.{f}" for f in Profile.model_fields}


def _csv_map(pairs: list[str] | None) -> dict[str, str]:
    columns: dict[str, str] = {}
    for pair in pairs or []:
        target, sep, header = pair.partition("=")
        target, header = target.strip(), header.strip()
        if not sep or not target or not header:
            raise fail(f"--csv-map {pair!r}: expected FIELD=HEADER, e.g. person_id='Contact ID'")
        if target not in _CSV_TARGETS:
            known = ", ".join(sorted(_CSV_TARGETS))
            raise fail(f"--csv-map {pair!r}: {target!r} is not an event field ({known})")
        columns[target] = header
    return columns


def _count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return max(count - (1 if path.suffix.lower() == ".csv" else 0), 1)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
    )


def _send_mapping(file: Path, csv_map: list[str] | None, mapping: Path | None) -> Any:
    """The mapping `send` reads a CSV FILE by (a mapping file, or the `--csv-map` shorthand
    for one), checked against its header before anything is sent; None for JSONL."""
    from streams.tools.mapping import (
        MappingError,
        check_files,
        columns_mapping,
        load_mapping,
        read_header,
    )

    columns = _csv_map(csv_map)
    if (csv_map or mapping) and file.suffix.lower() != ".csv":
        raise fail("--csv-map and --mapping apply to .csv files only")
    if csv_map and mapping:
        raise fail("give --csv-map or --mapping (not both)")
    if file.suffix.lower() != ".csv":
        return None
    try:
        rules = load_mapping(mapping) if mapping else columns_mapping(columns, read_header(file))
        check_files([file], rules)
    except MappingError as error:
        raise fail(str(error)) from None
    if mapping is not None:
        from streams.cli.imports import warn_unknown_types

        warn_unknown_types(rules, mapping)
    return rules


def _send_events(file: Path, rules: Any, stats: Any, report: Any) -> Iterator[Event]:
    """FILE's events: a CSV through the mapping engine, JSONL as it is."""
    from streams.tools.files import read_events
    from streams.tools.mapping import ImportStats, read_mapped

    if rules is None:
        yield from read_events(file, stats=stats, on_error=report)
        return
    mapped = ImportStats()
    try:
        yield from read_mapped([file], rules, stats=mapped, on_error=report)
    finally:
        stats.lines, stats.bad = mapped.lines, mapped.bad


def send(
    file: Annotated[
        Path | None, typer.Argument(help="JSONL (events or an exported history) or CSV")
    ] = None,
    broker: BrokerOpt = None,
    topic_prefix: PrefixOpt = None,
    csv_map: Annotated[
        list[str] | None,
        typer.Option(
            "--csv-map",
            metavar="FIELD=HEADER",
            help="CSV column for an event field, e.g. person_id='Contact ID' or "
            "profile.job_title=Title (repeatable; shorthand for a --mapping)",
        ),
    ] = None,
    mapping: Annotated[
        Path | None,
        typer.Option("--mapping", "-m", help="CSV rows → events by this mapping (see import)"),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="send nothing and exit 1 if any line is invalid")
    ] = False,
    demo: Annotated[
        int | None, typer.Option("--demo", metavar="N", help="send N synthetic events instead")
    ] = None,
    persons: Annotated[int, typer.Option(min=1, help="persons in the --demo stream")] = 1_000,
    seed: Annotated[int, typer.Option(help="seed of the --demo stream")] = 7,
    rate: Annotated[
        float, typer.Option(min=0, help="events per second (0: as fast as possible)")
    ] = 0.0,
) -> None:
    """Publish events to the events topic, keyed by person id, with a progress bar.

    Every line is validated first; an invalid one is reported on stderr as FILE:LINE: reason
    and skipped (with --strict: nothing is sent).
    """
    from streams.kafka.publish import encode_event, publish
    from streams.tools.files import BadLine, ReadStats

    if (file is None) == (demo is None):
        raise fail("give a FILE or --demo N (not both)")
    s = settings_from(broker=broker, topic_prefix=topic_prefix)
    stats = ReadStats()
    progress = _progress()

    def report(error: BadLine) -> None:
        progress.console.print(str(error), markup=False, highlight=False)

    messages: Iterator[tuple[bytes, bytes]]
    if demo is not None:
        from streams.dev.demo import synthetic_events

        total, label = demo, f"demo ({persons:,} persons)"
        messages = (encode_event(e) for e in synthetic_events(persons, demo, seed=seed))
    else:
        assert file is not None
        if not file.is_file():
            raise fail(f"{file}: no such file")
        rules = _send_mapping(file, csv_map, mapping)
        total, label = _count_lines(file), file.name
        if strict:  # validate everything first: a strict send is all or nothing
            for _ in _send_events(file, rules, stats, report):
                pass
            if stats.bad:
                out.print(f"sent 0, invalid {stats.bad} of {stats.lines} (--strict: nothing sent)")
                raise typer.Exit(1)
            stats = ReadStats()
        messages = (encode_event(e) for e in _send_events(file, rules, stats, report))

    confirmed = 0
    check_broker_or_exit(s)  # before the progress bar: a refused start is one line
    with progress:
        task = progress.add_task(f"sending {label}", total=total)

        def sent(n: int) -> None:
            nonlocal confirmed
            confirmed += n
            progress.advance(task, n)

        result, interrupted = run_against_broker(s, publish(s, messages, on_sent=sent, rate=rate))
        progress.update(task, total=confirmed + (result.failed if result else 0))
    if interrupted or result is None:
        out.print(f"interrupted: sent {confirmed:,}, invalid {stats.bad}")
        raise typer.Exit(130)
    out.print(
        f"sent {result.sent:,} to {s.topics.events} in {result.seconds:.1f}s "
        f"({result.rate:,.0f}/s), invalid {stats.bad}"
        + (f", failed {result.failed}" if result.failed else ""),
        highlight=False,
    )
    for message in result.errors:
        err.print(f"delivery failed: {message}", markup=False)
    if result.failed or (strict and stats.bad):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `send` to `app`."""
    app.command()(send)
