"""Crypto-shredding: key wrapping and rotation, sealing round trips, and the erasure rule.

`live()` takes the steps the worker's agent takes for each event (seal the personal fields
with the person's data key, decide, seal the sentences that quote them, write the history
record), so these tests see the bytes history would hold, before and after an erasure.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from events.inbound import Event
from events.outbound import HistoryRecord
from lifecycle.decide import decide
from lifecycle.dedup import body, fingerprint
from lifecycle.evolve import evolve
from lifecycle.funnel import funnel
from lifecycle.policy import Policy
from lifecycle.replay import Replayer, fold
from lifecycle.shredding import (
    SEALED,
    WITHHELD,
    DataKey,
    open_body,
    open_record,
    open_state,
    open_text,
    opened_forward,
    personal_part,
    seal_merged,
    seal_personal,
    seal_sentences,
    seal_state,
    sealed_forward,
    shown_reason,
    stored_body,
    transit_key,
    without_personal,
)
from lifecycle.state import PersonState
from lifecycle.verify import verify
from streams.kafka.keys import (
    TRANSIT_PREFIX,
    KeyRing,
    MasterKeyError,
    MasterKeys,
    generate_master_key,
    transit_record,
)
from streams.worker.outputs import to_json
from tests.fixtures.core import custom_policy, fit_profile, preset

PERSONAL = (b"ada@acme.example", b"VP Engineering", b"Acme", b"acme.example", b"call me")


def key_of(byte: int) -> DataKey:
    return DataKey(bytes([byte]) * 32)


def event(n: int, type_: str, person: str = "p1", **fields: Any) -> Event:
    return Event.model_validate(
        {
            "event_id": f"{person}-e{n}",
            "type": type_,
            "person_id": person,
            "occurred_at": f"2026-01-0{1 + n // 24}T{n % 24:02d}:00:00Z",
            "source": "webinar",
            **fields,
        }
    )


def strict_roles() -> Policy:
    """The default policy, but an unknown role is not a decision maker."""
    rules = preset().model_dump(mode="json")["decision_makers"]
    return custom_policy(decision_makers={**rules, "unknown_passes": False})


def live(
    events: list[Event], keys: dict[str, DataKey], policy: Policy | None = None
) -> list[bytes]:
    """History records as the worker writes them (personal fields sealed per person)."""
    policy = policy or preset()
    states: dict[str, PersonState] = {}
    out = []
    for e in events:
        person = e.person_id
        state = states.get(person)
        if state is not None and state.erased:
            e = without_personal(e)
        part = personal_part(e)
        content = None
        if part is not None:
            key = keys.setdefault(person, DataKey(bytes([len(keys) + 1]) * 32))
            content = stored_body(body(e), seal_personal(key, person, part))
        decision = decide(state, e, policy, content=content)
        changes, note = seal_sentences(
            decision.changes, decision.note, state.profile if state else {}, e, keys.get(person)
        )
        states[person] = evolve(state, decision)
        wire = decision.to_wire(content)
        wire["changes"], wire["note"] = changes, note
        out.append(to_json(wire))
        if decision.erased:
            keys.pop(person, None)
    return out


def opened(raw: list[bytes], keys: dict[str, DataKey]) -> list[HistoryRecord]:
    return [
        HistoryRecord.model_validate(
            open_record(orjson.loads(r), keys.get(orjson.loads(r)["person_id"]))
        )
        for r in raw
    ]


def journey(person: str = "p1", *, title: str = "VP Engineering", **profile: Any) -> list[Event]:
    """A decision maker by title only (no seniority) who becomes an mql, then sales feedback."""
    fields = fit_profile(seniority=None, job_title=title, **profile)
    return [
        event(1, "webinar_attended", person, profile=fields),
        event(2, "demo_requested", person),
        event(3, "sales_accepted", person, reason="call me on Tuesday"),
    ]


# -- keys ------------------------------------------------------------------------------------


def test_a_data_key_seals_deterministically_and_only_for_its_person():
    key = key_of(1)
    token = key.seal("p1", b"ada@acme.example")
    assert token == key.seal("p1", b"ada@acme.example")  # a redelivery seals the same bytes
    assert token != key.seal("p1", b"bob@acme.example")
    assert b"ada" not in token.encode()
    assert key.open("p1", token) == b"ada@acme.example"
    with pytest.raises(ValueError):
        key.open("p2", token)  # the person id is authenticated data
    with pytest.raises(ValueError):
        key_of(2).open("p1", token)


def test_master_key_wraps_a_data_key_that_only_it_unwraps_for_that_person():
    master = MasterKeys.parse(generate_master_key("m1"))
    key = key_of(7)
    wrapped = master.wrap("p1", key)
    assert key.raw not in wrapped and orjson.loads(wrapped)["kid"] == "m1"
    assert master.unwrap("p1", wrapped)[0].raw == key.raw
    with pytest.raises(MasterKeyError, match="does not open"):
        master.unwrap("p2", wrapped)
    other = MasterKeys.parse(generate_master_key("m1"))
    with pytest.raises(MasterKeyError, match="does not open"):
        other.unwrap("p1", wrapped)


def test_rotation_keeps_old_master_keys_for_unwrapping_and_rewraps_under_the_new_one():
    old = generate_master_key("m1")
    before = MasterKeys.parse(old)
    wrapped = before.wrap("p1", key_of(3))
    after = MasterKeys.parse(f"{generate_master_key('m2')},{old}")
    assert after.current == "m2"
    ring = KeyRing(after)
    ring.load("p1", wrapped)
    assert ring.stale == {"p1"}
    assert ring.get("p1").raw == key_of(3).raw  # type: ignore[union-attr]
    rewrapped = ring.rewrapped("p1")
    assert rewrapped is not None and orjson.loads(rewrapped)["kid"] == "m2"
    assert not ring.stale
    ring.load("p1", wrapped)  # the topic, read again: the old record, then the rewrapped one
    ring.load("p1", rewrapped)
    assert not ring.stale
    only_new = MasterKeys.parse(generate_master_key("m2"))
    with pytest.raises(MasterKeyError, match="m1"):
        only_new.unwrap("p1", wrapped)  # dropping the old key too early: a clear error


def test_master_keys_come_from_the_environment_or_a_file(tmp_path):
    entry = generate_master_key("k1")
    assert MasterKeys.from_env({"LEADFLOW_MASTER_KEY": entry}).current == "k1"  # type: ignore[union-attr]
    path = tmp_path / "master"
    path.write_text(f"{generate_master_key('k2')}\n{entry}\n")
    keys = MasterKeys.from_env({"LEADFLOW_MASTER_KEY_FILE": str(path)})
    assert keys is not None and keys.current == "k2" and set(keys.keys) == {"k1", "k2"}
    assert MasterKeys.from_env({}) is None
    with pytest.raises(MasterKeyError, match="no master key"):
        MasterKeys.required({})
    short = "k3:" + base64.b64encode(b"x" * 16).decode()
    with pytest.raises(MasterKeyError, match="entry 1 is not kid:base64 of 32 bytes"):
        MasterKeys.parse(short)
    with pytest.raises(MasterKeyError, match="No such file"):
        MasterKeys.from_env({"LEADFLOW_MASTER_KEY_FILE": str(tmp_path / "missing")})


def test_a_tombstone_destroys_the_key_and_the_unwrapped_cache_is_bounded():
    master = MasterKeys.parse(generate_master_key("m1"))
    ring = KeyRing(master, cache_size=2)
    for n in range(5):
        ring.load(f"p{n}", master.wrap(f"p{n}", key_of(n + 1)))
        assert ring.get(f"p{n}") is not None
    assert len(ring.open) == 2 and len(ring.wrapped) == 5
    ring.load("p1", None)
    assert ring.get("p1") is None and "p1" not in ring


def test_keys_made_stay_open_within_the_cache_bound_too():
    ring = KeyRing(MasterKeys.parse(generate_master_key("m1")), cache_size=3)
    values = {f"p{n}": ring.create(f"p{n}") for n in range(10)}
    assert list(ring.open) == ["p7", "p8", "p9"] and len(ring.wrapped) == 10
    assert ring.get("p0") is not None  # unwrapped again from its value
    assert ring.master is not None and ring.master.unwrap("p0", values["p0"])[1] == "m1"


def test_a_wrapped_key_is_the_json_of_its_master_key_id_and_ciphertext():
    master = MasterKeys.parse(generate_master_key('k"1'))  # an id JSON must escape
    value = master.wrap("p1", key_of(1))
    data = orjson.loads(value)
    assert sorted(data) == ["key", "kid"] and data["kid"] == 'k"1'
    assert value == orjson.dumps({"kid": data["kid"], "key": data["key"]})
    assert master.unwrap("p1", value)[0].raw == key_of(1).raw


# -- sealing round trips ----------------------------------------------------------------------


def test_stored_event_holds_no_personal_byte_and_opens_back_to_the_event_as_received():
    e = event(1, "sales_accepted", profile=fit_profile(), reason="call me")
    key = key_of(1)
    stored = stored_body(body(e), seal_personal(key, "p1", personal_part(e)))  # type: ignore[arg-type]
    raw = orjson.dumps(stored)
    assert not any(p in raw for p in PERSONAL)
    assert b'"industry":"software"' in raw and b'"seniority":"vp"' in raw  # firmographics stay
    assert open_body(stored, key, "p1") == body(e)
    erased = open_body(stored, None, "p1")
    assert "reason" not in erased and "email" not in erased["profile"]
    assert erased["profile"]["country"] == "DE"


def test_state_value_seals_the_profile_and_opens_with_the_key():
    state = PersonState("p1", profile=fit_profile())
    wire = state.to_wire()
    seal_state(wire, key_of(1))
    raw = to_json(wire)
    assert not any(p in raw for p in PERSONAL)
    assert open_state(orjson.loads(raw), key_of(1))["profile"] == fit_profile()
    assert "email" not in open_state(orjson.loads(raw), None)["profile"]


def test_history_of_a_person_holds_no_personal_byte_and_opens_with_their_key():
    keys: dict[str, DataKey] = {}
    raw = live(journey(), keys)
    joined = b"".join(raw)
    assert not any(p in joined for p in PERSONAL)
    assert SEALED.encode() in joined  # "decision maker (title 'VP Engineering')" is sealed
    records = opened(raw, keys)
    texts = [c.reason.text for r in records for c in r.changes]
    assert any("VP Engineering" in t for t in texts)
    assert any("call me on Tuesday" in t for t in texts)
    assert records[0].event.profile.email == "ada@acme.example"  # type: ignore[union-attr]


def test_a_redelivery_is_a_duplicate_of_the_sealed_record_and_other_content_a_conflict():
    keys: dict[str, DataKey] = {}
    e = journey()[0]
    raw = live([e], keys)
    data = orjson.loads(raw[0])
    digest = fingerprint(data["event"])  # what history holds, as recovery takes it
    part = personal_part(e)
    again = stored_body(body(e), seal_personal(keys["p1"], "p1", part))  # type: ignore[arg-type]
    assert fingerprint(again) == digest
    other = e.model_copy(update={"profile": e.profile.model_copy(update={"email": "x@y.z"})})  # type: ignore[union-attr]
    changed = stored_body(body(other), seal_personal(keys["p1"], "p1", personal_part(other)))  # type: ignore[arg-type]
    assert fingerprint(changed) != digest


# -- the erasure rule ---------------------------------------------------------------------------


def erase(person: str = "p1") -> Event:
    return event(30, "person_erased", person)


def test_after_erasure_no_personal_byte_is_readable_and_verify_is_clean():
    keys: dict[str, DataKey] = {}
    raw = live([*journey("p1"), *journey("p2", email="bob@beta.example"), erase("p1")], keys)
    assert "p1" not in keys and "p2" in keys
    records = opened(raw, keys)
    p1 = b"".join(to_json(r.model_dump(mode="json")) for r in records if r.person_id == "p1")
    assert not any(p in p1 for p in PERSONAL)
    p2 = [r for r in records if r.person_id == "p2"]
    assert p2[0].event.profile.email == "bob@beta.example"  # type: ignore[union-attr]
    policies = {preset().version: preset()}
    report = verify(records, policies)
    assert report.mismatches == [] and report.checked == len(records)
    assert report.erased == {"p1"}
    assert report.withheld >= 1  # the sealed title sentence, compared by its rule id


def test_replay_of_an_erased_person_takes_the_recorded_decisions():
    """A decision maker by job title only: without the title the guard would say "role
    unknown"; the recorded outcome keeps them a decision maker, and the funnel unchanged."""
    keys: dict[str, DataKey] = {}
    policy = strict_roles()
    before = live(journey("p1", title="Head of Data"), keys, policy)
    before += live(journey("p2"), keys, policy)
    unerased = opened(before, keys)
    keys.pop("p1")  # erased: the key is gone
    records = opened(before, keys)

    def replayed(with_outcomes: bool) -> list[Any]:
        replayer = Replayer(policy)
        changes = []
        for record in records:
            outcomes = record.outcomes if with_outcomes else None
            changes += replayer.apply(record.event, outcomes).changes
        return changes

    recorded = [c for r in unerased for c in r.changes]
    assert {c.to_stage for c in recorded if c.person_id == "p1"} >= {"lead", "mql", "sql"}
    changes = replayed(with_outcomes=True)
    assert [(c.change_id, c.to_stage, c.reason.rule) for c in changes] == [
        (c.change_id, c.to_stage, c.reason.rule) for c in recorded
    ]
    assert funnel(changes).to_dict() == funnel(recorded).to_dict()
    assert fold(records)["p1"].stage == fold(unerased)["p1"].stage
    # Without the recorded outcome the title is unknown and p1 would never have been a lead.
    assert funnel(replayed(with_outcomes=False)).to_dict() != funnel(recorded).to_dict()
    report = verify(records, {policy.version: policy})
    assert report.mismatches == [] and report.withheld >= 1


