"""Identity merges (`lifecycle.merge`): one person, however the CRM names them.

`person_merged` is keyed by the absorbed person and names the survivor in `merged_into`.
The replays here follow hand-offs at once (one partition); `Partitions` below plays the
worker's cross-partition routing, where a hand-off or forwarded event waits behind what its
partition already holds.
"""

from __future__ import annotations

import random
from collections import deque
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.inbound import Event
from events.outbound import HistoryRecord, PersonAliased
from lifecycle.deadlines import next_deadline
from lifecycle.decide import decide
from lifecycle.dedup import SeenIndex
from lifecycle.evolve import evolve
from lifecycle.funnel import funnel, funnel_of
from lifecycle.merge import alias_records, handoff_id
from lifecycle.replay import Replayer, fold, replay
from lifecycle.state import PersonState
from lifecycle.verify import verify
from streams.web.views import person_view
from tests.fixtures.core import T0, days, fit_profile, preset, run_events

FIT = fit_profile()


def merged(absorbed: str, survivor: str, at, event_id: str | None = None) -> Event:
    return Event(
        event_id=event_id or f"m-{absorbed}-{survivor}",
        type="person_merged",
        person_id=absorbed,
        occurred_at=at,
        merged_into=survivor,
    )


def ev(type_: str, person: str, at, n: str, source: str | None = "webinar", **kw) -> Event:
    return Event(
        event_id=n,
        type=type_,
        person_id=person,
        occurred_at=at,
        source=source,
        profile=kw.pop("profile", FIT),
        **kw,
    )


def mql_person(person: str, at, source: str = "webinar", prefix: str = "") -> list[Event]:
    """A fitting VP who attends a webinar, then asks for a demo an hour later: an MQL."""
    return [
        ev("webinar_attended", person, at, f"{prefix}{person}-1", source=source),
        ev("demo_requested", person, at + timedelta(hours=1), f"{prefix}{person}-2", source=source),
    ]


def lead_person(person: str, at, source: str = "form") -> list[Event]:
    return [ev("content_download", person, at, f"{person}-1", source=source)]


# -- the fold ----------------------------------------------------------------------------------
def test_merge_that_advances_the_survivor_is_a_stage_change_identity_merged():
    result = run_events(
        [*mql_person("a", T0), *lead_person("b", days(1)), merged("a", "b", days(2))]
    )

    change = result.changes[-1]
    assert (change.person_id, change.from_stage, change.to_stage) == ("b", "lead", "mql")
    assert change.reason.rule == "identity.merged"
    assert change.merged == ("a",)
    assert result.stage("b") == "mql"
    assert result.states["b"].aliases == ("a",)
    assert result.states["a"].merged_into == "b"


def test_merge_that_does_not_advance_the_survivor_is_no_stage_change():
    result = run_events(
        [*lead_person("a", T0), *mql_person("b", days(1)), merged("a", "b", days(2))]
    )

    survivor = [d for d in result.decisions if d.person_id == "b"][-1]
    assert survivor.changes == ()
    assert survivor.note.rule == "identity.merged"
    assert result.stage("b") == "mql"


def test_every_fold_publishes_its_aliases_as_person_aliased_records_a_chain_resolving():
    """The aliases topic's records (`lifecycle.merge.alias_records`): a into b, then b into c
    republishes a as c's alias, so a reader of the compacted topic resolves the chain."""
    result = run_events(
        [
            *lead_person("a", T0),
            *mql_person("b", days(1)),
            merged("a", "b", days(2)),
            *mql_person("c", days(3)),
            merged("b", "c", days(4)),
        ]
    )
    folds = [d for d in result.decisions if d.merged is not None]
    records = [
        (key.decode(), PersonAliased.model_validate_json(value))
        for d in folds
        for key, value in alias_records(d)
    ]
    assert [(k, r.alias, r.survivor) for k, r in records] == [
        ("a", "a", "b"),
        ("b", "b", "c"),
        ("a", "a", "c"),
    ]
    last = records[-1][1]
    assert (last.merged_at, last.sequence) == (folds[-1].event.occurred_at, folds[-1].sequence)
    assert last.event_id == folds[-1].event.event_id


