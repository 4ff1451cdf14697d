"""The analysts' reports over HTTP: calibration and cohort funnels, as JSON.

Open like `/funnel`: aggregates only, never a person. Each report reads the whole history
topic (every partition, to its end as of the request) and runs the pure core on it in a
thread, so the worker's event loop keeps serving; a result is reused for `CACHE_SECONDS`.

- `GET /reports/calibration?min_mqls=30&maturity=growth` — `lifecycle.calibrate`: measured
  vs configured conversion per lead source, the proposed policy, its diff and what-if.
- `GET /reports/cohorts?period=month&by=source` — `lifecycle.cohorts`: as reported (the
  recorded changes) and restated (re-decided under this worker's policy), time in stage.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View

from lifecycle.calibrate import DEFAULT_MIN_MQLS, MATURITIES, calibrate, proposal_yaml
from lifecycle.cohorts import GROUPS, PERIODS, cohorts, time_in_stage
from lifecycle.replay import replay
from streams.tools.export import read_history_topic
from streams.web.contracts import MAX_MIN_MQLS
from streams.web.responses import json_response, problem_response

if TYPE_CHECKING:
    from streams.worker.app import LeadflowApp

CACHE_SECONDS = 30.0


class Reports:
    """The history snapshot the reports share, and their cached results."""

    def __init__(self, app: LeadflowApp) -> None:
        self.app = app
        self._history: tuple[float, list[Any]] | None = None
        self._results: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._lock = asyncio.Lock()

    async def history(self) -> list[Any]:
        async with self._lock:
            now = time.monotonic()
            if self._history is None or now - self._history[0] > CACHE_SECONDS:
                self._history = (now, await read_history_topic(self.app.settings))
            return self._history[1]

    async def cached(self, key: tuple[Any, ...], compute: Any) -> Any:
        hit = self._results.get(key)
        if hit is not None and time.monotonic() - hit[0] <= CACHE_SECONDS:
            return hit[1]
        records = await self.history()
        value = await asyncio.to_thread(compute, records)
        self._results[key] = (time.monotonic(), value)
        return value


def calibration_view(records: list[Any], policy: Any, min_mqls: int, maturity: str | None) -> Any:
    events = [r.event for r in records]
    result = calibrate(events, policy, min_mqls=min_mqls, maturity=maturity)
    return {**result.to_dict(), "proposed_yaml": proposal_yaml(result)}


def cohorts_view(records: list[Any], policy: Any, period: str, by: str | None) -> Any:
    recorded = [c for r in records for c in r.changes]
    decided = [
        c for d in replay((r.event for r in records), policy) if not d.duplicate for c in d.changes
    ]
    return {
        "history_records": len(records),
        "restated_under": {"name": policy.name, "version": policy.version},
        "as_reported": cohorts(recorded, period, by).to_dict(),
        "restated": cohorts(decided, period, by).to_dict(),
        "time_in_stage": {
            "as_reported": time_in_stage(recorded),
            "restated": time_in_stage(decided),
        },
    }


def install_reports(app: LeadflowApp) -> Reports:
    """Hang `/reports/…` on `app`."""
    reports = Reports(app)
    policy = app.policy

    def problem(view: View, message: str) -> Response:
        return problem_response(view, 422, message)

    @app.page("/reports/calibration")
    class Calibration(View):
        async def get(self, request: Request) -> Response:
            try:
                min_mqls = int(request.query.get("min_mqls", DEFAULT_MIN_MQLS))
            except ValueError:
                return problem(self, "min_mqls must be a number")
            maturity = request.query.get("maturity")
            if not 1 <= min_mqls <= MAX_MIN_MQLS:  # larger ints cannot even be written as JSON
                return problem(self, f"min_mqls must be from 1 to {MAX_MIN_MQLS}")
            if maturity is not None and maturity not in MATURITIES:
                return problem(self, f"maturity is one of {', '.join(MATURITIES)}")
            data = await reports.cached(
                ("calibration", min_mqls, maturity),
                lambda records: calibration_view(records, policy, min_mqls, maturity),
            )
            return json_response(self, data)

    @app.page("/reports/cohorts")
    class Cohorts(View):
        async def get(self, request: Request) -> Response:
            period = request.query.get("period", "month")
            by = request.query.get("by")
            if period not in PERIODS:
                return problem(self, f"period is one of {', '.join(PERIODS)}")
            if by is not None and by not in GROUPS:
                return problem(self, f"by is one of {', '.join(GROUPS)}")
            data = await reports.cached(
                ("cohorts", period, by), lambda records: cohorts_view(records, policy, period, by)
            )
            return json_response(self, data)

    del Calibration, Cohorts
    return reports
