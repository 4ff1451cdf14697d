"""Shadow policies: a candidate definition run beside the active one on live traffic.

Each shadow decides every applied event with the same `decide`/`evolve` as the active policy,
keeps its own person states in memory, and publishes its would-be stage changes to
`leadflow.shadow.<version>`; nothing it decides reaches history or sales tools. Its states
are rebuilt at each partition assignment by replaying the events of the history partition,
the same arrival order the live worker saw, so a shadow's output equals what
`leadflow simulate` computes offline for the same events.
"""

from __future__ import annotations

from events.inbound import Event
from lifecycle.decide import decide
from lifecycle.evolve import evolve
from lifecycle.policy import Policy
from lifecycle.records import Decision, StageChange
from lifecycle.state import PersonState
from streams.kafka.topics import TopicNames


def shadow_topic(names: TopicNames, policy: Policy) -> str:
    """`leadflow.shadow.<version>`, with the same prefix as the other topics."""
    base = names.stage_changes.rsplit("stage-changes", 1)[0]
    return f"{base}shadow.{policy.version}"


class Shadow:
    __slots__ = ("changes", "policy", "states", "topic")

    def __init__(self, policy: Policy, topic: str) -> None:
        self.policy = policy
        self.topic = topic
        self.states: dict[str, PersonState] = {}
        #: person -> event id -> the shadow's changes, for the events that moved someone
        self.changes: dict[str, dict[str, tuple[StageChange, ...]]] = {}

    def apply(self, event: Event, live: Decision | None = None) -> tuple[StageChange, ...]:
        """The changes this policy would publish for `event` (again, for a redelivery).

        `live` is the active policy's decision: whether the event id was applied before is
        the same for every policy (`lifecycle.dedup`), so the shadow keeps no store of its
        own, only the changes it would re-emit. None: an event from history (applied).
        """
        person = event.person_id
        if live is not None and live.duplicate:
            if live.conflict is not None:
                return ()
            return self.changes.get(person, {}).get(event.event_id, ())
        state = self.states.get(person)
        decision = decide(state, event, self.policy)
        self.states[person] = evolve(state, decision)
        changes = tuple(decision.changes)
        if changes:
            self.changes.setdefault(person, {}).setdefault(event.event_id, changes)
        return changes

    def forget(self, persons: object) -> None:
        """Drop persons whose partition moved to another worker."""
        for person in persons:  # type: ignore[attr-defined]
            self.states.pop(person, None)
            self.changes.pop(person, None)
