"""`leadflow import`: CSV exports → events (a JSONL file, stdout or the events topic).

The mapping engine (`streams.tools.mapping`) does the work; this module parses options, writes the
events and prints the summary. With `--strict` a first pass checks every row and nothing is
written if any is bad; a JSONL file is written beside its target and renamed at the end, so an
interrupted import never leaves half a file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

from events.inbound import Event
from streams.cli.common import err, fail
from streams.tools.files import BadLine
from streams.tools.mapping import (
    ImportStats,
    Mapping,
    MappingError,
    check_files,
    load_mapping,
    read_mapped,
    unknown_event_types,
)


def _report(error: BadLine) -> None:
    err.print(str(error), highlight=False, markup=False)


def _mapping(path: Path, files: list[Path]) -> Mapping:
    try:
        mapping = load_mapping(path)
        check_files(files, mapping)
    except MappingError as error:
        raise fail(str(error)) from None
    warn_unknown_types(mapping, path)
    return mapping


def warn_unknown_types(mapping: Mapping, path: Path) -> None:
    """A typo in a constant type (`demo_requestd`) would import events that do nothing."""
    for name in unknown_event_types(mapping):
        err.print(
            f"warning: {path}: event type {name!r} is not a known type (typo?); "
            "events of it are recorded with no effect",
            highlight=False,
            markup=False,
        )


def _write_jsonl(events: Iterator[Event], handle: BinaryIO) -> int:
    count = 0
    for event in events:
        handle.write(event.model_dump_json(exclude_none=True).encode())
        handle.write(b"\n")
        count += 1
    return count


def _summary(stats: ImportStats, where: str, in_time_order: bool) -> None:
    files = ", ".join(f"{Path(name).name} {n:,}" for name, n in stats.files.items())
    err.print(f"read {stats.lines:,} rows ({files})", highlight=False, markup=False)
    per_type = ", ".join(f"{t} {n:,}" for t, n in sorted(stats.events.items()))
    order = (
        "in time order (stable)"
        if in_time_order
        else "in file order (--sort-by-time orders them by occurred_at)"
    )
    err.print(
        f"{where} {stats.events.total():,} events {order}: {per_type or 'none'}",
        highlight=False,
        markup=False,
    )
    reasons = "; ".join(f"{why}: {n:,}" for why, n in stats.skipped.most_common(5))
    err.print(
        f"skipped by condition: {stats.skipped_rows:,} rows" + (f" ({reasons})" if reasons else ""),
        highlight=False,
        markup=False,
    )
    if stats.duplicates:
        err.print(f"same event twice (one kept): {stats.duplicates:,}", highlight=False)
    err.print(
        f"bad rows: {stats.bad:,}" + (" (listed above)" if stats.bad else ""), highlight=False
    )


def import_command(
    files: Annotated[list[Path], typer.Argument(help="CSV exports, read in this order")],
    mapping: Annotated[
        Path, typer.Option("--mapping", "-m", help="mapping YAML: rows → events", dir_okay=False)
    ],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="JSONL file to write (default: stdout)", dir_okay=False),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option("--broker", help="publish to the events topic of this broker instead"),
    ] = None,
    topic_prefix: Annotated[
        str | None, typer.Option("--topic-prefix", help="topic name prefix (with --broker)")
    ] = None,
    sort_by_time: Annotated[
        bool,
        typer.Option(
            "--sort-by-time", help="order all files' events by occurred_at (ties keep file order)"
        ),
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="write nothing and exit 1 if any row is bad")
    ] = False,
) -> None:
    """Turn CSV exports into events by a mapping file, no code: see examples/mappings/.

    A row that cannot be mapped is reported as FILE:LINE: reason, counted and left out. The
    same rows always give the same events (ids come from the rows), so an import can be re-run.
    """
    if out_file is not None and broker is not None:
        raise fail("give --out FILE or --broker URL (not both)")
    rules = _mapping(mapping, files)
    in_time_order = sort_by_time or rules.order == "time"

    def events(stats: ImportStats) -> Iterator[Event]:
        return read_mapped(
            files, rules, stats=stats, on_error=_report, progress=True, sort_by_time=in_time_order
        )

    try:
        if strict:  # all or nothing: check every row before writing any
            checked = ImportStats()
            for _ in events(checked):
                pass
            if checked.bad:
                _summary(checked, "would write", in_time_order)
                err.print("--strict: nothing written", highlight=False)
                raise typer.Exit(1)
        stats = ImportStats()
        if broker is not None:
            where = _publish(events(stats), broker, topic_prefix)
        elif out_file is not None:
            partial = out_file.with_name(f".{out_file.name}.partial")
            try:
                with partial.open("wb") as handle:
                    _write_jsonl(events(stats), handle)
                os.replace(partial, out_file)
            finally:
                partial.unlink(missing_ok=True)
            where = f"wrote to {out_file}:"
        else:
            _write_jsonl(events(stats), sys.stdout.buffer)
            sys.stdout.buffer.flush()
            where = "wrote to stdout:"
    except MappingError as error:
        raise fail(str(error)) from None
    _summary(stats, where, in_time_order)


def _publish(events: Iterator[Event], broker: str, topic_prefix: str | None) -> str:
    from streams.cli.running import run_against_broker, settings_from
    from streams.kafka.publish import encode_event, publish

    s = settings_from(broker=broker, topic_prefix=topic_prefix)
    result, interrupted = run_against_broker(s, publish(s, (encode_event(e) for e in events)))
    if interrupted or result is None:
        raise fail("interrupted: the events sent so far are in the topic; re-run to finish", 130)
    if result.failed:
        for message in result.errors:
            err.print(f"delivery failed: {message}", markup=False)
        raise fail(f"{result.failed:,} event(s) not delivered; re-run the import", 1)
    return f"sent to {s.topics.events} ({result.rate:,.0f}/s):"


def register(app: typer.Typer) -> None:
    """Add `import` to `app`."""
    app.command("import")(import_command)
