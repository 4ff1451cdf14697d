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
from typing import Any

import orjson

from events.inbound import Event, EventType
from lifecycle.evolve import Applied
from lifecycle.records import Decision, StageChange

#: Bytes of BLAKE2b kept per applied event (a collision needs ~2^64 events of one person).
DIGEST_SIZE = 16
_SEQUENCE_SIZE = 8
_TICK = EventType.INACTIVITY_TIMEOUT.value


def body(event: Event) -> dict[str, Any]:
    """The event as history stores it (`HistoryRecord.event`): the input of `fingerprint`."""
    return event.model_dump(mode="json", exclude_none=True)


def fingerprint(content: Mapping[str, Any]) -> bytes:
    """16 bytes of BLAKE2b of the event's canonical JSON (sorted keys, no None fields).

    `content` is `body(event)`, or the `event` of a history record read back as JSON: the
    two are the same data, so the worker rebuilds its store from history without validating.
    """
    if content.get("type") == _TICK:
        content = {k: v for k, v in content.items() if k != "occurred_at"}
    elif "forwarded_via" in content:  # the same event, whichever alias it came through
        content = {k: v for k, v in content.items() if k != "forwarded_via"}
    canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=DIGEST_SIZE).digest()


_DIGEST_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z


def digest_of(event: Event) -> bytes:
    """`fingerprint(body(event))`, read off the event's values instead of `model_dump`.

    The same bytes are hashed: orjson writes an aware UTC datetime as pydantic's JSON mode
    does (`…Z`, microseconds only when not zero), and the keys are sorted either way.
    `tests/unit/test_fastcodec.py` checks the two agree on generated events. A hand-off's
    absorbed lifecycle (rare) goes through `body`.
    """
    if event.absorbed is not None:
        return fingerprint(body(event))
    content = {k: v for k, v in vars(event).items() if v is not None}
    profile = event.profile
    if profile is not None:
        content["profile"] = {k: v for k, v in vars(profile).items() if v is not None}
    if content["type"] == _TICK:
        del content["occurred_at"]
    else:
        content.pop("forwarded_via", None)
    canonical = orjson.dumps(content, option=_DIGEST_OPTIONS)
    return hashlib.blake2b(canonical, digest_size=DIGEST_SIZE).digest()


@dataclass(slots=True, frozen=True)
class Seen:
    """What is kept of one applied event: enough to recognise and answer a second arrival."""

    digest: bytes
    sequence: int
    changes: tuple[StageChange, ...] = ()


def repeated(person_id: str, policy_version: str, event: Event, seen: Seen) -> Decision:
    """The decision for an event id the person already applied (`seen`): it changes nothing."""
    if fingerprint(body(event)) == seen.digest:
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


class SeenIndex:
    """Every applied event of a replay, in memory: ~145 bytes per event, ~460 more per change.

    Values are packed bytes (digest and sequence); the changes of the few events that moved
    someone are kept as records beside them, so a duplicate re-emits the very same objects.
    """

    __slots__ = ("changes", "entries")

    def __init__(self) -> None:
        self.entries: dict[bytes, bytes] = {}
        self.changes: dict[bytes, tuple[StageChange, ...]] = {}

    def get(self, person_id: str, event_id: str) -> Seen | None:
        k = key(person_id, event_id)
        value = self.entries.get(k)
        if value is None:
            return None
        sequence = int.from_bytes(value[DIGEST_SIZE:], "big")
        return Seen(value[:DIGEST_SIZE], sequence, self.changes.get(k, ()))

    def remember(self, decision: Applied, content: Mapping[str, Any] | None = None) -> None:
        """Record an applied decision (never a duplicate); the first application wins.

        `content` is the event's `body()` when the caller has it already (history records).
        """
        event = decision.event
        k = key(decision.person_id, event.event_id)
        if k in self.entries:
            return
        digest = digest_of(event) if content is None else fingerprint(content)
        self.entries[k] = pack(digest, decision.sequence)
        if decision.changes:
            self.changes[k] = tuple(StageChange.of(c) for c in decision.changes)

    def __len__(self) -> int:
        return len(self.entries)
