"""The analysts' reports over HTTP against a running worker and a real broker: the numbers are
the ones the offline commands compute from the same history topic."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from lifecycle.policy import load_preset
from streams.cli.main import app
from streams.dev.demo import synthetic_events
from streams.settings import Settings
from streams.tools.export import read_history_topic
from streams.web.contracts import CalibrationReport, CohortsReport
from streams.web.reports import calibration_view, cohorts_view
from streams.worker.outputs import to_json
from tests.fixtures.worker import Worker, keyed, publish, wait_for

pytestmark = pytest.mark.integration

EVENTS = 3_000


async def _processed(worker: Worker, count: int) -> None:
    """Until the history topic holds `count` records. The worker's `events_processed` moves
    when a batch is sent, before the broker has acked it: up to a batch (1,000 records) may
    not be readable yet then."""

    async def done() -> bool:
        return len(await _history(worker)) >= count

    await wait_for(done, 120, f"{count} history records")


async def _history(worker: Worker) -> list[Any]:
    prefix = worker.names.events.removesuffix(".leadflow.events")
    return await read_history_topic(Settings(broker=worker.broker.url, topic_prefix=prefix))


def _plain(data: Any) -> Any:
    return orjson.loads(to_json(data))


async def test_reports_match_the_offline_computation_on_the_same_history(workers):
    (w,) = await workers(1)
    events = list(synthetic_events(300, EVENTS, seed=5))
    await publish(w.broker.bootstrap, w.names.events, [keyed(e) for e in events])
    await _processed(w, EVENTS)
    records = await _history(w)
    assert len(records) == EVENTS
    policy = load_preset("default")

    status, calibration = await asyncio.to_thread(w.request, "/reports/calibration", token=None)
    assert status == 200, calibration
    CalibrationReport.model_validate(calibration)
    assert calibration == _plain(calibration_view(records, policy, 30, None))
    assert calibration["data"]["events"] == EVENTS

    status, cohorts = await asyncio.to_thread(
        w.request, "/reports/cohorts?period=week&by=source", token=None
    )
    assert status == 200, cohorts
    CohortsReport.model_validate(cohorts)
    assert cohorts == _plain(cohorts_view(records, policy, "week", "source"))
    assert cohorts["as_reported"]["rows"] == cohorts["restated"]["rows"]  # one policy all along

    # The command line reads the same history topic and prints the same numbers.
    prefix = w.names.events.removesuffix(".leadflow.events")
    args = ["calibrate", "--broker", w.broker.url, "--topic-prefix", prefix, "--format", "json"]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed.pop("out") is None
    assert printed == {k: v for k, v in calibration.items() if k != "proposed_yaml"}

    # And `funnel --cohort` on the topic prints the cohorts /reports/cohorts serves.
    args = ["funnel", "--broker", w.broker.url, "--topic-prefix", prefix, "--cohort", "week"]
    result = await asyncio.to_thread(
        CliRunner().invoke, app, [*args, "--by", "source", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["as_reported"] == cohorts["as_reported"]
    assert printed["restated"] == cohorts["restated"]


async def test_reports_refuse_bad_parameters_with_422(workers):
    (w,) = await workers(1)
    for path in (
        "/reports/calibration?min_mqls=zero",
        "/reports/calibration?maturity=unicorn",
        "/reports/cohorts?period=quarter",
        "/reports/cohorts?by=zodiac",
    ):
        status, body = await asyncio.to_thread(w.request, path, token=None)
        assert status == 422, (path, body)
        assert "error" in body
