"""Partial results over a share of the history topic's partitions, and their combination.

A person's history is on one partition (key = person id). Read as recorded (`follow=False`:
a merge's hand-off and an alias's forwarded events are applied where history has them, see
`lifecycle.replay.Replayer`), every person's decisions depend on that partition alone. So a
run over some partitions computes one *piece* per partition, and combining the pieces in
partition order gives the same result whichever process computed which partition. A piece
keeps what a report is computed from, never a rounded output:

- funnel: the funnel facts of every person no identity merge touched, and the funnel inputs
  of those a merge touched (replayed in causal order when combining, see below); the report
  (counts, rates, medians) is computed from the combined persons, as one run does;
- simulate: the events, the conflicts, both policies' funnel facts and the persons who end
  differently (sorted by id once combined, as one run sorts them);
- verify: the records checked, the mismatches (their values as the report prints them) and
  the unchecked records per policy version; mismatches keep partition order;
- replay: its output lines. A run over the topic reads it in (partition, offset) order, so
  the lines of the partitions one after the other are a single run's output;
- funnel --cohort: the stage changes, as recorded and as restated (cohorts are counted by
  the period and policy version of each person's first entry, with percentiles of days in
  stage), combined in causal order.

A partial is a versioned document (`Partial.to_json`); `check_set` refuses partials that
cannot be combined, with one line naming the file.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from events.inbound import Event
from lifecycle.funnel import Funnel, _Person
from lifecycle.policy import Policy
from lifecycle.records import Decision, Reason, StageChange
from lifecycle.replay import Recorded, Replayer, bulk_gc
from lifecycle.simulate import Outcome, Simulation, simulate
from lifecycle.verify import Mismatch, VerifyReport, verify

#: The version of the partial document; a reader refuses any other.
FORMAT = 1
#: What a piece (one partition's share) of each command's partial holds.
PIECE_KEYS: dict[str, frozenset[str]] = {
    "funnel": frozenset({"funnel", "conflicts", "invalid"}),
    "simulate": frozenset({"events", "conflicts", "funnel_a", "funnel_b", "differing", "invalid"}),
    "verify": frozenset({"checked", "mismatches", "missing_policies", "invalid"}),
    "replay": frozenset({"lines", "conflicts", "invalid"}),
    "funnel-cohort": frozenset({"reported", "restated", "invalid"}),
}
COMMANDS = tuple(PIECE_KEYS)


class PartialError(ValueError):
    """A partial that cannot be read or combined; the message names the file."""


@dataclass(slots=True)
class Partial:
    """One process's share: the pieces of its partitions and what they were computed under."""

    source: str  # the file it was read from (for errors); not written
    command: str
    #: The policies the result depends on: [{"name", "version"}], in the command's order.
    policies: list[dict[str, str]]
    #: The options that shape the report (format, --by, --limit, --person …).
    options: dict[str, Any]
    topic: str
    topic_partitions: int
    pieces: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def partitions(self) -> list[int]:
        return sorted(self.pieces)

    def to_json(self) -> dict[str, Any]:
        return {
            "leadflow_partial": FORMAT,
            "command": self.command,
            "policies": self.policies,
            "options": self.options,
            "topic": self.topic,
            "topic_partitions": self.topic_partitions,
            "partitions": self.partitions,
            "pieces": {str(p): self.pieces[p] for p in self.partitions},
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> Partial:
        if not isinstance(data, dict) or "leadflow_partial" not in data:
            raise PartialError(f"{source}: not a leadflow partial result (no leadflow_partial)")
        if data["leadflow_partial"] != FORMAT:
            raise PartialError(
                f"{source}: partial format {data['leadflow_partial']!r}, this leadflow reads "
                f"{FORMAT}; write it again with this version"
            )
        try:
            command = data["command"]
            if command not in COMMANDS:
                raise PartialError(f"{source}: command {command!r} is not one of {COMMANDS}")
            pieces = {int(p): piece for p, piece in data["pieces"].items()}
            partial = cls(
                source,
                command,
                [{"name": p["name"], "version": p["version"]} for p in data["policies"]],
                dict(data["options"]),
                str(data["topic"]),
                int(data["topic_partitions"]),
                pieces,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            if isinstance(error, PartialError):
                raise
            raise PartialError(f"{source}: not a leadflow partial result: {error!r}") from None
        if sorted(pieces) != sorted(int(p) for p in data.get("partitions", ())):
            raise PartialError(f"{source}: 'partitions' does not list the partitions of 'pieces'")
        for number, piece in pieces.items():
            lacking = PIECE_KEYS[command] - set(piece) if isinstance(piece, dict) else {"all"}
            if lacking:
                raise PartialError(
                    f"{source}: pieces.{number} lacks {', '.join(sorted(lacking))} of a "
                    f"{command} partial; write it again"
                )
        return partial


def _versions(partial: Partial) -> list[str]:
    return [p["version"] for p in partial.policies]


def check_set(partials: Sequence[Partial], *, allow_partial: bool = False) -> list[int]:
    """Refuse partials that are not shares of one run; return the partitions none covers
    (only with `allow_partial`, else that refuses too)."""
    if not partials:
        raise PartialError("no partial results given")
    first = partials[0]
    covered: dict[int, str] = {}
    for partial in partials:
        if partial.command != first.command:
            raise PartialError(
                f"{partial.source}: a {partial.command} partial, but {first.source} is a "
                f"{first.command} partial; combine the partials of one command"
            )
        if _versions(partial) != _versions(first):
            raise PartialError(
                f"{partial.source}: computed under policy {', '.join(_versions(partial))}, but "
                f"{first.source} under {', '.join(_versions(first))}; combine partials of "
                "one policy"
            )
        if partial.options != first.options:
            raise PartialError(
                f"{partial.source}: made with options {partial.options}, but {first.source} "
                f"with {first.options}; combine partials of one run"
            )
        if (partial.topic, partial.topic_partitions) != (first.topic, first.topic_partitions):
            raise PartialError(
                f"{partial.source}: read {partial.topic} ({partial.topic_partitions} "
                f"partitions), but {first.source} read {first.topic} "
                f"({first.topic_partitions} partitions)"
            )
        for number in partial.partitions:
            if not 0 <= number < partial.topic_partitions:
                raise PartialError(
                    f"{partial.source}: partition {number} is not a partition of {partial.topic} "
                    f"(0-{partial.topic_partitions - 1})"
                )
            if number in covered:
                raise PartialError(
                    f"{partial.source}: partition {number} is also in {covered[number]}; "
                    "each partition must come from one partial"
                )
            covered[number] = partial.source
    missing = [p for p in range(first.topic_partitions) if p not in covered]
    if missing and not allow_partial:
        raise PartialError(
            f"{partials[-1].source}: partitions {spans(missing)} of {first.topic} "
            f"({first.topic_partitions} partitions) are in no partial given; add their "
            "partial, or pass --allow-partial for the report of the partitions given"
        )
    return missing


def spans(numbers: Iterable[int]) -> str:
    """`0-3,5`: partition numbers as `--partitions` takes them."""
    out: list[str] = []
    ordered = sorted(set(numbers))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def pieces_in_order(partials: Sequence[Partial]) -> list[dict[str, Any]]:
    """Every piece of the partials, in partition order."""
    found = {n: piece for partial in partials for n, piece in partial.pieces.items()}
    return [found[n] for n in sorted(found)]


def _conflicts(decisions: Iterable[Decision], into: list[list[str]]) -> Iterator[Decision]:
    for decision in decisions:
        if decision.conflict is not None:
            into.append([decision.person_id, decision.conflict])
        yield decision


# --- funnel ----------------------------------------------------------------------------------
#
# A person no identity merge touched is summed as their funnel facts. A merge folds an alias's
# facts into its survivor at the point of the survivor's history where it happened, and the
# alias may be on another partition: the funnel inputs of the persons a merge touched (their
# decisions' changes and merged ids) are kept as they are, and combining replays them in
# causal order: a survivor's fold waits until its alias's own merge (after which the alias's
# events only forward) has been replayed, whatever the partitions' numbers. That is what one
# process reading the alias's partition first computes, and what the workers did live.


def _person_facts(person: _Person) -> dict[str, Any]:
    return {
        "first_reached": {s: at.isoformat() for s, at in person.first_reached.items()},
        "sales_sourced": list(person.sales_sourced),
        "current": person.current,
        "last": list(person.last),
        "highest_rank": person.highest_rank,
        "lead_source": person.lead_source,
        "first_touch": person.first_touch,
        "last_touch": person.last_touch,
        "touches": person.touches,
    }


def _person(facts: dict[str, Any]) -> _Person:
    sequence, change_id = facts["last"]
    return _Person(
        first_reached={s: datetime.fromisoformat(at) for s, at in facts["first_reached"].items()},
        sales_sourced=tuple(facts["sales_sourced"]),
        current=facts["current"],
        last=(int(sequence), str(change_id)),
        highest_rank=int(facts["highest_rank"]),
        lead_source=facts["lead_source"],
        first_touch=facts["first_touch"],
        last_touch=facts["last_touch"],
        touches=facts["touches"],
    )


def _is_merge(decision: Any) -> bool:
    """A decision that makes its person an alias, or folds aliases into them."""
    return decision.merged_into is not None or decision.merged is not None


def _change_facts(change: StageChange) -> dict[str, Any]:
    return {
        "change_id": change.change_id,
        "person_id": change.person_id,
        "sequence": change.sequence,
        "from_stage": change.from_stage,
        "to_stage": change.to_stage,
        "passed_through": list(change.passed_through),
        "occurred_at": change.occurred_at.isoformat(),
        "event_id": change.event_id,
        "rule": change.reason.rule,
        "text": change.reason.text,
        "lead_source": change.lead_source,
        "first_touch_source": change.first_touch_source,
        "temperature": change.temperature,
        "policy_version": change.policy_version,
        "last_touch_source": change.last_touch_source,
        "touches": change.touches,
        "merged": list(change.merged),
    }


def _change(facts: dict[str, Any]) -> StageChange:
    data = dict(facts)
    reason = Reason(data.pop("rule"), data.pop("text"))
    data["occurred_at"] = datetime.fromisoformat(data["occurred_at"])
    data["passed_through"] = tuple(data["passed_through"])
    data["merged"] = tuple(data["merged"])
    return StageChange(reason=reason, **data)


def _op(decision: Any) -> dict[str, Any]:
    """A decision as the funnel takes it (`Funnel.add_decision`)."""
    merged = decision.merged
    return {
        "person_id": decision.person_id,
        "merged_into": decision.merged_into,
        "aliases": None if merged is None else list(merged.aliases),
        "changes": [_change_facts(c) for c in decision.changes],
    }


@dataclass(slots=True)
class _Decided:
    """An op read back: what `Funnel.add_decision` reads of a decision."""

    person_id: str
    merged_into: str | None
    merged: Any
    changes: list[StageChange]
    duplicate: bool = False

    @classmethod
    def of(cls, op: dict[str, Any]) -> _Decided:
        aliases = op["aliases"]
        merged = None if aliases is None else _Aliases(tuple(aliases))
        return cls(op["person_id"], op["merged_into"], merged, [_change(c) for c in op["changes"]])

    def folds(self) -> set[str]:
        """The ids this decision folds into its person."""
        ids = set(self.merged.aliases) if self.merged is not None else set()
        for change in self.changes:
            ids.update(change.merged)
        ids.discard(self.person_id)
        return ids


@dataclass(slots=True)
class _Aliases:
    aliases: tuple[str, ...]


def recorded_of(records: Iterable[Any]) -> Recorded:
    """The outcomes history records kept of sealed personal fields (crypto-shredding): what
    their decisions depended on, for persons whose fields are unreadable (erased)."""
    return {
        (r.person_id, r.event.event_id): (r.policy_version, r.outcomes)
        for r in records
        if getattr(r, "outcomes", None)
    }


def events_recorded(records: Iterable[Any], recorded: Recorded) -> Iterator[Event]:
    """The records' events, one at a time, with `recorded` holding the outcomes of the record
    whose event came last (if it kept any), for a `Replayer` given `recorded` to apply it.

    As recorded (`follow=False`) an event is decided only when its own record is read, so
    this is `recorded_of` of all the records, one record's entry at a time: a share holds
    the outcomes of one record, not of its partition (a sealed history keeps outcomes on
    most records that move someone)."""
    for record in records:
        _outcomes_of(record, recorded)
        yield record.event
    recorded.clear()


def _outcomes_of(record: Any, recorded: Recorded) -> None:
    """`recorded` = `recorded_of([record])`, in place."""
    recorded.clear()
    if getattr(record, "outcomes", None):
        recorded[(record.person_id, record.event.event_id)] = (
            record.policy_version,
            record.outcomes,
        )


#: The events of a partition again, from its start: a second read of it (the CLI reads the
#: partition from Kafka again), so a piece holds no event for the persons a merge touched.
Reread = Callable[[], Iterable[Event]]


def _rereadable(events: Iterable[Event], reread: Reread | None) -> tuple[Iterable[Event], Reread]:
    """`events` and a way to read them again: `reread`, or without it the events kept."""
    if reread is not None:
        return events, reread
    kept = events if isinstance(events, Sequence) else list(events)
    return kept, lambda: kept


def funnel_facts(
    view: Funnel,
    events: Iterable[Event],
    policy: Policy,
    merging: set[str],
    recorded: Recorded | None = None,
) -> dict[str, Any]:
    """One partition's funnel piece: the facts of the persons no merge touched, and the
    funnel inputs of those in `merging` (decided again: decisions are per person). `events`
    are read only if `merging` names someone."""
    (ops,) = _merged_ops(events, [(policy, merging)], recorded) if merging else ([],)
    return _facts_of(view, merging, ops)


def _facts_of(view: Funnel, merging: set[str], ops: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "persons": {pid: _person_facts(p) for pid, p in view.persons.items() if pid not in merging},
        "ops": ops,
    }


def _merged_ops(
    events: Iterable[Event],
    runs: Sequence[tuple[Policy, set[str]]],
    recorded: Recorded | None,
) -> list[list[dict[str, Any]]]:
    """For each (policy, persons) the ops of those persons' decisions under the policy, in
    one pass over `events`: as recorded a person's decisions depend on their events only."""
    replayers = [
        (Replayer(policy, follow=False, recorded=recorded), merging, []) for policy, merging in runs
    ]
    for event in events:
        for replayer, merging, ops in replayers:
            if event.person_id in merging:
                decision = replayer.apply(event)
                if not decision.duplicate:
                    ops.append(_op(decision))
    return [ops for _, _, ops in replayers]


def combine_funnels(facts: Iterable[dict[str, Any]]) -> Funnel:
    """One funnel from the pieces of each partition, in partition order."""
    facts = list(facts)
    view = Funnel()
    for piece in facts:
        for person_id, person in piece["persons"].items():
            if person_id in view.persons:
                raise PartialError(f"person {person_id} is in the funnel of two partitions")
            view.persons[person_id] = _person(person)
    for decided in in_causal_order([piece["ops"] for piece in facts]):
        view.add_decision(decided)
    return view


def in_causal_order(ops: Sequence[Sequence[dict[str, Any]]]) -> Iterator[_Decided]:
    """The ops of each partition (in partition order), interleaved so that a survivor's fold
    comes after its alias's own merge: each partition's ops in order, a fold waiting for the
    aliases it names that are still to come on another partition."""
    streams = [deque(_Decided.of(op) for op in stream) for stream in ops]
    aliases = {d.person_id for stream in streams for d in stream if d.merged_into is not None}
    away: set[str] = set()  # aliases whose own merge has been replayed

    def head(stream: deque[_Decided]) -> _Decided:
        decided = stream.popleft()
        if decided.merged_into is not None:
            away.add(decided.person_id)
        return decided

    while any(streams):
        progressed = False
        for stream in streams:
            while stream and not (stream[0].folds() & aliases) - away:
                yield head(stream)
                progressed = True
        if not progressed:  # merges crossing each other: the first partition's goes first
            yield head(next(s for s in streams if s))


def _merging(decisions: Iterable[Decision], into: set[str]) -> Iterator[Decision]:
    for decision in decisions:
        if _is_merge(decision):
            into.add(decision.person_id)
        yield decision


def funnel_piece(
    events: Iterable[Event],
    policy: Policy,
    recorded: Recorded | None = None,
    reread: Reread | None = None,
) -> dict[str, Any]:
    """One partition's funnel under `policy`, from its history's events as recorded.

    The events are read once, and again (`reread`) only for the persons a merge touched, if
    any: memory for the partition's persons, not its events. Without `reread` the events are
    kept for that second read."""
    events, reread = _rereadable(events, reread)
    view = Funnel()
    conflicts: list[list[str]] = []
    merging: set[str] = set()
    with bulk_gc():
        replayer = Replayer(policy, follow=False, recorded=recorded)
        for decision in _merging(_conflicts(map(replayer.apply, events), conflicts), merging):
            view.add_decision(decision)
        facts = funnel_facts(view, reread() if merging else (), policy, merging, recorded)
    return {"funnel": facts, "conflicts": conflicts}


# --- simulate --------------------------------------------------------------------------------


class _MergeAware(Funnel):
    """A funnel that notes who a merge touched, for `funnel_facts`."""

    def __init__(self) -> None:
        super().__init__()
        self.merging: set[str] = set()

    def add_decision(self, decision: Any) -> None:
        if not decision.duplicate and _is_merge(decision):
            self.merging.add(decision.person_id)
        super().add_decision(decision)


def simulate_piece(
    events: Iterable[Event],
    policy_a: Policy,
    policy_b: Policy,
    recorded: Recorded | None = None,
    reread: Reread | None = None,
) -> dict[str, Any]:
    """One partition's what-if, from its history's events as recorded; `reread` as for
    `funnel_piece` (one second read serves both policies)."""
    events, reread = _rereadable(events, reread)
    view_a, view_b = _MergeAware(), _MergeAware()
    with bulk_gc():
        result = simulate(
            events, policy_a, policy_b, recorded, follow=False, funnels=(view_a, view_b)
        )
        merging = [(policy_a, view_a.merging), (policy_b, view_b.merging)]
        if view_a.merging or view_b.merging:
            ops_a, ops_b = _merged_ops(reread(), merging, recorded)
        else:
            ops_a, ops_b = [], []
    return {
        "events": result.events,
        "conflicts": result.conflicts,
        "funnel_a": _facts_of(view_a, view_a.merging, ops_a),
        "funnel_b": _facts_of(view_b, view_b.merging, ops_b),
        "differing": [
            [o.person_id, o.stage_a, o.stage_b, o.highest_a, o.highest_b] for o in result.differing
        ],
    }


def combine_simulations(pieces: Sequence[dict[str, Any]], version_a: str, version_b: str) -> Any:
    funnel_a = combine_funnels(p["funnel_a"] for p in pieces)
    funnel_b = combine_funnels(p["funnel_b"] for p in pieces)
    differing = sorted((Outcome(*row) for p in pieces for row in p["differing"]), key=_by_person)
    return Simulation(
        version_a,
        version_b,
        sum(p["events"] for p in pieces),
        funnel_a.report(),
        funnel_b.report(),
        differing,
        funnel_a.mqls(),
        funnel_b.mqls(),
        sum(p["conflicts"] for p in pieces),
    )


def _by_person(outcome: Outcome) -> str:
    return outcome.person_id


# --- funnel --cohort ---------------------------------------------------------------------------
#
# Cohorts count a person in the period they first reached a stage, under the policy version of
# that change, with percentiles of days in stage: computed from the stage changes, so a piece
# keeps them all (as recorded, and as restated under the policy given) as funnel inputs, and
# combining feeds them to `lifecycle.cohorts` in causal order.


def cohort_piece(records: Iterable[Any], policy: Policy) -> dict[str, Any]:
    """One partition's stage changes as reported (its history) and restated (`policy`), in
    one pass over its records: the piece holds every change, not the records."""
    reported: list[dict[str, Any]] = []
    restated: list[dict[str, Any]] = []
    recorded: Recorded = {}
    with bulk_gc():
        replayer = Replayer(policy, follow=False, recorded=recorded)
        for record in records:
            reported.append(_op(record))
            _outcomes_of(record, recorded)  # as `events_recorded`
            decision = replayer.apply(record.event)
            if not decision.duplicate:
                restated.append(_op(decision))
    return {"reported": reported, "restated": restated}


def combine_cohorts(pieces: Sequence[dict[str, Any]], period: str, by: str | None) -> Any:
    """(as reported, restated) cohort reports of the pieces, in partition order."""
    from lifecycle.cohorts import cohorts

    def changes(key: str) -> Iterator[StageChange]:
        for decided in in_causal_order([p[key] for p in pieces]):
            yield from decided.changes

    return cohorts(changes("reported"), period, by), cohorts(changes("restated"), period, by)


# --- verify ----------------------------------------------------------------------------------


class Shown(str):
    """A value as the verify report prints it (`repr`), kept as that text."""

    def __repr__(self) -> str:
        return str(self)


def verify_piece(records: Iterable[Any], policies: dict[str, Policy]) -> dict[str, Any]:
    report = verify(records, policies)
    return {
        "checked": report.checked,
        "mismatches": [
            [m.person_id, m.sequence, m.event_id, m.field, repr(m.recorded), repr(m.recomputed)]
            for m in report.mismatches
        ],
        "missing_policies": report.missing_policies,
        "erased": sorted(report.erased),  # persons: one may be on one partition only
        "withheld": report.withheld,
    }


def combine_verifications(pieces: Sequence[dict[str, Any]]) -> VerifyReport:
    report = VerifyReport()
    for piece in pieces:
        report.checked += piece["checked"]
        for person, sequence, event_id, name, recorded, recomputed in piece["mismatches"]:
            report.mismatches.append(
                Mismatch(person, sequence, event_id, name, Shown(recorded), Shown(recomputed))
            )
        for version, count in piece["missing_policies"].items():
            report.missing_policies[version] = report.missing_policies.get(version, 0) + count
        report.erased.update(piece["erased"])
        report.withheld += piece["withheld"]
    return report


# --- replay ----------------------------------------------------------------------------------


def replay_rows(
    events: Iterable[Event],
    policy: Policy,
    *,
    person: str | None = None,
    cutoff: datetime | None = None,
    state: bool = False,
    conflicts: list[list[str]],
    recorded: Recorded | None = None,
) -> list[Any]:
    """What `leadflow replay` prints for one partition's history, as recorded: its stage
    changes, or (`state`) its persons' final states, in order."""
    replayer = Replayer(policy, follow=False, recorded=recorded)
    rows: list[Any] = []
    with bulk_gc():
        for event in events:
            if person is not None and event.person_id != person:
                continue
            if cutoff is not None and event.occurred_at > cutoff:
                continue
            for decision in _conflicts([replayer.apply(event)], conflicts):
                if not state:
                    rows.extend(decision.changes)
    if state:
        rows = [s.to_wire() for s in replayer.states.values()]
    return rows