def test_survivor_never_moves_back_when_the_absorbed_is_behind():
    events = [
        *lead_person("a", T0),
        *mql_person("b", days(1)),
        ev("sales_accepted", "b", days(2), "b-3"),
        ev("deal_won", "b", days(3), "b-4"),
        merged("a", "b", days(4)),
    ]
    result = run_events(events)

    assert result.stage("b") == "customer"
    assert [c.to_stage for c in result.changes if c.person_id == "b"][-1] == "customer"


def test_recycled_survivor_takes_the_absorbed_forward_stage_and_a_new_one_everything():
    events = [
        *lead_person("b", T0),
        ev("sales_rejected", "b", days(1), "b-2"),
        *mql_person("a", days(2)),
        merged("a", "b", days(3)),
    ]
    result = run_events(events)
    assert result.stage("b") == "mql"

    unknown = run_events([*mql_person("a", T0), merged("a", "new-id", days(1))])
    assert unknown.stage("new-id") == "mql"
    first = [c for c in unknown.changes if c.person_id == "new-id"]
    assert [(c.from_stage, c.to_stage, c.passed_through) for c in first] == [
        (None, "mql", ("lead",))
    ]


def test_highest_and_the_earliest_entry_per_stage_are_kept():
    events = [
        *mql_person("a", T0),  # lead at T0, mql at T0+1h
        *mql_person("b", days(5)),
        merged("a", "b", days(6)),
    ]
    state = run_events(events).states["b"]

    assert state.entered_at["lead"] == T0
    assert state.entered_at["mql"] == T0 + timedelta(hours=1)
    assert state.highest == "mql"


def test_the_earlier_first_touch_wins():
    events = [
        ev("page_viewed", "a", T0, "a-1", source="tradeshow"),
        ev("page_viewed", "b", days(1), "b-1", source="paid_search"),
        merged("a", "b", days(2)),
    ]
    later_survivor = run_events(events).states["b"]
    assert later_survivor.first_touch_source == "tradeshow"
    assert later_survivor.first_touch_at == T0

    earlier = [
        ev("page_viewed", "b", T0, "b-1", source="paid_search"),
        ev("page_viewed", "a", days(1), "a-1", source="tradeshow"),
        merged("a", "b", days(2)),
    ]
    assert run_events(earlier).states["b"].first_touch_source == "paid_search"


def test_lead_source_is_of_whoever_reached_mql_first():
    events = [
        *mql_person("a", T0, source="referral"),
        *mql_person("b", days(3), source="paid_search"),
        merged("a", "b", days(4)),
    ]
    assert run_events(events).states["b"].lead_source == "referral"

    survivor_first = [
        *mql_person("b", T0, source="paid_search"),
        *mql_person("a", days(3), source="referral"),
        merged("a", "b", days(4)),
    ]
    assert run_events(survivor_first).states["b"].lead_source == "paid_search"


def test_profiles_merge_with_the_survivor_winning_conflicts():
    events = [
        ev("page_viewed", "a", T0, "a-1", profile=fit_profile(email="a@x.example", country="FR")),
        ev("page_viewed", "b", T0, "b-1", profile={"email": "b@x.example"}),
        merged("a", "b", days(1)),
    ]
    profile = run_events(events).states["b"].profile

    assert profile["email"] == "b@x.example"
    assert profile["country"] == "FR"
    assert "job_title" not in profile  # personal: the hand-off does not carry it


def test_a_handoff_carries_no_personal_fields():
    events = [
        ev("page_viewed", "a", T0, "a-1", profile=fit_profile(email="a@x.example")),
        merged("a", "b", days(1)),
    ]
    decisions = list(replay(events, preset("default")))
    handoff = decisions[1].follow_up
    assert handoff is not None and handoff.absorbed is not None
    carried = handoff.absorbed.profile.model_dump(exclude_none=True)
    assert carried and not {"email", "job_title", "company"} & carried.keys()


