"""`leadflow replay` on every core: persons sharded across processes, output in input order.

Each worker process reads the whole file but decides only the lines of its own persons; a
person's events therefore meet the same state in the same order as in one process, and
nothing any rule decides changes. Identity merges hand events from one person to another
(`lifecycle.merge`), so persons joined by a `person_merged` anywhere in the file (chains
included) are one group and go to one worker: a first pass finds those lines (a byte
search, then a parse of each) before the workers start. Then `jobs` scanner processes read
a byte range of the file each, and note every line's worker and the hash of its event id;
from those each worker knows its own lines and which of their ids may repeat
(`streams.tools.repeats`) without decoding the whole file itself.

Every line a worker prints (a stage change, a final state, a bad line, a conflict) goes to
the parent tagged with the number of the input line that produced it; the parent merges
the workers' streams by that number, so stdout and stderr hold the same lines in the same
order as a run in one process (`tests/unit/test_replay_output_pinned.py` runs both).
A line whose person cannot be read (not JSON, no string `person_id`) goes to worker 0,
which reports it as one process would.
"""

from __future__ import annotations

import heapq
import os
import pickle
import resource
import shutil
import tempfile
import traceback
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, compress, starmap
from operator import attrgetter
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import orjson

from events.inbound import Event
from lifecycle.funnel import Funnel, FunnelReport
from lifecycle.merge import MERGED
from lifecycle.policy import Policy
from lifecycle.replay import HashedIds, Recorded, Replayer, bulk_gc
from lifecycle.simulate import Outcome, Simulation, fold_both
from streams.tools.files import (
    BadLine,
    ReadStats,
    has_sequence,
    history_start,
    line_starts,
    plain_chunk,
    read_events,
)
from streams.tools.repeats import DERIVED, Repeats, id_of, lenient_json

#: Files at least this large are sharded by default (`--jobs 0`); below, forking costs more
#: than it saves (about 200k events of the synthetic kind).
SHARD_BYTES = 32_000_000

#: Bytes read at once where a whole file is scanned or read (whole lines are carried over).
SCAN_BYTES = 1024 * 1024

#: Bytes of a worker's own lines decoded at once (~400 events): the events of a block are
#: then still in the CPU's caches when they are decided. With 1 MB blocks (~6,500 events,
#: ~10 MB of objects) the first reads of each event and of its person's state stalled on
#: memory; 64 KB took ~10 % off the workers' CPU time on the bench (6 alternated runs).
OWN_BYTES = 64 * 1024


def scratch_short(path: Path) -> str | None:
    """Why the scratch files of a sharded read of `path` would not fit in the temporary
    directory (`$TMPDIR`), or None: the scanners copy each worker's lines there, about the
    file's size in all (`Scans`), removed at the end."""
    directory = tempfile.gettempdir()
    need = path.stat().st_size + path.stat().st_size // 10 + (64 << 20)
    free = shutil.disk_usage(directory).free
    if free >= need:
        return None
    return (
        f"{directory} has {free / 1e6:,.0f} MB free and the shards' scratch files need "
        f"~{need / 1e6:,.0f} MB (set TMPDIR to a larger disk to use every core)"
    )


def default_jobs(path: Path) -> int:
    """One worker per usable core for a large file, else one process (and where processes
    cannot fork)."""
    try:
        size = path.stat().st_size
    except OSError:
        return 1
    if size < SHARD_BYTES or not hasattr(os, "fork"):
        return 1
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity is not None else os.cpu_count()
    return max(1, cores or 1)


# --- which worker decides a line -------------------------------------------------------------


class _Person(msgspec.Struct):
    person_id: Any = None


_person_key = msgspec.json.Decoder(_Person).decode


def _as_history_event(data: Any) -> Any:
    """A history record's event, as `streams.tools.files.read_events` takes it; else `data`."""
    if isinstance(data, dict) and "sequence" in data and "event" in data:
        return data["event"]
    return data


