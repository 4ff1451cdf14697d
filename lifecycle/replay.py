"""Replay: fold events through decide/evolve, exactly as the live worker does."""

from __future__ import annotations

import gc
from collections.abc import Container, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime

from events.inbound import Event
from lifecycle.decide import decide
from lifecycle.dedup import SeenIndex
from lifecycle.evolve import Applied, evolve
from lifecycle.merge import ABSORBED
from lifecycle.policy import Policy
from lifecycle.records import Decision
from lifecycle.state import PersonState

#: (person, event id) -> (policy version, outcomes): what history records kept of the personal
#: fields their decisions read (`lifecycle.shredding.outcomes`), for replaying persons whose
#: personal fields are unreadable (erased, or no key at hand). Used only under that version.
Recorded = dict[tuple[str, str], tuple[str, dict[str, str]]]

#: Young-generation threshold while folding a large history (CPython's default is 700).
BULK_GC_THRESHOLD = 100_000


@contextmanager
def bulk_gc() -> Iterator[None]:
    """Let the cycle collector run rarely while a large history is folded; restored on exit.

    A replay keeps every person's state alive, and states hold no reference cycles. With the
    default thresholds the collector traverses the young events of each read batch and, ever
    more often, the whole growing table of states, finding nothing: on 1M events over 100k
    persons that was ~45 % of the CPU time of `bench/replay.py`. With a young threshold of
    100k, events die before a collection sees them and full collections become rare; cycles
    are still collected, only later.
    """
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], BULK_GC_THRESHOLD), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


class HashedIds:
    """Event ids held as their `hash()` (a false positive only costs an id the whole path),
    and every id that starts with one of `prefixes`: a sharded replay's `repeats`
    (`streams.tools.sharded.owned_of`), which `Replayer` checks inline, once per event."""

    __slots__ = ("hashes", "prefixes")

    def __init__(self, hashes: set[int], prefixes: tuple[str, ...] = ()) -> None:
        self.hashes = hashes
        self.prefixes = prefixes

    def __contains__(self, ident: object) -> bool:
        if type(ident) is not str:
            return False
        return hash(ident) in self.hashes or ident.startswith(self.prefixes)


#: Most hops of one event's follow-ups (a hand-off or forward along a chain of aliases).
MAX_HOPS = 1000