def test_sla_clock_runs_from_the_earliest_entry_into_the_merged_stage():
    # default policy: mql has a 3-day SLA. a entered mql at T0+1h, b on day 2.
    events = [
        *mql_person("a", T0),
        *mql_person("b", days(2)),
        merged("a", "b", days(2.5)),
        ev("page_viewed", "b", days(3.5), "b-3"),  # 3.5 days after a's entry, 1.5 after b's
    ]
    result = run_events(events)
    breaches = [d for d in result.decisions if d.person_id == "b"][-1].sla_breaches

    assert [b.stage for b in breaches] == ["mql"]
    assert breaches[0].entered_at == T0 + timedelta(hours=1)


def test_inactivity_runs_from_the_later_activity_of_the_two():
    policy = preset("default")
    events = [
        *mql_person("a", T0),
        *lead_person("b", days(60)),
        merged("a", "b", days(61)),
    ]
    state = run_events(events).states["b"]

    assert state.last_activity == days(60)
    assert next_deadline(state, policy) == min(
        days(60) + timedelta(days=90), T0 + timedelta(hours=1, days=3)
    )


# -- aliases, chains, refusals -----------------------------------------------------------------
def test_later_events_for_an_alias_apply_to_the_survivor():
    events = [
        *lead_person("a", T0),
        *lead_person("b", days(1)),
        merged("a", "b", days(2)),
        ev("demo_requested", "a", days(3), "a-late"),
    ]
    result = run_events(events)

    alias = [d for d in result.decisions if d.person_id == "a"][-1]
    assert alias.note.rule == "identity.forwarded" and alias.changes == ()
    assert result.stage("b") == "mql"
    assert result.states["b"].lead_source == "webinar"
    assert result.states["a"].stage == "lead"  # the alias keeps what it had, and never moves


def test_chains_resolve_a_into_b_into_c():
    events = [
        *lead_person("a", T0),
        *lead_person("b", days(1)),
        *lead_person("c", days(2)),
        merged("a", "b", days(3)),
        merged("b", "c", days(4)),
        ev("demo_requested", "a", days(5), "a-late"),
    ]
    result = run_events(events)

    assert result.stage("c") == "mql"
    assert result.states["c"].aliases == ("b", "a")
    late = [d for d in result.decisions if d.event.event_id == "a-late"]
    assert [d.person_id for d in late] == ["a", "b", "c"]
    assert late[-1].event.forwarded_via == ("a", "b")
    assert funnel_of(result.decisions).persons == 1


def test_merge_into_oneself_is_refused_with_a_reason():
    result = run_events([*lead_person("a", T0), merged("a", "a", days(1))])

    assert result.last.note.rule == "identity.merge_refused"
    assert "into itself" in result.last.note.text
    assert result.states["a"].merged_into is None


def test_a_cycle_is_refused_with_a_reason():
    events = [
        *lead_person("a", T0),
        *lead_person("b", days(1)),
        merged("a", "b", days(2)),
        merged("b", "a", days(3)),
    ]
    result = run_events(events)

    assert result.last.person_id == "b"
    assert result.last.note.rule == "identity.merge_refused"
    assert "a cycle" in result.last.note.text
    assert result.states["b"].merged_into is None


def test_merging_an_alias_again_is_refused():
    events = [
        *lead_person("a", T0),
        merged("a", "b", days(1)),
        merged("a", "c", days(2), event_id="m2"),
    ]
    result = run_events(events)

    assert result.last.note.rule == "identity.merge_refused"
    assert "already" in result.last.note.text
    assert "c" not in result.states


