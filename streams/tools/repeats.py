"""Which event ids of a JSONL file may occur in it more than once: one pass before a replay.

A replay of a file knows its whole input. An event whose id no other line of the file has
can be neither a redelivery nor a conflict, so `lifecycle.replay.Replayer` decides it with
nothing seen and keeps it out of the dedup index (`repeats`): on 1M synthetic events that
index, its content digests and its packed stage changes were ~30 % of the CPU time and
~600 bytes a person. Exact idempotency stays: every id that does repeat takes the whole path
from its first occurrence on.

The pass reads each line's event id as `streams.tools.files.read_events` will read it (the
last `event_id` key wins in every decoder here, escapes included; a history record's is its
event's) and sets one bit per id in a bit array of ~32 bits per line. An id whose bit is
already set may repeat: it is kept, with the rare false positive, which only costs that id
the whole path. Ids of the forms the identity rules derive for follow-ups
(`lifecycle.merge.handoff_id`, `returned_id`) are kept too, so a line carrying one meets
the follow-up it may equal. A line no decoder reads is a bad line and is never applied.
Memory: the bit array (~4 MB for 1M lines) and the kept ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson

#: Prefixes of the event ids the identity rules make for follow-ups (`lifecycle.merge`).
DERIVED = ("handoff:", "returned:")
#: Bytes of lines read at once.
CHUNK_BYTES = 1 << 20


class _Id(msgspec.Struct):
    event_id: Any = None


_event_id = msgspec.json.Decoder(_Id).decode


def lenient_json(line: bytes) -> Any:
    """The line's JSON, as liberal as any reader downstream (stdlib json takes NaN), or None."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line)
    except ValueError:
        return None


class _Record(msgspec.Struct):
    """What `id_of` reads of a line that may be a history record: the record's event's id, or
    the line's own."""

    sequence: Any = msgspec.UNSET
    event: _Id | msgspec.UnsetType | None = msgspec.UNSET
    event_id: Any = None


_record_ids = msgspec.json.Decoder(_Record).decode


def id_of(line: bytes) -> Any:
    """The event id `read_events` reads from one stripped, non-blank line (any JSON value;
    only a string makes a valid event), or None."""
    if line.startswith(b'{"person_id"') or line.find(b'"sequence"', 0, 200) != -1:
        try:  # the fields `record_id_of` reads, without building the record (~4x faster)
            record = _record_ids(line)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return record_id_of(line)
        if record.sequence is msgspec.UNSET or record.event is msgspec.UNSET:
            return record.event_id
        return None if record.event is None else record.event.event_id
    try:
        return _event_id(line).event_id
    except (msgspec.ValidationError, msgspec.DecodeError):  # not an object, or not JSON
        data = lenient_json(line)  # pydantic decides such a line: read it as loosely
        return data.get("event_id") if isinstance(data, dict) else None


class Repeats:
    """The ids of a stream of event ids that may occur in it more than once: one bit per id in
    a bit array of ~32 bits per line of a file of `size` bytes; an id whose bit is already set
    (or of a derived form) is kept."""

    def __init__(self, size: int) -> None:
        bits = 1 << max(16, (size // 5).bit_length())  # ~32 a ~160-byte line
        self._seen = bytearray(bits // 8)
        self._mask = bits - 1
        self.kept: set[str] = set()
        #: `add_hashes`: the hashes kept (ids of the derived forms are the reader's to keep)
        self.kept_hashes: set[int] = set()

    def add(self, ids: Iterable[Any]) -> None:
        """Count each id (any JSON value; only a string is an event's id)."""
        seen, mask, kept = self._seen, self._mask, self.kept
        for ident in ids:
            if type(ident) is not str:
                continue
            h = hash(ident) & mask
            at, bit = h >> 3, 1 << (h & 7)
            byte = seen[at]
            if byte & bit or ident.startswith(DERIVED):
                kept.add(ident)
            else:
                seen[at] = byte | bit

    def add_hashes(self, hashes: Iterable[int]) -> None:
        """Count ids by their `hash()` (`streams.tools.sharded.owned_of`)."""
        seen, mask, kept = self._seen, self._mask, self.kept_hashes
        for h in hashes:
            b = h & mask
            at, bit = b >> 3, 1 << (b & 7)
            byte = seen[at]
            if byte & bit:
                kept.add(h)
            else:
                seen[at] = byte | bit


def may_repeat(path: Path) -> set[str]:
    """The event ids of the JSONL file at `path` that may occur in it more than once (a
    sharded worker counts its own lines' ids by their hashes: `streams.tools.sharded.owned_of`)."""
    repeats = Repeats(path.stat().st_size)
    repeats.add(_ids(_all_lines(path)))
    return repeats.kept


def record_id_of(line: bytes) -> Any:
    """`id_of` of a line that may be a history record, as `files._history_event` reads it:
    orjson, then the record's event or the line itself."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # reported as "not JSON"
    if isinstance(data, dict) and "sequence" in data and "event" in data:
        data = data["event"]
    return data.get("event_id") if isinstance(data, dict) else None


def _ids(lines: Iterable[bytes]) -> Iterator[Any]:
    """`id_of` of each non-blank line."""
    decode = _event_id
    for raw in lines:
        line = raw.rstrip(b"\r\n")
        if (  # `id_of` of the common line, inline: once per line
            line[:1] == b"{"
            and not line.startswith(b'{"person_id"')
            and line.find(b'"sequence"', 0, 200) == -1
        ):
            try:
                yield decode(line).event_id
            except (msgspec.ValidationError, msgspec.DecodeError):
                yield id_of(line)
        elif line.strip():
            yield id_of(line)


def _all_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.readlines(CHUNK_BYTES):
            yield from chunk
