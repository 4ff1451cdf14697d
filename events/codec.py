"""Bytes ↔ messages. Every rejection becomes one line a person can act on."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from events.inbound import Event
from events.limits import MAX_PAYLOAD_BYTES

M = TypeVar("M", bound=BaseModel)


class InvalidMessage(ValueError):
    """A message that cannot be accepted; `str()` is one line naming the field and the problem."""


def describe_validation_error(error: ValidationError, *, limit: int = 3) -> str:
    """Turn pydantic's multi-line report into one line: `field.path: message; …`."""
    parts = []
    for item in error.errors(include_url=False)[:limit]:
        where = ".".join(str(p) for p in item["loc"]) or "message"
        parts.append(f"{where}: {item['msg']}")
    more = error.error_count() - limit
    if more > 0:
        parts.append(f"(+{more} more)")
    return "; ".join(parts)


def decode_event(raw: bytes | bytearray | memoryview | str) -> Event:
    """Validate one inbound envelope; raise InvalidMessage with a one-line reason."""
    size = len(raw.encode()) if isinstance(raw, str) else len(raw)
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidMessage(f"payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    try:
        return Event.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise InvalidMessage(_json_problem(raw, first["msg"])) from None
        raise InvalidMessage(describe_validation_error(error)) from None


def _json_problem(raw: bytes | bytearray | memoryview | str, message: str) -> str:
    """Say "not UTF-8" when that is the problem; the parser calls it a bad code point."""
    if not isinstance(raw, str):
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError as error:
            return f"payload is not valid UTF-8 (byte {error.start}: {error.reason})"
    return f"not valid JSON: {message.removeprefix('Invalid JSON: ')}"


def decode_model(model: type[M], raw: bytes | str) -> M:
    """Validate any leadflow message type with the same one-line errors as events."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise InvalidMessage(describe_validation_error(error)) from None


def dumps(obj: Any) -> bytes:
    """JSON bytes for models, dataclasses and plain data, with aware datetimes as ISO 8601."""
    if isinstance(obj, BaseModel):
        return obj.model_dump_json().encode()
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


_UTC_Z = orjson.OPT_UTC_Z
#: The envelope's fields that may be None.
_OPTIONAL = tuple(
    name for name, f in Event.model_fields.items() if not f.is_required() and f.default is None
)


def event_body(event: Event) -> dict[str, Any]:
    """The event as history stores it (`HistoryRecord.event`, the input of the dedup digest).

    `event.model_dump(mode="json", exclude_none=True)`, read off the event's values (once per
    applied event in the worker, for its history record): the same dict, key order included,
    `occurred_at` written as pydantic's JSON mode writes an aware UTC datetime (`…Z`,
    microseconds only when not zero, as orjson writes it). `tests/unit/test_fastcodec.py`
    checks the two agree on generated events. A hand-off's absorbed lifecycle (rare) goes
    through pydantic."""
    content = given_fields(event)
    if content is None:
        return event.model_dump(mode="json", exclude_none=True)
    content["occurred_at"] = orjson.dumps(content["occurred_at"], option=_UTC_Z)[1:-1].decode()
    via = content.get("forwarded_via")
    if via is not None:
        content["forwarded_via"] = list(via)
    return content


def given_fields(event: Event) -> dict[str, Any] | None:
    """The event's given fields in field order, as Python values (`occurred_at` a datetime,
    the profile a dict); None for a hand-off (its absorbed lifecycle is a model) or a model
    pydantic did not build (not every field in its __dict__)."""
    if event.absorbed is not None:
        return None
    # a copy less its None fields: cheaper than a comprehension over every field (per event)
    content = vars(event).copy()
    try:
        for name in _OPTIONAL:
            if content[name] is None:
                del content[name]
    except KeyError:
        return None
    profile = event.profile
    if profile is not None:
        content["profile"] = profile.given()
    return content