def person_of(line: bytes) -> str | None:
    """The person a line's event is for, read as `read_events` will read it; None if none."""
    if line.startswith(b'{"person_id"') or line.find(b'"sequence"', 0, 200) != -1:
        data = _as_history_event(lenient_json(line))
        person = data.get("person_id") if isinstance(data, dict) else None
    else:
        try:
            person = _person_key(line).person_id
        except (msgspec.ValidationError, msgspec.DecodeError):
            data = lenient_json(line)
            person = data.get("person_id") if isinstance(data, dict) else None
    return person if isinstance(person, str) else None


class _PlainKey(msgspec.Struct):
    person_id: str | None = None
    event_id: Any = None


_plain_key = msgspec.json.Decoder(_PlainKey).decode


def plain_keys(lines: list[bytes]) -> list[tuple[str | None, Any]] | None:
    """(`person_of`, `id_of`) of each line, in one pass, when no line needs more than
    `person_of`'s struct decode: no history record or line starting `{"person_id"` (which
    `person_of` parses whole), no blank line, no line that is not a JSON object, no
    `person_id` other than a string or null. Else None, and each line is read alone.

    The same decode of the same bytes as `person_of`'s and `id_of`'s, with a stricter type
    for the person (what it takes `_person_key` takes, with the same value), without a Python
    call per line: ~0.3 CPU seconds less per million lines in each worker of the bench."""
    if not _plain(lines):
        return None
    try:
        return [(key.person_id, key.event_id) for key in map(_plain_key, lines)]
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def _plain(lines: list[bytes]) -> bool:
    """No line is a history record or starts `{"person_id"` (`person_of` parses those whole)."""
    return not (history_start(line_starts(lines)) or has_sequence(b"".join(lines)))


class _Keys(msgspec.Struct):
    """`_PlainKey` of the usual line: a string person and a string event id."""

    person_id: str
    event_id: str


_keys = msgspec.json.Decoder(_Keys).decode
_person_id, _event_id = attrgetter("person_id"), attrgetter("event_id")


def usual_owners(lines: list[bytes], groups: Groups, jobs: int) -> tuple[bytes, list[int]] | None:
    """`scan_range`'s owner bytes and id hashes of a block of lines that all have a string
    person and a string event id (and none is a history record, `_plain`), else None: the
    same decode as `plain_keys`'s with stricter types, each step over the whole block in C
    (the scanners' per-line Python was ~60 % of their time)."""
    if not _plain(lines):
        return None
    try:
        keys = list(map(_keys, lines))
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    persons = list(map(_person_id, keys))
    parent = groups.parent
    if parent:  # `Groups.owners`
        root = groups.root
        persons = [root(p) if p in parent else p for p in persons]
    owners = bytes(map(jobs.__rmod__, map(hash, persons)))  # hash(p) % jobs
    return owners, list(map(hash, map(_event_id, keys)))


class Groups:
    """Persons joined by identity merges (union-find); each group is decided by one worker."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def root(self, person: str) -> str:
        parent = self.parent
        root = person
        while root in parent:
            root = parent[root]
        while person != root:  # path compression
            parent[person], person = root, parent[person]
        return root

    def join(self, a: str, b: str) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    @classmethod
    def of_file(cls, path: Path) -> Groups:
        """Every `person_merged` of the file (events or history records) joins two persons."""
        return cls.of_merges([merges_in(path, 0, path.stat().st_size)])

    @classmethod
    def of_merges(cls, parts: Iterable[list[tuple[str, str]]]) -> Groups:
        """The groups of the merges of each part of a file (`merges_in`). A group's root is
        its least person whatever the order of its joins, so parts found apart join alike."""
        groups = cls()
        for merges in parts:
            for a, b in merges:
                groups.join(a, b)
        return groups

    def shard(self, person: str | None, jobs: int) -> int:
        """The worker of a person's group. Python's string hash differs between interpreters
        but not between a process and its forks, and every worker is a fork of one parent."""
        if person is None:
            return 0
        root = self.root(person) if person in self.parent else person
        return hash(root) % jobs

    def owners(self, persons: Iterable[str | None], jobs: int) -> list[int]:
        """`shard` of each person (`plain_keys` of a block of lines)."""
        parent, root = self.parent, self.root
        return [0 if p is None else hash(root(p) if p in parent else p) % jobs for p in persons]


def merges_in(path: Path, start: int, end: int) -> list[tuple[str, str]]:
    """(person, survivor) of each `person_merged` in `path[start:end]` (whole lines; events
    or history records), in file order: a byte search, then a parse of each line it finds.

    Read a block of whole lines at a time, not mapped: the pages of a mapped file count in
    this process's RSS (the parent's peak was the file's size above its own)."""
    merges: list[tuple[str, str]] = []
    with path.open("rb") as handle:
        handle.seek(start)
        left, rest = end - start, b""
        while True:
            data = handle.read(min(SCAN_BYTES, left))
            left -= len(data)
            block = rest + data if rest else data
            stop = block.rfind(b"\n") + 1 if data else len(block)  # at the end, the rest
            _merges_of(block, stop, merges)
            rest = block[stop:]
            if not data:
                return merges


