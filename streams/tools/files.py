"""Reading events and history from files: JSONL (events or exported history) and CSV.

A bad line never stops the read by default: it is reported as `FILE:LINE: reason`, skipped and
counted; with `strict` the first bad line raises.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from events.codec import InvalidMessage, decode_event, describe_validation_error
from events.fastcodec import fast_events
from events.inbound import Event
from events.limits import MAX_PAYLOAD_BYTES
from events.outbound import HistoryRecord
from lifecycle.replay import Recorded

#: Files larger than this get a progress bar (about 100k lines of typical events).
PROGRESS_BYTES = 15_000_000


class BadLine(ValueError):
    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.reason = path, line, reason


@dataclass(slots=True)
class ReadStats:
    lines: int = 0
    bad: int = 0
    history_records: int = 0
    errors: list[BadLine] = field(default_factory=list)


OnError = Callable[[BadLine], None]


def _raise(error: BadLine) -> None:
    raise error


def _open(path: Path, progress: bool) -> tuple[io.BufferedReader, Any]:
    handle = path.open("rb")
    bar = None
    if progress and path.stat().st_size > PROGRESS_BYTES:
        from rich.console import Console
        from rich.progress import Progress

        # on stderr: on stdout, stopping it left an empty line among the JSONL printed; and
        # only on a terminal: redirected, it left an empty line in the log
        console = Console(stderr=True)
        if not console.is_terminal:
            return handle, bar
        bar = Progress(console=console, transient=True)
        bar.start()
        task = bar.add_task(f"reading {path.name}", total=path.stat().st_size)
        return handle, (bar, task)
    return handle, bar


def _lines(path: Path, progress: bool) -> Iterator[tuple[int, bytes]]:
    handle, bar = _open(path, progress)
    try:
        done = 0
        for number, line in enumerate(handle, start=1):
            if bar is not None:
                done += len(line)
                if number % 20_000 == 0:
                    bar[0].update(bar[1], completed=done)
            yield number, line
    finally:
        handle.close()
        if bar is not None:
            bar[0].stop()


def read_events(
    path: str | Path,
    *,
    stats: ReadStats | None = None,
    on_error: OnError | None = None,
    strict: bool = False,
    progress: bool = False,
    csv_columns: dict[str, str] | None = None,
    recorded: Recorded | None = None,
    blocks: Iterable[tuple[Sequence[int], list[bytes]]] | None = None,
) -> Iterator[Event]:
    """Events in file order from JSONL (inbound events or exported history) or CSV.

    History lines (with `sequence` and `event`) yield their event, so a history export can be
    replayed under another policy. `blocks`: (line numbers, lines) of the file to read instead
    of all of them (a shard of a replay, `streams.tools.sharded`), each read as one chunk (a
    chunk of plain events is decoded at once). An export holds personal
    fields sealed: `recorded` collects the outcomes the records kept of them
    (`lifecycle.replay.Recorded`).
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    report = _raise if strict else (on_error or stats.errors.append)
    if path.suffix.lower() == ".csv":
        yield from _read_csv(path, stats, report, csv_columns or {})
        return
    name = str(path)
    if blocks is not None:
        for numbers, lines in blocks:
            yield from _read_chunk(numbers, lines, name, stats, report, recorded)
        return
    yield from _read_jsonl(path, name, stats, report, progress, recorded)


def _read_jsonl(
    path: Path,
    name: str,
    stats: ReadStats,
    report: OnError,
    progress: bool,
    recorded: Recorded | None,
) -> Iterator[Event]:
    """A whole JSONL file, a chunk of lines at a time: a chunk of nothing but inbound events
    (the common case) is decoded in one call, any other chunk line by line by `_read_lines`.

    Both give the same events and reports in the same order; this only skips the per-line
    bookkeeping (a tuple per line, the checks one at a time) when no line needs it."""
    handle, bar = _open(path, progress)
    number = 1
    try:
        while True:
            chunk = handle.readlines(CHUNK_BYTES)
            if not chunk:
                break
            if bar is not None:
                bar[0].update(bar[1], completed=handle.tell())
            start, number = number, number + len(chunk)
            yield from _read_chunk(range(start, number), chunk, name, stats, report, recorded)
    finally:
        handle.close()
        if bar is not None:
            bar[0].stop()


