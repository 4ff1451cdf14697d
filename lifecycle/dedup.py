"""Exact idempotency: was this person's event id applied before, and with the same content?

Upstream systems re-send old events (a marketing platform replaying yesterday's webhook
backlog, a connector re-snapshotting), so "a duplicate `event_id` changes nothing" holds
however old the original is: no window. What a person's applied event ids are is kept
*outside* their state, one small entry per applied event (`Seen`: a 16-byte digest of the
event's content, the history sequence it got, and the changes it produced, if any), in a
store the runtime chooses (RocksDB beside the person table on the worker, `SeenIndex` in
memory for replay, simulate and verify). The runtime looks the entry up and hands it to
`decide()`; the rule of what a second arrival means lives here:

* same content → a duplicate: nothing changes, the first changes are re-emitted (same ids);
* other content → a conflict: nothing changes and nothing is re-emitted; the runtime
  dead-letters the event with `Decision.conflict` as the reason, offline readers report it.

Content is the validated event (what the core reads): fields the envelope ignores, key
order, whitespace and the offset of `occurred_at` do not count. A sweeper tick
(`inactivity_timeout`) is named by person and deadline, and its `occurred_at` is when a
sweep noticed the deadline, which differs between sweeps, workers and restarts, so a tick's
digest leaves `occurred_at` out. An event re-keyed from an alias to its survivor
(`lifecycle.merge`) is the same event whichever alias it came through: `forwarded_via` does
not count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from events.codec import event_body, given_fields
from events.inbound import Event, EventType
from lifecycle.evolve import Applied
from lifecycle.records import Decision, Reason, StageChange

#: Bytes of BLAKE2b kept per applied event (a collision needs ~2^64 events of one person).
DIGEST_SIZE = 16
_SEQUENCE_SIZE = 8
_TICK = EventType.INACTIVITY_TIMEOUT.value
#: A fresh 16-byte BLAKE2b, copied per digest: ~40 % cheaper than parsing the constructor's
#: keywords for every event (the same bytes come out).
_BLAKE2B = hashlib.blake2b(digest_size=DIGEST_SIZE)


def _blake2b(data: bytes) -> bytes:
    h = _BLAKE2B.copy()
    h.update(data)
    return h.digest()


#: The event as history stores it (`HistoryRecord.event`): the input of `fingerprint`.
body = event_body


def fingerprint(content: Mapping[str, Any]) -> bytes:
    """16 bytes of BLAKE2b of the event's canonical JSON (sorted keys, no None fields).

    `content` is `body(event)`, or the `event` of a history record read back as JSON: the
    two are the same data, so the worker rebuilds its store from history without validating.
    """
    if content.get("type") == _TICK:
        content = {k: v for k, v in content.items() if k != "occurred_at"}
    elif "forwarded_via" in content:  # the same event, whichever alias it came through
        content = {k: v for k, v in content.items() if k != "forwarded_via"}
    return _blake2b(orjson.dumps(content, option=orjson.OPT_SORT_KEYS))


_DIGEST_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z


def digest_of(event: Event) -> bytes:
    """`fingerprint(body(event))`, read off the event's values instead of `model_dump`.

    The same bytes are hashed: orjson writes an aware UTC datetime as pydantic's JSON mode
    does (`…Z`, microseconds only when not zero), and the keys are sorted either way.
    `tests/unit/test_fastcodec.py` checks the two agree on generated events. A hand-off's
    absorbed lifecycle (rare) goes through `body`.
    """
    content = given_fields(event)
    if content is None:
        return fingerprint(body(event))
    if content["type"] == _TICK:
        del content["occurred_at"]
    else:
        content.pop("forwarded_via", None)
    h = _BLAKE2B.copy()  # `_blake2b`, inline: once per applied event
    h.update(orjson.dumps(content, option=_DIGEST_OPTIONS))
    return h.digest()


@dataclass(slots=True, frozen=True)
class Seen:
    """What is kept of one applied event: enough to recognise and answer a second arrival."""

    digest: bytes
    sequence: int
    changes: tuple[StageChange, ...] = ()


def repeated(
    person_id: str,
    policy_version: str,
    event: Event,
    seen: Seen,
    content: Mapping[str, Any] | None = None,
    *,
    erased: bool = False,
) -> Decision:
    """The decision for an event id the person already applied (`seen`): it changes nothing.

    `content` is the event as history stores it (its personal fields sealed), which is what
    the digest was taken of; the event as received is compared too, for records written
    before personal fields were sealed. An erased person's known id is a duplicate whatever
    it carries: with their key gone, what the first arrival held cannot be compared.
    """
    if (
        erased
        or (content is not None and fingerprint(content) == seen.digest)
        or fingerprint(body(event)) == seen.digest
    ):
        return Decision(
            person_id, seen.sequence, policy_version, event, seen.changes, duplicate=True
        )
    reason = (
        f"event_id {event.event_id} reused with different content; first seen at history "
        f"sequence {seen.sequence}"
    )
    return Decision(
        person_id, seen.sequence, policy_version, event, duplicate=True, conflict=reason
    )


def key(person_id: str, event_id: str) -> bytes:
    """The store key of (person, event id): length-prefixed, so no two pairs share one."""
    person = person_id.encode()
    return len(person).to_bytes(2, "big") + person + event_id.encode()


def pack(digest: bytes, sequence: int, changes: bytes = b"") -> bytes:
    """A store value: digest, sequence (8 bytes, big-endian), then the changes' JSON if any."""
    return digest + sequence.to_bytes(_SEQUENCE_SIZE, "big") + changes


