"""The published event JSON Schema and the codec are one truth: events generated from
`docs/schemas/event.schema.json` are accepted, and a document is accepted exactly when the
schema says it is valid (hypothesis-jsonschema generates; jsonschema is the oracle).

The one limit JSON Schema cannot state is the payload size (`MAX_PAYLOAD_BYTES` of UTF-8
JSON): generated documents stay under it.

hypothesis-jsonschema 0.23.1 (the latest) cannot draw objects with current Hypothesis (it
calls `many.more()`, which Hypothesis removed), so `published()` walks the schema's objects,
`$ref`s and `anyOf`s itself and asks hypothesis-jsonschema for every other part.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator, FormatChecker

from events.codec import InvalidMessage, decode_event
from events.limits import MAX_PAYLOAD_BYTES

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "schemas" / "event.schema.json").read_text()
)
_FORMATS = FormatChecker()


@_FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    """RFC 3339 date-time (jsonschema checks it only with an optional package)."""
    if not isinstance(value, str):
        return True
    shape = r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)"
    if not re.fullmatch(shape, value):
        return False
    datetime.fromisoformat(value.upper().replace("Z", "+00:00"))  # a real calendar date
    return True


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=_FORMATS)
CHECKED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def published(node: dict[str, Any], root: dict[str, Any] = SCHEMA) -> st.SearchStrategy[Any]:
    """Documents valid against `node` of the published schema (objects built here, leaves by
    hypothesis-jsonschema); objects also get a few unknown keys, which the schema allows."""
    if "$ref" in node:
        return published(root["$defs"][node["$ref"].rsplit("/", 1)[-1]], root)
    if "anyOf" in node:
        return st.one_of([published(branch, root) for branch in node["anyOf"]])
    if node.get("type") != "object":
        return from_schema(node)
    if "properties" not in node:  # a mapping (e.g. entered_at: stage -> time)
        keys = from_schema({"type": "string", **node.get("propertyNames", {})})
        values = node.get("additionalProperties")
        return st.dictionaries(
            keys, published(values, root) if isinstance(values, dict) else JSON, max_size=3
        )
    properties = {name: published(sub, root) for name, sub in node["properties"].items()}
    required = set(node.get("required", ()))
    known = st.fixed_dictionaries(
        {k: v for k, v in properties.items() if k in required},
        optional={k: v for k, v in properties.items() if k not in required},
    )
    unknown = st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in properties), JSON, max_size=2
    )
    return st.builds(lambda extra, fields: {**extra, **fields}, unknown, known)


def wire(document: Any) -> bytes:
    """The document as a producer sends it (stdlib json: integers past 64 bits too, which
    orjson refuses to write and JSON allows)."""
    return json.dumps(document, ensure_ascii=False).encode()


def accepted(document: Any) -> bool:
    try:
        decode_event(wire(document))
    except InvalidMessage:
        return False
    return True


def small(document: Any) -> bool:
    return len(wire(document)) <= MAX_PAYLOAD_BYTES


@CHECKED
@given(published(SCHEMA).filter(small))
def test_every_event_the_published_schema_allows_is_accepted(document: dict[str, Any]):
    assert VALIDATOR.is_valid(document)
    try:
        decode_event(wire(document))
    except InvalidMessage as error:
        raise AssertionError(f"schema-valid event refused: {error}\n{document}") from None


#: Values near the limits the schema states: the edges of occurred_at, integer bounds.
EDGES = st.sampled_from(
    [
        "1900-01-01T00:00:00Z",
        "1900-01-01T00:30:00+01:00",
        "1899-12-31T23:30:00-01:00",
        "2999-12-31T23:59:59.999999Z",
        "2999-12-31T23:00:00-05:00",
        "3000-01-01T00:00:00Z",
        "1347-06-01T00:00:00Z",
        "2026-02-30T09:00:00Z",
        "2026-03-01 09:00:00Z",
        "2026-03-01T09:00:00",
        "2026-03-01T09:00:00+0100",
        "2026-03-01T09:00:00.1234567Z",
        "20260301T090000Z",
        "2026-03-01",
        "",
        0,
        -1,
        1,
        1000,
        1001,
        10_000_000,
        10_000_001,
        300.0,
        300.5,
        True,
        False,
        "300",
        1_700_000_000,
        "x" * 64,
        "x" * 65,
        "x" * 1024,
        "x" * 1025,
    ]
)
FIELDS = [
    "event_id",
    "type",
    "person_id",
    "occurred_at",
    "source",
    "campaign",
    "reason",
    "schema_version",
    "profile",
]
PROFILE_FIELDS = [
    "email",
    "job_title",
    "seniority",
    "company",
    "industry",
    "employees",
    "country",
]


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A schema-valid event with one field (or one profile field) replaced or removed."""
    document = dict(draw(published(SCHEMA).filter(small)))
    value = draw(EDGES | JSON)
    if draw(st.booleans()):
        field = draw(st.sampled_from(FIELDS))
        if draw(st.integers(0, 9)) == 0:
            document.pop(field, None)
        else:
            document[field] = value
    else:
        profile = document.get("profile")
        profile = dict(profile) if isinstance(profile, dict) else {}
        profile[draw(st.sampled_from(PROFILE_FIELDS))] = value
        document["profile"] = profile
    return document


@CHECKED
@given(st.one_of(mutated(), JSON))
def test_the_codec_accepts_exactly_what_the_schema_allows(document: Any):
    valid = VALIDATOR.is_valid(document)
    assert accepted(document) == valid, (
        f"schema says {'valid' if valid else 'invalid'}, codec "
        f"{'accepts' if not valid else 'refuses'}: {document!r}"
    )


def test_the_issue_14_mismatches_are_gone():
    base = {"event_id": "e", "type": "t", "person_id": "p", "occurred_at": "2026-01-01T09:00:00Z"}
    for document in (
        {**base, "profile": {"employees": False}},
        {**base, "occurred_at": "1347-06-01T00:00:00Z"},
    ):
        assert not VALIDATOR.is_valid(document) and not accepted(document)