def test_ucp_email_domain_outcome_survives_erasure():
    keys: dict[str, DataKey] = {}
    raw = live(journey("p1", email="ada@mailinator.com"), keys)
    records = opened(raw, keys)
    assert records[0].outcomes == {
        "email": "given",
        "ucp_domain": "mailinator.com",
    }
    keys.clear()
    report = verify(opened(raw, keys), {preset().version: preset()})
    assert report.mismatches == []


def test_an_erased_persons_later_events_keep_no_personal_field():
    keys: dict[str, DataKey] = {}
    later = event(40, "webinar_attended", profile=fit_profile(email="new@acme.example"))
    raw = live([*journey(), erase(), later], keys)
    assert b"new@acme.example" not in raw[-1] and b"personal" not in raw[-1]
    assert verify(opened(raw, keys), {preset().version: preset()}).mismatches == []


def test_an_erased_person_shows_no_profile_and_no_sentence():
    state = fold(opened(live([*journey(), erase()], {}), {}))["p1"]
    assert state.erased and state.profile == {}
    assert state.last_reason is not None and state.last_reason.text == WITHHELD
    assert shown_reason({"rule": "mql.hand_raise", "text": "fits ICP"}, True) == {
        "rule": "mql.hand_raise",
        "text": WITHHELD,
    }
    assert shown_reason({"rule": "r", "text": SEALED + "v1.xx"}, False)["text"] == WITHHELD
    assert open_text(SEALED + key_of(1).seal("p1", b"hello"), key_of(1), "p1") == "hello"
    assert open_text(SEALED + key_of(1).seal("p1", b"hello"), None, "p1") == WITHHELD


