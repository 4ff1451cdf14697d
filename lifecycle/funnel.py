"""Funnel analytics from stage changes: reached per stage, conversion by lead source, timing.

A stage counts as reached when a person entered it or passed through it on an authoritative
skip (a `deal_won` on an mql reached sql and opportunity too). Conversion cannot flatter:
a person who first reached a stage only by passing through it on a sales event is
*sales-sourced* there, reported apart, and left out of the base of that stage's
conversion. Otherwise a policy under which no one becomes an MQL by marketing's rules would
count only the won deals that skipped mql as "MQLs" and report mql→customer 1.0.

Attribution: by the lead source (the touch that triggered the move to mql), the first touch,
the last touch before the move and the number of touches by then.
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


#: Buckets of "touches by the move to mql" the funnel groups persons by.
TOUCH_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("1", 1, 1),
    ("2", 2, 2),
    ("3-5", 3, 5),
    ("6-10", 6, 10),
    ("11+", 11, 1 << 62),
)


def touch_bucket(touches: int | None) -> str:
    """The bucket label of a touch count ("unknown" when the change did not record one)."""
    if not touches:
        return "unknown"
    return next(label for label, low, high in TOUCH_BUCKETS if low <= touches <= high)


def is_sales_change(change: Any) -> bool:
    """A change decided by an authoritative sales event (its rule is `sales.*`)."""
    return change.reason.rule.startswith("sales.")


@dataclass(slots=True)
class _Person:
    first_reached: dict[str, datetime] = field(default_factory=dict)
    #: Stages first reached only by passing through them on a sales event (a tuple: rare,
    #: and the live view holds one record per person).
    sales_sourced: tuple[str, ...] = ()
    current: str | None = None
    last: tuple[int, str] = (0, "")  # (sequence, change_id) of the change setting `current`
    highest_rank: int = -1
    lead_source: str | None = None
    first_touch: str | None = None
    last_touch: str | None = None
    touches: int | None = None

    def entered(self, stage: str) -> bool:
        """Reached `stage` by a decision (the policy's, or sales moving them *into* it)."""
        return stage in self.first_reached and stage not in self.sales_sourced


@dataclass(slots=True)
class FunnelReport:
    persons: int
    reached: dict[str, int]
    current: dict[str, int]
    highest: dict[str, int]
    #: Marketing conversion: the base is the persons who *entered* the from-stage.
    conversion: dict[str, dict[str, float | None]]
    conversion_by_source: dict[str, dict[str, dict[str, Any]]]
    median_days: dict[str, float | None]
    #: Per stage: reached by a decision, and reached only on a sales event's skip.
    entered: dict[str, int] = field(default_factory=dict)
    sales_sourced: dict[str, int] = field(default_factory=dict)
    #: The same conversions over everyone who reached the from-stage (sales-sourced too).
    conversion_reached: dict[str, dict[str, float | None]] = field(default_factory=dict)
    sales_sourced_by_source: dict[str, int] = field(default_factory=dict)
    conversion_by_first_touch: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    conversion_by_last_touch: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    conversion_by_touches: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "persons": self.persons,
            "reached": self.reached,
            "entered": self.entered,
            "sales_sourced": self.sales_sourced,
            "current": self.current,
            "highest": self.highest,
            "conversion": self.conversion,
            "conversion_reached": self.conversion_reached,
            "conversion_by_source": self.conversion_by_source,
            "sales_sourced_by_source": self.sales_sourced_by_source,
            "conversion_by_first_touch": self.conversion_by_first_touch,
            "conversion_by_last_touch": self.conversion_by_last_touch,
            "conversion_by_touches": self.conversion_by_touches,
            "median_days": self.median_days,
        }


def _rate(hits: int, base: int) -> float | None:
    return round(hits / base, 4) if base else None


_RANK = {stage: i for i, stage in enumerate(FORWARD)}


