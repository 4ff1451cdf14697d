"""Prometheus metrics of the worker: what it processed, what it rejected, how far behind it is.

Labels never carry personal data or unbounded values: event types outside the known set are
counted as `other`, so a producer inventing types cannot blow up the series count.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from events.inbound import KNOWN_TYPES

EVENTS = Counter(
    "leadflow_events_processed_total",
    "Inbound events decided by the worker (duplicates included), by event type.",
    ["type"],
)
STAGE_CHANGES = Counter(
    "leadflow_stage_changes_total",
    "Stage changes published (first emissions, not re-emissions of duplicates), by stage.",
    ["to_stage"],
)
DEAD_LETTERS = Counter(
    "leadflow_dead_letters_total",
    "Inbound messages rejected to the dead-letter topic.",
)
DUPLICATES = Counter(
    "leadflow_duplicates_total",
    "Redelivered event ids: their changes were re-emitted, nothing was re-decided.",
)
DECIDE_SECONDS = Histogram(
    "leadflow_decide_seconds",
    "Time spent in decide() for one event.",
    buckets=(5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2),
)
CONSUMER_LAG = Gauge(
    "leadflow_consumer_lag",
    "Records on the events topic not yet processed by this worker, per owned partition.",
    ["partition"],
)
REBUILT = Counter(
    "leadflow_persons_rebuilt_total",
    "Persons whose table state was rebuilt from the history topic at partition assignment.",
)
SWEEPS = Counter(
    "leadflow_sweeps_total",
    "Sweeps the sweeper finished, with or without deadlines to publish (tests wait on it).",
)
TIMEOUTS_PUBLISHED = Counter(
    "leadflow_inactivity_ticks_total",
    "inactivity_timeout events published by the sweeper.",
)


def type_label(event_type: str) -> str:
    return event_type if event_type in KNOWN_TYPES else "other"


def count_batch(types: Mapping[str, int], stages: Mapping[str, int], duplicates: int) -> None:
    """Add one batch's counts (one call per label instead of one per event)."""
    for event_type, n in types.items():
        EVENTS.labels(type_label(event_type)).inc(n)
    for stage, n in stages.items():
        STAGE_CHANGES.labels(stage).inc(n)
    if duplicates:
        DUPLICATES.inc(duplicates)


def render() -> tuple[bytes, str]:
    """The text exposition of every registered metric and its content type."""
    # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 anyway.
    return generate_latest(), CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"