def _merges_of(block: bytes, end: int, merges: list[tuple[str, str]]) -> None:
    """Append the persons of each merge in the whole lines of `block[:end]`."""
    needle = MERGED.encode()
    at = block.find(needle, 0, end)
    while at != -1:
        start = block.rfind(b"\n", 0, at) + 1
        stop = block.find(b"\n", at, end)
        stop = end if stop == -1 else stop
        data = _as_history_event(lenient_json(block[start:stop]))
        if isinstance(data, dict) and data.get("type") == MERGED:
            a, b = data.get("person_id"), data.get("merged_into")
            if isinstance(a, str) and isinstance(b, str):
                merges.append((a, b))
        at = block.find(needle, stop, end)


def groups_of(path: Path, jobs: int, scratch: Path) -> Groups:
    """`Groups.of_file`, its byte ranges (`ranges`) searched by `jobs` forked processes."""
    spans = ranges(path, jobs)

    def search(k: int) -> list[tuple[str, str]]:
        return merges_in(path, *spans[k])

    return Groups.of_merges(_forked(jobs, search, scratch, "merges"))


# --- the first pass: which worker decides each line, and which ids may repeat ------------------
#
# Each line's owner (the worker that decides it) and the hash of its event id, found for the
# whole file by `jobs` scanner processes at once, each over its own byte range of whole lines
# (`ranges`, `scan_range`), which write each worker's lines and their ids' hashes into files
# it then reads (`Scans`): before this each worker decoded the whole file to find its own
# lines (~19 % of a worker's time on the bench). Python's string hash is the same in every
# fork of one parent.

#: A line's owner byte: the worker's number (at most `MAX_JOBS - 1`), with `NO_ID` set when the
#: line has no string event id; `NOBODY` for a blank line.
NOBODY = 0xFF
NO_ID = 0x80
MAX_JOBS = 64


