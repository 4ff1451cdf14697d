"""A fast decoder of the inbound envelope for bulk reads (replay, simulate, funnel, verify).

The contract stays `events.inbound.Event` (pydantic): this module only gets to the same
`Event` faster. msgspec structs built from the same field limits (`events.limits`, the
`occurred_at` pattern of `events.wire`) check a line in C, and the `Event` is then built
without validating it again. Anything the structs do not take (a `person_absorbed`
hand-off, an integer written as `3.0`, a line that is not an event) goes to pydantic, so an
input is refused exactly when pydantic refuses it, with pydantic's one-line reason;
`tests/unit/test_fastcodec.py` checks with hypothesis that an input the structs accept is
accepted by pydantic with an equal value, and that a struct's error names the field.

Building a pydantic model without validation writes the attributes pydantic itself sets
(`__dict__`, `__pydantic_fields_set__`, `__pydantic_extra__`, `__pydantic_private__`), as
`BaseModel.model_construct` does (pydantic 2.14 checked; pinned below 3); the same
test fails if a pydantic upgrade makes such an event differ from a validated one.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct
from pydantic import BaseModel

from events.inbound import Event, Profile
from events.limits import MAX_ID, MAX_NAME, MAX_PAYLOAD_BYTES, MAX_TEXT
from events.wire import OCCURRED_AT

_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID)]
_Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME)]
_Text = Annotated[str, Meta(max_length=MAX_TEXT)]
# `\Z`, not `$`: `$` also matches before a final newline, which pydantic refuses
_Time = Annotated[str, Meta(pattern=OCCURRED_AT.removesuffix("$") + r"\Z")]
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


_decode_struct = msgspec.json.Decoder(_Event).decode
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
    absorbed = s.absorbed
    if absorbed is not _NO_ABSORBED and bytes(absorbed) != b"null":
        return None
    try:
        at = datetime.fromisoformat(s.occurred_at).astimezone(UTC)
    except ValueError:
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
    }
    # `_model(Event, values)`, inline: it runs once per event
    model = _new(Event)
    _set_dict(model, values)
    _set_fields(model, _EVENT_REQUIRED)
    _set_extra(model, None)
    _set_private(model, None)
    return model


def fast_event(raw: bytes) -> Event | None:
    """The event of one JSON line if the structs take it, else None (decode it with pydantic)."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        return None
    try:
        return event_of(_decode_struct(raw))
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def fast_events(lines: list[bytes]) -> list[Event] | None:
    """Every line's event, or None if the structs refuse one (decode the batch with pydantic).

    The lines are each at most MAX_PAYLOAD_BYTES long (the caller's check)."""
    decode, build = _decode_struct, event_of
    events = []
    append = events.append
    try:
        for line in lines:
            event = build(decode(line))
            if event is None:
                return None
            append(event)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return events
