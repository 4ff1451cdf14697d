"""What decide() produces, as light records built on the per-event path.

They have exactly the fields of the wire models in `events/outbound.py` (StageChanged,
SlaBreached, HistoryRecord) and serialise with orjson; building pydantic models per event
would cost more than the decision itself. `tests/unit/test_contract.py` keeps them in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from sys import intern
from typing import Any

from events.codec import event_body
from events.inbound import Event
from events.outbound import CLOUDEVENTS_SOURCE, STAGE_CHANGED_TYPE


@dataclass
class Reason:
    """Why a person moved or did not: the rule's name and a sentence.

    Rule and sentence are interned: the same few recur for every person, and a replay keeps
    one in each state (`last_reason`) and each change it may re-emit (~100 bytes each).
    No `__slots__`, as `StageChange`: the few held are shared (`shared`).
    """

    rule: str
    text: str

    def __post_init__(self) -> None:
        if type(self.rule) is str:  # e.g. f"blocked.{guard}", built per decision
            self.rule = intern(self.rule)
        if type(self.text) is str:
            self.text = intern(self.text)

    @classmethod
    def of(cls, reason: Any) -> Reason:
        """The domain record of a reason read back from history (an `events.outbound.Reason`)."""
        return reason if type(reason) is cls else cls(reason.rule, reason.text)

    @classmethod
    def shared(cls, reason: Any) -> Reason:
        """One record for each (rule, sentence) a state keeps (`last_reason`): a replay keeps
        one per person, ~50 bytes each, and the same few recur. Reasons are never changed in
        place. At most `SHARED_REASONS` are held (sentences quoting personal data are unique:
        a long-running worker must not keep them all); past that a reason is kept as given."""
        reason = cls.of(reason)
        known = _SHARED.get((reason.rule, reason.text))
        if known is not None:
            return known
        if len(_SHARED) < SHARED_REASONS:
            _SHARED[reason.rule, reason.text] = reason
        return reason


#: How many distinct reasons `Reason.shared` holds.
SHARED_REASONS = 4096
_SHARED: dict[tuple[str, str], Reason] = {}


@dataclass
class StageChange:
    """One move of one person; the domain twin of `events.outbound.StageChanged`.

    No `__slots__`: orjson writes a dataclass's `__dict__` whole, and reads slots one by one
    (a change with its reason: ~2 µs against ~4 µs in a replay, which prints ~100k changes
    per 1M events). A change is printed or sent, and not held (duplicates keep them packed)."""

    change_id: str
    person_id: str
    sequence: int
    from_stage: str | None
    to_stage: str
    passed_through: tuple[str, ...]
    occurred_at: datetime
    event_id: str
    reason: Reason
    lead_source: str | None
    first_touch_source: str | None
    temperature: str | None
    policy_version: str
    last_touch_source: str | None = None
    touches: int = 0
    id: str = ""
    source: str = CLOUDEVENTS_SOURCE
    type: str = STAGE_CHANGED_TYPE
    specversion: str = "1.0"
    time: datetime | None = None
    #: The ids this change folded into the person (a merge that advanced them), else ().
    merged: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.id = self.change_id
        self.time = self.occurred_at

    @classmethod
    def of(cls, change: Any) -> StageChange:
        """The domain record of a change read back from history (an `events.outbound.StageChanged`).

        A state folded from history must hold the same records as a live one, or it would not
        serialise with orjson (the person table) nor re-emit duplicates the same way.
        """
        if type(change) is cls:
            return change
        return cls(
            change.change_id,
            change.person_id,
            change.sequence,
            change.from_stage,
            change.to_stage,
            tuple(change.passed_through),
            change.occurred_at,
            change.event_id,
            Reason.of(change.reason),
            change.lead_source,
            change.first_touch_source,
            change.temperature,
            change.policy_version,
            getattr(change, "last_touch_source", None),
            getattr(change, "touches", 0),
            merged=tuple(getattr(change, "merged", ())),
        )

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> StageChange:
        """A change read back from its JSON (a table value, a dedup entry)."""
        parse = datetime.fromisoformat
        return cls(
            raw["change_id"],
            raw["person_id"],
            raw["sequence"],
            raw["from_stage"],
            raw["to_stage"],
            tuple(raw["passed_through"]),
            parse(raw["occurred_at"]),
            raw["event_id"],
            Reason(**raw["reason"]),
            raw["lead_source"],
            raw["first_touch_source"],
            raw["temperature"],
            raw["policy_version"],
            raw.get("last_touch_source"),
            raw.get("touches", 0),
            merged=tuple(raw.get("merged", ())),
        )

    @property
    def reached(self) -> tuple[str, ...]:
        """Every stage this change counts as reached: the skipped ones, then the destination."""
        return (*self.passed_through, self.to_stage)


@dataclass(slots=True)
class SlaBreach:
    """The domain twin of `events.outbound.SlaBreached`."""

    person_id: str
    stage: str
    entered_at: datetime
    due_at: datetime
    detected_at: datetime
    sla_days: float
    event_id: str


@dataclass(slots=True)
class Merged:
    """The facts of a merge that evolve() assigns as they are (`lifecycle.merge.fold`)."""

    entered_at: dict[str, datetime]
    highest: str | None
    profile: dict[str, Any]
    sla_breached: tuple[str, ...]
    aliases: tuple[str, ...]

    @classmethod
    def of(cls, merged: Any) -> Merged:
        """From a decision's record or a history record's `MergedFacts`."""
        if type(merged) is cls:
            return merged
        return cls(
            dict(merged.entered_at),
            merged.highest,
            dict(merged.profile),
            tuple(merged.sla_breached),
            tuple(merged.aliases),
        )


@dataclass(slots=True)
class Decision:
    """Everything one inbound event did to one person: the body of a history record.

    It carries the new values of derived fields (last activity, score, sources) so evolve()
    only assigns them and never re-applies a rule. `duplicate` marks an event id the person
    already applied (`lifecycle.dedup`): nothing changes and evolve must ignore it. A
    redelivery carries the changes recorded the first time, to be re-emitted; an id reused
    with other content carries none and says why in `conflict` (a dead letter on the worker).

    Identity merges (`lifecycle.merge`): `merged_into` makes the person an alias, `merged`
    holds what a survivor's fold assigns, and `follow_up` is the event this one hands on to
    another person (the hand-off, or an alias's event re-keyed to its survivor): not part of
    the history record, the runtime routes it to the other person's partition.
    """

    person_id: str
    sequence: int
    policy_version: str
    event: Event
    changes: tuple[StageChange, ...] = ()
    sla_breaches: tuple[SlaBreach, ...] = ()
    note: Reason | None = None
    activity: bool = False
    last_activity: datetime | None = None
    score: float = 0.0
    score_at: datetime | None = None
    first_touch_source: str | None = None
    lead_source: str | None = None
    erased: bool = False
    duplicate: bool = False
    last_touch_source: str | None = None
    touches: int = 0
    conflict: str | None = None
    #: what the guards read of personal fields (`lifecycle.shredding.outcomes`)
    outcomes: dict[str, str] | None = None
    first_touch_at: datetime | None = None
    merged_into: str | None = None
    merged: Merged | None = None
    follow_up: Event | None = None

    def to_wire(self, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The history record as plain data for orjson (the `HistoryRecord` shape).

        `body` is the event as stored, when the caller has it (sealed personal fields).
        """
        return {
            "person_id": self.person_id,
            "sequence": self.sequence,
            "policy_version": self.policy_version,
            "event": event_body(self.event) if body is None else body,
            "changes": self.changes,
            "sla_breaches": self.sla_breaches,
            "note": self.note,
            "activity": self.activity,
            "last_activity": self.last_activity,
            "score": self.score,
            "score_at": self.score_at,
            "first_touch_source": self.first_touch_source,
            "lead_source": self.lead_source,
            "erased": self.erased,
            "last_touch_source": self.last_touch_source,
            "touches": self.touches,
            "outcomes": self.outcomes,
            "first_touch_at": self.first_touch_at,
            "merged_into": self.merged_into,
            "merged": self.merged,
        }
