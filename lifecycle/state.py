"""A person's state: a small plain record, the fold of evolve() over their history.

Never a Machine per person (a Machine costs ~26 KB; this record a few hundred bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lifecycle.records import Reason, StageChange
from lifecycle.stages import NEW

#: How many recent event ids a person remembers for deduplication. A redelivery from Kafka
#: comes within a few events of the original; older duplicates are outside the window.
DEDUP_WINDOW = 16


@dataclass(slots=True)
class PersonState:
    person_id: str
    stage: str = NEW
    highest: str | None = None
    entered_at: dict[str, datetime] = field(default_factory=dict)
    last_activity: datetime | None = None
    first_touch_source: str | None = None
    lead_source: str | None = None
    sequence: int = 0
    score: float = 0.0
    score_at: datetime | None = None
    profile: dict[str, Any] = field(default_factory=dict)
    sla_breached: tuple[str, ...] = ()
    recent: dict[str, tuple[int, tuple[StageChange, ...]]] = field(default_factory=dict)
    last_reason: Reason | None = None
    erased: bool = False
    last_touch_source: str | None = None
    touches: int = 0

    @property
    def current_stage(self) -> str | None:
        """The stage as the wire names it: None until the person has one."""
        return None if self.stage == NEW else self.stage

    def copy(self) -> PersonState:
        return PersonState(
            self.person_id,
            self.stage,
            self.highest,
            dict(self.entered_at),
            self.last_activity,
            self.first_touch_source,
            self.lead_source,
            self.sequence,
            self.score,
            self.score_at,
            dict(self.profile),
            self.sla_breached,
            dict(self.recent),
            self.last_reason,
            self.erased,
            self.last_touch_source,
            self.touches,
        )

    def to_wire(self) -> dict[str, Any]:
        """Plain data for orjson (table values, the API)."""
        return {
            "person_id": self.person_id,
            "stage": self.current_stage,
            "highest": self.highest,
            "entered_at": self.entered_at,
            "last_activity": self.last_activity,
            "first_touch_source": self.first_touch_source,
            "lead_source": self.lead_source,
            "sequence": self.sequence,
            "score": self.score,
            "score_at": self.score_at,
            "profile": self.profile,
            "sla_breached": self.sla_breached,
            "recent": {k: [seq, list(changes)] for k, (seq, changes) in self.recent.items()},
            "last_reason": self.last_reason,
            "erased": self.erased,
            "last_touch_source": self.last_touch_source,
            "touches": self.touches,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> PersonState:
        parse = datetime.fromisoformat

        def when(value: str | None) -> datetime | None:
            return None if value is None else parse(value)

        def change(raw: dict[str, Any]) -> StageChange:
            return StageChange(
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
            )

        reason = data.get("last_reason")
        return cls(
            person_id=data["person_id"],
            stage=data["stage"] or NEW,
            highest=data["highest"],
            entered_at={k: parse(v) for k, v in data["entered_at"].items()},
            last_activity=when(data["last_activity"]),
            first_touch_source=data["first_touch_source"],
            lead_source=data["lead_source"],
            sequence=data["sequence"],
            score=data["score"],
            score_at=when(data["score_at"]),
            profile=data["profile"],
            sla_breached=tuple(data["sla_breached"]),
            recent={
                k: (seq, tuple(change(c) for c in changes))
                for k, (seq, changes) in data["recent"].items()
            },
            last_reason=None if reason is None else Reason(**reason),
            erased=data.get("erased", False),
            last_touch_source=data.get("last_touch_source"),
            touches=data.get("touches", 0),
        )
