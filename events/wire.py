"""JSON on the wire says what the published schema says: no coercion the schema does not allow.

pydantic's lax mode reads `false` and `"300"` as integers and a number as a Unix time, none of
which the JSON Schema (`docs/schemas/event.schema.json`) allows, so a client generated from
the schema would be surprised either way. These types are strict for JSON input only: Python
callers (the CSV mapping, which hands over cell text) keep pydantic's conversions.

Times are RFC 3339 (`2026-03-01T09:00:00Z`, `…+01:00`, up to 6 fraction digits), the
`date-time` format of JSON Schema; Python's `fromisoformat` also takes forms the format does
not (`20260301T090000Z`, a date alone, a space for the `T`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BeforeValidator, ValidationInfo
from pydantic_core import PydanticCustomError

from events.limits import FIRST_YEAR, LAST_YEAR

_DAY = r"(0[1-9]|[12][0-9]|3[01])"
_DATE = rf"(0[1-9]|1[0-2])-{_DAY}"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
_OFFSET = r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
_UTC = r"(Z|[+-]00:00)"

#: An RFC 3339 date-time with an offset, years 1 to 9999 (what Python's datetime holds).
_YEAR = r"([0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"
RFC3339 = rf"^{_YEAR}-{_DATE}T{_TIME}{_OFFSET}$"
#: The `occurred_at` pattern in the schema: an RFC 3339 time in the years 1900 to 2999, whose
#: instant also lies in those years in UTC (the form history stores it in): on the first and
#: the last day only with a zero offset.
OCCURRED_AT = (
    "^("
    rf"(190[1-9]|19[1-9][0-9]|2[0-8][0-9]{{2}}|29[0-8][0-9]|299[0-8])-{_DATE}T{_TIME}{_OFFSET}"
    rf"|1900-(01-(0[2-9]|[12][0-9]|3[01])|(0[2-9]|1[0-2])-{_DAY})T{_TIME}{_OFFSET}"
    rf"|2999-((0[1-9]|1[01])-{_DAY}|12-(0[1-9]|[12][0-9]|30))T{_TIME}{_OFFSET}"
    rf"|(1900-01-01|2999-12-31)T{_TIME}{_UTC}"
    ")$"
)
_RFC3339 = re.compile(RFC3339)
_NAIVE = re.compile(rf"^[0-9]{{4}}-{_DATE}T{_TIME}$")
_OCCURRED_AT = re.compile(OCCURRED_AT)


def parse_time(text: str) -> datetime:
    """An RFC 3339 date-time (with its offset); ValueError naming the expected form."""
    if not _RFC3339.match(text):
        raise ValueError(
            f"{text!r} is not an RFC 3339 time with a time zone (e.g. 2026-03-01T09:00:00Z)"
        )
    return datetime.fromisoformat(text)


def _json_int(value: Any, info: ValidationInfo) -> Any:
    if info.mode == "json" and isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


#: Why an `occurred_at` outside the years is refused (the worker's deadlines).
YEARS_PROBLEM = (
    f"must be from {FIRST_YEAR} up to (not including) {LAST_YEAR + 1} (on {FIRST_YEAR}-01-01 "
    f"and {LAST_YEAR}-12-31 in UTC); deadlines after it could not be computed"
)


def _json_time(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str):
        if info.mode != "json" or _OCCURRED_AT.match(value):
            return value
        if _NAIVE.match(value):
            raise PydanticCustomError("timezone_aware", "Input should have timezone info")
        if not _RFC3339.match(value):
            raise PydanticCustomError(
                "datetime_format",
                "must be an RFC 3339 time with a time zone, e.g. 2026-03-01T09:00:00Z",
            )
        raise PydanticCustomError("datetime_range", YEARS_PROBLEM)
    if info.mode == "json":
        raise PydanticCustomError("datetime_type", "Input should be a string (RFC 3339 time)")
    return value


#: An integer in JSON (`3`, `3.0`); never `true`/`false` or `"3"`. After the constraints:
#: `Annotated[int, Field(ge=0), JsonInt]` (in the other order they leave the JSON Schema).
JsonInt = BeforeValidator(_json_int)
#: Parsed as a datetime, from a JSON string matching `OCCURRED_AT` only.
JsonTime = BeforeValidator(_json_time)
