"""The lifecycle graph: one `transitions` Machine for the whole process.

The machine is the single source of truth for which moves exist and which guards they need.
Persons are plain records, never models of this machine: the hot path reads `TABLE`, a dict
compiled once from the machine, and `tests/unit/test_machine.py` proves the two agree.
"""

from __future__ import annotations

from typing import NamedTuple

from transitions import Machine

from lifecycle.stages import NEW, STAGES

_PRE_LEAD = [NEW, "subscriber", "recycled"]
_PRE_MQL = [*_PRE_LEAD, "lead"]
_PRE_SQL = [*_PRE_MQL, "mql"]
_PRE_OPPORTUNITY = [*_PRE_SQL, "sql"]
_ACTIVE = ["lead", "mql", "sql", "opportunity"]

#: Guards, in the order decide() checks them; each is implemented in `lifecycle/guards.py`.
FIT_GUARDS = ["not_ucp", "fits_icp", "is_decision_maker"]

TRANSITIONS: list[dict[str, object]] = [
    {"trigger": "subscribe", "source": NEW, "dest": "subscriber"},
    {"trigger": "show_interest", "source": _PRE_LEAD, "dest": "lead", "conditions": FIT_GUARDS},
    {
        "trigger": "raise_hand",
        "source": _PRE_MQL,
        "dest": "mql",
        "conditions": [*FIT_GUARDS, "source_not_gated"],
    },
    {
        "trigger": "reach_score",
        "source": _PRE_MQL,
        "dest": "mql",
        "conditions": [*FIT_GUARDS, "source_not_gated", "score_reached"],
    },
    # Sales feedback is authoritative: no guards, and it may skip stages.
    {"trigger": "accept", "source": _PRE_SQL, "dest": "sql"},
    {"trigger": "open_opportunity", "source": _PRE_OPPORTUNITY, "dest": "opportunity"},
    {"trigger": "win", "source": [*_PRE_OPPORTUNITY, "opportunity"], "dest": "customer"},
    {"trigger": "reject", "source": _ACTIVE, "dest": "recycled"},
    {"trigger": "lose", "source": _ACTIVE, "dest": "recycled"},
    {
        "trigger": "time_out",
        "source": ["subscriber", *_ACTIVE],
        "dest": "recycled",
        "conditions": ["times_out"],
    },
]

MACHINE_KWARGS: dict[str, object] = {
    "states": [NEW, *STAGES],
    "transitions": TRANSITIONS,
    "initial": NEW,
    "auto_transitions": False,
    "ignore_invalid_triggers": True,
}

#: The one machine of the process. `model=None`: no person is ever attached to it.
LIFECYCLE = Machine(model=None, **MACHINE_KWARGS)


class Move(NamedTuple):
    dest: str
    guards: tuple[str, ...]


def compile_table(machine: Machine) -> dict[tuple[str, str], Move]:
    """(stage, trigger) → destination and guards, read from the machine's own transitions."""
    table: dict[tuple[str, str], Move] = {}
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            first = transitions[0]
            table[(source, trigger)] = Move(first.dest, tuple(c.func for c in first.conditions))
    return table


TABLE: dict[tuple[str, str], Move] = compile_table(LIFECYCLE)


def diagram() -> str:
    """The lifecycle as a mermaid state diagram, drawn by transitions' GraphMachine."""
    from transitions.extensions import GraphMachine

    class _Drawing:
        pass

    drawing = _Drawing()
    graph = GraphMachine(
        model=drawing,
        title="leadflow lifecycle",
        graph_engine="mermaid",
        show_conditions=True,
        **MACHINE_KWARGS,
    )
    del graph
    return drawing.get_graph().draw(None)  # type: ignore[attr-defined]
