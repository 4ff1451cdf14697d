"""Golden policy tests: events in, expected stage sequence per person out.

How a company tests its routing before switching definitions. A fixture is a mapping:

    cases:
      - name: a VP who requests a demo becomes an MQL
        events:
          - {type: webinar_attended, source: webinar, profile: {seniority: vp, industry: software}}
          - {type: demo_requested, source: webinar}
        expect:
          p1: [lead, mql]

Event fields default: person_id `p1`, event_id `<case>-<n>`, occurred_at one hour after the
previous event (from 2026-01-01T00:00Z), or `after_days: N` days after the previous one.
`expect` lists, per person, the `to_stage` of every change in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from events.codec import describe_validation_error
from events.inbound import Event
from lifecycle.policy import Policy
from lifecycle.replay import Replayer

START = datetime(2026, 1, 1, tzinfo=UTC)


class FixtureError(ValueError):
    """A fixture that cannot be run; the message names the case and the event."""


@dataclass(slots=True)
class CaseResult:
    name: str
    expected: dict[str, list[str]]
    actual: dict[str, list[str]]
    reasons: dict[str, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.expected == {p: self.actual.get(p, []) for p in self.expected}


def _events(case: dict[str, Any], name: str) -> Iterable[Event]:
    at = START
    for n, raw in enumerate(case.get("events") or [], start=1):
        if not isinstance(raw, dict):
            raise FixtureError(f"case {name!r}, event {n}: an event is a mapping of fields")
        data = dict(raw)
        gap = data.pop("after_days", None)
        at = at + (timedelta(days=float(gap)) if gap is not None else timedelta(hours=1))
        data.setdefault("occurred_at", at)
        data.setdefault("person_id", "p1")
        data.setdefault("event_id", f"{name}-{n}")
        try:
            event = Event.model_validate(data)
        except ValidationError as error:
            message = describe_validation_error(error)
            raise FixtureError(f"case {name!r}, event {n}: {message}") from None
        at = max(at, event.occurred_at)
        yield event


def run_case(case: dict[str, Any], policy: Policy, index: int = 0) -> CaseResult:
    name = str(case.get("name") or f"case {index + 1}")
    expected = case.get("expect")
    if not isinstance(expected, dict):
        raise FixtureError(f"case {name!r}: `expect` maps each person id to a list of stages")
    replayer = Replayer(policy)
    actual: dict[str, list[str]] = {}
    reasons: dict[str, list[str]] = {}
    for event in _events(case, name):
        for decision in replayer.apply_all(event):
            if decision.duplicate:
                continue
            for change in decision.changes:
                actual.setdefault(change.person_id, []).append(change.to_stage)
                reasons.setdefault(change.person_id, []).append(change.reason.text)
            if decision.note is not None:
                reasons.setdefault(decision.person_id, []).append(f"(no move) {decision.note.text}")
    return CaseResult(name, {str(k): list(v or []) for k, v in expected.items()}, actual, reasons)


def run_fixture(data: Any, policy: Policy) -> list[CaseResult]:
    """Run every case of one parsed fixture file."""
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise FixtureError("a fixture is a mapping with a `cases` list")
    return [run_case(case, policy, i) for i, case in enumerate(data["cases"])]
