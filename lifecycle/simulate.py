"""What-if: the same events under two policies, side by side."""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from typing import Any

from events.inbound import Event
from lifecycle.funnel import Funnel, FunnelReport
from lifecycle.policy import Policy
from lifecycle.replay import Recorded, Replayer, bulk_gc


@dataclass(slots=True)
class Outcome:
    person_id: str
    stage_a: str | None
    stage_b: str | None
    highest_a: str | None
    highest_b: str | None


@dataclass(slots=True)
class Simulation:
    policy_a: str
    policy_b: str
    events: int
    funnel_a: FunnelReport
    funnel_b: FunnelReport
    differing: list[Outcome]
    #: Persons who entered mql by each policy's decision, with their lead source.
    mqls_a: dict[str, str] = field(default_factory=dict)
    mqls_b: dict[str, str] = field(default_factory=dict)
    conflicts: int = 0  # events reusing an applied event id with other content (not applied)

    def to_dict(self, limit: int | None = 100) -> dict[str, Any]:
        shown = self.differing if limit is None else self.differing[:limit]
        return {
            "policy_a": self.policy_a,
            "policy_b": self.policy_b,
            "events": self.events,
            "funnel_a": self.funnel_a.to_dict(),
            "funnel_b": self.funnel_b.to_dict(),
            "persons_differing": len(self.differing),
            "conflicts": self.conflicts,
            "differing": [
                {
                    "person_id": o.person_id,
                    "a": o.stage_a,
                    "b": o.stage_b,
                    "highest_a": o.highest_a,
                    "highest_b": o.highest_b,
                }
                for o in shown
            ],
        }


def simulate(
    events: Iterable[Event],
    policy_a: Policy,
    policy_b: Policy,
    recorded: Recorded | None = None,
    *,
    follow: bool = True,
    funnels: tuple[Funnel, Funnel] | None = None,
    repeats: Container[str] | None = None,
) -> Simulation:
    """Replay `events` once, feeding both policies, and compare per-person outcomes.

    `follow` and `repeats` as in `Replayer`; `funnels` are the views to feed (a partial
    result keeps them).
    """
    funnel_a, funnel_b = funnels if funnels is not None else (Funnel(), Funnel())
    count, conflicts, differing = fold_both(
        events,
        policy_a,
        policy_b,
        recorded,
        follow=follow,
        funnels=(funnel_a, funnel_b),
        repeats=repeats,
    )
    return Simulation(
        policy_a.version,
        policy_b.version,
        count,
        funnel_a.report(),
        funnel_b.report(),
        differing,
        funnel_a.mqls(),
        funnel_b.mqls(),
        conflicts,
    )


def fold_both(
    events: Iterable[Event],
    policy_a: Policy,
    policy_b: Policy,
    recorded: Recorded | None,
    *,
    follow: bool,
    funnels: tuple[Funnel, Funnel],
    repeats: Container[str] | None,
) -> tuple[int, int, list[Outcome]]:
    """`simulate` without its reports: the events read, the conflicts, and the persons who
    end differently (by person id); the funnels are fed."""
    a = Replayer(policy_a, recorded=recorded, follow=follow, repeats=repeats)
    b = Replayer(policy_b, recorded=recorded, follow=follow, repeats=repeats)
    funnel_a, funnel_b = funnels
    count = conflicts = 0
    with bulk_gc():  # two replays' states: see `lifecycle.replay.bulk_gc`
        for event in events:
            count += 1
            for decided in a.apply_all(event):
                if decided.conflict is not None:
                    conflicts += 1
                funnel_a.add_decision(decided)
            for decided in b.apply_all(event):
                funnel_b.add_decision(decided)
    differing = []
    for person_id in sorted(a.states.keys() | b.states.keys()):
        sa, sb = a.states.get(person_id), b.states.get(person_id)
        if (sa and sa.merged_into) or (sb and sb.merged_into):
            continue  # an alias: its survivor is compared
        stage_a = sa.current_stage if sa else None
        stage_b = sb.current_stage if sb else None
        highest_a = sa.highest if sa else None
        highest_b = sb.highest if sb else None
        if (stage_a, highest_a) != (stage_b, highest_b):
            differing.append(Outcome(person_id, stage_a, stage_b, highest_a, highest_b))
    return count, conflicts, differing
