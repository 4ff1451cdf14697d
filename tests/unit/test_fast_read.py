"""The bulk read's shortcuts (issue 13) take exactly what the contract's checks take.

`events.fastcodec._instant` checks the usual shape of `occurred_at` without the pattern;
`lifecycle.dedup.digest_of` drops None fields without a comprehension; the JSONL reader
decodes a chunk of plain events in one call.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from events.fastcodec import _TIME_PATTERN, _instant, fast_event, fast_events
from events.inbound import Event, Profile
from lifecycle.dedup import body, digest_of, fingerprint
from streams.dev.demo import synthetic_events
from streams.tools import files
from streams.tools.files import ReadStats, read_events

PROPERTY = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_PATTERN = re.compile(_TIME_PATTERN)


def _digits(low: int, high: int, width: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: str(n).zfill(width))


@st.composite
def times(draw: st.DrawFn) -> str:
    """Near-RFC 3339 text: every field at and past its limits, odd separators and offsets."""
    year = draw(st.one_of(_digits(1890, 3010, 4), _digits(0, 9999, 4), st.just("٢٠٢٦")))
    parts = [
        year,
        draw(st.sampled_from(["-", "/"])),
        draw(_digits(0, 13, 2)),
        "-",
        draw(_digits(0, 32, 2)),
        draw(st.sampled_from(["T", "t", " "])),
        draw(_digits(0, 25, 2)),
        ":",
        draw(_digits(0, 61, 2)),
        ":",
        draw(_digits(0, 61, 2)),
        draw(st.sampled_from(["", ".1", ".123456", ".1234567", ".", ".12"])),
    ]
    offset = draw(
        st.one_of(
            st.sampled_from(["Z", "z", "", "+00:00", "-00:00", "+0000", "\n", "Z\n"]),
            st.tuples(
                st.sampled_from("+-"),
                _digits(0, 30, 2),
                st.sampled_from([":", ""]),
                _digits(0, 99, 2),
            ).map("".join),
        )
    )
    return "".join(parts) + offset


def _by_contract(text: str) -> datetime | None:
    """What the struct with the pattern, then `fromisoformat`, made of it before."""
    if _PATTERN.search(text) is None:
        return None
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return None


@PROPERTY
@given(st.one_of(times(), st.text(max_size=40)))
@example("2026-01-01T00:00:00+05:60")
@example("1900-06-01T00:00:00Z")
@example("2999-12-31T00:00:00+01:00")
@example("2998-12-31T23:59:59.999999-23:59")
@example("1901-01-01T00:00:00.1234567Z")
def test_a_time_is_taken_exactly_when_the_pattern_and_python_take_it(text: str):
    got, want = _instant(text), _by_contract(text)
    assert got == want
    if got is not None:
        assert got.tzinfo is UTC


#: Times of the usual shape, in and out of the years and offsets `_usual_times` takes.
_USUAL = st.tuples(
    st.datetimes(min_value=datetime(1890, 1, 1), max_value=datetime(3010, 12, 31)),
    st.sampled_from(["Z", "+00:00", "-00:00", "+05:30", "-23:59"]),
).map(lambda t: t[0].isoformat() + t[1])


@settings(PROPERTY, max_examples=1500)
@given(st.lists(st.one_of(_USUAL, _USUAL, times()), min_size=1, max_size=6))
@example(["2026-01-01T00:00:00Z", "2026-02-30T00:00:00Z"])  # the usual shape, no such day
@example(["2026-01-01T00:00:00Z", "1900-06-01T00:00:00Z"])  # the pattern's, not the usual
@example(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00+05:30"])
@example(["2026-01-01T00:00:00.5-00:00", "2998-12-31T23:59:59.999999+00:00"])
def test_the_times_of_a_block_read_at_once_are_each_time_read_alone(texts: list[str]):
    lines = [
        orjson.dumps({"event_id": f"e{i}", "type": "t", "person_id": "p", "occurred_at": t})
        for i, t in enumerate(texts)
    ]
    alone = [fast_event(line) for line in lines]
    got = fast_events(lines)
    if any(event is None for event in alone):
        assert got is None
    else:
        assert got == alone
        assert [e.occurred_at.isoformat() for e in got] == [
            e.occurred_at.isoformat() for e in alone
        ]  # type: ignore[union-attr]
        assert all(event.occurred_at.tzinfo is UTC for event in got)  # type: ignore[union-attr]


def test_digest_of_drops_the_none_fields_as_the_body_does():
    for raw in synthetic_events(200, 3_000, seed=3, duplicates=0.01):
        event = Event.model_validate(raw)
        assert digest_of(event) == fingerprint(body(event))


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "email": st.emails(),
            "job_title": st.text(min_size=1, max_size=20),
            "seniority": st.sampled_from(["vp", "manager", "intern"]),
            "employees": st.integers(0, 10_000_000),
            "country": st.sampled_from(["US", "de"]),
        },
    )
)
def test_the_given_fields_of_a_profile_are_its_dump_without_none(data: dict):
    for profile in (Profile.model_validate(data), fast_event(_with_profile(data)).profile):
        assert profile.given() == profile.model_dump(exclude_none=True)
        assert list(profile.given()) == list(profile.model_dump(exclude_none=True))


def _with_profile(profile: dict) -> bytes:
    event = {"event_id": "e", "type": "form_submitted", "person_id": "p", "profile": profile}
    return orjson.dumps({**event, "occurred_at": "2026-01-01T00:00:00Z"})


def _read(path: Path) -> tuple[list[Event], list[str], int]:
    stats = ReadStats()
    read = list(read_events(path, stats=stats))
    return read, [str(error) for error in stats.errors], stats.lines


def test_a_file_of_several_chunks_reads_as_line_by_line(tmp_path: Path, monkeypatch):
    lines = [orjson.dumps(e) for e in synthetic_events(300, 6_000, seed=7, duplicates=0.01)]
    lines[1500] = b"not json"
    lines[4000] = b"   " + lines[4000]
    lines.insert(2500, b"")
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\n")
    fast = _read(path)
    monkeypatch.setattr(files, "CHUNK_BYTES", 1)  # a chunk per line
    assert _read(path) == fast
    monkeypatch.setattr(files, "fast_events", lambda lines: None)  # pydantic alone
    assert _read(path) == fast
    assert len(fast[1]) == 1 and fast[1][0].startswith(f"{path}:1501: not valid JSON")
    assert fast[2] == len(lines) - 1


def test_a_chunk_the_whole_chunk_checks_refuse_reads_as_line_by_line(tmp_path: Path, monkeypatch):
    """`"sequence"` past a line's first 200 bytes, a line of the longest size, a line that
    starts `{"person_id"`: the chunk is read line by line, with the same events."""
    events = list(synthetic_events(50, 400, seed=9, duplicates=0.01))
    events[10]["campaign"] = "x" * 300
    lines = [orjson.dumps(e) for e in events]
    lines[10] = lines[10][:-1] + b',"sequence":1}'  # a key no event has, ignored
    lines[20] = orjson.dumps({"person_id": events[20]["person_id"], **events[20]})
    padding = files.MAX_PAYLOAD_BYTES - len(lines[30]) - len(b',"x":""')  # ignored
    lines[30] = lines[30][:-1] + b',"x":"' + b"r" * padding + b'"}'
    assert len(lines[30]) == files.MAX_PAYLOAD_BYTES
    path = tmp_path / "events.jsonl"
    for end in (b"\n", b"\r\n"):
        path.write_bytes(end.join(lines) + end)
        fast = _read(path)
        assert fast[1] == [] and len(fast[0]) == len(lines)
        for at in (10, 20, 30):
            assert files._plain_events([lines[0] + end, lines[at] + end]) is None
        monkeypatch.setattr(files, "CHUNK_BYTES", 1)  # a chunk per line
        assert _read(path) == fast
        monkeypatch.setattr(files, "fast_events", lambda lines: None)  # pydantic alone
        assert _read(path) == fast
        monkeypatch.undo()


def test_decide_builds_its_decision_in_the_field_order_it_passes():
    """decide() passes every field of its Decision by position (a cheaper call)."""
    from dataclasses import fields

    from lifecycle.records import Decision

    assert [f.name for f in fields(Decision)][:20] == [
        "person_id", "sequence", "policy_version", "event", "changes", "sla_breaches", "note",
        "activity", "last_activity", "score", "score_at", "first_touch_source", "lead_source",
        "erased", "duplicate", "last_touch_source", "touches", "conflict", "outcomes",
        "first_touch_at",
    ]  # fmt: skip


#: Pieces of JSONL lines that the whole-chunk checks look for, and what they are made of.
_PIECES = st.sampled_from(
    [b'"sequence"', b"q", b"sequence", b'"seq', b"uence", b'{"person_id"', b"{", b"\n", b'"', b"x"]
)


@PROPERTY
@given(st.lists(_PIECES, max_size=200), st.integers(0, 80))
@example([b"q"] * 70 + [b'"sequence"'], 0)  # past the q's looked at one by one
def test_has_sequence_is_the_word_search(pieces: list[bytes], qs: int):
    joined = b"q" * qs + b"".join(pieces)
    assert files.has_sequence(joined) is (b'"sequence"' in joined)


@PROPERTY
@given(st.lists(st.lists(_PIECES, max_size=6).map(b"".join), max_size=8))
def test_line_starts_check_what_each_line_starts_with(lines: list[bytes]):
    """As the chunk's lines are read (each ends at its only newline)."""
    chunk = b"".join(lines).splitlines(keepends=True)
    starts = files.line_starts(chunk)
    joined = b"".join(chunk)
    history = joined.startswith(b'{"person_id"') or b'\n{"person_id"' in joined
    assert files.history_start(starts) is history
    assert all(start[:1] == b"{" for start in starts) is all(c.startswith(b"{") for c in chunk)
