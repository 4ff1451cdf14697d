"""A fast decoder of the inbound envelope, for the worker's events and for bulk reads (replay,
simulate, funnel, verify).

The contract stays `events.inbound.Event` (pydantic): this module only gets to the same
`Event` faster. msgspec structs built from the same field limits (`events.limits`, the
`occurred_at` pattern of `events.wire`) check a line in C, and the `Event` is then built
without validating it again. Anything the structs do not take (a `person_absorbed`
hand-off, an integer written as `3.0`, a line that is not an event) goes to pydantic, so an
input is refused exactly when pydantic refuses it, with pydantic's one-line reason;
`tests/unit/test_fastcodec.py` checks with hypothesis that an input the structs accept is
accepted by pydantic with an equal value, and that a struct's error names the field.
The bulk read (`fast_events`) decodes with `_Read`, which leaves `occurred_at` to
`_instant`: the same pattern, with a shortcut for the usual shape that
`tests/unit/test_fast_read.py` checks takes exactly what the pattern takes.

Building a pydantic model without validation writes the attributes pydantic itself sets
(`__dict__`, `__pydantic_fields_set__`, `__pydantic_extra__`, `__pydantic_private__`), as
`BaseModel.model_construct` does (pydantic 2.14 checked; pinned below 3); the same
test fails if a pydantic upgrade makes such an event differ from a validated one.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from operator import methodcaller
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct
from pydantic import BaseModel

from events.inbound import Event, Profile
from events.limits import MAX_ID, MAX_NAME, MAX_PAYLOAD_BYTES, MAX_SEALED, MAX_TEXT
from events.wire import OCCURRED_AT

_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID)]
_Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME)]
_Text = Annotated[str, Meta(max_length=MAX_TEXT)]
# `\Z`, not `$`: `$` also matches before a final newline, which pydantic refuses
_TIME_PATTERN = OCCURRED_AT.removesuffix("$") + r"\Z"
_Time = Annotated[str, Meta(pattern=_TIME_PATTERN)]
_NO_ABSORBED = msgspec.Raw(b"null")


class _Profile(Struct, frozen=True):
    email: _Text | None = None
    job_title: _Text | None = None
    seniority: _Name | None = None
    company: _Text | None = None
    industry: _Name | None = None
    employees: Annotated[int, Meta(ge=0, le=10_000_000)] | None = None
    country: _Name | None = None


class _Event(Struct, frozen=True):
    event_id: _Id
    type: _Name
    person_id: _Id
    occurred_at: _Time
    source: _Name | None = None
    campaign: _Text | None = None
    profile: _Profile | None = None
    reason: _Text | None = None
    schema_version: Annotated[int, Meta(ge=1, le=1000)] = 1
    merged_into: _Id | None = None
    #: a hand-off's absorbed lifecycle: decoded by pydantic (rare, and many more rules)
    absorbed: msgspec.Raw = _NO_ABSORBED
    forwarded_via: tuple[_Id, ...] | None = None
    forwarded_personal: Annotated[str, Meta(max_length=MAX_SEALED)] | None = None


class _Read(_Event, frozen=True):
    """`_Event` with `occurred_at` unchecked: the bulk read checks it in `_instant`, which
    takes the usual shape of a time in a fifth of the pattern's cost (the pattern took ~70 %
    of the decoder's time)."""

    occurred_at: str


_decode_struct = msgspec.json.Decoder(_Event).decode
_decode_read = msgspec.json.Decoder(_Read).decode
_time_pattern = re.compile(_TIME_PATTERN)
#: Every ASCII digit as "0": the shape of a time, compared with _SHAPES.
_ZEROS = bytes.maketrans(b"123456789", b"000000000")
#: The shapes of a time in the years 1901-2998 that the pattern takes whole, once
#: `fromisoformat` took the values: it holds the month to 1-12, the day to 1-31, the hour
#: to 0-23, minutes and seconds to 0-59 and the offset to under 24 hours; `_instant` checks
#: the year and the offset's minutes, the rest is here.
_SHAPES = frozenset(
    b"0000-00-00T00:00:00" + fraction + offset
    for fraction in (b"", *(b"." + b"0" * n for n in range(1, 7)))
    for offset in (b"Z", b"+00:00", b"-00:00")
)


def _instant(text: str) -> datetime | None:
    """`occurred_at` in the one UTC tzinfo if the contract's pattern (`events.wire`) holds and
    Python reads it, else None (pydantic decides). The usual shape is checked without the
    pattern; any other goes through it, as `_Event` checks it."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    usual = (
        text.isascii()
        and text.encode().translate(_ZEROS) in _SHAPES
        and "1901" <= text[:4] <= "2998"
        and (text[-1] == "Z" or text[-2] <= "5")
    )
    if not usual and _time_pattern.search(text) is None:
        return None
    return at.astimezone(UTC)


_new = object.__new__
intern = sys.intern
# pydantic's own slots on every model (`BaseModel.__slots__`), set as `model_construct` does
_slot = BaseModel.__dict__
_set_dict = _slot["__dict__"].__set__
_set_fields = _slot["__pydantic_fields_set__"].__set__
_set_extra = _slot["__pydantic_extra__"].__set__
_set_private = _slot["__pydantic_private__"].__set__


#: `model_fields_set` of a built model: its required fields. pydantic's would also name the
#: optional fields given; nothing in leadflow reads it, equality ignores it, and one set is
#: shared (models are frozen; pydantic copies the set before changing it, in `model_copy`).
_REQUIRED = {
    cls: {name for name, f in cls.model_fields.items() if f.is_required()}
    for cls in (Event, Profile)
}
_EVENT_REQUIRED = _REQUIRED[Event]


def _model(cls: type, values: dict[str, Any]) -> Any:
    """A pydantic model holding `values` (already valid), as `model_construct` builds it."""
    model = _new(cls)
    _set_dict(model, values)
    _set_fields(model, _REQUIRED[cls])
    _set_extra(model, None)
    _set_private(model, None)
    return model


def _shared(value: str | None) -> str | None:
    """One string object for a value of a few-valued field (type, source, industry, country,
    seniority, and the job titles and companies many persons share): a replay keeps them in
    every person's state, ~50-70 bytes each otherwise."""
    return None if value is None else intern(value)