class Funnel:
    """A funnel fed one change at a time (the live view), reported on demand.

    Safe under redelivery: a stage counts once per person, and a replayed older change never
    overrides the current stage set by a newer one.

    Identity merges count one person: a change that merged ids into its person (`merged`,
    a merge that advanced the survivor) folds their records into it, and so does `merge()`
    (fed from decisions: a merge that did not advance the survivor has no change). A
    change of an alias arriving later (a redelivery of its old events) adds only what it
    reached to the survivor.
    """

    def __init__(self) -> None:
        self.persons: dict[str, _Person] = defaultdict(_Person)
        self.aliases: dict[str, str] = {}  # merged id -> the id it was merged into

    def merge(self, alias: str, survivor: str) -> None:
        """Count `alias` as `survivor` from now on: what it reached, at the earliest times."""
        if alias == survivor or self.aliases.get(alias) == survivor:
            return
        self.aliases[alias] = survivor
        other = self.persons.pop(alias, None)
        if other is None:
            return
        person = self.persons[self._resolve(survivor)]
        self._fold_reached(person, other.first_reached, other.sales_sourced, other.highest_rank)
        mine, theirs = person.first_reached.get("mql"), other.first_reached.get("mql")
        if theirs is not None and (mine is None or theirs < mine):
            person.lead_source = other.lead_source or person.lead_source
            person.last_touch, person.touches = other.last_touch, other.touches
        person.first_touch = person.first_touch or other.first_touch
        if person.current is None:
            person.current = other.current

    def _resolve(self, person_id: str) -> str:
        seen = {person_id}
        while person_id in self.aliases:
            person_id = self.aliases[person_id]
            if person_id in seen:
                break
            seen.add(person_id)
        return person_id

    @staticmethod
    def _fold_reached(
        person: _Person, reached: dict[str, datetime], sourced: tuple[str, ...], rank: int
    ) -> None:
        for stage, at in reached.items():
            mine = person.first_reached.get(stage)
            if mine is None or at < mine:
                person.first_reached[stage] = at
                if stage in sourced and stage not in person.sales_sourced:
                    person.sales_sourced += (stage,)
                elif stage not in sourced and stage in person.sales_sourced:
                    person.sales_sourced = tuple(s for s in person.sales_sourced if s != stage)
        person.highest_rank = max(person.highest_rank, rank)

    def add_decision(self, decision: Any) -> None:
        """A decision's changes, and the merge it made (a `Decision` or a history record)."""
        if getattr(decision, "duplicate", False):
            return
        merged = getattr(decision, "merged", None)
        if merged is not None:
            for alias in merged.aliases:
                self.merge(alias, decision.person_id)
        for change in decision.changes:
            self.add(change)

    def add(self, change: Any) -> None:
        for alias in getattr(change, "merged", ()):
            self.merge(alias, change.person_id)
        if change.person_id in self.aliases:
            self._alias_change(change)
            return
        person = self.persons[change.person_id]
        reached = person.first_reached
        if person.first_touch is None:  # the earliest touch: the same on every change
            person.first_touch = change.first_touch_source
        if "mql" not in reached and (change.to_stage == "mql" or "mql" in change.passed_through):
            person.last_touch = getattr(change, "last_touch_source", None)
            person.touches = getattr(change, "touches", None)
        skipped_by_sales = is_sales_change(change)
        for stage in change.passed_through:
            if stage not in reached:
                reached[stage] = change.occurred_at
                if skipped_by_sales:
                    person.sales_sourced += (stage,)
            person.highest_rank = max(person.highest_rank, _RANK.get(stage, -1))
        reached.setdefault(change.to_stage, change.occurred_at)
        person.highest_rank = max(person.highest_rank, _RANK.get(change.to_stage, -1))
        order = (change.sequence, change.change_id)
        if order >= person.last:
            person.last = order
            person.current = change.to_stage
            if change.to_stage == "mql" or "mql" in change.passed_through:
                person.lead_source = change.lead_source

    def _alias_change(self, change: Any) -> None:
        """A change of a merged id, redelivered after the merge: only what it reached."""
        person = self.persons[self._resolve(change.person_id)]
        sourced = change.passed_through if is_sales_change(change) else ()
        reached = dict.fromkeys(change.passed_through, change.occurred_at)
        reached[change.to_stage] = change.occurred_at
        rank = max(_RANK.get(s, -1) for s in reached)
        self._fold_reached(person, reached, tuple(sourced), rank)

    def report(self) -> FunnelReport:
        return _report(self.persons)

    def mqls(self) -> dict[str, str]:
        """Persons who entered mql by a decision (not sales-sourced), with their lead source."""
        return {
            person_id: person.lead_source or "unknown"
            for person_id, person in self.persons.items()
            if person.entered("mql")
        }


