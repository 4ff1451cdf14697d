"""Reading CSV exports by a mapping: rows to events, `FILE:LINE: reason` for a bad row, the
counts of the summary, the header checks."""

from __future__ import annotations

import codecs
import csv
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from events.inbound import Event
from lifecycle.replay import bulk_gc
from streams.tools.files import PROGRESS_BYTES, BadLine, ReadStats
from streams.tools.mapping.compiled import (
    CompiledEvent,
    Row,
    RowProblem,
    SkipRow,
    compile_rules,
)
from streams.tools.mapping.spec import FileRule, Mapping, MappingError

# --- reading -------------------------------------------------------------------------------


@dataclass(slots=True)
class ImportStats(ReadStats):
    """`lines` counts rows read; `bad` the rows left out because they could not be mapped."""

    files: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0

    @property
    def skipped_rows(self) -> int:
        return self.skipped.total()


@dataclass(slots=True, frozen=True)
class MappedEvent:
    event: Event
    path: str
    line: int


OnError = Callable[[BadLine], None]


def _raise(error: BadLine) -> None:
    raise error


def _rows(path: Path, rule: FileRule, progress: bool) -> Iterator[tuple[int, list[str], str]]:
    """(first line, cells, problem) per record; the header first. Quoted newlines are kept."""
    size = path.stat().st_size
    bar = None
    if progress and size > PROGRESS_BYTES:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task(f"mapping {path.name}", total=size)
    undecodable: dict[int, str] = {}
    encoding = _encoding(rule.encoding)

    def lines(handle: Any) -> Iterator[str]:
        done = 0
        for number, raw in enumerate(handle, start=1):
            if bar is not None:
                done += len(raw)
                if number % 20_000 == 0:
                    bar.update(task, completed=done)
            try:
                yield raw.decode(encoding)
            except UnicodeDecodeError as error:
                undecodable[number] = (
                    f"not valid {rule.encoding} (byte {error.start}: {error.reason}); "
                    "give the file's encoding: in the mapping (latin-1, cp1252 …)"
                )
                yield raw.decode(encoding, errors="replace")

    try:
        with path.open("rb") as handle:
            reader = csv.reader(lines(handle), delimiter=rule.delimiter)
            last = 0
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                except csv.Error as error:
                    yield last + 1, [], f"not readable as CSV: {error}"
                    last = reader.line_num
                    continue
                first, last = last + 1, reader.line_num
                problem = next(
                    (undecodable.pop(n) for n in range(first, last + 1) if n in undecodable), ""
                )
                yield first, cells, problem
    finally:
        if bar is not None:
            bar.stop()


def _file_events(
    path: Path, mapping: Mapping, stats: ImportStats, report: OnError, progress: bool
) -> Iterator[tuple[int, list[Event]]]:
    """(line, the row's events) for every row that maps; bad rows are reported."""
    rule = mapping.rule_for(path)
    name = str(path)
    rows = _rows(path, rule, progress)
    header: list[str] | None = None
    for line, cells, problem in rows:
        if problem and header is None:
            raise MappingError(f"{name}:{line}: header: {problem}")
        if cells:
            header = cells
            break
    if header is None:
        raise MappingError(f"{name}: empty file (a header row is needed)")
    compiled = compile_rules(mapping, rule, header, path)
    width = len(header)
    for line, cells, problem in rows:
        if not problem and (not cells or (len(cells) == 1 and not cells[0].strip())):
            continue  # a blank line
        stats.lines += 1
        stats.files[name] += 1
        if not problem and len(cells) > width:
            problem = f"{len(cells)} fields, the header has {width} (an unquoted delimiter?)"
        if problem:
            stats.bad += 1
            report(BadLine(name, line, problem))
            continue
        if len(cells) < width:
            cells = cells + [""] * (width - len(cells))
        try:
            events = _row_events(cells, compiled, stats, path.name)
        except RowProblem as error:
            stats.bad += 1
            report(BadLine(name, line, str(error)))
            continue
        if events:
            yield line, events


