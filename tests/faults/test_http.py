"""The HTTP side under abuse: no personal data without the token, 4xx for bad bodies, and a
burst of requests that does not stall event processing (the API and the agent share one
event loop in the worker).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from events.limits import MAX_PAYLOAD_BYTES
from streams.kafka.readers import read_to_end
from tests.fixtures.worker import TOKEN, Worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FIT = {"seniority": "vp", "industry": "software", "employees": 300, "country": "DE"}
PERSONS = [f"person-{n:03d}-zq" for n in range(20)]
BURST = 500  # requests per wave
WAVES = 3
REJECTION = "CFO Zed said no"
BURST_BOUND_S = 20.0  # events published during the burst reach history within this


def email(person: str) -> str:
    return f"{person}.secret@acme.example"


def event(event_id: str, person: str, type_: str, day: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "person_id": person,
        "type": type_,
        "occurred_at": f"2026-01-{day:02d}T09:00:00Z",
        "source": "webinar",
        **extra,
    }


def journeys() -> list[dict[str, Any]]:
    out = []
    for n, person in enumerate(PERSONS):
        profile = {**FIT, "email": email(person), "job_title": f"VP Secretive {n}"}
        out += [
            event(f"{person}-1", person, "webinar_attended", 1, profile=profile),
            event(f"{person}-2", person, "demo_requested", 2),
            event(
                f"{person}-3", person, "sales_rejected", 3, source="crm", reason="CFO Zed said no"
            ),
        ]
    return out


async def publish(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> float:
    """Publish; returns the monotonic time at which the broker acked all of them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, orjson.dumps(e), key=e["person_id"].encode()) for e in events
        ]
        await asyncio.gather(*futures)
        return time.monotonic()
    finally:
        await producer.stop()


async def history_ids(bootstrap: str, topic: str) -> set[str]:
    values = await read_to_end(bootstrap, topic, value_only=True)
    return {orjson.loads(v)["event"]["event_id"] for v in values}


