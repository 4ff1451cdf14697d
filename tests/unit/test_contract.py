"""The light records of the hot path serialise to exactly what the wire models accept.

lifecycle/records.py builds dataclasses and orjson writes them; events/outbound.py holds the
pydantic models that consumers validate against. These tests keep the two in step.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from events.codec import InvalidMessage, decode_event, decode_model, dumps
from events.inbound import Event
from events.limits import MAX_ID, MAX_PAYLOAD_BYTES
from events.outbound import HistoryRecord, SlaBreached, StageChanged
from lifecycle.deadlines import next_deadline
from lifecycle.decide import decide
from lifecycle.dedup import SeenIndex
from lifecycle.evolve import evolve
from lifecycle.records import Decision, SlaBreach, StageChange
from lifecycle.replay import fold
from lifecycle.state import PersonState
from tests.fixtures.core import T0, days, fit_profile, preset

VALID = {
    "event_id": "e1",
    "type": "demo_requested",
    "person_id": "p1",
    "occurred_at": "2026-01-01T10:00:00+02:00",
}


@pytest.fixture
def busy(make_event, run):
    """A run whose decisions carry changes with skips, an SLA breach and a note."""
    return run(
        [
            make_event("content_download", at=T0, profile=fit_profile(), campaign="q1-webinar"),
            make_event("demo_requested", at=days(1), source="demo"),
            make_event("deal_won", at=days(5), source="crm", reason="signed"),
            make_event("linkedin_connection", at=days(6)),
        ]
    )


def _plain(record: object) -> dict:
    """A dataclass record as plain values, the way a wire model dumps them."""
    return dataclasses.asdict(record)  # type: ignore[call-overload]


def test_stage_change_has_the_fields_of_stage_changed():
    fields = {f.name for f in dataclasses.fields(StageChange)}

    assert fields == set(StageChanged.model_fields)


def test_sla_breach_has_the_fields_of_sla_breached():
    assert {f.name for f in dataclasses.fields(SlaBreach)} == set(SlaBreached.model_fields)


def test_decision_wire_has_the_fields_of_history_record(busy):
    assert set(busy.last.to_wire()) == set(HistoryRecord.model_fields)


def test_stage_change_validates_as_stage_changed_and_round_trips(busy):
    assert len(busy.changes) == 3
    for change in busy.changes:
        wire = StageChanged.model_validate_json(orjson.dumps(change))

        assert wire.model_dump() == _plain(change)
        again = StageChanged.model_validate_json(wire.model_dump_json())
        assert again == wire


def test_stage_changed_carries_cloudevents_attributes(busy):
    wire = StageChanged.model_validate_json(orjson.dumps(busy.changes[-1]))

    assert (wire.id, wire.time) == (wire.change_id, wire.occurred_at)
    assert (wire.specversion, wire.type, wire.source) == (
        "1.0",
        "io.leadflow.stage_changed",
        "urn:leadflow",
    )


def test_sla_breach_validates_as_sla_breached_and_round_trips(busy):
    (breach,) = busy.decisions[2].sla_breaches

    wire = SlaBreached.model_validate_json(orjson.dumps(breach))

    assert wire.model_dump() == _plain(breach)
    assert SlaBreached.model_validate_json(wire.model_dump_json()) == wire


def test_decision_validates_as_history_record_and_round_trips(busy):
    for decision in busy.decisions:
        record = HistoryRecord.model_validate_json(orjson.dumps(decision.to_wire()))

        assert record.event == decision.event
        assert [c.model_dump() for c in record.changes] == [_plain(c) for c in decision.changes]
        assert [b.model_dump() for b in record.sla_breaches] == [
            _plain(b) for b in decision.sla_breaches
        ]
        expected = {k: v for k, v in _plain(decision).items() if k in HistoryRecord.model_fields}
        for name in ("changes", "sla_breaches", "event"):
            expected.pop(name)
        dumped = record.model_dump(exclude={"changes", "sla_breaches", "event"})
        assert dumped == expected
        assert HistoryRecord.model_validate_json(record.model_dump_json()) == record


def test_codec_dumps_matches_the_wire_model(busy):
    record = HistoryRecord.model_validate_json(dumps(busy.decisions[2].to_wire()))

    assert decode_model(HistoryRecord, dumps(record)) == record


def test_person_state_round_trips_through_orjson(busy):
    state = busy.states["p1"]
    assert state.entered_at and state.sla_breached and state.last_reason

    again = PersonState.from_wire(orjson.loads(orjson.dumps(state.to_wire())))

    assert again == state


def test_new_person_state_round_trips_through_orjson():
    state = PersonState("p9")

    again = PersonState.from_wire(orjson.loads(orjson.dumps(state.to_wire())))

    assert again == state
    assert state.to_wire()["stage"] is None


def test_decode_event_normalises_occurred_at_to_utc():
    event = decode_event(orjson.dumps(VALID))

    assert event.occurred_at == datetime(2026, 1, 1, 8, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at.tzinfo is UTC


def test_event_built_in_code_is_normalised_to_utc_too():
    cet = timezone(timedelta(hours=1))

    event = Event(
        event_id="e", type="t", person_id="p", occurred_at=datetime(2026, 1, 1, 1, tzinfo=cet)
    )

    assert event.occurred_at.tzinfo is UTC
    assert event.occurred_at.hour == 0


def test_decode_event_accepts_unknown_types_and_extra_fields():
    event = decode_event(orjson.dumps({**VALID, "type": "survey_completed", "extra": 1}))

    assert event.type == "survey_completed"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            orjson.dumps({**VALID, "occurred_at": "2026-01-01T10:00:00"}),
            "occurred_at: Input should have timezone info",
        ),
        (
            orjson.dumps({**VALID, "event_id": "x" * (MAX_ID + 1)}),
            f"event_id: String should have at most {MAX_ID} characters",
        ),
        (
            orjson.dumps({k: v for k, v in VALID.items() if k != "event_id"}),
            "event_id: Field required",
        ),
        (
            orjson.dumps({**VALID, "profile": {"employees": -5}}),
            "profile.employees: Input should be greater than or equal to 0",
        ),
    ],
    ids=["naive-datetime", "long-id", "missing-event-id", "negative-employees"],
)
def test_decode_error_is_one_line_naming_the_field(raw, expected):
    with pytest.raises(InvalidMessage) as caught:
        decode_event(raw)

    assert str(caught.value) == expected


def test_payload_over_the_limit_is_rejected_before_parsing():
    raw = orjson.dumps({**VALID, "campaign": "x" * MAX_PAYLOAD_BYTES})

    with pytest.raises(InvalidMessage) as caught:
        decode_event(raw)

    assert str(caught.value) == f"payload is {len(raw)} bytes; the limit is {MAX_PAYLOAD_BYTES}"


def test_payload_at_the_limit_is_parsed():
    raw = orjson.dumps({**VALID, "profile": {"company": "x"}})
    raw = raw[:-1] + b" " * (MAX_PAYLOAD_BYTES - len(raw)) + b"}"

    assert len(raw) == MAX_PAYLOAD_BYTES
    assert decode_event(raw).profile.company == "x"


@pytest.mark.parametrize(
    "occurred_at",
    [
        "9999-12-31T23:59:59-14:00",  # past year 9999 in UTC: OverflowError before the fix
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-01T00:00:00Z",  # parsed fine, but its deadlines overflowed in the worker
        "1899-12-31T23:59:59Z",
        "3000-01-01T00:00:00Z",
    ],
)
def test_occurred_at_outside_the_accepted_years_is_an_invalid_message(occurred_at):
    with pytest.raises(InvalidMessage, match=r"occurred_at: .*from 1900 up to"):
        decode_event(orjson.dumps({**VALID, "occurred_at": occurred_at}))


def test_occurred_at_at_the_edges_of_the_accepted_years_has_computable_deadlines():
    policy = preset()
    for occurred_at in ("1900-01-01T00:00:00Z", "2999-12-31T23:59:59.999999Z"):
        raw = {**VALID, "type": "webinar_attended", "profile": fit_profile()}
        event = decode_event(orjson.dumps({**raw, "occurred_at": occurred_at}))
        state = evolve(None, decide(None, event, policy))
        assert state.stage == "lead"
        assert next_deadline(state, policy) == event.occurred_at + policy.inactivity_window


def test_decode_error_for_invalid_utf8_says_so_with_the_byte_position():
    raw = b'{"event_id": "\xff\xfe", "type": "page_viewed"}'

    with pytest.raises(InvalidMessage) as caught:
        decode_event(raw)

    assert str(caught.value) == "payload is not valid UTF-8 (byte 14: invalid start byte)"


def test_decode_error_for_broken_json_is_one_line_with_the_position():
    with pytest.raises(InvalidMessage) as caught:
        decode_event(b'{"event_id": "a", "type": ')

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("not valid JSON: ")
    assert "column" in message


def test_decode_error_lists_at_most_three_problems():
    with pytest.raises(InvalidMessage) as caught:
        decode_event(b"{}")

    assert str(caught.value) == (
        "event_id: Field required; type: Field required; person_id: Field required; (+1 more)"
    )


def test_decision_to_wire_leaves_out_the_duplicate_flag(make_event):
    decision = Decision("p1", 1, "v", make_event("page_viewed"), duplicate=True)

    assert "duplicate" not in decision.to_wire()


def test_state_rebuilt_from_history_serialises_like_a_live_one(busy):
    history = [HistoryRecord.model_validate_json(orjson.dumps(d.to_wire())) for d in busy.decisions]

    rebuilt = fold(history)["p1"]

    assert rebuilt == busy.states["p1"]
    assert orjson.loads(orjson.dumps(rebuilt.to_wire())) == orjson.loads(
        orjson.dumps(busy.states["p1"].to_wire())
    )


def test_redelivery_after_a_rebuild_from_history_re_emits_domain_records(busy):
    history = [HistoryRecord.model_validate_json(orjson.dumps(d.to_wire())) for d in busy.decisions]
    rebuilt = fold(history)["p1"]
    seen = SeenIndex()
    for record in history:
        seen.remember(record)
    redelivered = busy.decisions[2].event

    again = decide(rebuilt, redelivered, preset("default"), seen.get("p1", redelivered.event_id))

    assert again.duplicate
    assert again.changes == busy.decisions[2].changes
    assert StageChanged.model_validate_json(orjson.dumps(again.changes[0])).change_id == "p1:3:0"
