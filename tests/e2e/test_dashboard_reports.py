"""The dashboard's definition-from-data views in headless Chromium against a real worker:
measured vs configured conversion with contradicted labels flagged, the calibration proposal
and its what-if, the MQL cohort chart and time in stage drawn as inline SVG. Every number
shown is the one `GET /reports/…` returns; the page raises no console error, talks only to
the worker, and signs in from the link `leadflow dev` prints (`#token=…`)."""

from __future__ import annotations

import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from streams.dev.demo import synthetic_events
from streams.kafka.publish import encode_event, publish
from streams.settings import Settings
from streams.tools.export import read_history_topic
from tests.e2e.browser import chromium_page, require_chromium
from tests.e2e.test_dashboard import REPO, get
from tests.fixtures.core import T0, fit_profile
from tests.fixtures.worker import TOKEN, Worker, wait_for

pytestmark = pytest.mark.e2e

EVENTS = 3_000
#: Hand-raisers from referral who never buy: enough MQLs (the default minimum is 30) that the
#: default policy's 15 % "hot" label for referral is contradicted and the warning must show.
REFERRED = 40


def slug(source: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", source)


async def settled_history(worker: Worker, settings: Settings) -> None:
    total = EVENTS + REFERRED

    async def processed() -> bool:
        return (await get(worker, "/healthz", token=None))["events_processed"] >= total

    await wait_for(processed, 60, f"the worker to process {total} events")

    async def in_history() -> bool:
        return len(await read_history_topic(settings)) >= total

    await wait_for(in_history, 30, "every history record on the broker")


async def test_dashboard_shows_measured_conversion_proposal_cohorts_and_time_in_stage(
    workers, broker, tmp_path: Path
) -> None:
    require_chromium()
    (worker,) = await workers(1)
    prefix = worker.names.events.removesuffix(".leadflow.events")
    settings = Settings(broker=broker.url, topic_prefix=prefix)
    events = [encode_event(e) for e in synthetic_events(300, EVENTS, seed=5)]
    events += [encode_event(e) for e in _referred_who_never_buy()]
    assert (await publish(settings, events, topic=worker.names.events)).sent == len(events)
    await settled_history(worker, settings)
    calibration: dict[str, Any] = await get(worker, "/reports/calibration", token=None)
    cohorts: dict[str, Any] = await get(worker, "/reports/cohorts?period=month", token=None)
    assert calibration["data"]["events"] == len(events)
    contradicted = [s["source"] for s in calibration["sources"] if s["contradicts"]]
    assert contradicted == ["referral"], contradicted  # the warning below is exercised

    async with chromium_page(
        tmp_path / "chromium-profile", width=1400, height=1000, timeout_ms=15000
    ) as (page, seen):
        # The link `leadflow dev` prints signs in, then leaves the address bar clean.
        await page.goto(f"{worker.url}/#token={TOKEN}")
        await page.locator("#recent .change").first.wait_for()
        assert await page.evaluate("sessionStorage.getItem('leadflow-token')") == TOKEN
        assert "token" not in page.url

        # Measured vs configured, per lead source, the same numbers as the report.
        await page.locator("#measured table").wait_for()
        for source in calibration["sources"]:
            key = slug(source["source"])
            measured = page.locator(f"[data-testid=measured-{key}]")
            rate = source["mql_to_customer"]["rate"]
            assert await measured.get_attribute("data-value") == _js(rate)
            mqls = await page.locator(f"[data-testid=mqls-{key}]").inner_text()
            assert int(mqls) == source["mqls"]
            configured = page.locator(f"[data-testid=configured-{key}]")
            assert await configured.get_attribute("data-value") == _js(
                source["configured_conversion"]
            )
            flag = page.locator(f"[data-testid=contradicts-{key}]")
            assert await flag.count() == (1 if source["contradicts"] else 0), source
            if source["contradicts"]:
                assert await flag.is_visible()
                assert "contradicts" in await flag.inner_text()

        # The proposal and its what-if.
        what_if = calibration["what_if"]
        for name in ("kept", "lost", "gained"):
            shown = await page.locator(f"[data-testid=whatif-{name}]").inner_text()
            assert int(shown) == what_if[f"mqls_{name}"]
        lost = await page.locator("[data-testid=whatif-customers-lost]").inner_text()
        assert float(lost) == what_if["expected_customers_lost"]
        version = await page.locator("[data-testid=proposed-version]").inner_text()
        assert version == calibration["proposed_policy"]["version"]

        # The cohort chart and time in stage: inline SVG, one bar per number.
        await page.locator("#cohorts svg").wait_for()
        mql_rows = [r for r in cohorts["as_reported"]["rows"] if r["stage"] == "mql"]
        assert mql_rows
        for row in mql_rows:
            bar = page.locator(f"[data-testid=cohort-{row['cohort']}-reported]")
            if row["to_next"]["rate"] is None:
                assert await bar.count() == 0
            else:
                assert await bar.get_attribute("data-value") == _js(row["to_next"]["rate"])
        for stage, days in cohorts["time_in_stage"]["as_reported"].items():
            for q in ("p50", "p90"):
                bar = page.locator(f"[data-testid=tis-{stage}-{q}]")
                if days[q] is None:
                    assert await bar.count() == 0
                else:
                    assert await bar.get_attribute("data-value") == _js(days[q])

        # Every label of the two charts is drawn inside its SVG ("opportunity", not "opportunit").
        clipped = await page.evaluate(
            """() => [...document.querySelectorAll('#cohorts svg, #time-in-stage svg')]
                .flatMap((svg) => {
                  const box = svg.getBoundingClientRect();
                  return [...svg.querySelectorAll('text')].filter((t) => {
                    const r = t.getBoundingClientRect();
                    return r.bottom > box.bottom + 0.5 || r.right > box.right + 0.5;
                  }).map((t) => t.textContent);
                })"""
        )
        assert clipped == [], f"chart labels cut off: {clipped}"

        screenshot = tmp_path / "dashboard-reports.png"
        await page.screenshot(path=str(screenshot), full_page=True)

    (REPO / "test-output").mkdir(exist_ok=True)
    shutil.copyfile(screenshot, REPO / "test-output" / "dashboard-reports.png")

    assert not seen.errors, "\n".join(seen.errors)
    local = worker.url + "/"
    outside = seen.offsite(local)
    assert seen.requests and not outside, f"requests off 127.0.0.1: {outside}"


def _referred_who_never_buy() -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"referred-{n:02d}",
            "type": "demo_requested",
            "person_id": f"referred-{n:02d}",
            "occurred_at": (T0 + timedelta(days=n)).isoformat(),
            "source": "referral",
            "profile": fit_profile(email=f"referred{n}@acme.example"),
        }
        for n in range(REFERRED)
    ]


def _js(value: float | None) -> str:
    """How the page's template literal writes a number (`${0.05}` → "0.05", null → "null")."""
    if value is None:
        return "null"
    return repr(int(value)) if float(value).is_integer() else repr(value)