def _row_events(
    cells: Row, compiled: list[CompiledEvent], stats: ImportStats, file: str
) -> list[Event]:
    events: list[Event] = []
    skipped: list[str] = []
    for rule in compiled:
        failed = next((what for what, holds in rule.conditions if not holds(cells)), None)
        if failed is not None:
            skipped.append(f"{file} events[{rule.index}]: when {failed}")
            continue
        data: dict[str, Any] = {}
        profile: dict[str, Any] = {}
        try:
            for f in rule.fields:
                value = f.get(cells)
                if value == "":
                    if f.required:
                        raise RowProblem(f"{f.name}: empty from {f.where} (it is required)")
                    continue
                if f.name.startswith("profile."):
                    profile[f.name[8:]] = value
                else:
                    data[f.name] = value
        except SkipRow as skip:
            skipped.append(f"{file} events[{rule.index}]: {skip}")
            continue
        if profile:
            data["profile"] = profile
        try:
            events.append(Event.model_validate(data))
        except ValidationError as error:
            raise RowProblem(_describe(error)) from None
    if skipped and not events:
        stats.skipped[skipped[0]] += 1
    return events


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False)[:3]:
        where = ".".join(str(p) for p in item["loc"])
        value = item.get("input")
        shown = f" (value {value!r})" if isinstance(value, str | int | float) else ""
        parts.append(f"{where}: {item['msg']}{shown}")
    return "; ".join(parts)


def read_mapped(
    paths: Iterable[str | Path],
    mapping: Mapping,
    *,
    stats: ImportStats | None = None,
    on_error: OnError | None = None,
    strict: bool = False,
    progress: bool = False,
    sort_by_time: bool | None = None,
) -> Iterator[Event]:
    """The events of every file's rows: file order, or time order (stable) when asked.

    The same event id given twice is one event if the bodies agree (counted as a duplicate)
    and a bad row if they differ: the id template is not unique per event.
    """
    stats = stats if stats is not None else ImportStats()
    report = _raise if strict else (on_error or stats.errors.append)
    by_time = mapping.order == "time" if sort_by_time is None else sort_by_time
    seen: dict[str, tuple[int, str, int]] = {}  # event id → (body hash, file, line)

    def unique(path: str, line: int, events: list[Event]) -> list[tuple[Event, str]] | None:
        """The row's events not seen before, with their JSON; None if an id is taken."""
        kept: list[tuple[Event, str]] = []
        new: dict[str, tuple[int, str, int]] = {}
        for event in events:
            body = event.model_dump_json(exclude_none=True)
            earlier = seen.get(event.event_id) or new.get(event.event_id)
            if earlier is None:
                kept.append((event, body))
                new[event.event_id] = (hash(body), path, line)
            elif earlier[0] == hash(body):
                stats.duplicates += 1
            else:
                stats.bad += 1
                report(
                    BadLine(
                        path,
                        line,
                        f"event_id {event.event_id!r} was already given to a different event "
                        f"at {earlier[1]}:{earlier[2]} (make the event_id template unique per "
                        "event, e.g. add the type or the date)",
                    )
                )
                return None
        seen.update(new)
        return kept

    def mapped() -> Iterator[tuple[Event, str]]:
        for path in map(Path, paths):
            for line, events in _file_events(path, mapping, stats, report, progress):
                for event, body in unique(str(path), line, events) or ():
                    stats.events[event.type] += 1
                    yield event, body

    if not by_time:
        for event, _ in mapped():
            yield event
        return
    # Held as JSON until sorted: a validated event takes ~8 times the memory of its JSON.
    with bulk_gc():
        held = [(event.occurred_at, body) for event, body in mapped()]
    held.sort(key=lambda pair: pair[0])
    decode = Event.model_validate_json
    for _, body in held:
        yield decode(body)


def _encoding(name: str) -> str:
    """utf-8 files may start with a byte order mark (Excel writes one); it is not a column."""
    return "utf-8-sig" if codecs.lookup(name).name == "utf-8" else name


def read_header(path: Path, delimiter: str = ",", encoding: str = "utf-8") -> list[str]:
    """The first row of a CSV file."""
    try:
        with path.open(newline="", encoding=_encoding(encoding)) as handle:
            return next(csv.reader(handle, delimiter=delimiter), [])
    except (UnicodeDecodeError, csv.Error) as error:
        raise MappingError(f"{path}:1: header: not readable ({error})") from None


def check_files(paths: Iterable[str | Path], mapping: Mapping) -> None:
    """Before any row is read: every file matches a file rule and has the columns it needs."""
    for path in map(Path, paths):
        if not path.is_file():
            raise MappingError(f"{path}: no such file")
        rule = mapping.rule_for(path)
        header = read_header(path, rule.delimiter, rule.encoding)
        if not header:
            raise MappingError(f"{path}: empty file (a header row is needed)")
        compile_rules(mapping, rule, header, path)