def _profile(p: _Profile) -> Profile:
    values = {
        "email": p.email,
        "job_title": _shared(p.job_title),
        "seniority": _shared(p.seniority),
        "company": _shared(p.company),
        "industry": _shared(p.industry),
        "employees": p.employees,
        "country": _shared(p.country),
    }
    return _model(Profile, values)


def struct_of(raw: bytes | str) -> _Event:
    """The line checked by the structs alone; msgspec.ValidationError or DecodeError if not."""
    return _decode_struct(raw)


def event_of(s: _Event) -> Event | None:
    """The `Event` of a checked struct, or None when pydantic must decode the line."""
    at = _instant(s.occurred_at)
    return None if at is None else _event_at(s, at)


def _event_at(s: _Event, at: datetime) -> Event | None:
    """`event_of` with `occurred_at` already read (`_instant`'s value)."""
    absorbed = s.absorbed
    if absorbed is not _NO_ABSORBED and bytes(absorbed) != b"null":
        return None
    profile = s.profile
    source = s.source
    values = {
        "event_id": s.event_id,
        "type": intern(s.type),
        "person_id": s.person_id,
        "occurred_at": at,
        "source": None if source is None else intern(source),
        "campaign": s.campaign,
        "profile": None if profile is None else _profile(profile),
        "reason": s.reason,
        "schema_version": s.schema_version,
        "merged_into": s.merged_into,
        "absorbed": None,
        "forwarded_via": s.forwarded_via,
        "forwarded_personal": s.forwarded_personal,
    }
    # `_model(Event, values)`, inline: it runs once per event
    model = _new(Event)
    _set_dict(model, values)
    _set_fields(model, _EVENT_REQUIRED)
    _set_extra(model, None)
    _set_private(model, None)
    return model


_ZERO_OFFSETS = ("Z", "+00:00", "-00:00")
_ends_at_zero = methodcaller("endswith", _ZERO_OFFSETS)


def _usual_times(texts: list[str]) -> bool:
    """Whether every text has `_instant`'s usual shape (`_SHAPES`), a year in 1901-2998 and
    a zero offset, checked over the whole list at once: each of these texts is then taken by
    the pattern exactly when `fromisoformat` reads it, into the one UTC tzinfo."""
    joined = "\n".join(texts)
    if not joined.isascii():
        return False
    shapes = joined.encode().translate(_ZEROS).split(b"\n")
    return (
        len(shapes) == len(texts)  # no text holds a newline
        and _SHAPES.issuperset(shapes)
        and min(texts)[:4] >= "1901"  # the shape starts with the year's four digits
        and max(texts)[:4] <= "2998"
        and all(map(_ends_at_zero, texts))
    )


def _utf8(raw: bytes) -> bool:
    """Whether `raw` is UTF-8 throughout. msgspec does not check the bytes of a field it
    skips (one the envelope does not have), and pydantic refuses the whole payload, so a
    line with invalid UTF-8 there must go to pydantic (the `test_bad_input` fault suite
    found 65 in 4,000 generated inputs that the structs took)."""
    if raw.isascii():
        return True
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def fast_event(raw: bytes) -> Event | None:
    """The event of one JSON line if the structs take it, else None (decode it with pydantic)."""
    if len(raw) > MAX_PAYLOAD_BYTES or not _utf8(raw):
        return None
    try:
        return event_of(_decode_read(raw))
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def fast_events(lines: list[bytes]) -> list[Event] | None:
    """Every line's event, or None if the structs refuse one (decode the batch with pydantic).

    The lines are each at most MAX_PAYLOAD_BYTES long (the caller's check). The structs
    decode the whole list, then its times are checked at once (`_usual_times`); a list whose
    times are not all of the usual kind has each checked alone (`_instant`)."""
    if not b"".join(lines).isascii() and not all(map(_utf8, lines)):
        return None
    try:
        structs = list(map(_decode_read, lines))
        texts = [s.occurred_at for s in structs]
        # (ValueError: a time of the usual shape Python cannot read, as 2026-02-30)
        read = _from_iso if _usual_times(texts) else _instant
        ats = list(map(read, texts))
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
        return None
    events = []
    append, build = events.append, _event_at
    for s, at in zip(structs, ats, strict=True):
        event = None if at is None else build(s, at)
        if event is None:
            return None
        append(event)
    return events


_from_iso = datetime.fromisoformat