def ranges(path: Path, jobs: int) -> list[tuple[int, int]]:
    """`jobs` byte ranges [start, end) covering the file, each of whole lines (some may be
    empty)."""
    size = path.stat().st_size
    starts = [0]
    with path.open("rb") as handle:
        for k in range(1, jobs):
            at = max(size * k // jobs, starts[-1])
            if at > 0:
                handle.seek(at - 1)
                handle.readline()  # to the start of the first line at or after `at`
                at = handle.tell()
            starts.append(max(at, starts[-1]))
    return list(zip(starts, [*starts[1:], size], strict=True))


def scan_range(
    path: Path, groups: Groups, jobs: int, start: int, end: int
) -> Iterator[tuple[list[bytes], bytes, list[int]]]:
    """The lines of `path[start:end]` (whole lines), a block at a time, with the owner byte
    and event id hash of each: the owner is `groups.shard(person_of(line), jobs)`, the id
    `id_of`'s."""
    with path.open("rb") as handle:
        handle.seek(start)
        left = end - start
        while left > 0 and (block := handle.readlines(min(SCAN_BYTES, left))):
            got = sum(map(len, block))
            if got > left:  # `readlines` reads on until it has *more* than it was asked
                got -= len(block.pop())  # the next range's first line
                if not block:  # the file changed under us: stop rather than loop
                    break
            left -= got
            usual = usual_owners(block, groups, jobs)
            if usual is not None:
                yield block, *usual
                continue
            keys = plain_keys(block)
            if keys is not None:
                shards = groups.owners([person for person, _ in keys], jobs)
                ids = [ident for _, ident in keys]
            else:  # a blank line, a history record, an odd person: one line at a time
                shards, ids = [], []
                for line in block:
                    text = line.strip()
                    shards.append(groups.shard(person_of(line), jobs) if text else NOBODY)
                    ids.append(id_of(text) if text else None)
            yield (
                block,
                bytes(
                    [
                        s if type(i) is str or s == NOBODY else s | NO_ID
                        for s, i in zip(shards, ids, strict=True)
                    ]
                ),
                [hash(i) if type(i) is str else 0 for i in ids],
            )


#: `bytes.translate` tables of owner bytes, for each worker `w`: 1 where a line is w's
#: (`_MINE[w]`), and where it is w's and has a string event id (`_COUNTED[w]`).
_MINE = [bytes(int(b != NOBODY and b & ~NO_ID == w) for b in range(256)) for w in range(MAX_JOBS)]
_COUNTED = [bytes(int(b == w) for b in range(256)) for w in range(MAX_JOBS)]
_KINDS = ("lines", "numbers", "hashes")


@dataclass(frozen=True)
class Scans:
    """What the scanners wrote in `scratch`, for each range `k` of the file (`ranges`) and
    each worker `w`: the range's lines that w decides (`lines-k-w`, as the file has them),
    their numbers within the range (`numbers-k-w`, from 0) and the hashes of their event ids
    (`hashes-k-w`, of the lines with a string id); `lines`: how many lines each range has.

    So a worker reads only its own lines, already split from the others' (reading the whole
    file and picking them was ~0.9 CPU s of each worker's ~7 on the bench)."""

    scratch: Path
    jobs: int
    lines: list[int]

    def path(self, kind: str, k: int, shard: int) -> Path:
        return self.scratch / f"{kind}-{k}-{shard}"

    def repeats(self, shard: int, size: int) -> HashedIds:
        """The ids that may repeat among worker `shard`'s lines (`streams.tools.repeats`: a
        shard's persons, merge groups whole, never meet another shard's, so the ids of its
        own lines are all it needs to know); `size`: the file's bytes."""
        repeats = Repeats(size)
        for k in range(self.jobs):
            hashes: array[int] = array("q")
            hashes.frombytes(self.path("hashes", k, shard).read_bytes())
            repeats.add_hashes(hashes)
        return HashedIds(repeats.kept_hashes, DERIVED)

    def own_blocks(self, shard: int) -> Iterator[tuple[list[int], list[bytes]]]:
        """Worker `shard`'s lines in file order, a block at a time, as (their numbers, the
        lines) (`streams.tools.files.read_events(blocks=…)`)."""
        first = 1  # the number of the range's first line
        for k in range(self.jobs):
            lines_path, numbers_path = self.path("lines", k, shard), self.path("numbers", k, shard)
            with lines_path.open("rb") as lines, numbers_path.open("rb") as at:
                while block := lines.readlines(OWN_BYTES):
                    offsets: array[int] = array("q")
                    offsets.frombytes(at.read(offsets.itemsize * len(block)))
                    yield [first + offset for offset in offsets], block
            first += self.lines[k]


def write_range(
    path: Path, groups: Groups, jobs: int, k: int, start: int, end: int, scratch: Path
) -> int:
    """Scan range `k`, `path[start:end]`, and write its files of every worker (`Scans`);
    returns how many lines it has."""
    with ExitStack() as stack:
        files = [
            [stack.enter_context((scratch / f"{kind}-{k}-{w}").open("wb")) for kind in _KINDS]
            for w in range(jobs)
        ]
        index = 0
        for block, owners, hashes in scan_range(path, groups, jobs, start, end):
            span = range(index, index + len(block))
            for w, (lines, at, ids) in enumerate(files):
                mine = owners.translate(_MINE[w])
                lines.write(b"".join(compress(block, mine)))
                array("q", compress(span, mine)).tofile(at)
                array("q", compress(hashes, owners.translate(_COUNTED[w]))).tofile(ids)
            index += len(block)
    return index


def scan_files(path: Path, groups: Groups, jobs: int, scratch: Path) -> Scans:
    """Scan the file's `ranges` in `jobs` forked processes at once, each writing its files to
    `scratch` (`write_range`); returns them once every scanner is done (RuntimeError with
    its traceback if one failed)."""
    spans = ranges(path, jobs)

    def scan(k: int) -> int:
        start, end = spans[k]
        return write_range(path, groups, jobs, k, start, end, scratch)

    return Scans(scratch, jobs, _forked(jobs, scan, scratch, "scan"))


def _forked(jobs: int, work: Callable[[int], Any], scratch: Path, name: str) -> list[Any]:
    """`work(k)` for k in range(jobs), each in a forked process, all at once; their results
    (pickled through `scratch`) in order, once all are done (RuntimeError with the traceback
    of the first that failed)."""
    pids = []
    for k in range(jobs):
        pid = os.fork()
        if pid == 0:  # it never returns into the parent's code
            code = 1
            try:
                result = work(k)
                with (scratch / f"{name}-{k}.pickle").open("wb") as handle:
                    pickle.dump(result, handle, protocol=pickle.HIGHEST_PROTOCOL)
                code = 0
            except BaseException:
                (scratch / f"{name}-error-{k}").write_text(traceback.format_exc())
            finally:
                os._exit(code)
        pids.append(pid)
    failed = [k for k, pid in enumerate(pids) if os.waitpid(pid, 0)[1] != 0]
    if failed:
        error = scratch / f"{name}-error-{failed[0]}"
        detail = error.read_text() if error.exists() else "killed"
        raise RuntimeError(f"a sharded {name} failed:\n" + detail)
    results = []
    for k in range(jobs):
        with (scratch / f"{name}-{k}.pickle").open("rb") as handle:
            results.append(pickle.load(handle))
    return results


def numbered(
    path: Path,
    scans: Scans,
    shard: int,
    stats: ReadStats,
    on_error: Callable[[BadLine], None],
    recorded: Recorded,
) -> Iterator[tuple[list[int], list[Event]]]:
    """Worker `shard`'s events in file order, a block at a time, with the number of the line
    of each, read as `read_events(blocks=scans.own_blocks(shard))` reads them (each line is
    one event or one bad line, handed to `on_error` in its place). A block of plain events,
    the usual one, is handed on whole as it was decoded, not through `read_events`'s
    generators and a queue of numbers one event at a time; any other block one event at a
    time, so a bad line is reported before the events after it are decided."""
    queue: deque[int] = deque()  # the numbers of a block read by read_events, in order

    def report(error: BadLine) -> None:
        queue.popleft()
        on_error(error)

    for numbers, lines in scans.own_blocks(shard):
        events = plain_chunk(lines, stats)
        if events is not None:
            yield numbers, events
            continue
        queue.extend(numbers)
        blocks = [(numbers, lines)]
        for event in read_events(
            path, stats=stats, on_error=report, blocks=blocks, recorded=recorded
        ):
            yield [queue.popleft()], [event]


# --- a worker ---------------------------------------------------------------------------------


class _Out:
    """A worker's records to the parent: `TAG LINE PAYLOAD\\n` (payloads are one-line JSON)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.write = handle.write

    def record(self, tag: bytes, line: int, payload: bytes) -> None:
        self.write(b"%s %d %s\n" % (tag, line, payload))


@dataclass(frozen=True)
class _Job:
    """What every worker of one replay shares: the file, the groups, the policy, which
    events to keep, and whether to print states."""

    jobs: int
    path: Path
    groups: Groups
    policy: Policy
    #: None: every event (no --person, no --as-of)
    keep: Callable[[Event], bool] | None
    state: bool
    #: the first pass's files (`scan_files`)
    scans: Scans


def _work(job: _Job, shard: int, out: _Out) -> dict[str, int]:
    path, policy, keep, state = job.path, job.policy, job.keep, job.state
    # A first pass: this worker's lines, and the ids that may repeat among them (the others
    # skip the dedup index, `streams.tools.repeats`).
    repeats = job.scans.repeats(shard, path.stat().st_size)

    def report(error: BadLine) -> None:
        out.record(b"E", error.line, orjson.dumps(str(error)))

    stats = ReadStats()
    # Outcomes a history line kept of sealed fields (`streams.tools.files`), as the CLI path keeps.
    recorded: Recorded = {}
    replayer = Replayer(policy, recorded=recorded, repeats=repeats)
    states = replayer.states
    created: list[int] = []  # the line that created each state, in the states' order
    conflicts = 0
    record, dumps, apply_all = out.record, orjson.dumps, replayer.apply_all
    with bulk_gc():
        for numbers, events in numbered(path, job.scans, shard, stats, report, recorded):
            for number, event in zip(numbers, events, strict=True):
                if keep is not None and not keep(event):
                    continue
                for decision in apply_all(event):
                    if decision.conflict is not None:
                        conflicts += 1
                        text = f"conflict: person {decision.person_id}: {decision.conflict}"
                        record(b"E", number, dumps(f"{text}; not applied"))
                    if not state:
                        for change in decision.changes:
                            record(b"O", number, dumps(change))
                if state and len(created) < len(states):
                    created.extend([number] * (len(states) - len(created)))
        out.write(b"B\n")
        if state:
            for number, person_state in zip(created, states.values(), strict=True):
                record(b"S", number, dumps(person_state.to_wire()))
        out.write(b"B\n")
    return {"lines": stats.lines, "bad": stats.bad, "conflicts": conflicts}


#: Bytes of records a worker holds before it writes them to the parent. The parent merges in
#: input order, so it waits for the worker whose next record it has not seen while the other
#: workers' pipes fill: with 1 MB held (~1,700 records), each of the bench's two workers spent
#: 7 to 13 s of its 20 to 28 s (a busy 2-core machine) blocked in its writes, the two taking
#: turns more than running together; with 64 KB, under 1 s.
WORKER_BUFFER = 64 * 1024

#: What a pipe from a worker holds, where Linux lets us set it (64 KB by default, 1 MB at
#: most unless /proc/sys/fs/pipe-max-size allows more): room for a worker to run ahead of
#: the merge. On the bench it halved what was left of the time blocked in writes (~1.3 to
#: ~0.5 s per worker on a busy machine).
PIPE_BYTES = 1024 * 1024


def _pipe() -> tuple[int, int]:
    """A pipe (read end, write end) of `PIPE_BYTES` where it can be had, else as it comes."""
    read_fd, write_fd = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):  # not Linux, or a lower limit
        pass
    return read_fd, write_fd


def _worker(job: _Job, shard: int, fd: int) -> int:
    """A forked worker's life: its records, then its totals (`T`) or what failed (`X`)."""
    with os.fdopen(fd, "wb", buffering=WORKER_BUFFER) as handle:
        try:
            totals = _work(job, shard, _Out(handle))
        except BaseException:
            handle.write(b"X " + orjson.dumps(traceback.format_exc()) + b"\n")
            return 1
        totals["pss_kb"] = _pss_kb()
        handle.write(b"T " + orjson.dumps(totals) + b"\n")
    return 0


def _pss_kb() -> int:
    """This process's proportional set size (pages shared with the other forks counted in
    shares), from /proc; 0 where there is none. At the end of a replay it is near its peak."""
    try:
        with open("/proc/self/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- the parent ---------------------------------------------------------------------------


def _records(handle: BinaryIO) -> Iterator[tuple[int, bytes, bytes]]:
    """One phase of a worker's records, up to its `B` (or its end)."""
    for line in handle:
        tag = line[:1]
        if tag == b"B":
            return
        if tag == b"X":
            raise RuntimeError("a replay worker failed:\n" + orjson.loads(line[2:]))
        _, number, payload = line.split(b" ", 2)
        yield int(number), tag, payload[:-1]


def _first(record: tuple[int, bytes, bytes]) -> int:
    return record[0]


def replay_sharded(
    path: Path,
    policy: Policy,
    jobs: int,
    *,
    person: str | None,
    cutoff: datetime | None,
    state: bool,
    write: Callable[[bytes], Any],
    warn: Callable[[str], None],
) -> dict[str, int]:
    """What `leadflow replay` prints, from `jobs` worker processes; returns the totals."""

    def keep(event: Event) -> bool:
        if person is not None and event.person_id != person:
            return False
        return cutoff is None or event.occurred_at <= cutoff

    if not 1 < jobs <= MAX_JOBS:
        raise ValueError(f"a sharded replay takes 2 to {MAX_JOBS} workers, not {jobs}")
    with tempfile.TemporaryDirectory(prefix="leadflow-replay-") as scratch:
        groups = groups_of(path, jobs, Path(scratch))
        scans = scan_files(path, groups, jobs, Path(scratch))
        every = person is None and cutoff is None
        job = _Job(jobs, path, groups, policy, None if every else keep, state, scans)
        return _replay_workers(job, write, warn)


def _replay_workers(
    job: _Job, write: Callable[[bytes], Any], warn: Callable[[str], None]
) -> dict[str, int]:
    """Fork the job's workers, merge their records in input order; returns the totals."""
    jobs = job.jobs
    workers: list[tuple[int, BinaryIO]] = []
    for shard in range(jobs):
        read_fd, write_fd = _pipe()
        pid = os.fork()
        if pid == 0:  # the worker: it never returns into the parent's code
            code = 1
            try:
                os.close(read_fd)
                for _, handle in workers:
                    handle.close()
                code = _worker(job, shard, write_fd)
            finally:
                os._exit(code)
        os.close(write_fd)
        workers.append((pid, os.fdopen(read_fd, "rb", buffering=1 << 20)))

    handles = [handle for _, handle in workers]
    totals = {"lines": 0, "bad": 0, "conflicts": 0, "pss_kb": 0}
    try:
        for _phase in ("changes and reports", "states"):
            for _, tag, payload in heapq.merge(*map(_records, handles), key=_first):
                if tag == b"E":
                    warn(orjson.loads(payload))
                else:
                    write(payload)
                    write(b"\n")
        for handle in handles:
            line = handle.readline()
            if line.startswith(b"X"):
                raise RuntimeError("a replay worker failed:\n" + orjson.loads(line[2:]))
            worker = orjson.loads(line[2:])
            for key in totals:
                totals[key] += worker[key]
    finally:
        for handle in handles:
            handle.close()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for pid, _ in workers:
            _, _status, usage = os.wait4(pid, 0)
            rss += usage.ru_maxrss
        _report_memory(rss, totals["pss_kb"] + _pss_kb())
    return totals


def _report_memory(rss_kb: int, pss_kb: int) -> None:
    """The memory of this replay's processes together, for bench/replay.py: the sum of their
    peak RSS (pages shared by the forks counted in each) and of their PSS at the end."""
    target = os.environ.get("LEADFLOW_RSS_REPORT")
    if target:
        Path(target).write_text(orjson.dumps({"rss_kb": rss_kb, "pss_kb": pss_kb}).decode())


# --- simulate of a file on every core ---------------------------------------------------------
#
# The same shards as a replay's (persons of one merge group in one worker), each folded by the
# command's own code over the worker's lines; a person's decisions, and their funnel record,
# depend on their shard's lines alone, so the funnels of the shards are disjoint and their
# union is the funnel of one run. Reports are computed from the union, as one run computes
# them; bad lines come back with their line numbers and are reported in file order.


@dataclass(slots=True)
class ShardedRead:
    """What the workers read: lines, bad lines, and the bad lines' reports in file order."""

    lines: int = 0
    bad: int = 0
    errors: list[BadLine] = field(default_factory=list)


def _sharded(
    path: Path,
    jobs: int,
    work: Callable[[Iterator[tuple[int, Event]], HashedIds, Recorded], Any],
) -> tuple[list[Any], ShardedRead]:
    """`work(numbered events, repeats, recorded)` over each worker's own events (with the
    number of the line of each), in `jobs` forked processes; their results in worker order,
    and what they read."""
    if not 1 < jobs <= MAX_JOBS:
        raise ValueError(f"a sharded read takes 2 to {MAX_JOBS} workers, not {jobs}")
    size = path.stat().st_size
    with tempfile.TemporaryDirectory(prefix="leadflow-shards-") as directory:
        scratch = Path(directory)
        groups = groups_of(path, jobs, scratch)
        scans = scan_files(path, groups, jobs, scratch)

        def run(shard: int) -> tuple[Any, int, int, list[tuple[str, int, str]]]:
            repeats = scans.repeats(shard, size)
            stats, recorded = ReadStats(), {}
            blocks = numbered(path, scans, shard, stats, stats.errors.append, recorded)
            events = chain.from_iterable(starmap(zip, blocks))  # (number, event) pairs
            result = work(events, repeats, recorded)
            errors = [(e.path, e.line, e.reason) for e in stats.errors]  # BadLine: no pickle
            return result, stats.lines, stats.bad, errors

        pieces = _forked(jobs, run, scratch, "worker")
    read = ShardedRead()
    for _, lines, bad, errors in pieces:
        read.lines += lines
        read.bad += bad
        read.errors.extend(BadLine(*error) for error in errors)
    read.errors.sort(key=_line_of)
    return [piece[0] for piece in pieces], read


def _line_of(error: BadLine) -> int:
    return error.line


def simulate_sharded(
    path: Path, policy_a: Policy, policy_b: Policy, jobs: int
) -> tuple[Simulation, ShardedRead]:
    """`lifecycle.simulate.simulate` of a JSONL file by `jobs` worker processes: the same
    result as one process's."""

    def work(
        numbered: Iterator[tuple[int, Event]], repeats: HashedIds, recorded: Recorded
    ) -> tuple[Any, ...]:
        view_a, view_b = Funnel(), Funnel()
        count, conflicts, differing = fold_both(
            (event for _, event in numbered),
            policy_a,
            policy_b,
            recorded,
            follow=True,
            funnels=(view_a, view_b),
            repeats=repeats,
        )
        # the funnels whole: a merge group's aliases are folded in its shard
        return count, conflicts, dict(view_a.persons), dict(view_b.persons), differing

    pieces, read = _sharded(path, jobs, work)
    view_a, view_b = Funnel(), Funnel()
    events = conflicts = 0
    differing: list[Outcome] = []
    for n_events, conflicted, persons_a, persons_b, outcomes in pieces:
        events += n_events
        conflicts += conflicted
        view_a.persons.update(persons_a)
        view_b.persons.update(persons_b)
        differing.extend(outcomes)
    differing.sort(key=_person_of_outcome)  # as one run lists them: by person id
    result = Simulation(
        policy_a.version,
        policy_b.version,
        events,
        view_a.report(),
        view_b.report(),
        differing,
        view_a.mqls(),
        view_b.mqls(),
        conflicts,
    )
    return result, read


def _person_of_outcome(outcome: Outcome) -> str:
    return outcome.person_id


# --- funnel of a file on every core -----------------------------------------------------------


def funnel_sharded(
    path: Path, policy: Policy, jobs: int
) -> tuple[FunnelReport, list[tuple[int, str]], ShardedRead]:
    """`funnel_of(replay(events, policy))` of a JSONL file by `jobs` worker processes: the
    same report as one process's, and the conflicts (event ids reused with other content,
    not applied) with the number of their line, in file order."""

    def work(
        numbered: Iterator[tuple[int, Event]], repeats: HashedIds, recorded: Recorded
    ) -> tuple[dict[str, Any], list[tuple[int, str]]]:
        view = Funnel()
        conflicts: list[tuple[int, str]] = []
        replayer = Replayer(policy, recorded=recorded, repeats=repeats)
        with bulk_gc():  # as `lifecycle.replay.replay`
            for number, event in numbered:
                for decision in replayer.apply_all(event):
                    if decision.conflict is not None:
                        text = f"conflict: person {decision.person_id}: {decision.conflict}"
                        conflicts.append((number, f"{text}; not applied"))
                    view.add_decision(decision)
        # the funnel whole: a merge group's aliases are folded in its shard
        return dict(view.persons), conflicts

    pieces, read = _sharded(path, jobs, work)
    view = Funnel()
    conflicts: list[tuple[int, str]] = []
    for persons, conflicted in pieces:
        view.persons.update(persons)
        conflicts.extend(conflicted)
    conflicts.sort(key=_number)  # one line's decisions are in one worker, in their order
    return view.report(), conflicts, read


def _number(conflict: tuple[int, str]) -> int:
    return conflict[0]
