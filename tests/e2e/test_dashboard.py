"""The dashboard in headless Chromium against a real worker fed a demo stream.

Checks that the page shows the same funnel as `GET /funnel`, the recent stage changes once
the token is entered, and a person's timeline and current stage; that it raises no
JavaScript or console errors; and that the browser only ever talks to the worker (the page
must work without internet). Uses Debian's Chromium (`scripts/ensure-chromium`), never a
downloaded browser.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from streams.dev.demo import synthetic_events
from streams.kafka.publish import encode_event, publish
from streams.settings import Settings
from tests.e2e.browser import chromium_page, require_chromium
from tests.fixtures.worker import TOKEN, Worker, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
STAGES = ["subscriber", "lead", "mql", "sql", "opportunity", "customer", "recycled"]


async def get(worker: Worker, path: str, *, token: str | None = TOKEN) -> Any:
    status, body = await asyncio.to_thread(worker.request, path, token=token)
    assert status == 200, (path, status, body)
    return body


async def settled_funnel(worker: Worker, events: int) -> dict[str, Any]:
    """The funnel once the worker processed every event and the change feed stopped moving."""

    async def all_processed() -> bool:
        return (await get(worker, "/healthz", token=None))["events_processed"] >= events

    await wait_for(all_processed, 40, f"the worker to process {events} events")
    last: dict[str, Any] = {"seen": -1, "since": 0.0}
    loop = asyncio.get_running_loop()

    async def stable() -> dict[str, Any] | None:
        funnel = await get(worker, "/funnel", token=None)
        now = loop.time()
        if funnel["changes_seen"] != last["seen"]:
            last.update(seen=funnel["changes_seen"], since=now)
            return None
        return funnel if funnel["changes_seen"] > 0 and now - last["since"] >= 1.5 else None

    return await wait_for(stable, 30, "GET /funnel to show the stream, settled")


@pytest.mark.smoke
async def test_dashboard_shows_funnel_recent_changes_and_a_timeline(
    workers, broker, tmp_path: Path
) -> None:
    require_chromium()
    (worker,) = await workers(1)
    events = [encode_event(e) for e in synthetic_events(300, 3000)]
    sent = await publish(Settings(broker=broker.url), events, topic=worker.names.events)
    assert sent.sent == len(events)
    funnel = await settled_funnel(worker, len(events))

    async with chromium_page(
        tmp_path / "chromium-profile", width=1280, height=900, timeout_ms=10000
    ) as (page, seen):
        # The funnel: open data, shown without a token, the same numbers as GET /funnel.
        await page.goto(worker.url + "/")
        await page.locator("[data-testid=reached-recycled]").wait_for()
        shown = {
            stage: int(await page.locator(f"[data-testid=reached-{stage}]").inner_text())
            for stage in STAGES
        }
        assert set(funnel["reached"]) <= set(STAGES), funnel["reached"]
        assert shown == {s: funnel["reached"].get(s, 0) for s in STAGES}
        assert sum(shown.values()) > 0
        assert await get(worker, "/funnel", token=None) == funnel  # still settled
        assert funnel["policy_version"] in await page.locator("#policy").inner_text()
        assert "enter the API token" in await page.locator("#recent").inner_text()

        # The token: entered once (change event), kept for the session, unlocks persons.
        await page.locator("#token").fill(TOKEN)
        await page.locator("#token").press("Tab")
        await page.locator("#recent .change").first.wait_for()
        recent = await get(worker, "/changes/recent?limit=25")
        assert recent
        assert await page.locator("#recent .who").all_inner_texts() == [
            c["person_id"] for c in recent
        ]
        assert recent[0]["reason"]["text"] in await page.locator("#recent").inner_text()
        stored = await page.evaluate("sessionStorage.getItem('leadflow-token')")
        assert stored == TOKEN

        # A person with stage changes: search, see the timeline with reasons and stage.
        person_id = recent[0]["person_id"]
        person = await get(worker, f"/people/{person_id}")
        history = await get(worker, f"/people/{person_id}/history")
        reasons = [c["reason"]["text"] for r in history["records"] for c in r["changes"]]
        assert reasons, history
        await page.locator("#person").fill(person_id)
        await page.locator("#person").press("Enter")
        current = page.locator("[data-testid=current-stage]")
        await current.wait_for()
        assert await current.inner_text() == person["stage"]
        timeline = page.locator("[data-testid=timeline]")
        entries = timeline.locator(".entry")
        assert await entries.count() == len(history["records"])
        assert await timeline.locator(".entry.moved").count() >= 1
        text = await timeline.inner_text()
        assert all(reason in text for reason in reasons), (reasons, text)

        screenshot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(screenshot), full_page=True)

    (REPO / "test-output").mkdir(exist_ok=True)
    shutil.copyfile(screenshot, REPO / "test-output" / "dashboard.png")

    assert not seen.errors, "\n".join(seen.errors)
    local = worker.url + "/"
    outside = seen.offsite(local)
    assert seen.requests and not outside, f"requests off 127.0.0.1: {outside}"
