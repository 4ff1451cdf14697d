"""A realistic synthetic stream: persons with profiles, mixed sources, journeys and sales feedback.

Deterministic for a seed, so benchmarks, demos and tests see the same data every run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

SOURCES = (
    ("webinar", 14),
    ("event", 8),
    ("tradeshow", 6),
    ("form", 14),
    ("syndication", 10),
    ("paid_search", 16),
    ("organic", 14),
    ("email", 10),
    ("referral", 5),
    ("purchased_list", 3),
)
INDUSTRIES = (
    ("software", 30),
    ("saas", 15),
    ("fintech", 8),
    ("manufacturing", 10),
    ("healthcare", 8),
    ("retail", 8),
    ("education", 6),
    ("government", 3),
    ("hospitality", 6),
    ("media", 6),
)
SENIORITIES = (
    ("c_level", 6),
    ("vp", 10),
    ("director", 14),
    ("manager", 20),
    ("individual", 35),
    ("intern", 5),
    (None, 10),
)
COUNTRIES = (
    ("US", 40),
    ("GB", 12),
    ("DE", 12),
    ("FR", 8),
    ("NL", 5),
    ("BR", 8),
    ("IN", 10),
    ("AU", 5),
)
BROWSE = ("page_viewed", "page_viewed", "page_viewed", "email_clicked", "intent_signal")
INTEREST = (
    "content_download",
    "webinar_registered",
    "webinar_attended",
    "event_visit",
    "form_submitted",
)
HAND_RAISE = ("demo_requested", "contact_sales", "quote_requested", "chat_sales_request")
NOT_A_LEAD = ("linkedin_connection", "appointment_set", "free_trial_started")

#: Share of opened deals won, by the person's main source, for a demo whose conversion
#: differs by lead source as real funnels do (`leadflow dev`); without it every source wins
#: 35 % of its deals and measured differences between sources are noise.
DEMO_WIN_RATES = {
    "referral": 0.70,
    "webinar": 0.45,
    "event": 0.45,
    "tradeshow": 0.35,
    "form": 0.35,
    "paid_search": 0.35,
    "organic": 0.30,
    "email": 0.25,
    "syndication": 0.06,
    "purchased_list": 0.04,
}


def _pick(rng: random.Random, table: tuple[tuple[Any, int], ...]) -> Any:
    values, weights = zip(*table, strict=True)
    return rng.choices(values, weights)[0]


def _profile(rng: random.Random, n: int) -> dict[str, Any]:
    seniority = _pick(rng, SENIORITIES)
    profile: dict[str, Any] = {
        "email": f"person{n}@company{n % 997}.example",
        "company": f"Company {n % 997}",
        "industry": _pick(rng, INDUSTRIES),
        "employees": int(rng.lognormvariate(5, 1.5)) + 1,
        "country": _pick(rng, COUNTRIES),
    }
    if seniority:
        profile["seniority"] = seniority
        profile["job_title"] = f"{seniority.replace('_', ' ').title()} of Operations"
    return profile


def _journey(rng: random.Random, events: int) -> list[tuple[float, str, bool]]:
    """(day offset, event type, is sales feedback) for one person, in time order."""
    steps: list[tuple[float, str, bool]] = []
    day = 0.0
    if rng.random() < 0.25:
        steps.append((day, "newsletter_signup", False))
    while len(steps) < events:
        day += rng.expovariate(1 / 6)
        roll = rng.random()
        if roll < 0.70:
            steps.append((day, rng.choice(BROWSE), False))
        elif roll < 0.86:
            steps.append((day, rng.choice(INTEREST), False))
        elif roll < 0.91:
            steps.append((day, rng.choice(NOT_A_LEAD), False))
        elif roll < 0.97:
            steps.append((day, rng.choice(HAND_RAISE), False))
            if rng.random() < 0.6 and len(steps) < events:
                day += rng.uniform(0.2, 5)
                if rng.random() < 0.7:
                    steps.append((day, "sales_accepted", True))
                    if rng.random() < 0.5 and len(steps) < events:
                        day += rng.uniform(2, 20)
                        steps.append((day, "opportunity_opened", True))
                        if rng.random() < 0.7 and len(steps) < events:
                            day += rng.uniform(10, 60)
                            won = rng.random() < 0.35
                            steps.append((day, "deal_won" if won else "deal_lost", True))
                else:
                    steps.append((day, "sales_rejected", True))
        else:
            day += rng.uniform(60, 150)  # a long silence: inactivity applies on the next event
            steps.append((day, rng.choice(INTEREST), False))
    return steps[:events]


def synthetic_events(
    persons: int = 2_000,
    events: int = 20_000,
    *,
    seed: int = 7,
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    duplicates: float = 0.0,
    unknown_types: float = 0.0,
    end: datetime | None = None,
    win_rates: dict[str, float] | None = None,
) -> Iterator[dict[str, Any]]:
    """Events as JSON-ready dicts in arrival (= occurred_at) order across all persons.

    `duplicates` re-sends that fraction of events with the same event id right after;
    `unknown_types` replaces that fraction with types no schema knows. With `end`, the
    stream is moved so that its last event occurs then (`start` is ignored): `leadflow dev`
    ends it at the time it starts. The events are the same either way, only shifted.
    `win_rates` decides each deal's outcome by the person's main source instead (a separate
    random stream: every other event stays the same).
    """
    rng = random.Random(seed)
    per_person = max(1, events // persons)
    timeline: list[tuple[float, int, int, str]] = []
    offsets = [rng.uniform(0, 120) for _ in range(persons)]
    for n in range(persons):
        count = per_person + (1 if n < events - per_person * persons else 0)
        for step, (day, event_type, _sales) in enumerate(_journey(rng, count)):
            timeline.append((offsets[n] + day, n, step, event_type))
    timeline.sort()
    if end is not None and timeline:
        start = end - timedelta(days=timeline[-1][0])
    sources = [_pick(rng, SOURCES) for _ in range(persons)]
    profiles: dict[int, dict[str, Any]] = {}
    outcomes = random.Random(seed + 1)
    for counter, (day, n, step, event_type) in enumerate(timeline):
        if win_rates is not None and event_type in ("deal_won", "deal_lost"):
            won = outcomes.random() < win_rates.get(sources[n], 0.35)
            event_type = "deal_won" if won else "deal_lost"
        if unknown_types and rng.random() < unknown_types:
            event_type = "survey_completed"
        at = start + timedelta(days=day)
        source = sources[n] if rng.random() < 0.7 else _pick(rng, SOURCES)
        event: dict[str, Any] = {
            "event_id": f"e{counter:08d}",
            "type": event_type,
            "person_id": f"p{n:07d}",
            "occurred_at": at.isoformat(),
            "source": "crm"
            if event_type.startswith(("sales_", "deal_", "opportunity"))
            else source,
        }
        if step == 0 or (n not in profiles and rng.random() < 0.5):
            profiles[n] = profile = profiles.get(n) or _profile(rng, n)
            event["profile"] = profile
        if event_type == "sales_rejected":
            event["reason"] = rng.choice(("no budget", "bad timing", "not a fit"))
        yield event
        if duplicates and rng.random() < duplicates:
            yield event