def stored(sequence: int, content: Mapping[str, Any], changes: Sequence[Any]) -> bytes:
    """The store value of an applied event: from a decision (its changes are records) or a
    history record read back as JSON (its changes are dicts); both give the same bytes."""
    return pack(fingerprint(content), sequence, orjson.dumps(changes) if changes else b"")


def unpack(value: bytes) -> Seen:
    """A store value back to `Seen` (the changes parsed only when there are some)."""
    head = DIGEST_SIZE + _SEQUENCE_SIZE
    sequence = int.from_bytes(value[DIGEST_SIZE:head], "big")
    changes: tuple[StageChange, ...] = ()
    if len(value) > head:
        changes = tuple(StageChange.from_wire(c) for c in orjson.loads(value[head:]))
    return Seen(value[:DIGEST_SIZE], sequence, changes)


#: One applied event in `SeenIndex`: 16 bytes naming the event id, the content digest, the
#: history sequence (8 bytes, big-endian) ...
_ENTRY = 2 * DIGEST_SIZE + _SEQUENCE_SIZE
#: ... or, for a person whose n-th applied event got sequence n (nearly everyone: only a
#: replay started from given states or an odd history breaks it), the two digests alone.
_NUMBERED = 2 * DIGEST_SIZE
#: Events of one person beyond which `SeenIndex` finds an id through a dict, not a scan.
INDEXED_AFTER = 256
#: Events of one person from which their entries grow in place (a bytearray), not by copy.
_GROWN_AFTER = 64


def _id_digest(event_id: str) -> bytes:
    try:
        raw = event_id.encode()  # the same bytes as below for any id without a lone surrogate
    except UnicodeEncodeError:
        raw = event_id.encode("utf-8", "surrogatepass")
    h = _BLAKE2B.copy()  # `_blake2b`, inline: once per event
    h.update(raw)
    return h.digest()


