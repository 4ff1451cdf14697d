"""`leadflow verify --history FILE` on every core: the same report as one process's.

A record is re-decided from the records of its person before it, and nothing else (the
recorded facts of a merge are in the survivor's own record), so the persons can be checked
apart. Each of `jobs` forked workers reads the whole file twice:

1. it decodes each line's person and event id only (msgspec, ~1 µs a line) and keeps the
   lines of its persons (`hash(person_id) % jobs`; a line with no string person goes by its
   number, and is a bad line for whoever reads it), and counts their event ids for the
   repeats pass (`streams.tools.repeats.Repeats`: an id that occurs once in the worker's lines
   occurs once in its person's records, since they are all there);
2. it validates its own lines (pydantic, as `read_history` does) and verifies them
   (`lifecycle.verify.verify_numbered`), with their line numbers.

The parent puts the reports together in file order: mismatches by the line of their record
(one record's in the order it found them), unknown policy versions by their first line, bad
lines by their line. Counts add up; erased persons are disjoint. Python's string hash is the
same in every fork of one parent, so the workers agree on the owner of every line.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
from pydantic import ValidationError

from events.codec import describe_validation_error
from events.outbound import HistoryRecord
from lifecycle.policy import Policy
from lifecycle.verify import Located, VerifyReport, verify_numbered
from streams.tools.files import BadLine
from streams.tools.repeats import CHUNK_BYTES, Repeats, lenient_json
from streams.tools.sharded import MAX_JOBS, ShardedRead, _forked


class _Event(msgspec.Struct):
    event_id: Any = None


class _Keys(msgspec.Struct):
    person_id: Any = None
    event: _Event | None = None


_keys = msgspec.json.Decoder(_Keys).decode


def keys_of(line: bytes) -> tuple[Any, Any]:
    """The person id and the event's id of one history line, as pydantic reads them from a
    valid record (any JSON values; (None, None) for a line that is not a JSON object)."""
    try:
        keys = _keys(line)
        return keys.person_id, None if keys.event is None else keys.event.event_id
    except (msgspec.ValidationError, msgspec.DecodeError):
        data = lenient_json(line)
        if not isinstance(data, dict):
            return None, None
        event = data.get("event")
        return data.get("person_id"), event.get("event_id") if isinstance(event, dict) else None


def _chunks(path: Path) -> Iterator[list[bytes]]:
    with path.open("rb") as handle:
        while chunk := handle.readlines(CHUNK_BYTES):
            yield chunk


def own_lines(path: Path, jobs: int, shard: int) -> tuple[bytearray, set[str]]:
    """Pass 1 of worker `shard`: a flag per line (1: its own), and the event ids of its own
    lines that may occur in them more than once."""
    own = bytearray()
    repeats = Repeats(max(1, path.stat().st_size // jobs))
    number = 0
    for chunk in _chunks(path):
        ids = []
        for line in chunk:
            number += 1
            if not line.strip():
                own.append(0)
                continue
            person, ident = keys_of(line)
            owner = hash(person) % jobs if type(person) is str else number % jobs
            if owner == shard:
                own.append(1)
                ids.append(ident)
            else:
                own.append(0)
        repeats.add(ids)
    return own, repeats.kept


def _verify_share(
    path: Path, policies: Mapping[str, Policy], jobs: int, shard: int
) -> tuple[Located, int, int, list[tuple[int, str]]]:
    """Worker `shard`: its report located by line number, its lines read, its bad lines."""
    own, repeats = own_lines(path, jobs, shard)
    lines = bad = 0
    errors: list[tuple[int, str]] = []

    def records() -> Iterator[tuple[int, HistoryRecord]]:
        nonlocal lines, bad
        number = 0
        validate = HistoryRecord.model_validate_json
        for chunk in _chunks(path):
            for line in chunk:
                number += 1
                if not own[number - 1]:
                    continue
                lines += 1
                try:
                    yield number, validate(line)
                except ValidationError as error:
                    bad += 1
                    errors.append((number, describe_validation_error(error)))

    located = verify_numbered(records(), policies, repeats)
    return located, lines, bad, errors


def verify_sharded(
    path: Path, policies: Mapping[str, Policy], jobs: int
) -> tuple[VerifyReport, ShardedRead]:
    """`lifecycle.verify.verify` of the history file at `path` (with the file's repeats) by
    `jobs` worker processes, and what they read (bad lines in file order)."""
    if not 1 < jobs <= MAX_JOBS:
        raise ValueError(f"a sharded verify takes 2 to {MAX_JOBS} workers, not {jobs}")
    with tempfile.TemporaryDirectory(prefix="leadflow-verify-") as directory:
        pieces = _forked(
            jobs,
            lambda shard: _verify_share(path, policies, jobs, shard),
            Path(directory),
            "verify",
        )
    report = _combined([located for located, *_ in pieces])
    read = ShardedRead()
    for _, lines, bad, errors in pieces:
        read.lines += lines
        read.bad += bad
        read.errors.extend(BadLine(str(path), line, reason) for line, reason in errors)
    read.errors.sort(key=_line_of)
    return report, read


def _combined(parts: list[Located]) -> VerifyReport:
    """One report of the workers' located reports: counts added, mismatches by where their
    record is (one record's in the order they were found), unknown policy versions by where
    they first occur."""
    report = VerifyReport()
    mismatches: list[tuple[Any, int, Any]] = []  # (where, worker's order, mismatch)
    first: dict[str, Any] = {}
    for located in parts:
        part = located.report
        report.checked += part.checked
        report.withheld += part.withheld
        report.erased |= part.erased
        for version, count in part.missing_policies.items():
            report.missing_policies[version] = report.missing_policies.get(version, 0) + count
            at = located.missing_first[version]
            first[version] = min(first.get(version, at), at)
        mismatches.extend(
            (at, order, mismatch)
            for order, (at, mismatch) in enumerate(
                zip(located.mismatch_at, part.mismatches, strict=True)
            )
        )
    mismatches.sort(key=_placed)
    report.mismatches = [m for _, _, m in mismatches]
    report.missing_policies = {
        v: report.missing_policies[v] for v in sorted(first, key=first.__getitem__)
    }
    return report


def _placed(item: tuple[Any, int, Any]) -> tuple[Any, int]:
    return item[0], item[1]


# --- the history topic ------------------------------------------------------------------------


def positioned(record: Any, key_of: Any) -> tuple[tuple[int, int], HistoryRecord]:
    """A history topic record parsed (`export.parse_history`), with where it is."""
    from streams.tools.export import parse_history

    return (record.partition, record.offset), parse_history(record, key_of)


#: Reads the history records of some partitions in (partition, offset) order, as
#: (where, record), telling `on_error` what it skips: `streams.cli.reading.history_from_broker`
ReadRuns = Callable[[set[int], Callable[[str], None]], Iterable[tuple[Any, HistoryRecord]]]


def verify_runs(
    runs: list[list[int]], read: ReadRuns, policies: Mapping[str, Policy]
) -> tuple[VerifyReport, list[str]]:
    """`verify --broker …` by one forked process per run of the history topic's partitions,
    each reading its run as one process reads them all (`read`: streamed, the dedup index
    whole): the report one process prints (a person's records are all on one partition),
    and what `read` skipped, in partition order."""

    def share(k: int) -> tuple[Located, list[str]]:
        said: list[str] = []
        return verify_numbered(read(set(runs[k]), said.append), policies, None), said

    with tempfile.TemporaryDirectory(prefix="leadflow-verify-") as directory:
        pieces = _forked(len(runs), share, Path(directory), "verify")
    return _combined([located for located, _ in pieces]), [s for _, said in pieces for s in said]


def runs_of(partitions: list[int], jobs: int) -> list[list[int]]:
    """`partitions` cut into at most `jobs` runs of consecutive ones, as even as can be."""
    size, extra = divmod(len(partitions), jobs)
    runs, start = [], 0
    for k in range(jobs):
        end = start + size + (1 if k < extra else 0)
        runs.append(partitions[start:end])
        start = end
    return [run for run in runs if run]


def _line_of(error: BadLine) -> int:
    return error.line
