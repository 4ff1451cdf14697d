"""The msgspec decoder (`events.fastcodec`) against the contract (`events.codec.decode_event`).

Differential: on generated lines, valid and nearly valid field by field, whatever the structs
accept pydantic accepts, with an equal value that serialises and digests the same; whatever
pydantic refuses the fast read refuses too, with pydantic's one-line reason. A struct's
own error names the field pydantic names.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from events.codec import InvalidMessage, decode_event
from events.fastcodec import fast_event, fast_events, struct_of
from lifecycle.dedup import body, digest_of, fingerprint
from streams.dev.demo import synthetic_events
from streams.tools import files
from streams.tools.files import ReadStats, read_events

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MISSING = object()

names = st.text(min_size=1, max_size=12)
texts = st.one_of(
    st.text(max_size=0),
    st.text(min_size=60, max_size=70),  # around MAX_NAME
    st.text(min_size=250, max_size=260),  # around MAX_ID
    st.sampled_from(["x", "é", "\x00", "\u2028", "a" * 1024, "a" * 1025, "p1"]),
)
not_text = st.sampled_from([1, 0, 2.5, True, False, [], {}, ["a"]])


@st.composite
def value(draw: st.DrawFn, good: st.SearchStrategy, odd: st.SearchStrategy = texts) -> object:
    """A field's value: mostly `good`, now and then an edge (`odd`), the wrong type, null or
    missing, so that most lines are valid or wrong in one field."""
    pick = draw(st.integers(0, 39))
    if pick < 36:
        return draw(good)
    if pick < 38:
        return draw(odd)
    return draw(st.one_of(not_text, st.none(), st.just(MISSING)))


@st.composite
def times(draw: st.DrawFn) -> str:
    year = draw(st.sampled_from([1899, 1900, 1901, 2026, 2998, 2999, 3000]))
    base = datetime(year, 1, 1, tzinfo=UTC) if year < 3000 else datetime(2999, 12, 31, tzinfo=UTC)
    moment = base + timedelta(seconds=draw(st.integers(-86_400 * 2, 86_400 * 400)))
    moment = moment.replace(microsecond=draw(st.sampled_from([0, 1, 500_000, 655_421])))
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    digits = draw(st.sampled_from(["", ".5", ".655421", ".6554210", ".000001"]))
    offset = draw(st.sampled_from(["Z", "+00:00", "-00:00", "+01:00", "-23:59", "z", "", "+24:00"]))
    text = text + digits + offset
    odd = [text.replace("T", " "), text + "\n", text.replace("-", "", 2)]
    return draw(st.sampled_from([text] * 6 + odd))


profile_fields = st.fixed_dictionaries(
    {},
    optional={
        "email": value(names),
        "job_title": value(names),
        "seniority": value(names),
        "company": value(names),
        "industry": value(names),
        "employees": value(
            st.integers(0, 10_000_000),
            st.sampled_from([-1, 3.0, 2.5, 10_000_000, 10_000_001, 2**62, 1e3]),
        ),
        "country": value(names),
        "unknown": st.integers(-(2**63), 2**63 - 1),
    },
)

events = st.fixed_dictionaries(
    {
        "event_id": value(names),
        "type": value(st.sampled_from(["demo_requested", "inactivity_timeout"]) | names),
        "person_id": value(names),
        "occurred_at": value(times(), st.sampled_from(["", "2026-01-01", "2026-01-01T00:00:00"])),
    },
    optional={
        "source": value(names),
        "campaign": value(names),
        "profile": value(profile_fields, st.just({})),
        "reason": value(names),
        "schema_version": value(st.integers(1, 1000), st.sampled_from([0, 1001, 2.0, "1", True])),
        "merged_into": value(names),
        "absorbed": st.sampled_from(
            [None, {}, {"person_id": "x"}, {"person_id": "x", "score": 1.5}]
        ),
        "forwarded_via": value(st.lists(names, max_size=3), st.just(["a", 1]) | st.lists(texts)),
        "extra": st.integers(-(2**63), 2**63 - 1),
    },
)


def _clean(doc: object) -> object:
    if isinstance(doc, dict):
        return {k: _clean(v) for k, v in doc.items() if v is not MISSING}
    return doc


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    doc = _clean(draw(events))
    style = draw(st.sampled_from(["orjson", "ascii", "spaced", "cut", "dup"]))
    if style == "orjson":
        return orjson.dumps(doc)
    if style == "ascii":
        return json.dumps(doc, ensure_ascii=True).encode()
    if style == "spaced":
        return json.dumps(doc, indent=1, ensure_ascii=False).encode()
    if style == "cut":
        raw = orjson.dumps(doc)
        return raw[: draw(st.integers(0, len(raw)))]
    raw = orjson.dumps(doc)  # a key twice: the last one counts, for both
    return raw[:-1] + b',"person_id":"dup"}' if len(raw) > 2 else raw


def _reference(raw: bytes) -> object:
    try:
        return decode_event(raw)
    except InvalidMessage as error:
        return error


@PROPERTY
@given(lines())
@example(b'{"event_id":"\\ud800","type":"t","person_id":"p","occurred_at":"2026-01-01T00:00:00Z"}')
@example(b'{"event_id":"e","type":"t","person_id":"p","occurred_at":"2026-01-01T00:00:00Z\\n"}')
@example(
    b'{"event_id":"e","type":"t","person_id":"p","occurred_at":"2026-01-01T00:00:00Z",'
    b'"profile":{"employees":3.0}}'
)
def test_what_the_structs_accept_pydantic_accepts_with_an_equal_value(raw: bytes):
    fast = fast_event(raw)
    ref = _reference(raw)
    if fast is None:
        return  # pydantic decides (the read falls back to it): nothing to compare
    assert not isinstance(ref, InvalidMessage), f"fast path accepted what pydantic refuses: {ref}"
    assert fast == ref
    assert fast.model_dump() == ref.model_dump()
    assert fast.model_dump_json() == ref.model_dump_json()
    assert fast.occurred_at.tzinfo is UTC and ref.occurred_at.tzinfo is UTC
    assert digest_of(fast) == fingerprint(body(ref)) == digest_of(ref)
    dumped = ref.model_dump(mode="json", exclude_none=True)
    for event in (fast, ref):  # the history record's event, read off the values
        assert body(event) == dumped
        assert orjson.dumps(body(event)) == orjson.dumps(dumped)  # key order too


def _read(path: Path) -> tuple[list, list[str]]:
    stats = ReadStats()
    read = list(read_events(path, stats=stats))
    return read, [str(error) for error in stats.errors]


@PROPERTY
@given(st.lists(lines(), min_size=1, max_size=6))
def test_a_file_reads_as_it_reads_with_pydantic_alone(tmp_path_factory, raws: list[bytes]):
    raws = [r for r in raws if b"\n" not in r and b"\r" not in r and r.strip()]
    path = Path(tmp_path_factory.mktemp("lines")) / "events.jsonl"
    path.write_bytes(b"\n".join(raws) + b"\n")
    fast = _read(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files, "fast_events", lambda lines: None)
        assert _read(path) == fast


@PROPERTY
@given(events, st.sampled_from(sorted({"event_id", "type", "person_id", "occurred_at"})))
def test_a_struct_error_names_the_field_pydantic_names(doc: dict, field: str):
    good = {
        "event_id": "e1",
        "type": "demo_requested",
        "person_id": "p1",
        "occurred_at": "2026-03-01T09:00:00Z",
    }
    bad = _clean(doc).get(field, MISSING)
    raw = orjson.dumps({**good, field: bad} if bad is not MISSING else good)
    ref = _reference(raw)
    if not isinstance(ref, InvalidMessage):
        return
    with pytest.raises(msgspec.ValidationError) as error:
        struct_of(raw)
    assert str(ref).startswith(f"{field}:")
    assert f"`$.{field}`" in str(error.value)


def test_nested_profile_error_names_the_same_path():
    raw = (
        b'{"event_id":"e","type":"t","person_id":"p","occurred_at":"2026-01-01T00:00:00Z",'
        b'"profile":{"employees":-1}}'
    )
    with pytest.raises(InvalidMessage, match=r"^profile\.employees:"):
        decode_event(raw)
    with pytest.raises(msgspec.ValidationError, match=r"`\$\.profile\.employees`"):
        struct_of(raw)


def test_the_fast_path_takes_every_line_of_a_typical_stream():
    stream = [orjson.dumps(e) for e in synthetic_events(100, 2_000, seed=5, duplicates=0.01)]
    fast = fast_events(stream)
    assert fast is not None
    assert fast == [decode_event(raw) for raw in stream]


def test_offsets_become_the_one_utc_tzinfo():
    raw = b'{"event_id":"e","type":"t","person_id":"p","occurred_at":"2026-01-01T01:30:00+01:30"}'
    event = fast_event(raw)
    assert event is not None
    assert event.occurred_at == datetime(2026, 1, 1, tzinfo=timezone(timedelta(0)))
    assert event.occurred_at.tzinfo is UTC


def test_copies_of_a_fast_event_leave_the_shared_fields_set_alone():
    raw = b'{"event_id":"e","type":"t","person_id":"p","occurred_at":"2026-01-01T00:00:00Z"}'
    event = fast_event(raw)
    other = fast_event(raw.replace(b'"e"', b'"f"'))
    assert event is not None and other is not None
    before = set(other.model_fields_set)
    copied = event.model_copy(update={"source": "webinar"})
    assert copied.source == "webinar" and "source" in copied.model_fields_set
    assert other.model_fields_set == before == event.model_fields_set
    with pytest.raises(ValueError, match="frozen"):
        event.source = "x"  # type: ignore[misc]


def test_the_structs_have_the_contract_s_fields_in_its_order():
    """A field added to the contract (or removed) must be added to the structs too, or the
    fast path would build events without it."""
    from events.fastcodec import _Event, _Profile
    from events.inbound import Event, Profile

    assert _Event.__struct_fields__ == tuple(Event.model_fields)
    assert _Profile.__struct_fields__ == tuple(Profile.model_fields)


def test_invalid_utf8_in_a_field_the_structs_skip_goes_to_pydantic_which_refuses_it():
    # msgspec does not check the bytes of a field it skips; pydantic refuses the payload, and
    # so must every fast path (the worker dead-letters it, so replay must report it).
    line = (
        b'{"event_id":"e1","type":"page_viewed","person_id":"p1",'
        b'"occurred_at":"2026-01-01T00:00:00Z","extra":"\xf2\x81"}'
    )
    with pytest.raises(InvalidMessage, match="UTF-8"):
        decode_event(line)
    assert fast_event(line) is None
    assert fast_events([line]) is None
    fine = line.replace(b"\xf2\x81", "é".encode())
    assert fast_event(fine) == decode_event(fine) and fast_events([fine]) == [decode_event(fine)]
