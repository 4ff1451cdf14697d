"""Verify: recompute every recorded decision under its recorded policy and list mismatches.

Each record is re-decided from the state folded from the records before it, then the
*recorded* record is applied, so one mismatch is reported once instead of cascading.

After an erasure (or without the person's key at hand) personal fields are unreadable: the
decision is re-taken from the outcomes the record kept of them (`lifecycle.shredding`), and a
reason sentence that was sealed is compared by its rule id only.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from events.outbound import HistoryRecord
from lifecycle.decide import decide
from lifecycle.dedup import SeenIndex
from lifecycle.evolve import Applied, evolve
from lifecycle.policy import Policy
from lifecycle.replay import bulk_gc
from lifecycle.shredding import SEALED, WITHHELD
from lifecycle.state import PersonState


@dataclass(slots=True)
class Mismatch:
    person_id: str
    sequence: int
    event_id: str
    field: str
    recorded: Any
    recomputed: Any


@dataclass(slots=True)
class VerifyReport:
    checked: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    missing_policies: dict[str, int] = field(default_factory=dict)
    #: persons whose history holds an erasure (checked like everyone, counted apart)
    erased: set[str] = field(default_factory=set)
    #: records with a sealed sentence no key could open (compared by rule id)
    withheld: int = 0

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.missing_policies


def change_facts(change: Any, text: str | None = None) -> tuple[Any, ...]:
    return (
        change.change_id,
        change.from_stage,
        change.to_stage,
        tuple(change.passed_through),
        change.occurred_at,
        change.reason.rule,
        change.reason.text if text is None else text,
        change.lead_source,
        change.first_touch_source,
        change.temperature,
        tuple(getattr(change, "merged", ())),
    )


def _breach_facts(breach: Any) -> tuple[Any, ...]:
    return (breach.stage, breach.entered_at, breach.due_at, breach.detected_at)


def _merged_facts(merged: Any) -> tuple[Any, ...] | None:
    if merged is None:
        return None
    return (
        sorted(merged.entered_at.items()),
        merged.highest,
        sorted(merged.profile.items()),
        tuple(merged.sla_breached),
        tuple(merged.aliases),
    )


def _unreadable(text: str) -> bool:
    """A sentence that was sealed and could not be opened (erased, or no key at hand)."""
    return text == WITHHELD or text.startswith(SEALED)


def _facts(record: Any, withheld: Any = None) -> tuple[dict[str, Any], bool]:
    """The parts of a decision that verify compares, from a Decision or a HistoryRecord, and
    whether a sentence was taken as withheld.

    `withheld` is the recorded record: where its sentence is withheld, so is this one's."""
    note = record.note
    changes = record.changes
    texts: list[str | None] = [None] * len(changes)
    taken = False
    if withheld is not None:
        for index, change in enumerate(withheld.changes[: len(texts)]):
            text = change.reason.text
            if _unreadable(text):
                texts[index] = text
                taken = taken or text != changes[index].reason.text
        if withheld.note is not None and _unreadable(withheld.note.text) and note is not None:
            taken = taken or withheld.note.text != note.text
            note = type(note)(note.rule, withheld.note.text)
    facts = {
        "sequence": record.sequence,
        "changes": [change_facts(c, t) for c, t in zip(changes, texts, strict=True)]
        if changes
        else [],
        "sla_breaches": [_breach_facts(b) for b in record.sla_breaches]
        if record.sla_breaches
        else [],
        "note": None if note is None else (note.rule, note.text),
        "last_activity": record.last_activity,
        "score": round(record.score, 9),
        "lead_source": record.lead_source,
        "first_touch_source": record.first_touch_source,
        "erased": record.erased,
        "first_touch_at": record.first_touch_at,
        "merged_into": record.merged_into,
        "merged": _merged_facts(record.merged),
    }
    return facts, taken


def verify(
    records: Iterable[Applied],
    policies: Mapping[str, Policy],
    repeats: Container[str] | None = None,
) -> VerifyReport:
    """Check every record whose policy version is known; count those whose policy is not.

    A record whose event id the person had applied before is reported (field `duplicate`
    for the same content, `conflict` for other content): the worker never applies one.
    `repeats`: for a history known whole (a file), the event ids that may occur in it more
    than once (`lifecycle.replay.Replayer`); a record of any other id is checked with nothing
    seen and kept out of the dedup index.
    """
    return verify_numbered(enumerate(records), policies, repeats).report


@dataclass(slots=True)
class Located:
    """A report, with where its items came from: the number of the record (as numbered by
    the caller) of each mismatch, and of the first record of each unknown policy version."""

    report: VerifyReport
    mismatch_at: list[int] = field(default_factory=list)
    missing_first: dict[str, int] = field(default_factory=dict)


def verify_numbered(
    records: Iterable[tuple[int, Applied]],
    policies: Mapping[str, Policy],
    repeats: Container[str] | None = None,
) -> Located:
    """`verify` of (number, record) pairs, with the numbers of what it reports: a sharded
    verify (`streams.tools.sharded_verify`) puts its workers' reports in one run's order."""
    with bulk_gc():  # every person's state, and the records read: see `lifecycle.replay`
        return _verify(records, policies, repeats)


def _verify(
    records: Iterable[tuple[int, Applied]],
    policies: Mapping[str, Policy],
    repeats: Container[str] | None,
) -> Located:
    report = VerifyReport()
    located = Located(report)
    at, missing_first = located.mismatch_at, located.missing_first
    states: dict[str, PersonState] = {}
    seen = SeenIndex()
    for number, record in records:
        if type(record) is not HistoryRecord and getattr(record, "duplicate", False):
            # a redelivery replay() reports; it was never applied, as in fold() (a history
            # record has no such field, and pydantic's failed lookup cost ~6 % of verify)
            continue
        indexed = repeats is None or record.event.event_id in repeats
        state = states.get(record.person_id)
        policy = policies.get(record.policy_version)  # type: ignore[attr-defined]
        if policy is None:
            version = record.policy_version  # type: ignore[attr-defined]
            if version not in missing_first:
                missing_first[version] = number
            report.missing_policies[version] = report.missing_policies.get(version, 0) + 1
        else:
            report.checked += 1
            event = record.event
            if record.erased:
                report.erased.add(record.person_id)
            recomputed = decide(
                state,
                event,
                policy,
                seen.get(record.person_id, event.event_id) if indexed else None,
                recorded=getattr(record, "outcomes", None),
            )
            if recomputed.duplicate:
                conflict = recomputed.conflict
                report.mismatches.append(
                    Mismatch(
                        record.person_id,
                        record.sequence,
                        event.event_id,
                        "duplicate" if conflict is None else "conflict",
                        "applied",
                        conflict
                        or f"event id already applied at history sequence {recomputed.sequence}",
                    )
                )
                at.append(number)
            else:
                want = _facts(record)[0]
                got, taken = _facts(recomputed, record)
                if taken:
                    report.withheld += 1
                if want["first_touch_at"] is None:
                    got["first_touch_at"] = None  # history written before it was recorded
                for name, value in () if got == want else want.items():  # == in one go
                    if got[name] != value:
                        report.mismatches.append(
                            Mismatch(
                                record.person_id,
                                record.sequence,
                                record.event.event_id,
                                name,
                                value,
                                got[name],
                            )
                        )
                        at.append(number)
        states[record.person_id] = evolve(state, record)
        if indexed:
            seen.remember(record)
    return located