class KeptChanges:
    """The changes of the events that moved someone, packed to re-emit on a redelivery.

    One byte string per event (~100 bytes a change, where the records cost ~500): the
    values of each change in field order, as JSON, with the strings that recur (stages, rule
    names and sentences, sources, temperatures, the policy version) as numbers into one table
    of words, and a change id, person id or event id that the store key and the change's
    place imply left out. `get` builds records equal, field by field, to the ones kept, so a
    duplicate prints the very same bytes (`tests/unit/test_seen_index.py`).
    """

    __slots__ = ("_number", "_packed", "_words")

    def __init__(self) -> None:
        self._packed: dict[bytes, bytes] = {}
        self._words: list[str | None] = []
        self._number: dict[str | None, int] = {}

    def _word(self, text: str | None) -> int:
        number = self._number.get(text)
        if number is None:
            number = self._number[text] = len(self._words)
            self._words.append(text)
        return number

    def put(self, person_id: str, event_id: str, changes: tuple[StageChange, ...]) -> None:
        word = self._word
        rows = []
        for n, c in enumerate(changes):
            derived = c.change_id == f"{c.person_id}:{c.sequence}:{n}"
            rows.append(
                (
                    None if derived else c.change_id,
                    None if c.person_id == person_id else c.person_id,
                    c.sequence,
                    word(c.from_stage),
                    word(c.to_stage),
                    [word(stage) for stage in c.passed_through],
                    c.occurred_at,
                    None if c.event_id == event_id else c.event_id,
                    word(c.reason.rule),
                    word(c.reason.text),
                    word(c.lead_source),
                    word(c.first_touch_source),
                    word(c.temperature),
                    word(c.policy_version),
                    word(c.last_touch_source),
                    c.touches,
                    c.merged,
                )
            )
        # copied: orjson's bytes keep the room of its output buffer (~4 KB), not their size
        self._packed[key(person_id, event_id)] = bytes(memoryview(orjson.dumps(rows)))

    def get(self, person_id: str, event_id: str) -> tuple[StageChange, ...]:
        packed = self._packed.get(key(person_id, event_id))
        if packed is None:
            return ()
        words, parse = self._words, datetime.fromisoformat
        changes = []
        for n, row in enumerate(orjson.loads(packed)):
            (change_id, person, sequence, before, after, passed, at, event, rule, text) = row[:10]
            person = person_id if person is None else person
            changes.append(
                StageChange(
                    f"{person}:{sequence}:{n}" if change_id is None else change_id,
                    person,
                    sequence,
                    words[before],
                    words[after],
                    tuple(words[stage] for stage in passed),
                    parse(at),
                    event_id if event is None else event,
                    Reason(words[rule], words[text]),
                    *(words[w] for w in row[10:13]),
                    words[row[13]],
                    words[row[14]],
                    row[15],
                    merged=tuple(row[16]),
                )
            )
        return tuple(changes)

    def __len__(self) -> int:
        return len(self._packed)