def _read_chunk(
    numbers: Sequence[int],
    chunk: list[bytes],
    name: str,
    stats: ReadStats,
    report: OnError,
    recorded: Recorded | None,
) -> Iterator[Event]:
    """Lines read together (each with its line end): nothing but inbound events (the common
    case) decoded in one call, anything else line by line by `_read_lines`."""
    events = _plain_events(chunk)
    if events is not None:
        stats.lines += len(events)
        yield from events
        return
    yield from _read_lines(zip(numbers, chunk, strict=True), name, stats, report, recorded)


def plain_chunk(chunk: list[bytes], stats: ReadStats) -> list[Event] | None:
    """The events of lines read together (counted in `stats`) when they are all non-blank
    inbound events the structs take (`_plain_events`), else None: read them with
    `read_events`, which reads any line. For a caller that wants a chunk's events at once."""
    events = _plain_events(chunk)
    if events is not None:
        stats.lines += len(events)
    return events


#: Bytes of lines read at once from a JSONL file (~400 typical events): decoded together,
#: then decided while they are still in the CPU's caches (as `streams.tools.sharded.OWN_BYTES`;
#: 256 KB before, 1-6 % more CPU time for a replay in one process in 2 alternated pairs).
CHUNK_BYTES = 64 * 1024

_SEQUENCE = b'"sequence"'
_Q = _SEQUENCE.index(b"q")
#: `q`s looked at one by one before `has_sequence` searches for the word itself.
_MOST_QS = 64
_HISTORY_START = b'{"person_id"'
_start = itemgetter(slice(0, len(_HISTORY_START)))


def has_sequence(joined: bytes) -> bool:
    """`b'"sequence"' in joined`, found from its one `q`: a search for one byte runs at
    memory speed, one for the word ~100 times slower (its last byte, `"`, is everywhere in
    JSON), and few lines hold a `q` (4 in 64 KB of the bench's events)."""
    at = joined.find(b"q", _Q)
    for _ in range(_MOST_QS):
        if at == -1:
            return False
        if joined.startswith(_SEQUENCE, at - _Q):
            return True
        at = joined.find(b"q", at + 1)
    return at != -1 and joined.find(_SEQUENCE, at - _Q) != -1


def line_starts(chunk: list[bytes]) -> set[bytes]:
    """The distinct first bytes of the lines, as many as `{"person_id"` has: for the checks
    of `_plain_events` over a few values instead of every line (the usual chunk has one)."""
    return set(map(_start, chunk))


def history_start(starts: set[bytes]) -> bool:
    """Whether a line of `line_starts` starts `{"person_id"` (it is read whole, as an export's
    record may be: `_read_lines`)."""
    return _HISTORY_START in starts


def _plain_events(chunk: list[bytes]) -> list[Event] | None:
    """The events of lines read together (each with its line end, which JSON reads as
    whitespace) when all are non-blank inbound events the structs take, or None: then
    `_read_lines` reads them, as it reads any line, and gives the same events.

    Checked over the whole chunk at once: no line is a history record or starts
    `{"person_id"` (neither `"sequence"` anywhere nor `{"person_id"` at a line's start),
    each opens an object (so none is blank), and none is longer than MAX_PAYLOAD_BYTES
    with its line end. A chunk these refuse that a line-by-line check would take (a
    `"sequence"` deep in a value) is read line by line."""
    starts = line_starts(chunk)
    if (
        history_start(starts)
        or not all(start[:1] == b"{" for start in starts)
        or has_sequence(b"".join(chunk))
        or max(map(len, chunk), default=0) > MAX_PAYLOAD_BYTES
    ):
        return None
    return fast_events(chunk)