def test_a_survivors_merged_profile_is_sealed_in_history_and_opens_with_its_key():
    a, b = fit_profile(email="a@x.example"), fit_profile(email="ada@acme.example")
    events = [
        event(1, "page_viewed", "a", profile=a),
        event(2, "page_viewed", "b", profile=b),
        Event.model_validate(
            {
                "event_id": "m1",
                "type": "person_merged",
                "person_id": "a",
                "merged_into": "b",
                "occurred_at": "2026-01-01T05:00:00Z",
            }
        ),
    ]
    replayer = Replayer(preset("default"))
    absorbed = [d for e in events for d in replayer.apply_all(e)][-1]
    assert absorbed.merged is not None
    assert absorbed.merged.profile["email"] == "ada@acme.example"  # the survivor's own
    handoff = absorbed.event.model_dump_json().encode()
    assert b"a@x.example" not in handoff and b"VP Engineering" not in handoff

    key = key_of(7)
    wire = absorbed.to_wire()
    wire["merged"] = seal_merged(absorbed.merged, lambda part: seal_personal(key, "b", part))
    raw = to_json(wire)
    assert not any(value in raw for value in PERSONAL)
    opened = HistoryRecord.model_validate(open_record(orjson.loads(raw), key))
    assert opened.merged is not None
    assert opened.merged.profile["email"] == "ada@acme.example"
    erased = HistoryRecord.model_validate(open_record(orjson.loads(raw), None))
    assert erased.merged is not None and "email" not in erased.merged.profile


