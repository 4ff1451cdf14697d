"""Funnel analytics from stage changes: reached per stage, conversion by lead source, timing.

A stage counts as reached when a person entered it or passed through it on an authoritative
skip (a `deal_won` on an mql reached sql and opportunity too).
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lifecycle.stages import FORWARD, STAGES

#: The conversions the funnel reports, as (from, to) pairs.
CONVERSIONS: tuple[tuple[str, str], ...] = (
    ("lead", "mql"),
    ("mql", "sql"),
    ("sql", "opportunity"),
    ("opportunity", "customer"),
    ("mql", "customer"),
)
_STEPS = tuple(itertools.pairwise(FORWARD[1:]))


@dataclass(slots=True)
class _Person:
    first_reached: dict[str, datetime] = field(default_factory=dict)
    current: str | None = None
    last: tuple[int, str] = (0, "")  # (sequence, change_id) of the change setting `current`
    highest_rank: int = -1
    lead_source: str | None = None


@dataclass(slots=True)
class FunnelReport:
    persons: int
    reached: dict[str, int]
    current: dict[str, int]
    highest: dict[str, int]
    conversion: dict[str, dict[str, float | None]]
    conversion_by_source: dict[str, dict[str, dict[str, Any]]]
    median_days: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "persons": self.persons,
            "reached": self.reached,
            "current": self.current,
            "highest": self.highest,
            "conversion": self.conversion,
            "conversion_by_source": self.conversion_by_source,
            "median_days": self.median_days,
        }


def _rate(hits: int, base: int) -> float | None:
    return round(hits / base, 4) if base else None


_RANK = {stage: i for i, stage in enumerate(FORWARD)}


class Funnel:
    """A funnel fed one change at a time (the live view), reported on demand.

    Safe under redelivery: a stage counts once per person, and a replayed older change never
    overrides the current stage set by a newer one.
    """

    def __init__(self) -> None:
        self.persons: dict[str, _Person] = defaultdict(_Person)

    def add(self, change: Any) -> None:
        person = self.persons[change.person_id]
        for stage in (*change.passed_through, change.to_stage):
            person.first_reached.setdefault(stage, change.occurred_at)
            person.highest_rank = max(person.highest_rank, _RANK.get(stage, -1))
        order = (change.sequence, change.change_id)
        if order >= person.last:
            person.last = order
            person.current = change.to_stage
            if change.to_stage == "mql" or "mql" in change.passed_through:
                person.lead_source = change.lead_source

    def report(self) -> FunnelReport:
        return _report(self.persons)


def funnel(changes: Iterable[Any]) -> FunnelReport:
    """Aggregate `StageChange`/`StageChanged` records, in history order."""
    view = Funnel()
    for change in changes:
        view.add(change)
    return view.report()


def _report(persons: dict[str, _Person]) -> FunnelReport:
    reached = Counter(s for p in persons.values() for s in p.first_reached)
    current = Counter(p.current for p in persons.values() if p.current)
    highest = Counter(FORWARD[p.highest_rank] for p in persons.values() if p.highest_rank >= 0)

    def conversions(
        group: Iterable[_Person], steps: tuple[tuple[str, str], ...] = CONVERSIONS
    ) -> dict[str, dict[str, Any]]:
        group = list(group)
        out = {}
        for a, b in steps:
            base = sum(1 for p in group if a in p.first_reached)
            hits = sum(1 for p in group if a in p.first_reached and b in p.first_reached)
            out[f"{a}->{b}"] = {"from": base, "to": hits, "rate": _rate(hits, base)}
        return out

    overall = conversions(persons.values())
    by_source: dict[str, list[_Person]] = defaultdict(list)
    for person in persons.values():
        if person.lead_source is not None or "mql" in person.first_reached:
            by_source[person.lead_source or "unknown"].append(person)

    median_days: dict[str, float | None] = {}
    for a, b in _STEPS:
        gaps = [
            (p.first_reached[b] - p.first_reached[a]).total_seconds() / 86400
            for p in persons.values()
            if a in p.first_reached and b in p.first_reached
        ]
        median_days[f"{a}->{b}"] = round(statistics.median(gaps), 2) if gaps else None

    return FunnelReport(
        persons=len(persons),
        reached={s: reached.get(s, 0) for s in STAGES},
        current={s: current.get(s, 0) for s in STAGES},
        highest={s: highest.get(s, 0) for s in FORWARD},
        conversion={
            k: {"rate": v["rate"], "from": v["from"], "to": v["to"]} for k, v in overall.items()
        },
        # Lead source is set when a person reaches mql, so by source the funnel starts there.
        conversion_by_source={
            src: conversions(g, CONVERSIONS[1:]) for src, g in sorted(by_source.items())
        },
        median_days=median_days,
    )