def test_opposite_merges_in_flight_resolve_to_the_smaller_id_with_no_event_lost():
    """a into b and b into a on two partitions at once: each id became an alias of the other
    and handed itself off. Both ends apply one rule: the smaller id, a, survives. a folds b
    and stops being an alias; b refuses a's hand-off and stays a's alias. Events either
    forwarded meanwhile end at a, and later events for both apply to a."""
    policy = preset("default")
    replayer = Replayer(policy, follow=False)
    for event in [*lead_person("a", T0), *mql_person("b", T0)]:
        replayer.apply(event)
    to_b = replayer.apply(merged("a", "b", days(1))).follow_up
    to_a = replayer.apply(merged("b", "a", days(1))).follow_up
    # In the window: an event for a (forwarded to b) and one for b (forwarded to a).
    a_late = replayer.apply(ev("page_viewed", "a", days(1) + timedelta(minutes=1), "a-late"))
    b_late = replayer.apply(ev("page_viewed", "b", days(1) + timedelta(minutes=1), "b-late"))
    # What each partition receives from the other, in the order it was sent.
    at_b = replayer.apply(to_b)
    back_to_a = replayer.apply(a_late.follow_up).follow_up
    at_a = replayer.apply(to_a)
    applied_b_late = replayer.apply(b_late.follow_up)
    applied_a_late = replayer.apply(back_to_a)

    assert at_b.note.rule == "identity.merge_crossed" and at_b.follow_up is None
    assert "a, the smaller id, is the survivor; b stays its alias" in at_b.note.text
    assert at_a.merged is not None and at_a.follow_up is None
    assert at_a.changes[0].reason.rule == "identity.merged"  # b was an mql: a moves up
    assert "the smaller id, is the survivor" in at_a.changes[0].reason.text
    states = replayer.states
    assert states["a"].merged_into is None and states["a"].aliases == ("b",)
    assert states["b"].merged_into == "a" and states["a"].stage == "mql"
    assert back_to_a.person_id == "a" and back_to_a.forwarded_via == ("a", "b")
    assert back_to_a.event_id == "returned:a-late"  # a recorded a-late as an alias's note
    assert applied_b_late.person_id == applied_a_late.person_id == "a"
    assert applied_b_late.follow_up is None and applied_a_late.follow_up is None
    assert not applied_a_late.duplicate and not applied_b_late.duplicate
    # Redeliveries change nothing: of the copy that came back, and of the original.
    assert replayer.apply(back_to_a).duplicate
    assert replayer.apply(
        ev("page_viewed", "a", days(1) + timedelta(minutes=1), "a-late")
    ).duplicate
    later = replayer.apply(ev("page_viewed", "b", days(3), "b-later"))
    assert later.follow_up.person_id == "a"
    assert replayer.apply(later.follow_up).person_id == "a"


# -- exact idempotency with merges ---------------------------------------------------------------
def test_redelivered_merge_hands_off_the_same_event_again_and_the_survivor_drops_it():
    policy = preset("default")
    replayer = Replayer(policy, follow=False)
    for event in [*mql_person("a", T0), *lead_person("b", days(1))]:
        replayer.apply(event)
    merge = merged("a", "b", days(2))
    first = replayer.apply(merge)
    replayer.apply(first.follow_up)
    again = replayer.apply(merge)

    assert again.duplicate and again.follow_up == first.follow_up
    assert again.follow_up.event_id == handoff_id("a", merge.event_id)
    assert replayer.apply(again.follow_up).duplicate


def test_redelivered_events_of_an_alias_change_nothing_before_or_after_the_merge():
    early = lead_person("a", T0)[0]
    late = ev("demo_requested", "a", days(3), "a-late")
    events = [early, *lead_person("b", days(1)), merged("a", "b", days(2)), late]
    once = run_events(events)
    twice = run_events([*events, early, late, early])

    assert twice.states == once.states
    assert {c.change_id for c in twice.changes} == {c.change_id for c in once.changes}


def test_a_forwarded_event_is_the_same_event_whichever_alias_it_came_through():
    policy = preset("default")
    late = ev("demo_requested", "b", days(3), "x-1")
    decided = decide(None, late, policy)
    index = SeenIndex()
    index.remember(decided)
    via = late.model_copy(update={"forwarded_via": ("a",)})

    assert not decide(None, via, policy, index.get("b", "x-1")).conflict


# -- history, replay, verify ---------------------------------------------------------------------
def _records(decisions) -> list[HistoryRecord]:
    return [
        HistoryRecord.model_validate_json(orjson_dumps(d.to_wire()))
        for d in decisions
        if not d.duplicate
    ]


def orjson_dumps(data) -> bytes:
    from streams.worker.outputs import to_json

    return to_json(data)