def _read_lines(
    lines: Iterable[tuple[int, bytes]],
    name: str,
    stats: ReadStats,
    report: OnError,
    recorded: Recorded | None,
) -> Iterator[Event]:
    """(line number, line) pairs, one at a time: events in batches, history lines, bad lines."""
    batch: list[tuple[int, bytes]] = []

    def flush() -> Iterator[Event]:
        events = _decode_batch(batch)
        if events is not None:
            yield from events
        else:  # something in the batch is bad: find it line by line
            for number, line in batch:
                try:
                    yield decode_event(line)
                except InvalidMessage as error:
                    stats.bad += 1
                    report(BadLine(name, number, str(error)))
        batch.clear()

    for number, line in lines:
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        stats.lines += 1
        if line.startswith(b'{"person_id"') or line.find(b'"sequence"', 0, 200) != -1:
            yield from flush()
            try:
                event = _history_event(line, recorded)
                if event is None:
                    event = decode_event(line)
                else:
                    stats.history_records += 1
                yield event
            except InvalidMessage as error:
                stats.bad += 1
                report(BadLine(name, number, str(error)))
            continue
        batch.append((number, line))
        if len(batch) >= BATCH:
            yield from flush()
    yield from flush()


#: Lines validated in one pydantic call: ~40 % less time per event than one call per line.
BATCH = 1024
_EVENT_LIST = TypeAdapter(list[Event])


def _decode_batch(batch: list[tuple[int, bytes]]) -> list[Event] | None:
    """All events of the batch in one validation, or None if any line is not a valid event.

    Each line must hold exactly one value, so the count check catches a line holding two.
    """
    if not batch or any(len(line) > MAX_PAYLOAD_BYTES for _, line in batch):
        return None
    events = fast_events([line for _, line in batch])  # msgspec; None: pydantic decides
    if events is not None:
        return events
    try:
        events = _EVENT_LIST.validate_json(b"[" + b",".join(line for _, line in batch) + b"]")
    except ValidationError:
        return None
    return events if len(events) == len(batch) else None


def _history_event(line: bytes, recorded: Recorded | None = None) -> Event | None:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise InvalidMessage(f"not JSON: {error}") from None
    if not (isinstance(data, dict) and "sequence" in data and "event" in data):
        return None
    if recorded is not None:
        remember_outcomes(recorded, data)
    try:
        return Event.model_validate(data["event"])
    except ValidationError as error:
        raise InvalidMessage(f"history record event: {describe_validation_error(error)}") from None


def remember_outcomes(recorded: Recorded, data: dict[str, Any]) -> None:
    """Keep a history record's outcomes (as JSON data) for a replay that cannot open it."""
    outcomes = data.get("outcomes")
    if outcomes:
        event = data["event"]
        recorded[(data["person_id"], event["event_id"])] = (data["policy_version"], outcomes)


def read_history(
    path: str | Path,
    *,
    stats: ReadStats | None = None,
    on_error: OnError | None = None,
    strict: bool = False,
    progress: bool = False,
) -> Iterator[HistoryRecord]:
    """History records from a JSONL export (`leadflow export-history`)."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    report = _raise if strict else (on_error or stats.errors.append)
    for number, line in _lines(path, progress):
        if not line.strip():
            continue
        stats.lines += 1
        try:
            yield HistoryRecord.model_validate_json(line)
        except ValidationError as error:
            stats.bad += 1
            report(BadLine(str(path), number, describe_validation_error(error)))


def _read_csv(
    path: Path, stats: ReadStats, report: OnError, columns: dict[str, str]
) -> Iterator[Event]:
    """CSV with a header row, read by the mapping engine with the `--csv-map` shorthand:
    `columns` maps event fields to CSV headers when they differ (`profile.job_title` style
    keys fill the profile). Anything more takes a mapping file (`streams.tools.mapping`)."""
    from streams.tools.mapping import (
        ImportStats,
        MappingError,
        columns_mapping,
        read_header,
        read_mapped,
    )

    mapped = ImportStats()
    try:
        mapping = columns_mapping(columns, read_header(path))
        yield from read_mapped([path], mapping, stats=mapped, on_error=report)
    except MappingError as error:
        reason = str(error).removeprefix(f"{path}: ").removeprefix(f"{path}:1: ")
        hint = " (give a mapping: --mapping MAP.yaml, see `leadflow import --help`)"
        raise BadLine(str(path), 1, reason + hint) from None
    finally:
        stats.lines += mapped.lines
        stats.bad += mapped.bad