class SeenIndex:
    """Every applied event of a replay, in memory: 32 bytes per event, ~200 more per change.

    Per person, one growing byte string of fixed-size entries (the event id's BLAKE2b and the
    content digest; the sequence is the entry's place, or for the rare person whose
    sequences do not count 1, 2, 3 … a third field, in `sequenced`): no Python object per
    event, where a dict entry of packed bytes cost ~145 bytes. An event id is told from
    another of the same person by its 16-byte BLAKE2b, as content is (a false match needs a
    128-bit collision, ~2^64 ids of one person); nothing is forgotten, however old. The
    changes of the few events that moved someone are packed beside (`KeptChanges`), so a
    duplicate re-emits the same changes.
    """

    __slots__ = ("_missed", "_named", "changes", "count", "indexed", "persons", "sequenced")

    def __init__(self) -> None:
        #: person -> entries of `_NUMBERED` bytes, the n-th with sequence n
        self.persons: dict[str, bytes | bytearray] = {}
        #: person -> entries of `_ENTRY` bytes, with their sequence
        self.sequenced: dict[str, bytes | bytearray] = {}
        self.changes = KeptChanges()
        #: persons with more than INDEXED_AFTER events: id digest -> offset (a scan of their
        #: entries per event would make a long history quadratic)
        self.indexed: dict[str, dict[bytes, int]] = {}
        self.count = 0
        self._named = ("", b"")  # the last id digested: replay looks an id up, then adds it
        self._missed: tuple[str, str] | None = None  # the last (person, id) looked up in vain

    def _id(self, event_id: str) -> bytes:
        last, named = self._named
        if event_id != last:
            named = _id_digest(event_id)
            self._named = (event_id, named)
        return named

    def _find(self, person_id: str, entries: bytes | bytearray, named: bytes, size: int) -> int:
        """The offset of the entry for the id digest `named`, or -1 (a hit must be aligned)."""
        if len(entries) > INDEXED_AFTER * size:
            index = self.indexed.get(person_id)
            if index is None:
                index = self.indexed[person_id] = {
                    bytes(entries[at : at + DIGEST_SIZE]): at for at in range(0, len(entries), size)
                }
            return index.get(named, -1)
        at = entries.find(named)
        while at != -1 and at % size:
            at = entries.find(named, at + 1)
        return at

    def get(self, person_id: str, event_id: str) -> Seen | None:
        entries = self.persons.get(person_id)
        size = _NUMBERED
        if entries is None:
            entries = self.sequenced.get(person_id) if self.sequenced else None
            size = _ENTRY
        if entries is None:
            at = -1
        elif size == _ENTRY or len(entries) > INDEXED_AFTER * _NUMBERED:
            at = self._find(person_id, entries, self._id(event_id), size)
        else:  # `_find` and `_id`, inline: once per event
            last, named = self._named
            if event_id != last:
                named = _id_digest(event_id)
                self._named = (event_id, named)
            at = entries.find(named)
            while at != -1 and at % _NUMBERED:
                at = entries.find(named, at + 1)
        if at == -1:
            self._missed = (person_id, event_id)
            return None
        digest = bytes(entries[at + DIGEST_SIZE : at + 2 * DIGEST_SIZE])
        if size == _NUMBERED:
            sequence = at // _NUMBERED + 1
        else:
            sequence = int.from_bytes(entries[at + 2 * DIGEST_SIZE : at + _ENTRY], "big")
        return Seen(digest, sequence, self.changes.get(person_id, event_id))

    def remember(self, decision: Applied, content: Mapping[str, Any] | None = None) -> None:
        """Record an applied decision (never a duplicate); the first application wins.

        `content` is the event's `body()` when the caller has it already (history records).
        """
        event = decision.event
        person = decision.person_id
        event_id = event.event_id
        named = self._id(event_id)
        entries = self.persons.get(person)
        size = _NUMBERED
        if entries is None and self.sequenced:
            entries = self.sequenced.get(person)
            size = _NUMBERED if entries is None else _ENTRY
        if (
            entries is not None
            and self._missed != (person, event_id)
            and self._find(person, entries, named, size) != -1
        ):
            return
        self._missed = None
        digest = digest_of(event) if content is None else fingerprint(content)
        sequence = decision.sequence
        if size == _NUMBERED:
            if entries is None and sequence == 1:  # a person's first event: most persons once
                self.persons[person] = named + digest
                self._kept(decision, person, event_id)
                return
            if entries is not None and sequence == len(entries) // _NUMBERED + 1:
                if len(entries) < _GROWN_AFTER * _NUMBERED:  # `_grown`, inline: per event
                    self.persons[person] = b"".join((entries, named, digest))
                else:
                    self.persons[person] = self._grown(person, entries, named + digest, size)
                self._kept(decision, person, event_id)
                return
            entries = self._sequence(person, entries)  # the rare person: sequences kept
        entry = named + digest + sequence.to_bytes(_SEQUENCE_SIZE, "big")
        self.sequenced[person] = self._grown(person, entries, entry, _ENTRY)
        self._kept(decision, person, event_id)

    def _grown(
        self, person: str, entries: bytes | bytearray | None, entry: bytes, size: int
    ) -> bytes | bytearray:
        """`entries` with `entry` at the end."""
        if entries is None:
            return entry
        if len(entries) < _GROWN_AFTER * size:
            # bytes, one block of the exact size, while short: ~60 bytes a person less than a
            # bytearray (its object, its buffer and the buffer's spare room); copied per event
            return entries + entry
        if type(entries) is bytes:  # a long history: grown in place from now on
            entries = bytearray(entries)
        if self.indexed:
            index = self.indexed.get(person)
            if index is not None:
                index[entry[:DIGEST_SIZE]] = len(entries)
        entries += entry
        return entries

    def _sequence(self, person: str, entries: bytes | bytearray | None) -> bytes | None:
        """Move a person's entries to `sequenced`, each with the sequence its place implied."""
        if entries is None:
            return None
        del self.persons[person]
        self.indexed.pop(person, None)  # offsets of the old layout
        return b"".join(
            entries[at : at + _NUMBERED] + (at // _NUMBERED + 1).to_bytes(_SEQUENCE_SIZE, "big")
            for at in range(0, len(entries), _NUMBERED)
        )

    def _kept(self, decision: Applied, person: str, event_id: str) -> None:
        self.count += 1
        changes = decision.changes
        if changes:  # one event in eight or so
            if type(changes) is not tuple or any(type(c) is not StageChange for c in changes):
                changes = tuple(StageChange.of(c) for c in changes)  # from history records
            self.changes.put(person, event_id, changes)

    def __len__(self) -> int:
        return self.count
