"""The compiled TABLE on the hot path agrees with the transitions Machine it was read from."""

from __future__ import annotations

import itertools

import pytest
from transitions import Machine

from lifecycle.guards import GUARDS
from lifecycle.machine import LIFECYCLE, MACHINE_KWARGS, TABLE, TRANSITIONS, diagram
from lifecycle.stages import NEW, STAGES

STATES = [NEW, *STAGES]
TRIGGERS = sorted({str(t["trigger"]) for t in TRANSITIONS})
GUARD_NAMES = sorted({g for move in TABLE.values() for g in move.guards})


class _Person:
    """A throwaway model whose guards answer as told (True unless named in `failing`)."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        for name in GUARD_NAMES:
            setattr(self, name, (lambda ok: lambda *args, **kwargs: ok)(name not in failing))


def _fire(state: str, trigger: str, failing: frozenset[str] = frozenset()) -> str:
    person = _Person(failing)
    machine = Machine(model=person, **MACHINE_KWARGS)
    machine.set_state(state, model=person)
    person.trigger(trigger)  # type: ignore[attr-defined]
    return person.state  # type: ignore[attr-defined]


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(STATES, TRIGGERS)))
def test_table_agrees_with_the_machine_when_guards_pass(state, trigger):
    move = TABLE.get((state, trigger))

    assert _fire(state, trigger) == (move.dest if move else state)


@pytest.mark.parametrize(
    ("state", "trigger", "guard"),
    [(s, t, g) for (s, t), move in sorted(TABLE.items()) for g in move.guards],
)
def test_any_failing_guard_means_no_move(state, trigger, guard):
    assert _fire(state, trigger, frozenset({guard})) == state


def test_table_guards_are_the_machine_conditions_in_order():
    for spec in TRANSITIONS:
        sources = spec["source"] if isinstance(spec["source"], list) else [spec["source"]]
        for source in sources:
            move = TABLE[(source, spec["trigger"])]
            assert move.dest == spec["dest"]
            assert list(move.guards) == list(spec.get("conditions", []))


def test_each_state_and_trigger_has_one_transition():
    # compile_table reads the first transition only; a second would be silently ignored.
    for event in LIFECYCLE.events.values():
        for transitions in event.transitions.values():
            assert len(transitions) == 1


def test_every_guard_is_implemented():
    assert set(GUARD_NAMES) <= set(GUARDS)


def test_customer_has_no_way_out():
    assert not [key for key in TABLE if key[0] == "customer"]


def test_the_process_machine_holds_no_person():
    assert LIFECYCLE.models == []


def test_diagram_is_mermaid_with_every_stage():
    drawing = diagram()

    assert drawing.lstrip().startswith(("---", "stateDiagram"))
    assert "stateDiagram" in drawing
    for stage in STAGES:
        assert f'state "{stage}" as {stage}' in drawing
