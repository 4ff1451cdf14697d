"""Cohort funnels: conversion by the month (or week) a person entered each stage.

A cohort is the persons who *entered* a stage in a period (sales-sourced persons, who only
passed through it on a sales event, are counted apart and left out of the rates). For each
cohort: how many went on to the next stage and to customer (with 95 % Wilson intervals),
and how long they stayed in the stage (p50 / p90 days, over those who left it).

The same function gives both views auditors argue about: fed the changes recorded in
history it is *as reported* (each decision under the policy version that was live; each row
counts its persons by the version that moved them in); fed a
replay of the same events under one policy it is *restated*.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lifecycle.funnel import Funnel, touch_bucket
from lifecycle.rates import Rate
from lifecycle.stages import FORWARD

PERIODS = ("month", "week")
GROUPS = ("source", "first_touch", "last_touch", "touches")
#: The stages a cohort starts from (customer is terminal: nothing to convert to).
COHORT_STAGES = ("lead", "mql", "sql", "opportunity")


def period_of(moment: datetime, period: str) -> str:
    """`2026-03` for a month, `2026-W09` for an ISO week."""
    if period == "month":
        return f"{moment:%Y-%m}"
    if period == "week":
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    raise ValueError(f"period {period!r}: choose one of {', '.join(PERIODS)}")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0–100) by linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return round(value, 2)


@dataclass(slots=True)
class _Cell:
    entered: int = 0
    sales_sourced: int = 0
    to_next: int = 0
    to_customer: int = 0
    days: list[float] = field(default_factory=list)
    still_in: int = 0
    versions: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class CohortReport:
    period: str
    by: str | None
    rows: list[dict[str, Any]]
    policy_versions: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "by": self.by,
            "policy_versions": self.policy_versions,
            "rows": self.rows,
        }


def _group(person: Any, by: str | None) -> str:
    if by is None:
        return "all"
    if by == "source":
        return person.lead_source or "none"
    if by == "first_touch":
        return person.first_touch or "none"
    if by == "last_touch":
        return person.last_touch or "none"
    if by == "touches":
        return touch_bucket(person.touches)
    raise ValueError(f"--by {by!r}: choose one of {', '.join(GROUPS)}")


def _left_at(person: Any, stage: str) -> datetime | None:
    """When the person first reached a stage after `stage` (further on, or recycled)."""
    entered = person.first_reached[stage]
    later = FORWARD[FORWARD.index(stage) + 1 :]
    times = [person.first_reached[s] for s in later if s in person.first_reached]
    recycled = person.first_reached.get("recycled")
    if recycled is not None and recycled >= entered:
        times.append(recycled)
    return min(times) if times else None


def cohorts(changes: Iterable[Any], period: str = "month", by: str | None = None) -> CohortReport:
    """Cohorts from stage changes (recorded or replayed), in history order."""
    period_of(datetime(2000, 1, 1), period)  # validates the period name
    view = Funnel()
    versions: Counter[str] = Counter()
    #: The policy version of the change by which a person first reached a stage.
    entered_under: dict[tuple[str, str], str] = {}
    for change in changes:
        view.add(change)
        versions[change.policy_version] += 1
        for stage in (*change.passed_through, change.to_stage):
            entered_under.setdefault((change.person_id, stage), change.policy_version)
    cells: dict[tuple[str, str, str], _Cell] = defaultdict(_Cell)
    for person_id, person in view.persons.items():
        group = _group(person, by)
        for stage in COHORT_STAGES:
            at = person.first_reached.get(stage)
            if at is None:
                continue
            cell = cells[(period_of(at, period), group, stage)]
            if not person.entered(stage):
                cell.sales_sourced += 1
                continue
            cell.entered += 1
            cell.versions[entered_under[(person_id, stage)]] += 1
            following = FORWARD[FORWARD.index(stage) + 1]
            cell.to_next += following in person.first_reached
            cell.to_customer += "customer" in person.first_reached
            left = _left_at(person, stage)
            if left is None:
                cell.still_in += 1
            else:
                cell.days.append((left - at).total_seconds() / 86400)
    rows = []
    for (cohort, group, stage), cell in sorted(
        cells.items(), key=lambda kv: (kv[0][0], kv[0][1], COHORT_STAGES.index(kv[0][2]))
    ):
        following = FORWARD[FORWARD.index(stage) + 1]
        rows.append(
            {
                "cohort": cohort,
                "group": group,
                "stage": stage,
                "entered": cell.entered,
                "sales_sourced": cell.sales_sourced,
                "entered_under": dict(cell.versions),
                "next_stage": following,
                "to_next": Rate(cell.to_next, cell.entered).to_dict(),
                "to_customer": Rate(cell.to_customer, cell.entered).to_dict(),
                "days_in_stage": {
                    "p50": percentile(cell.days, 50),
                    "p90": percentile(cell.days, 90),
                    "left": len(cell.days),
                    "still_in": cell.still_in,
                },
            }
        )
    return CohortReport(period, by, rows, dict(versions))


def time_in_stage(changes: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """p50 / p90 days in each stage over everyone who entered and left it (no cohorts)."""
    view = Funnel()
    for change in changes:
        view.add(change)
    out: dict[str, dict[str, Any]] = {}
    for stage in COHORT_STAGES:
        days = []
        for person in view.persons.values():
            if person.entered(stage):
                left = _left_at(person, stage)
                if left is not None:
                    days.append((left - person.first_reached[stage]).total_seconds() / 86400)
        out[stage] = {"p50": percentile(days, 50), "p90": percentile(days, 90), "left": len(days)}
    return out
