"""The HTTP API's response shapes (the API tests validate real responses against them) and its
limits, as pydantic models; `streams.web.documents` turns them and the messages into the
published OpenAPI, AsyncAPI and JSON Schema documents."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from events.outbound import (
    Reason,
    SlaBreached,
    StageChanged,
)

#: `GET /changes/recent?limit=`: the default and the most (the API reads them from here).
RECENT_DEFAULT, RECENT_MAX = 50, 200
#: `GET /reports/calibration?min_mqls=`: the most.
MAX_MIN_MQLS = 1_000_000_000

# --- HTTP response shapes (the API tests validate real responses against these) -------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PersonView(_Response):
    person_id: str
    stage: str | None
    highest: str | None
    entered_at: dict[str, datetime]
    time_in_stage_days: float | None
    lead_source: str | None
    first_touch_source: str | None
    last_touch_source: str | None
    touches: int
    temperature: str | None
    last_reason: Reason | None
    last_activity: datetime | None
    score: float
    sequence: int
    sla_breached: list[str]
    erased: bool
    profile: dict[str, Any]
    aliases: list[str] = Field(default=[], description="ids merged into this person")
    policy_version: str


class AliasView(_Response):
    """An id merged into another (`person_merged`): its lifecycle continues as the survivor's."""

    person_id: str
    merged_into: str = Field(description="the survivor this id was merged into")
    survivor: str = Field(description="the survivor's path: /people/{merged_into}")
    sequence: int
    policy_version: str


class TimelineEvent(_Response):
    event_id: str
    type: str
    occurred_at: datetime
    source: str | None
    campaign: str | None


class TimelineEntry(_Response):
    sequence: int
    policy_version: str
    event: TimelineEvent
    changes: list[StageChanged]
    sla_breaches: list[SlaBreached]
    note: Reason | None


class PersonHistory(_Response):
    person_id: str
    as_of: datetime | None
    records: list[TimelineEntry]
    state: PersonView | AliasView | None = None


class FunnelView(_Response):
    policy_version: str
    policy_name: str
    shadow: bool
    topic: str
    changes_seen: int
    persons: int
    reached: dict[str, int]
    entered: dict[str, int]
    sales_sourced: dict[str, int]
    current: dict[str, int]
    highest: dict[str, int]
    conversion: dict[str, dict[str, Any]]
    conversion_reached: dict[str, dict[str, Any]]
    conversion_by_source: dict[str, dict[str, dict[str, Any]]]
    sales_sourced_by_source: dict[str, int]
    conversion_by_first_touch: dict[str, dict[str, dict[str, Any]]]
    conversion_by_last_touch: dict[str, dict[str, dict[str, Any]]]
    conversion_by_touches: dict[str, dict[str, dict[str, Any]]]
    median_days: dict[str, float | None]
    temperature_by_source: dict[str, str | None]


class RateView(_Response):
    """hits of base, the rate and its 95 % Wilson interval."""

    hits: int
    base: int
    rate: float | None
    low: float
    high: float


class SourceCalibration(_Response):
    source: str
    mqls: int
    sales_sourced_mqls: int
    mql_to_sql: RateView
    mql_to_customer: RateView
    enough_data: bool
    configured_conversion: float | None
    configured_temperature: str | None
    measured_temperature: str | None
    contradicts: bool
    gated_now: bool
    gated_proposed: bool
    gating_reason: str
    proposed_conversion: float | None
    proposed_temperature: str | None


class CalibrationReport(_Response):
    """`leadflow calibrate --format json`, plus the proposed policy file."""

    data: dict[str, Any]
    policy: dict[str, str]
    measured_under: str
    maturity: str
    min_mqls: int
    overall_mql_to_customer: RateView
    sources: list[SourceCalibration]
    thresholds: dict[str, dict[str, float] | None]
    proposed_policy: dict[str, Any]
    diff: list[dict[str, Any]]
    what_if: dict[str, Any] | None
    proposed_yaml: str


class CohortRow(_Response):
    cohort: str
    group: str
    stage: str
    entered: int
    sales_sourced: int
    entered_under: dict[str, int]
    next_stage: str
    to_next: RateView
    to_customer: RateView
    days_in_stage: dict[str, float | int | None]


class Cohorts(_Response):
    period: str
    by: str | None
    policy_versions: dict[str, int]
    rows: list[CohortRow]


class CohortsReport(_Response):
    """`leadflow funnel --cohort … --format json`, plus time in stage for both views."""

    history_records: int
    restated_under: dict[str, str]
    as_reported: Cohorts
    restated: Cohorts
    time_in_stage: dict[str, dict[str, dict[str, float | int | None]]]


class PolicyRow(_Response):
    version: str
    name: str
    role: str
    description: str


class Accepted(_Response):
    event_id: str
    status: str


class Problem(BaseModel):
    error: str