async def until_in_history(bootstrap: str, topic: str, ids: set[str], since: float) -> float:
    """Seconds from `since` until every id is in history (polled every 0.2 s)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if ids <= await history_ids(bootstrap, topic):
            return time.monotonic() - since
        await asyncio.sleep(0.2)
    raise AssertionError(f"{len(ids)} events not in history after 90 s")


def raw_request(
    worker: Worker, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes]:
    """One request with exactly these headers (http.client: no defaults added for us)."""
    connection = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30)
    try:
        connection.putrequest(method, path)
        for name, value in headers.items():
            connection.putheader(name.replace("_", "-"), value)
        if body is not None and "Transfer_Encoding" not in headers:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        if body is not None:
            if headers.get("Transfer_Encoding") == "chunked":
                for start in range(0, len(body), 16_384):
                    chunk = body[start : start + 16_384]
                    connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    time.sleep(0.02)  # so the server sees the chunks arrive one by one
                connection.send(b"0\r\n\r\n")
            else:
                connection.send(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def leaks(body: bytes, secrets: list[str]) -> list[str]:
    text = body.decode(errors="replace")
    return [s for s in secrets if s in text]


async def test_no_personal_data_without_the_token_bad_bodies_get_4xx_and_a_burst_does_not_stall(
    broker, make_topics, tmp_path: Path, fault_report
):
    names = await make_topics(partitions=4)
    worker = Worker(broker, names, tmp_path, "http")
    try:
        await worker.ready()
        setup = journeys()
        await publish(broker.bootstrap, names.events, setup)
        await until_in_history(
            broker.bootstrap, names.history, {e["event_id"] for e in setup}, time.monotonic()
        )
        person = PERSONS[0]

        async def stage_known() -> Any:
            status, body = await asyncio.to_thread(worker.request, f"/people/{person}")
            return body if status == 200 and body.get("stage") == "recycled" else None

        shown = await wait_for(stage_known, 30, "the person view with the token")
        # With the token the personal data is there (so the checks below can fail).
        assert shown["profile"]["email"] == email(person)

        async def recent_changes() -> Any:  # the feed follows the stage-change topic
            status, body = await asyncio.to_thread(worker.request, "/changes/recent?limit=200")
            return body if status == 200 and len(body) >= 3 * len(PERSONS) else None

        recent = await wait_for(recent_changes, 30, "the recent changes feed")
        reasons = sorted({c["reason"]["text"] for c in recent})
        secrets = [*PERSONS, *map(email, PERSONS), "VP Secretive", REJECTION, *reasons]
        version = shown["policy_version"]

        # 1. Every route, without a token and with wrong ones: nothing personal.
        paths = [
            "/",
            "/healthz",
            "/metrics",
            "/funnel",
            f"/funnel?policy={version}",
            "/funnel?policy=nope",
            "/policies",
            f"/policies/{version}",
            f"/people/{person}",
            f"/people/{person}/history",
            f"/people/{person}/history?as_of=2026-01-02T12:00:00Z",
            "/people/nobody-here",
            "/changes/recent",
            "/changes/recent?limit=200",
            "/router/",
            "/router/topics",
            "/router/persons/",
            f"/router/persons/{person}/",
            f"/table/persons/{person}/",
            "/assignment/",
            "/graph/",
            "/performance/",
            "/static/../../etc/passwd",
        ]
        wrong = {
            "none": {},
            "wrong token": {"Authorization": "Bearer not-the-token"},
            "token prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
            "token plus": {"Authorization": f"Bearer {TOKEN}x"},
            "empty bearer": {"Authorization": "Bearer "},
            "basic scheme": {"Authorization": f"Basic {TOKEN}"},
            "token alone": {"Authorization": TOKEN},
            "non-ascii": {"Authorization": "Bearer tökén-\u00ff"},
        }
        checked = 0
        statuses: dict[str, set[int]] = {}
        for path in paths:
            for label, headers in wrong.items():
                status, body = await asyncio.to_thread(raw_request, worker, "GET", path, **headers)
                checked += 1
                assert status < 500, (path, label, status, body[:300])
                assert not leaks(body, secrets), (path, label, leaks(body, secrets))
                statuses.setdefault(path, set()).add(status)
        for path in paths[8:14]:  # the personal routes answer 401 to all of them
            assert statuses[path] == {401}, (path, statuses[path])
        # POST /events without a valid token: refused, and nothing published.
        sneaky = event("sneaky-1", "sneaky", "webinar_attended", 5, profile=FIT)
        for label, headers in wrong.items():
            status, body = await asyncio.to_thread(
                raw_request, worker, "POST", "/events", orjson.dumps(sneaky), **headers
            )
            assert status == 401, (label, status, body)
            # Which persons are erased is personal too (the workers ask each other).
            status, body = await asyncio.to_thread(
                raw_request, worker, "POST", "/internal/erased", orjson.dumps(PERSONS), **headers
            )
            assert status == 401 and not leaks(body, secrets), (label, status, body)

        # 2. Bad bodies on POST /events (with the token): 4xx, never 5xx.
        auth = {"Authorization": f"Bearer {TOKEN}", "Content_Type": "application/json"}
        valid = orjson.dumps(event("http-ok-1", "http-ok", "webinar_attended", 5, profile=FIT))
        huge = valid[:-1] + b',"x":"' + b"p" * (MAX_PAYLOAD_BYTES + 10) + b'"}'
        bad_bodies = {
            "empty": b"",
            "not json": b"hello",
            "invalid utf-8": b'{"event_id": "\xff"}',
            "array": b"[1, 2, 3]",
            "missing ids": b'{"type": "webinar_attended"}',
            "naive time": valid.replace(b"09:00:00Z", b"09:00:00"),
            "year 9999": valid.replace(b"2026-01-05T09:00:00Z", b"9999-12-31T23:59:59-14:00"),
            "wrong types": valid.replace(b'"http-ok-1"', b"12"),
            "deep nesting": b'{"event_id":' + b"[" * 20_000 + b"]" * 20_000 + b"}",
            "oversized": huge,
        }
        answers = {}
        for label, body in bad_bodies.items():
            status, answer = await asyncio.to_thread(
                raw_request, worker, "POST", "/events", body, **auth
            )
            answers[label] = status
            assert 400 <= status < 500, (label, status, answer[:300])
        status, _ = await asyncio.to_thread(
            raw_request, worker, "POST", "/events", huge, Transfer_Encoding="chunked", **auth
        )
        answers["oversized, chunked"] = status
        assert status == 413
        # A valid body in chunks is read whole (it used to be cut at the first chunk: 422).
        padded = event("http-chunked-1", "http-ok", "page_viewed", 5, campaign="c" * 1000)
        padded["x-padding"] = "p" * 40_000
        status, answer = await asyncio.to_thread(
            raw_request,
            worker,
            "POST",
            "/events",
            orjson.dumps(padded),
            Transfer_Encoding="chunked",
            **auth,
        )
        answers["valid, chunked"] = status
        assert status == 202, answer
        assert answers["oversized"] == 413
        status, answer = await asyncio.to_thread(
            raw_request, worker, "POST", "/events", valid, **auth
        )
        assert status == 202, answer  # the route works: the 4xx above are about the bodies
        await until_in_history(
            broker.bootstrap, names.history, {"http-ok-1", "http-chunked-1"}, time.monotonic()
        )
        assert "sneaky-1" not in await history_ids(broker.bootstrap, names.history)

        # 3. A burst of reads while events are published: processing keeps going.
        baseline_events = [
            event(f"base-{n}", f"burst-{n % 25}", "webinar_attended", 6, profile=FIT)
            for n in range(100)
        ]
        baseline_s = await until_in_history(
            broker.bootstrap,
            names.history,
            {e["event_id"] for e in baseline_events},
            await publish(broker.bootstrap, names.events, baseline_events),
        )
        urls = [
            f"{worker.url}/people/{PERSONS[n % len(PERSONS)]}" if n % 2 else f"{worker.url}/funnel"
            for n in range(BURST)
        ]
        results: list[int] = []

        async def burst() -> float:
            started = time.monotonic()
            headers = {"Authorization": f"Bearer {TOKEN}"}
            connector = aiohttp.TCPConnector(limit=200)
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

                async def get(url: str) -> None:
                    async with session.get(url, headers=headers) as response:
                        await response.read()
                        results.append(response.status)

                for _ in range(WAVES):
                    await asyncio.gather(*(get(u) for u in urls))
            return time.monotonic() - started

        during_events = [
            event(f"during-{n}", f"burst-{n % 25}", "demo_requested", 7) for n in range(100)
        ]
        burst_task = asyncio.create_task(burst())
        await asyncio.sleep(0.3)  # the burst is under way
        acked = await publish(broker.bootstrap, names.events, during_events)
        during_s = await until_in_history(
            broker.bootstrap, names.history, {e["event_id"] for e in during_events}, acked
        )
        burst_s = await burst_task
        alive = worker.alive
        log = worker.log.read_text(errors="replace")
    finally:
        worker.kill()

    print(
        f"\n{checked} unauthenticated/wrong-token GETs over {len(paths)} routes; bad bodies: "
        f"{json.dumps(answers)}\nburst: {len(results)} GETs in {burst_s:.1f} s "
        f"({len(results) / burst_s:.0f}/s); events to history: {baseline_s:.2f} s idle, "
        f"{during_s:.2f} s during the burst"
    )
    fault_report.add(
        "http",
        f"{checked} no/wrong-token GETs, {len(answers)} bad bodies, {len(results)}-GET burst",
        events=len(setup) + len(baseline_events) + len(during_events) + 1,
        latency_idle_s=round(baseline_s, 2),
        latency_burst_s=round(during_s, 2),
        burst_s=round(burst_s, 1),
    )
    assert alive and "Traceback" not in log
    assert sorted(set(results)) == [200], sorted(set(results))
    assert during_s <= BURST_BOUND_S, f"events took {during_s:.1f} s to reach history"


# --- scoped tokens ------------------------------------------------------------------------

SCOPED = {  # name: (token, scopes)
    "crm-sync": ("crm-sync-token-" + "c" * 24, "ingest"),
    "dashboard": ("dashboard-token-" + "d" * 24, "read"),
    "privacy": ("privacy-token-" + "p" * 24, "ingest,admin"),
}


def bearer_for(name: str | None) -> dict[str, str]:
    if name is None:
        return {}
    if name == "legacy":
        return {"Authorization": f"Bearer {TOKEN}"}
    if name == "unknown":
        return {"Authorization": "Bearer not-a-configured-token-at-all"}
    return {"Authorization": f"Bearer {SCOPED[name][0]}"}


async def test_each_token_reaches_only_what_its_scopes_allow_and_reads_are_access_logged(
    broker, make_topics, tmp_path: Path, fault_report
):
    from streams.web.access import token_hash

    names = await make_topics(partitions=4)
    access_log = tmp_path / "access.jsonl"
    tokens = ";".join(f"{n}:{scopes}:{token_hash(t)}" for n, (t, scopes) in SCOPED.items())
    worker = Worker(
        broker,
        names,
        tmp_path,
        "scopes",
        env={"LEADFLOW_API_TOKENS": tokens, "LEADFLOW_ACCESS_LOG": str(access_log)},
    )
    try:
        await worker.ready()
        setup = journeys()[:6]  # two persons
        await publish(broker.bootstrap, names.events, setup)
        await until_in_history(
            broker.bootstrap, names.history, {e["event_id"] for e in setup}, time.monotonic()
        )
        person = PERSONS[0]

        async def visible() -> Any:
            status, body = await asyncio.to_thread(worker.request, f"/people/{person}")
            return body if status == 200 and body.get("stage") == "recycled" else None

        await wait_for(visible, 30, "the person with the all-scope (legacy) token")

        async def feed_filled() -> Any:
            status, body = await asyncio.to_thread(worker.request, "/changes/recent")
            return status == 200 and len(body) >= 6

        await wait_for(feed_filled, 30, "the recent changes feed")
        secrets = [email(PERSONS[0]), email(PERSONS[1]), "VP Secretive", REJECTION]

        # 1. Reads: only `read` (and the all-scope legacy token); 401 unknown, 403 others.
        reads = [f"/people/{person}", f"/people/{person}/history", "/changes/recent?limit=5"]
        expected = {
            None: 401,
            "unknown": 401,
            "crm-sync": 403,
            "privacy": 403,
            "dashboard": 200,
            "legacy": 200,
        }
        matrix: dict[str, dict[str, int]] = {}
        for path in reads:
            for who, want in expected.items():
                status, body = await asyncio.to_thread(
                    raw_request, worker, "GET", path, **bearer_for(who)
                )
                matrix.setdefault(path, {})[str(who)] = status
                assert status == want, (path, who, status, body[:300])
                if status != 200:
                    assert not leaks(body, secrets), (path, who, body[:300])
                    if status == 403:
                        assert b"read" in body, body  # says which scope is missing
        # 2. Ingest: `ingest` posts events; a read-only token cannot.
        for who, want in {
            None: 401,
            "unknown": 401,
            "dashboard": 403,
            "crm-sync": 202,
            "privacy": 202,
            "legacy": 202,
        }.items():
            body = orjson.dumps(
                event(f"scoped-{who}", "scoped-person", "page_viewed", 8, profile=FIT)
            )
            status, answer = await asyncio.to_thread(
                raw_request,
                worker,
                "POST",
                "/events",
                body,
                Content_Type="application/json",
                **bearer_for(who),
            )
            matrix.setdefault("POST /events", {})[str(who)] = status
            assert status == want, (who, status, answer)
        # 3. Erasure needs `admin`: the ingest-only upstream cannot erase anyone.
        for who, want in {"crm-sync": 403, "dashboard": 403, "privacy": 202}.items():
            body = orjson.dumps(event(f"erase-by-{who}", PERSONS[1], "person_erased", 9))
            status, answer = await asyncio.to_thread(
                raw_request,
                worker,
                "POST",
                "/events",
                body,
                Content_Type="application/json",
                **bearer_for(who),
            )
            matrix.setdefault("POST /events (person_erased)", {})[who] = status
            assert status == want, (who, status, answer)
        # 4. Between workers: read or admin.
        for who, want in {"crm-sync": 403, "dashboard": 200, "privacy": 200, None: 401}.items():
            status, _ = await asyncio.to_thread(
                raw_request,
                worker,
                "POST",
                "/internal/erased",
                orjson.dumps(PERSONS[:2]),
                **bearer_for(who),
            )
            matrix.setdefault("POST /internal/erased", {})[str(who)] = status
            assert status == want, (who, status)

        wanted = {"scoped-crm-sync", "scoped-privacy", "scoped-legacy", "erase-by-privacy"}
        await until_in_history(broker.bootstrap, names.history, wanted, time.monotonic())
        in_history = await history_ids(broker.bootstrap, names.history)
        assert not {"scoped-None", "scoped-unknown", "scoped-dashboard"} & in_history
        assert not {"erase-by-crm-sync", "erase-by-dashboard"} & in_history
        log = worker.log.read_text(errors="replace")
    finally:
        worker.kill()

    # 5. The access log: one line per read, token names and person ids, no personal data.
    lines = [orjson.loads(line) for line in access_log.read_text().splitlines()]
    text = access_log.read_text()
    assert not leaks(text.encode(), secrets)
    assert not any(token in text or token in log for token, _ in SCOPED.values())
    reads_logged = [e for e in lines if e["route"] != "/internal/erased"]
    by = {(e["token"], e["route"], e["status"]) for e in reads_logged}
    assert ("dashboard", "/people/{person_id}", 200) in by
    assert ("dashboard", "/people/{person_id}/history", 200) in by
    assert ("crm-sync", "/people/{person_id}", 403) in by
    assert (None, "/changes/recent", 401) in by
    person_reads = [e for e in reads_logged if e["route"].startswith("/people/")]
    assert all(e["persons"] == [person] for e in person_reads)
    recent = [e for e in reads_logged if e["route"] == "/changes/recent" and e["status"] == 200]
    assert recent and all(set(e["persons"]) <= set(PERSONS) for e in recent)
    assert all(e["method"] == "GET" and e["time"].endswith("+00:00") for e in reads_logged)
    print(f"\nscope matrix: {json.dumps(matrix)}\naccess log: {len(lines)} lines")
    fault_report.add(
        "http scopes",
        f"{sum(len(v) for v in matrix.values())} requests over 3 scoped tokens",
        events=len(setup),
        access_log_lines=len(lines),
    )