def test_history_with_merges_verifies_and_folds_to_the_live_states():
    events = [
        *mql_person("a", T0, source="referral"),
        *lead_person("b", days(1)),
        *lead_person("c", days(1)),
        merged("a", "b", days(2)),
        merged("b", "c", days(3)),
        ev("sales_accepted", "a", days(4), "a-late"),
    ]
    live = run_events(events)
    records = _records(live.decisions)
    policy = preset("default")

    report = verify(records, {policy.version: policy})
    assert report.ok, report.mismatches
    assert fold(records) == live.states
    assert [d.to_wire() for d in replay((r.event for r in records), policy, follow=False)] == [
        d.to_wire() for d in live.decisions
    ]


def test_funnel_counts_one_person_for_merges_that_advance_or_not():
    advancing = run_events([*mql_person("a", T0), *lead_person("b", days(1)), merged("a", "b", 2)])
    assert funnel(advancing.changes).persons == 1  # from the change's merged ids alone
    assert funnel(advancing.changes).reached["mql"] == 1

    standing = run_events([*lead_person("a", T0), *mql_person("b", days(1)), merged("a", "b", 2)])
    assert funnel_of(standing.decisions).persons == 1


def test_api_shows_whom_an_alias_was_merged_into():
    result = run_events([*lead_person("a", T0), *lead_person("b", T0), merged("a", "b", days(1))])
    policy = preset("default")

    view = person_view(result.states["a"], policy, days(2))
    assert view["merged_into"] == "b" and view["survivor"] == "/people/b"
    assert person_view(result.states["b"], policy, days(2))["aliases"] == ("a",)


def test_state_with_merge_fields_round_trips_through_the_table_format():
    import orjson

    state = run_events([*mql_person("a", T0), merged("a", "b", days(1))]).states["a"]
    assert PersonState.from_wire(orjson.loads(orjson_dumps(state.to_wire()))) == state


# -- properties ------------------------------------------------------------------------------------
PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PERSONS = ("a", "b", "c", "d")
TYPES = (
    "page_viewed",
    "content_download",
    "demo_requested",
    "sales_accepted",
    "sales_rejected",
    "deal_won",
    "newsletter_signup",
    "person_merged",
)


@st.composite
def streams_with_merges(draw) -> list[Event]:
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from(TYPES),
                st.sampled_from(PERSONS),
                st.sampled_from(PERSONS),
                st.sampled_from(("webinar", "form", None)),
                st.integers(1, 200),
            ),
            min_size=1,
            max_size=40,
        )
    )
    events, at = [], T0
    for n, (type_, person, other, source, hours) in enumerate(steps):
        at += timedelta(hours=hours)
        extra = {"merged_into": other} if type_ == "person_merged" else {}
        events.append(
            Event(
                event_id=f"e{n}",
                type=type_,
                person_id=person,
                occurred_at=at,
                source=source,
                profile=FIT if n % 4 != 3 else None,
                **extra,
            )
        )
    return events


@PROPERTY
@given(streams_with_merges(), st.randoms(use_true_random=False), st.integers(1, 15))
def test_copies_of_earlier_events_inserted_later_change_nothing(events, rng, copies):
    with_copies = list(events)
    for _ in range(copies):
        original = rng.randrange(len(events))
        at = rng.randrange(with_copies.index(events[original]) + 1, len(with_copies) + 1)
        with_copies.insert(at, events[original])

    plain, mixed = run_events(events), run_events(with_copies)

    assert not any(d.conflict for d in mixed.decisions)  # a copy's hand-offs are copies too
    assert mixed.states == plain.states
    assert {c.change_id for c in mixed.changes} == {c.change_id for c in plain.changes}


@PROPERTY
@given(streams_with_merges(), st.data())
def test_merges_commute_with_unrelated_events(events, data):
    """Events of persons no merge touches, moved anywhere, change no one's final state."""
    touched = {e.person_id for e in events} | {e.merged_into for e in events if e.merged_into}
    unrelated = [
        ev(t, f"z{n % 2}", T0 + timedelta(hours=n), f"z{n}")
        for n, t in enumerate(data.draw(st.lists(st.sampled_from(TYPES[:-1]), max_size=10)))
    ]
    assert not touched & {e.person_id for e in unrelated}
    mixed = list(events)
    for event in unrelated:
        mixed.insert(data.draw(st.integers(0, len(mixed))), event)
    # keep the unrelated persons' own order
    order = iter(unrelated)
    mixed = [next(order) if e.person_id.startswith("z") else e for e in mixed]

    alone, together = run_events(events).states, run_events(mixed).states
    assert {p: s for p, s in together.items() if p in alone} == alone
    assert together.keys() - alone.keys() <= {"z0", "z1"}


