"""The stages of the lead lifecycle and their forward order."""

from __future__ import annotations

from typing import Literal, get_args

Stage = Literal["subscriber", "lead", "mql", "sql", "opportunity", "customer", "recycled"]

#: The machine's start state for a person we know nothing about yet; never on the wire
#: (a first change has `from_stage = None`).
NEW = "new"

#: Every stage in display order: the one place the order is written (the `Stage` literal).
STAGES: tuple[str, ...] = get_args(Stage)

#: The forward path. `recycled` is a detour, not a rank.
FORWARD: tuple[str, ...] = tuple(stage for stage in STAGES if stage != "recycled")
RANK: dict[str, int] = {stage: i for i, stage in enumerate(FORWARD)}

#: Stages a skip passes through: entering sql from a subscriber passes lead and mql, so
#: analytics count them as reached. Subscriber is an entry point, never a prerequisite.
PATH: tuple[str, ...] = FORWARD[1:]
_PATH_INDEX = {stage: i for i, stage in enumerate(PATH)}


def passed_through(from_stage: str, to_stage: str) -> tuple[str, ...]:
    """Stages strictly between `from_stage` and `to_stage` on the forward path."""
    end = _PATH_INDEX.get(to_stage)
    if end is None:
        return ()
    start = _PATH_INDEX.get(from_stage, -1)
    return PATH[start + 1 : end]


def higher(a: str | None, b: str) -> str:
    """The further along of two stages on the forward path (`recycled` never wins)."""
    if a is None:
        return b
    return b if RANK.get(b, -1) > RANK.get(a, -1) else a