def test_master_key_material_never_shows_in_a_repr_or_the_settings():
    from streams.settings import Settings

    entry = generate_master_key("m1")
    secret = entry.split(":", 1)[1]
    keys = MasterKeys.parse(entry)
    raw = keys.keys["m1"]
    assert secret not in repr(keys) and repr(raw) not in repr(keys) and "m1" in repr(keys)
    settings = Settings(master_key=entry)
    assert secret not in repr(settings) and secret not in str(settings.model_dump())
    assert settings.master_keys().keys["m1"] == raw  # type: ignore[union-attr]


def test_leadflow_dev_keeps_an_owner_only_master_key_unless_the_environment_names_one(
    tmp_path, monkeypatch
):
    from rich.console import Console

    from streams.dev.devstack import DevOptions, DevStack

    monkeypatch.delenv("LEADFLOW_MASTER_KEY", raising=False)
    monkeypatch.delenv("LEADFLOW_MASTER_KEY_FILE", raising=False)
    stack = DevStack(DevOptions(data_dir=tmp_path, broker_kind="tansu"), Console())
    env = stack.master_key_env()
    path = tmp_path / "master.key"
    assert env == {"LEADFLOW_MASTER_KEY_FILE": str(path)} and stack.master_key_generated
    assert path.stat().st_mode & 0o777 == 0o600
    first = MasterKeys.from_env(env)
    assert first is not None and first.current == "dev"
    assert stack.master_key_env() == env and MasterKeys.from_env(env) == first  # kept
    monkeypatch.setenv("LEADFLOW_MASTER_KEY", generate_master_key("mine"))
    assert stack.master_key_env() == {} and not stack.master_key_generated


