"""A person's state: a small plain record, the fold of evolve() over their history.

Never a Machine per person (a Machine costs ~26 KB; this record a few hundred bytes). The
event ids a person applied are not in it: they are kept per event beside it (`lifecycle.dedup`),
so a state stays small however long the person's history. Table values written before that
still carry a `recent` window, which `from_wire` ignores.

The profile and the stage entry times are held packed (`pack_profile`, `pack_entered`): a
replay keeps a state per person, and a dict of seven fields with its unique email cost ~350
bytes, packed ~140; the entry times ~250, packed ~60. `state.profile` and
`state.entered_at` read and assign plain dicts as ever (a fresh one per read: change them by
assigning).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from lifecycle.records import Reason
from lifecycle.stages import NEW, STAGES


@dataclass(slots=True)
class PersonState:
    person_id: str
    stage: str = NEW
    highest: str | None = None
    entered_at: dict[str, datetime] = field(default_factory=dict)
    last_activity: datetime | None = None
    first_touch_source: str | None = None
    lead_source: str | None = None
    sequence: int = 0
    score: float = 0.0
    score_at: datetime | None = None
    profile: dict[str, Any] = field(default_factory=dict)
    sla_breached: tuple[str, ...] = ()
    last_reason: Reason | None = None
    erased: bool = False
    last_touch_source: str | None = None
    touches: int = 0
    first_touch_at: datetime | None = None
    #: Identity merges: the survivor this id is an alias of (and the sequence of the merge),
    #: and every id this person absorbed, directly or through chains (cycle detection).
    merged_into: str | None = None
    merged_sequence: int = 0
    aliases: tuple[str, ...] = ()

    @property
    def current_stage(self) -> str | None:
        """The stage as the wire names it: None until the person has one."""
        return None if self.stage == NEW else self.stage

    def copy(self) -> PersonState:
        return PersonState(
            self.person_id,
            self.stage,
            self.highest,
            dict(self.entered_at),
            self.last_activity,
            self.first_touch_source,
            self.lead_source,
            self.sequence,
            self.score,
            self.score_at,
            dict(self.profile),
            self.sla_breached,
            self.last_reason,
            self.erased,
            self.last_touch_source,
            self.touches,
            self.first_touch_at,
            self.merged_into,
            self.merged_sequence,
            self.aliases,
        )

    def to_wire(self) -> dict[str, Any]:
        """Plain data for orjson (table values, the API)."""
        return {
            "person_id": self.person_id,
            "stage": self.current_stage,
            "highest": self.highest,
            "entered_at": self.entered_at,
            "last_activity": self.last_activity,
            "first_touch_source": self.first_touch_source,
            "lead_source": self.lead_source,
            "sequence": self.sequence,
            "score": self.score,
            "score_at": self.score_at,
            "profile": self.profile,
            "sla_breached": self.sla_breached,
            "last_reason": self.last_reason,
            "erased": self.erased,
            "last_touch_source": self.last_touch_source,
            "touches": self.touches,
            "first_touch_at": self.first_touch_at,
            "merged_into": self.merged_into,
            "merged_sequence": self.merged_sequence,
            "aliases": self.aliases,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> PersonState:
        parse = datetime.fromisoformat

        def when(value: str | None) -> datetime | None:
            return None if value is None else parse(value)

        reason = data.get("last_reason")
        return cls(
            person_id=data["person_id"],
            stage=data["stage"] or NEW,
            highest=data["highest"],
            entered_at={k: parse(v) for k, v in data["entered_at"].items()},
            last_activity=when(data["last_activity"]),
            first_touch_source=data["first_touch_source"],
            lead_source=data["lead_source"],
            sequence=data["sequence"],
            score=data["score"],
            score_at=when(data["score_at"]),
            profile=data["profile"],
            sla_breached=tuple(data["sla_breached"]),
            last_reason=None if reason is None else Reason(**reason),
            erased=data.get("erased", False),
            last_touch_source=data.get("last_touch_source"),
            touches=data.get("touches", 0),
            first_touch_at=when(data.get("first_touch_at")),
            merged_into=data.get("merged_into"),
            merged_sequence=data.get("merged_sequence", 0),
            aliases=tuple(data.get("aliases", ())),
        )


# -- the profile, packed -------------------------------------------------------------------
#: Each order of profile keys seen, numbered: a packed profile names its keys by number.
_ORDERS: list[tuple[str, ...]] = []
_ORDER: dict[tuple[str, ...], int] = {}
#: Orders numbered at most; a profile with another order is packed with its keys (as JSON).
MAX_ORDERS = 1024
_EMPTY = b""


def pack_profile(profile: dict[str, Any]) -> bytes:
    """The profile as bytes: its values as a JSON list, then the number of its key order (or
    the dict as JSON, past `MAX_ORDERS`); equal to the dict again through `unpack_profile`,
    key order included (a state's JSON lists the profile keys as they came)."""
    if not profile:
        return _EMPTY
    keys = tuple(profile)
    number = _ORDER.get(keys)
    if number is None and len(_ORDERS) < MAX_ORDERS:
        number = _ORDER[keys] = len(_ORDERS)
        _ORDERS.append(keys)
    packed = orjson.dumps(profile if number is None else [*profile.values(), number])
    return bytes(memoryview(packed))  # exact size: orjson's bytes keep a ~4 KB buffer


def unpack_profile(packed: bytes) -> dict[str, Any]:
    if not packed:
        return {}
    data = orjson.loads(packed)
    if type(data) is dict:
        return data
    return dict(zip(_ORDERS[data.pop()], data, strict=True))


# -- the stage entry times, packed --------------------------------------------------------
#: One entry: the stage's number in STAGES (one byte), microseconds since the epoch (UTC).
_ENTRY = struct.Struct("<Bq")
_STAGE_NUMBER = {stage: n for n, stage in enumerate(STAGES)}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def pack_entered(entered: dict[str, datetime]) -> bytes:
    """Stage → entry time as 9 bytes a stage, in the dict's order; a stage or a time of
    another kind (a time not in the one UTC tzinfo every event's time is in) packs the dict
    as JSON instead, so every time comes back as it was, offset included."""
    if not entered:
        return _EMPTY
    number, pack = _STAGE_NUMBER.get, _ENTRY.pack
    parts = []
    for stage, at in entered.items():
        n = number(stage)
        if n is None or type(at) is not datetime or at.tzinfo is not UTC:
            return bytes(memoryview(orjson.dumps(entered)))
        parts.append(pack(n, (at - _EPOCH) // _MICROSECOND))
    return b"".join(parts)


def unpack_entered(packed: bytes) -> dict[str, datetime]:
    if not packed:
        return {}
    if packed[:1] == b"{":  # no stage number is that byte (123)
        return {k: datetime.fromisoformat(v) for k, v in orjson.loads(packed).items()}
    return {STAGES[n]: _EPOCH + micros * _MICROSECOND for n, micros in _ENTRY.iter_unpack(packed)}


def _entry_at(packed: bytes, stage: str) -> int:
    """The offset of `stage`'s entry in packed entry times, or -1."""
    number = _STAGE_NUMBER.get(stage)
    if number is None:
        return -1
    size = _ENTRY.size
    for at in range(0, len(packed), size):
        if packed[at] == number:
            return at
    return -1


def entered(state: PersonState, stage: str) -> datetime | None:
    """`state.entered_at.get(stage)` without building the dict (the SLA check, per event)."""
    packed = _entered_slot.__get__(state, PersonState)
    if packed[:1] == b"{":
        return unpack_entered(packed).get(stage)
    at = _entry_at(packed, stage)
    if at == -1:
        return None
    return _EPOCH + _ENTRY.unpack_from(packed, at)[1] * _MICROSECOND


def enter(state: PersonState, stage: str, when: datetime) -> None:
    """`state.entered_at[stage] = when`, on the packed bytes (evolve, per change): the entry
    replaced where it is (a dict keeps a key's place), or added at the end."""
    packed = _entered_slot.__get__(state, PersonState)
    number = _STAGE_NUMBER.get(stage)
    if packed[:1] == b"{" or number is None or type(when) is not datetime or when.tzinfo is not UTC:
        state.entered_at = {**state.entered_at, stage: when}
        return
    entry = _ENTRY.pack(number, (when - _EPOCH) // _MICROSECOND)
    at = _entry_at(packed, stage)
    if at == -1:
        packed += entry
    else:
        packed = packed[:at] + entry + packed[at + _ENTRY.size :]
    _entered_slot.__set__(state, packed)


# The dataclass's `profile` and `entered_at` slots hold the packed bytes; the attributes read
# and assign dicts (the generated __init__, __eq__, __repr__ and pickling go through them).
_entered_slot = PersonState.entered_at  # type: ignore[attr-defined]


def _packed(name: str, pack: Any, unpack: Any) -> property:
    slot = getattr(PersonState, name)
    get, put = slot.__get__, slot.__set__

    def read(state: PersonState) -> Any:
        return unpack(get(state, PersonState))

    def assign(state: PersonState, value: Any) -> None:
        put(state, pack(value))

    return property(read, assign, doc=f"`{name}` as a dict, held packed ({pack.__name__})")


_profile_slot = PersonState.profile  # type: ignore[attr-defined]


def profile_keys(state: PersonState) -> tuple[str, ...]:
    """The keys of the state's profile, in order, without reading its values (the worker asks
    per event whether the profile holds a personal field)."""
    packed = _profile_slot.__get__(state, PersonState)
    if not packed:
        return ()
    if packed[:1] == b"{":
        return tuple(orjson.loads(packed))
    return _ORDERS[int(packed[packed.rindex(b",") + 1 : -1])]  # `[*values, number]`


PersonState.profile = _packed("profile", pack_profile, unpack_profile)  # type: ignore[assignment,method-assign]
PersonState.entered_at = _packed("entered_at", pack_entered, unpack_entered)  # type: ignore[assignment,method-assign]
