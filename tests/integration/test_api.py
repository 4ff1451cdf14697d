"""The HTTP API against running workers and a real broker: auth, ingest, persons, routing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from events.limits import MAX_PAYLOAD_BYTES
from streams.web.contracts import FunnelView, PersonHistory, PersonView, PolicyRow
from tests.fixtures.worker import Worker, wait_for

pytestmark = pytest.mark.integration

VP = {"seniority": "vp", "industry": "software", "employees": 300, "country": "DE"}


def event(event_id: str, person: str, type_: str, at: str, **extra: Any) -> bytes:
    body = {
        "event_id": event_id,
        "person_id": person,
        "type": type_,
        "occurred_at": at,
        "source": "webinar",
        **extra,
    }
    return json.dumps(body).encode()


async def ingest(worker: Worker, *bodies: bytes) -> None:
    for body in bodies:
        status, answer = await asyncio.to_thread(worker.request, "/events", body=body)
        assert status == 202, answer


@pytest.mark.smoke
async def test_api_end_to_end_with_auth_ingest_person_history_and_funnel(workers):
    (w,) = await workers(1)
    await ingest(
        w,
        event("a1", "ada", "newsletter_signup", "2026-01-01T09:00:00Z"),
        event("a2", "ada", "webinar_attended", "2026-01-02T09:00:00Z", profile=VP),
        event("a3", "ada", "demo_requested", "2026-01-03T09:00:00Z"),
    )

    async def ada_is_mql() -> Any:
        status, body = await asyncio.to_thread(w.request, "/people/ada")
        return body if status == 200 and body["stage"] == "mql" else None

    person = PersonView.model_validate(await wait_for(ada_is_mql, 30, "ada to reach mql"))
    assert person.highest == "mql"
    assert person.lead_source == "webinar"
    assert person.profile["seniority"] == "vp"
    assert "hand-raise" in person.last_reason.text

    status, history = await asyncio.to_thread(w.request, "/people/ada/history")
    timeline = PersonHistory.model_validate(history)
    assert [r.sequence for r in timeline.records] == [1, 2, 3]
    assert [c.to_stage for r in timeline.records for c in r.changes] == [
        "subscriber",
        "lead",
        "mql",
    ]
    assert all(r.policy_version == person.policy_version for r in timeline.records)

    status, as_of = await asyncio.to_thread(
        w.request, "/people/ada/history?as_of=2026-01-02T12:00:00Z"
    )
    assert status == 200
    assert as_of["state"]["stage"] == "lead"
    assert len(as_of["records"]) == 2

    async def funnel_has_ada() -> Any:
        status, body = await asyncio.to_thread(w.request, "/funnel", token=None)
        return body if status == 200 and body["reached"]["mql"] >= 1 else None

    funnel = FunnelView.model_validate(await wait_for(funnel_has_ada, 30, "the live funnel"))
    assert funnel.reached["lead"] == 1 and funnel.persons == 1
    assert funnel.policy_version == person.policy_version

    status, policies = await asyncio.to_thread(w.request, "/policies", token=None)
    assert [PolicyRow.model_validate(p).version for p in policies] == [person.policy_version]
    status, recent = await asyncio.to_thread(w.request, "/changes/recent")
    assert status == 200 and recent[0]["to_stage"] == "mql"


async def test_personal_data_needs_the_token_and_open_endpoints_show_none(workers):
    (w,) = await workers(1)
    await ingest(w, event("b1", "bob", "webinar_attended", "2026-01-02T09:00:00Z", profile=VP))

    async def bob_known() -> bool:
        return (await asyncio.to_thread(w.request, "/people/bob"))[0] == 200

    await wait_for(bob_known, 30, "bob")
    for path in ("/people/bob", "/people/bob/history", "/changes/recent"):
        for token in (None, "wrong-token"):
            status, body = await asyncio.to_thread(w.request, path, token=token)
            assert status == 401, (path, token)
            assert "bob" not in json.dumps(body) and "vp" not in json.dumps(body)
    status, _ = await asyncio.to_thread(
        w.request,
        "/events",
        token=None,
        body=event("b2", "bob", "page_viewed", "2026-01-03T00:00:00Z"),
    )
    assert status == 401
    for path in ("/healthz", "/funnel", "/policies", "/metrics", "/"):
        status, body = await asyncio.to_thread(w.request, path, token=None)
        assert status == 200, path
        text = body if isinstance(body, str) else json.dumps(body)
        assert "bob" not in text and "software" not in text, path


async def test_ingest_rejects_invalid_and_oversized_bodies(workers):
    (w,) = await workers(1)
    status, body = await asyncio.to_thread(
        w.request,
        "/events",
        body=b'{"event_id": "x", "type": "page_viewed", "person_id": "p",'
        b' "occurred_at": "2026-01-01T00:00:00"}',
    )
    assert status == 422
    assert "occurred_at" in body["error"] and "timezone" in body["error"]
    status, body = await asyncio.to_thread(w.request, "/events", body=b"not json")
    assert status == 422
    huge = event("h1", "p", "page_viewed", "2026-01-01T00:00:00Z", campaign="x" * MAX_PAYLOAD_BYTES)
    status, body = await asyncio.to_thread(w.request, "/events", body=huge)
    assert status == 413
    status, body = await asyncio.to_thread(w.request, "/people/nobody")
    assert status == 404


async def test_requests_reach_the_worker_that_owns_the_person(workers):
    first, second = await workers(2)
    persons = [f"person-{i}" for i in range(12)]
    await ingest(
        first,
        *[
            event(f"r-{p}", p, "webinar_attended", "2026-01-02T09:00:00Z", profile=VP)
            for p in persons
        ],
    )

    async def everyone_answered_by_both() -> bool:
        for p in persons:
            for w in (first, second):
                status, body = await asyncio.to_thread(w.request, f"/people/{p}")
                if status != 200 or body["stage"] != "lead":
                    return False
        return True

    await wait_for(everyone_answered_by_both, 60, "both workers to answer for every person")
    # Erase two persons after a hand-raise: every worker's /changes/recent withholds their
    # reason sentences (which quote the seniority), whichever worker holds them.
    erased = set(persons[:2])
    await ingest(
        first,
        *[event(f"d-{p}", p, "demo_requested", "2026-01-03T09:00:00Z") for p in persons],
        *[event(f"x-{p}", p, "person_erased", "2026-01-04T09:00:00Z") for p in erased],
    )

    async def recent_withholds_erased(w: Any) -> list[dict[str, Any]] | None:
        status, recent = await asyncio.to_thread(w.request, "/changes/recent?limit=200")
        mql = [c for c in recent if c["to_stage"] == "mql"] if status == 200 else []
        if len(mql) < len(persons):
            return None
        texts = {c["person_id"]: c["reason"]["text"] for c in mql}
        if any(texts[p] != "withheld: the person was erased" for p in erased):
            return None
        return mql

    for w in (first, second):
        mql = await wait_for(lambda w=w: recent_withholds_erased(w), 60, "erasures withheld")
        kept = [c["reason"]["text"] for c in mql if c["person_id"] not in erased]
        assert kept and all("vp" in text for text in kept), kept
    owned = {w.url: set(await w.owned()) for w in (first, second)}
    assert all(owned.values()), owned  # both own partitions: answers crossed workers
    for p in persons:
        a = (await asyncio.to_thread(first.request, f"/people/{p}"))[1]
        b = (await asyncio.to_thread(second.request, f"/people/{p}"))[1]
        a.pop("time_in_stage_days"), b.pop("time_in_stage_days")
        assert a == b


async def test_erasure_removes_profile_keeps_stage_facts_and_metrics_count_it(workers):
    (w,) = await workers(1)
    await ingest(
        w,
        event("e1", "eve", "webinar_attended", "2026-01-02T09:00:00Z", profile=VP),
        event("e2", "eve", "demo_requested", "2026-01-03T09:00:00Z"),
        event("e3", "eve", "person_erased", "2026-01-04T09:00:00Z"),
    )

    async def eve_erased() -> Any:
        status, body = await asyncio.to_thread(w.request, "/people/eve")
        return body if status == 200 and body["erased"] else None

    eve = PersonView.model_validate(await wait_for(eve_erased, 30, "eve's erasure"))
    assert eve.profile == {}
    assert eve.stage == "mql" and eve.highest == "mql"  # anonymous stage facts stay
    status, history = await asyncio.to_thread(w.request, "/people/eve/history")
    assert [r["event"]["type"] for r in history["records"]][-1] == "person_erased"
    assert "vp" not in json.dumps(history)  # the timeline never shows profile data

    async def both_changes() -> Any:
        status, recent = await asyncio.to_thread(w.request, "/changes/recent")
        return recent if status == 200 and len(recent) == 2 else None

    recent = await wait_for(both_changes, 30, "eve's two stage changes in /changes/recent")
    assert [c["person_id"] for c in recent] == ["eve", "eve"]
    assert "vp" not in json.dumps(recent) and recent[0]["reason"]["rule"]

    status, metrics = await asyncio.to_thread(w.request, "/metrics", token=None)
    assert status == 200
    for name in (
        "leadflow_events_processed_total",
        'leadflow_stage_changes_total{to_stage="mql"}',
        "leadflow_dead_letters_total",
        "leadflow_decide_seconds_bucket",
        "leadflow_consumer_lag",
    ):
        assert name in metrics, name


async def test_live_funnel_counts_a_merge_that_moves_nobody_as_one_person(workers):
    """`person_merged` of a subscriber into a lead advances nobody (no stage change), yet the
    live funnel must count one person, as the offline funnels do: it follows the aliases
    topic, where the survivor's fold publishes the alias."""
    (w,) = await workers(1)
    await ingest(
        w,
        event("m1", "amy", "newsletter_signup", "2026-01-01T09:00:00Z"),
        event("m2", "amy", "webinar_attended", "2026-01-02T09:00:00Z", profile=VP),
        event("m3", "amy-crm-dup", "newsletter_signup", "2026-01-03T09:00:00Z"),
    )

    async def funnel_where(check: Any) -> Any:
        status, body = await asyncio.to_thread(w.request, "/funnel", token=None)
        return body if status == 200 and check(FunnelView.model_validate(body)) else None

    before = FunnelView.model_validate(
        await wait_for(
            lambda: funnel_where(lambda f: f.persons == 2 and f.reached["lead"] == 1),
            30,
            "both persons in the live funnel",
        )
    )
    assert before.reached["subscriber"] == 2
    await ingest(
        w,
        event("m4", "amy-crm-dup", "person_merged", "2026-01-04T09:00:00Z", merged_into="amy"),
    )

    async def merged() -> Any:
        status, body = await asyncio.to_thread(w.request, "/people/amy")
        return body if status == 200 and body["aliases"] == ["amy-crm-dup"] else None

    survivor = PersonView.model_validate(await wait_for(merged, 30, "amy to absorb her duplicate"))
    assert survivor.stage == "lead"  # the merge moved nobody: no stage change
    after = FunnelView.model_validate(
        await wait_for(lambda: funnel_where(lambda f: f.persons == 1), 30, "one person")
    )
    assert after.reached["subscriber"] == 1 and after.reached["lead"] == 1
    status, recent = await asyncio.to_thread(w.request, "/changes/recent")
    assert status == 200 and not any(c["reason"]["rule"] == "identity.merged" for c in recent)