def test_a_transit_key_is_the_same_for_a_pair_and_opens_only_its_forwarded_event():
    alias_key = key_of(1)
    transit = transit_key(alias_key, "s1")
    assert transit.raw == transit_key(key_of(1), "s1").raw != transit_key(alias_key, "s2").raw
    forwarded = Event.model_validate(
        {
            "event_id": "e1",
            "type": "demo_requested",
            "person_id": "s1",
            "occurred_at": "2026-01-01T00:00:00Z",
            "profile": {"email": "a@b.example", "job_title": "VP Sales", "industry": "software"},
            "reason": "call back",
            "forwarded_via": ["a1"],
        }
    )
    sealed = sealed_forward(forwarded, transit)
    wire = sealed.model_dump_json()
    assert "a@b.example" not in wire and "VP Sales" not in wire and "call back" not in wire
    assert sealed.profile is not None and sealed.profile.industry == "software"
    assert sealed_forward(forwarded, transit) == sealed  # deterministic: a re-forward dedups
    assert opened_forward(sealed, transit) == forwarded
    assert opened_forward(sealed, None).forwarded_personal is None  # an erased survivor
    with pytest.raises(ValueError):
        opened_forward(sealed, transit_key(alias_key, "s2"))
    record = transit_record("s1", "a1")
    assert record.startswith(TRANSIT_PREFIX)
    assert not "\u00fftransit".encode().startswith(TRANSIT_PREFIX)  # no person id's record


def test_the_ring_keeps_transit_records_apart_from_persons_and_drops_them_on_tombstones():
    master = MasterKeys.parse(generate_master_key("m1"))
    ring = KeyRing(master)
    record = transit_record("s1", "a1")
    value = ring.add_transit(record, key_of(2))
    other = KeyRing(master)
    assert (
        other.load_record(record, value) is None and other.get_transit(record).raw == key_of(2).raw
    )
    assert other.load_record(b"s1", master.wrap("s1", key_of(3))) == "s1" and "s1" in other
    assert other.transits_of("s1") == [record] and other.transits_of("a1") == []
    other.load_record(record, None)
    assert other.get_transit(record) is None and other.transits_of("s1") == []
    stranger = KeyRing(MasterKeys.parse(generate_master_key("m2")))
    stranger.load_record(record, value)
    assert stranger.get_transit(record) is None  # wrapped by a master key it does not have


def test_a_replay_of_history_reads_each_records_event_as_the_whole_record_has_it():
    """`parse_history_event` (replay, funnel, simulate on the topic) validates the event
    alone; what it reads is what `parse_history` (verify, export) reads of the record, sealed
    or erased, and a record with no valid event is refused with a reason."""
    from collections import namedtuple

    from streams.tools.export import parse_history, parse_history_event

    keys: dict[str, DataKey] = {}
    raw = live([*journey("p1"), *journey("p2", email="bob@beta.example"), erase("p1")], keys)
    raw += live(journey("p3", title="Head of Data"), keys, strict_roles())
    Record = namedtuple("Record", "value")
    for value in raw:
        whole = parse_history(Record(value), keys.get)
        read = parse_history_event(Record(value), keys.get)
        assert read.event == whole.event and read.outcomes == (whole.outcomes or None)
        assert (read.person_id, read.policy_version) == (whole.person_id, whole.policy_version)
    assert any(parse_history_event(Record(v), keys.get).outcomes for v in raw)
    bad = orjson.loads(raw[0])
    bad["event"]["occurred_at"] = "yesterday"
    for value, reason in [
        (orjson.dumps(bad), "history record event: occurred_at"),
        (b"{", "not JSON"),
        (b'{"person_id": "p1"}', "no event"),
        (None, "tombstone"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_history_event(Record(value), keys.get)