class Partitions:
    """The worker's routing, offline: each person on one of `n` partitions, each partition a
    queue; a follow-up joins the end of its person's partition, and partitions take turns in
    an order the test draws. Returns history per partition, as the workers would write it."""

    def __init__(self, n: int, rng: random.Random) -> None:
        self.n, self.rng = n, rng
        self.replayer = Replayer(preset("default"), follow=False)
        self.history: list[list] = [[] for _ in range(n)]

    def partition(self, person: str) -> int:
        return sum(person.encode()) % self.n

    def run(self, events: list[Event]) -> None:
        queues = [deque() for _ in range(self.n)]
        for event in events:
            queues[self.partition(event.person_id)].append(event)
        while any(queues):
            p = self.rng.choice([i for i, q in enumerate(queues) if q])
            decision = self.replayer.apply(queues[p].popleft())
            if not decision.duplicate:
                self.history[p].append(decision)
            if decision.follow_up is not None:
                queues[self.partition(decision.follow_up.person_id)].append(decision.follow_up)


@PROPERTY
@given(streams_with_merges(), st.randoms(use_true_random=False), st.integers(1, 3))
def test_live_across_partitions_equals_replay_and_verify_of_its_history(events, rng, n):
    live = Partitions(n, rng)
    live.run(events)
    records = _records(d for part in live.history for d in part)
    policy = preset("default")

    assert fold(records) == live.replayer.states
    replayed = [d.to_wire() for d in replay((r.event for r in records), policy, follow=False)]
    assert replayed == [r for r in (d.to_wire() for p in live.history for d in p)]
    assert verify(records, {policy.version: policy}).ok


@pytest.mark.parametrize("length", [10, 300])
def test_handoff_ids_are_deterministic_and_fit_the_id_limit(length):
    merge_id = "m" * length
    assert handoff_id("a", merge_id) == handoff_id("a", merge_id)
    assert len(handoff_id("a", merge_id)) <= 256
    assert handoff_id("a", merge_id) != handoff_id("b", merge_id)


def test_an_alias_has_no_deadline_its_survivor_has():
    policy = preset("default")
    state = evolve(PersonState("a"), decide(None, lead_person("a", T0)[0], policy))
    assert next_deadline(state, policy) is not None
    state.merged_into = "b"
    assert next_deadline(state, policy) is None


def test_an_alias_keeps_what_it_handed_off_so_a_redelivered_merge_hands_off_the_same():
    policy = preset("default")
    replayer = Replayer(policy, follow=False)
    replayer.apply(lead_person("a", T0)[0])
    merge = merged("a", "b", days(1))
    first = replayer.apply(merge)
    replayer.apply(ev("page_viewed", "a", days(2), "a-2", profile={"country": "FR"}))

    assert replayer.apply(merge).follow_up == first.follow_up


def test_verify_accepts_history_written_before_first_touch_times_were_recorded():
    policy = preset("default")
    live = run_events(lead_person("a", T0))
    old = [r.model_copy(update={"first_touch_at": None}) for r in _records(live.decisions)]

    assert verify(old, {policy.version: policy}).ok


def test_erasing_an_alias_erases_its_copy_and_the_survivor():
    events = [
        *lead_person("a", T0),
        *lead_person("b", T0),
        merged("a", "b", days(1)),
        ev("person_erased", "a", days(2), "erase-a", source=None, profile=None),
    ]
    result = run_events(events)

    assert result.states["a"].profile == {} and result.states["a"].erased
    assert result.states["b"].profile == {} and result.states["b"].erased
    again = run_events([*events, events[2]])  # a redelivered merge hands nothing off now
    assert not any(d.conflict for d in again.decisions)
    assert again.states == result.states