def funnel(changes: Iterable[Any]) -> FunnelReport:
    """Aggregate `StageChange`/`StageChanged` records, in history order."""
    view = Funnel()
    for change in changes:
        view.add(change)
    return view.report()


def funnel_of(decisions: Iterable[Any]) -> FunnelReport:
    """Aggregate decisions (or history records): their changes and the merges they made."""
    view = Funnel()
    for decision in decisions:
        view.add_decision(decision)
    return view.report()


def conversions(
    group: Iterable[_Person],
    steps: tuple[tuple[str, str], ...] = CONVERSIONS,
    *,
    sales_sourced_too: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per step: persons in the from-stage (`from`), of them reached the to-stage (`to`), rate.

    The from-stage counts only those who entered it, unless `sales_sourced_too`.
    """
    group = list(group)
    out = {}
    for a, b in steps:
        base = [p for p in group if (a in p.first_reached if sales_sourced_too else p.entered(a))]
        hits = sum(1 for p in base if b in p.first_reached)
        out[f"{a}->{b}"] = {"from": len(base), "to": hits, "rate": _rate(hits, len(base))}
    return out


def _grouped(
    persons: Iterable[_Person], key: Any, steps: tuple[tuple[str, str], ...]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Conversions of the persons who reached mql, grouped by `key(person)`."""
    groups: dict[str, list[_Person]] = defaultdict(list)
    for person in persons:
        if "mql" in person.first_reached:
            groups[key(person) or "unknown"].append(person)
    return {name: conversions(group, steps) for name, group in sorted(groups.items())}


def _report(persons: dict[str, _Person]) -> FunnelReport:
    reached = Counter(s for p in persons.values() for s in p.first_reached)
    sales_sourced = Counter(s for p in persons.values() for s in p.sales_sourced)
    current = Counter(p.current for p in persons.values() if p.current)
    highest = Counter(FORWARD[p.highest_rank] for p in persons.values() if p.highest_rank >= 0)

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
            if p.entered(a) and b in p.first_reached
        ]
        median_days[f"{a}->{b}"] = round(statistics.median(gaps), 2) if gaps else None

    # Lead source is set when a person reaches mql, so by source the funnel starts there.
    from_mql = CONVERSIONS[1:]
    return FunnelReport(
        persons=len(persons),
        reached={s: reached.get(s, 0) for s in STAGES},
        current={s: current.get(s, 0) for s in STAGES},
        highest={s: highest.get(s, 0) for s in FORWARD},
        conversion={
            k: {"rate": v["rate"], "from": v["from"], "to": v["to"]} for k, v in overall.items()
        },
        conversion_by_source={
            src: conversions(g, from_mql) for src, g in sorted(by_source.items())
        },
        median_days=median_days,
        entered={s: reached.get(s, 0) - sales_sourced.get(s, 0) for s in STAGES},
        sales_sourced={s: sales_sourced.get(s, 0) for s in STAGES},
        conversion_reached=conversions(persons.values(), sales_sourced_too=True),
        sales_sourced_by_source={
            src: sum(1 for p in g if "mql" in p.sales_sourced)
            for src, g in sorted(by_source.items())
        },
        conversion_by_first_touch=_grouped(persons.values(), lambda p: p.first_touch, from_mql),
        conversion_by_last_touch=_grouped(persons.values(), lambda p: p.last_touch, from_mql),
        conversion_by_touches=_grouped(
            persons.values(), lambda p: touch_bucket(p.touches), from_mql
        ),
    )