class Replayer:
    """Holds one state per person and every applied event id; feed it events in arrival order.

    The same steps as the live worker (`streams.worker.agent`): look up what was seen of the event
    id, decide, and for an applied decision evolve the state and remember the id. `seen`
    costs 40 bytes per applied event (`lifecycle.dedup.SeenIndex`).

    Identity merges hand events on to other persons (`Decision.follow_up`, see
    `lifecycle.merge`). With `follow` (the default) `apply_all` applies a follow-up at once,
    as if every person were on one partition, and skips the follow-ups a stream carries (a
    history's or the events topic's hand-offs and forwarded events): they are decided again
    from the merge and the alias's events, under this replay's policy. That is the restated
    view (what-if, funnels, calibrate), whatever the input. With `follow=False` every event
    is applied as given and nothing is handed on: a history's events then reproduce the
    live decisions exactly, in the interleaving the workers had (tests, audits).

    `repeats`: when the caller knows the input whole (a file), the event ids that may occur
    in it more than once (`streams.tools.repeats`; more is harmless). An event of the input
    whose id is not among them cannot be a redelivery or a conflict (no other event has its
    id), so it is decided with nothing seen and kept out of the dedup index, which then holds
    only the events that may come again: the same decisions and output, exactly, for ~4 µs
    and ~600 bytes a person less (the content digest, the index entry, the packed changes).
    Follow-ups, and an event whose decision hands one on, take the whole path.
    """

    __slots__ = ("_hashes", "follow", "policy", "recorded", "repeats", "seen", "states")

    def __init__(
        self,
        policy: Policy,
        states: dict[str, PersonState] | None = None,
        seen: SeenIndex | None = None,
        recorded: Recorded | None = None,
        *,
        follow: bool = True,
        repeats: Container[str] | None = None,
    ) -> None:
        self.policy = policy
        self.recorded = recorded
        self.repeats = repeats
        #: `repeats` held as hashes, checked inline (`apply_all`)
        self._hashes = repeats if type(repeats) is HashedIds else None
        self.states: dict[str, PersonState] = {} if states is None else states
        self.seen = SeenIndex() if seen is None else seen
        self.follow = follow

    def apply_all(self, event: Event) -> list[Decision]:
        """The event's decision, then (with `follow`) those of its follow-ups, in order.

        With `follow`, a follow-up carried by the stream gives no decision (see above).
        """
        hashed = self._hashes
        if hashed is not None:  # `event.event_id in hashed`, inline: once per event
            ident = event.event_id
            indexed = hash(ident) in hashed.hashes or ident.startswith(hashed.prefixes)
        else:
            indexed = self.repeats is None or event.event_id in self.repeats
        if not self.follow:
            return [self._apply(event, None, indexed)]
        if event.forwarded_via is not None or (event.type == ABSORBED and event.absorbed):
            return []
        # `self._apply(event, None, indexed)`, inline: once per event
        person = event.person_id
        state = self.states.get(person)
        if state is None:  # a first event is never a duplicate: keep the state decide() reads
            state = self.states[person] = PersonState(person)
        recorded = None
        if self.recorded:
            kept = self.recorded.get((person, event.event_id))
            if kept is not None and kept[0] == self.policy.version:
                recorded = kept[1]
        seen = self.seen.get(person, event.event_id) if indexed else None
        decision = decide(state, event, self.policy, seen, recorded=recorded)
        if not decision.duplicate:
            evolve(state, decision)  # in place
            if indexed or decision.follow_up is not None:
                self.seen.remember(decision)
        if decision.follow_up is None:
            return [decision]
        decisions = [decision]
        while decision.follow_up is not None and len(decisions) <= MAX_HOPS:
            decision = self.apply(decision.follow_up)
            decisions.append(decision)
        return decisions

    def apply(self, event: Event, recorded: Mapping[str, str] | None = None) -> Decision:
        """`recorded`: the outcomes a history record kept of the personal fields its decision
        read, for an event whose personal fields are unreadable (erased); only meaningful
        under the policy version that recorded them."""
        return self._apply(event, recorded, True)

    def _apply(self, event: Event, recorded: Mapping[str, str] | None, indexed: bool) -> Decision:
        """`indexed` False: an event of the input whose id no other event of it has
        (`repeats`): nothing was seen of it, and only a decision that hands it on is
        remembered (its follow-ups' chain is checked against it as ever)."""
        person = event.person_id
        state = self.states.get(person)
        if state is None:  # a first event is never a duplicate: keep the state decide() reads
            state = self.states[person] = PersonState(person)
        if recorded is None and self.recorded:
            kept = self.recorded.get((person, event.event_id))
            if kept is not None and kept[0] == self.policy.version:
                recorded = kept[1]
        seen = self.seen.get(person, event.event_id) if indexed else None
        decision = decide(state, event, self.policy, seen, recorded=recorded)
        if not decision.duplicate:
            evolve(state, decision)  # in place
            if indexed or decision.follow_up is not None:
                self.seen.remember(decision)
        return decision


def replay(
    events: Iterable[Event],
    policy: Policy,
    recorded: Recorded | None = None,
    *,
    follow: bool = True,
    repeats: Container[str] | None = None,
) -> Iterator[Decision]:
    """Every decision, in order. Duplicates come out with `duplicate=True` and their old changes;
    an event id reused with other content with `duplicate=True` and its `conflict`.

    `follow=False` reproduces a history's own decisions exactly; `repeats` (see `Replayer`).
    """
    replayer = Replayer(policy, recorded=recorded, follow=follow, repeats=repeats)
    with bulk_gc():  # while the caller consumes decisions too; restored when it finishes
        if not follow:
            for event in events:
                yield replayer.apply(event)
            return
        for event in events:
            yield from replayer.apply_all(event)


def fold(records: Iterable[Applied]) -> dict[str, PersonState]:
    """Every person's state from history records (or decisions), with no rule re-applied."""
    states: dict[str, PersonState] = {}
    with bulk_gc():
        for record in records:
            if getattr(record, "duplicate", False):
                continue
            states[record.person_id] = evolve(states.get(record.person_id), record)
    return states


def state_as_of(records: Iterable[Applied], person_id: str, as_of: datetime) -> PersonState:
    """The person's state from the records of events that occurred at or before `as_of`.

    Records are taken in history order; a late event (occurred before as_of, arrived after a
    later one) still counts, as it did live.
    """
    state = PersonState(person_id)
    for record in records:
        if record.person_id != person_id or getattr(record, "duplicate", False):
            continue
        if record.event.occurred_at <= as_of:
            state = evolve(state, record)
    return state
