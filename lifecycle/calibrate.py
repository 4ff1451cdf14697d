"""Calibrate: the next lead definition from measured conversion by lead source.

The source material categorises leads hot to cold "using your conversion rate by lead
source" and gates "the bottom-performing lead sources". This module measures those rates
(mql→sql, mql→customer with 95 % Wilson intervals), proposes temperature thresholds from
their distribution and gating by the company's maturity, and asks `simulate` what the
switch would have done. Rules, in one place:

- Rates are measured over the MQLs a policy *made* (sales-sourced MQLs are counted apart),
  under the current policy with its source gates lifted, so a source gated today is measured
  too, from the sales outcomes of its hand-raisers.
- A source with fewer than `min_mqls` such MQLs has "insufficient data": it keeps its
  configured rate and its configured gate, and is never newly gated on noise.
- Gating compares intervals, never bare rates (seed: only a source that clearly converts
  worst; growth: every source whose interval lies below the rest; mature: all but the
  best-converting, i.e. those whose interval lies below the best source's).
- Hot / warm thresholds split the measured sources into thirds by mql→customer rate.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from events.inbound import Event
from lifecycle.funnel import FunnelReport, funnel_of
from lifecycle.policy import Policy, policy_changes
from lifecycle.rates import Rate
from lifecycle.replay import replay
from lifecycle.simulate import Simulation, simulate

MATURITIES = ("seed", "growth", "mature")
#: MQLs a source needs before its rate may move its temperature or its gate.
DEFAULT_MIN_MQLS = 30


@dataclass(frozen=True, slots=True)
class DataSource:
    """What a calibration was computed from: count, time range and a hash of the events."""

    events: int
    first: datetime | None
    last: datetime | None
    sha256: str

    @classmethod
    def of(cls, events: Iterable[Event]) -> DataSource:
        digest = hashlib.sha256()
        count, first, last = 0, None, None
        for event in events:
            count += 1
            digest.update(event.model_dump_json(exclude_none=True).encode())
            digest.update(b"\n")
            at = event.occurred_at
            first = at if first is None or at < first else first
            last = at if last is None or at > last else last
        return cls(count, first, last, digest.hexdigest())

    def sentence(self) -> str:
        span = "no events"
        if self.first is not None and self.last is not None:
            span = f"{self.first:%Y-%m-%d %H:%M} to {self.last:%Y-%m-%d %H:%M} UTC"
        return f"{self.events:,} events, {span}, history sha256 {self.sha256[:16]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "first": None if self.first is None else self.first.isoformat(),
            "last": None if self.last is None else self.last.isoformat(),
            "sha256": self.sha256,
        }


@dataclass(slots=True)
class SourceMeasure:
    """One lead source: what it did, what the policy says of it, what the proposal does."""

    source: str
    mqls: int
    sales_sourced: int
    to_sql: Rate
    to_customer: Rate
    enough: bool
    configured: float | None
    configured_temperature: str | None
    measured_temperature: str | None = None
    #: The configured rate lies outside the measured interval and names another band.
    contradicts: bool = False
    gated_now: bool = False
    gated_proposed: bool = False
    why: str = ""
    proposed: float | None = None
    proposed_temperature: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "mqls": self.mqls,
            "sales_sourced_mqls": self.sales_sourced,
            "mql_to_sql": self.to_sql.to_dict(),
            "mql_to_customer": self.to_customer.to_dict(),
            "enough_data": self.enough,
            "configured_conversion": self.configured,
            "configured_temperature": self.configured_temperature,
            "measured_temperature": self.measured_temperature,
            "contradicts": self.contradicts,
            "gated_now": self.gated_now,
            "gated_proposed": self.gated_proposed,
            "gating_reason": self.why,
            "proposed_conversion": self.proposed,
            "proposed_temperature": self.proposed_temperature,
        }


@dataclass(slots=True)
class WhatIf:
    """Switching to the proposal, replayed: MQLs kept, lost and gained per lead source."""

    kept: dict[str, int]
    lost: dict[str, int]
    gained: dict[str, int]
    expected_customers_lost: float
    expected_customers_gained: float
    simulation: Simulation

    def to_dict(self) -> dict[str, Any]:
        sources = sorted(self.kept.keys() | self.lost.keys() | self.gained.keys())
        sim = self.simulation.to_dict(limit=0)
        return {
            "by_source": {
                s: {
                    "kept": self.kept.get(s, 0),
                    "lost": self.lost.get(s, 0),
                    "gained": self.gained.get(s, 0),
                }
                for s in sources
            },
            "mqls_kept": sum(self.kept.values()),
            "mqls_lost": sum(self.lost.values()),
            "mqls_gained": sum(self.gained.values()),
            "expected_customers_lost": round(self.expected_customers_lost, 2),
            "expected_customers_gained": round(self.expected_customers_gained, 2),
            "persons_differing": sim["persons_differing"],
            "funnel_current": sim["funnel_a"],
            "funnel_proposed": sim["funnel_b"],
        }


@dataclass(slots=True)
class Calibration:
    data: DataSource
    policy: Policy
    measured_under: Policy
    maturity: str
    min_mqls: int
    sources: list[SourceMeasure]
    overall: Rate
    proposed: Policy
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    what_if: WhatIf | None = None

    def to_dict(self) -> dict[str, Any]:
        current = self.policy.temperature
        proposed = self.proposed.temperature
        return {
            "data": self.data.to_dict(),
            "policy": {"name": self.policy.name, "version": self.policy.version},
            "measured_under": self.measured_under.version,
            "maturity": self.maturity,
            "min_mqls": self.min_mqls,
            "overall_mql_to_customer": self.overall.to_dict(),
            "sources": [s.to_dict() for s in self.sources],
            "thresholds": {
                "current": None if current is None else {"hot": current.hot, "warm": current.warm},
                "proposed": None
                if proposed is None
                else {"hot": proposed.hot, "warm": proposed.warm},
            },
            "proposed_policy": {
                "name": self.proposed.name,
                "version": self.proposed.version,
                "gated_sources": self.proposed.gated_sources,
                "allowed_sources": self.proposed.allowed_sources,
            },
            "diff": [{"key": k, "before": a, "after": b} for k, a, b in self.changes],
            "what_if": None if self.what_if is None else self.what_if.to_dict(),
        }


# --- the rules ------------------------------------------------------------------------------


def maturity_of(policy: Policy, chosen: str | None = None) -> str:
    """The maturity whose gating applies: chosen, else the preset name, else growth."""
    if chosen is not None:
        if chosen not in MATURITIES:
            raise ValueError(f"maturity {chosen!r}: choose one of {', '.join(MATURITIES)}")
        return chosen
    return policy.name if policy.name in MATURITIES else "growth"


def ungated(policy: Policy) -> Policy:
    """The policy with its source gates lifted: every source's hand-raisers can be measured."""
    data = policy.model_dump(mode="json")
    data["gated_sources"], data["allowed_sources"] = [], None
    data["name"] = f"{policy.name} (ungated)"
    return Policy.model_validate(data)


def is_gated(policy: Policy, source: str) -> bool:
    compiled = policy.compiled
    name = source.lower()
    if compiled.allowed is not None and name not in compiled.allowed:
        return True
    return name in compiled.gated


def band(rate: float | None, hot: float, warm: float) -> str | None:
    if rate is None:
        return None
    if rate >= hot:
        return "hot"
    return "warm" if rate >= warm else "cold"


def measure(report: FunnelReport, policy: Policy, min_mqls: int) -> list[SourceMeasure]:
    """Per lead source, from a funnel of the ungated policy; sorted by mql→customer rate."""
    temp = policy.temperature
    configured = dict(temp.source_conversion) if temp else {}
    names = set(report.conversion_by_source) | set(configured)
    names |= set(policy.gated_sources) | set(policy.allowed_sources or [])
    measures = []
    for source in names:
        steps = report.conversion_by_source.get(source, {})
        sql = steps.get("mql->sql", {"from": 0, "to": 0})
        won = steps.get("mql->customer", {"from": 0, "to": 0})
        rate = configured.get(source, temp.default_conversion if temp else None)
        m = SourceMeasure(
            source=source,
            mqls=won["from"],
            sales_sourced=report.sales_sourced_by_source.get(source, 0),
            to_sql=Rate(sql["to"], sql["from"]),
            to_customer=Rate(won["to"], won["from"]),
            enough=won["from"] >= min_mqls,
            configured=rate,
            configured_temperature=None if temp is None else band(rate, temp.hot, temp.warm),
            gated_now=is_gated(policy, source),
        )
        if temp is not None and m.enough:
            m.measured_temperature = band(m.to_customer.rate, temp.hot, temp.warm)
            outside = rate is not None and not m.to_customer.low <= rate <= m.to_customer.high
            m.contradicts = outside and m.measured_temperature != m.configured_temperature
        measures.append(m)
    measures.sort(key=lambda m: (-(m.to_customer.rate or 0.0), -m.mqls, m.source))
    return measures


def _floor4(value: float) -> float:
    return math.floor(value * 10_000) / 10_000


def thresholds(measures: Sequence[SourceMeasure], policy: Policy) -> tuple[float, float] | None:
    """Hot and warm thresholds: the measured sources split into thirds by mql→customer rate.

    Floored to 4 decimals so each source stays in its third. With fewer than three measured
    sources there is no distribution to split: the policy's thresholds stay (None if none).
    """
    rates = sorted(
        (m.to_customer.rate for m in measures if m.enough and m.to_customer.rate is not None),
        reverse=True,
    )
    if len(rates) < 3:
        temp = policy.temperature
        return None if temp is None else (temp.hot, temp.warm)
    third = max(1, round(len(rates) / 3))
    hot = _floor4(rates[third - 1])
    warm = _floor4(rates[min(2 * third - 1, len(rates) - 1)])
    return hot, min(warm, hot)


def gate(measures: Sequence[SourceMeasure], maturity: str) -> None:
    """Set `gated_proposed` and `why` on every source, by the maturity's rule."""
    measured = [m for m in measures if m.enough]
    for m in measures:
        if not m.enough:  # never gated on noise; a gate set by hand stays until data says
            kept = "gated" if m.gated_now else "not gated"
            m.gated_proposed, m.why = m.gated_now, f"insufficient data ({m.mqls} MQLs): {kept}"
            m.why += " as configured" if m.gated_now else ""
    if not measured:
        return

    def rest(of: SourceMeasure) -> Rate:
        total = Rate(0, 0)
        for other in measured:
            if other is not of:
                total = total + other.to_customer
        return total

    if maturity == "mature":
        best = max(measured, key=lambda m: (m.to_customer.rate or 0.0, m.mqls))
        for m in measured:
            below = m.to_customer.below(best.to_customer)
            m.gated_proposed = below
            m.why = (
                f"converts below the best source ({best.source})"
                if below
                else ("the best-converting source" if m is best else f"not below {best.source}")
            )
        return
    worst = min(measured, key=lambda m: (m.to_customer.rate or 0.0, -m.mqls))
    candidates = measured if maturity == "growth" else [worst]
    for m in measured:
        m.gated_proposed, m.why = False, "not clearly below the other sources"
    for m in candidates:
        if len(measured) > 1 and m.to_customer.below(rest(m)):
            m.gated_proposed = True
            m.why = (
                "converts below the rest"
                if maturity == "growth"
                else "clearly converts worst (interval below the rest)"
            )


def propose(
    policy: Policy,
    measures: Sequence[SourceMeasure],
    overall: Rate,
    maturity: str,
) -> Policy:
    """The proposed policy: measured rates, new thresholds, the maturity's gating."""
    body = policy.model_dump(mode="json")
    temp = policy.temperature
    conversion = dict(temp.source_conversion) if temp else {}
    for m in measures:
        if m.enough and m.to_customer.rate is not None:
            conversion[m.source] = round(m.to_customer.rate, 4)
    split = thresholds(measures, policy)
    default = (
        round(overall.rate, 4)
        if overall.rate is not None
        else (temp.default_conversion if temp else None)
    )
    if split is not None:
        hot, warm = split
        body["temperature"] = {
            "hot": hot,
            "warm": warm,
            "default_conversion": default,
            "source_conversion": dict(sorted(conversion.items(), key=lambda kv: -kv[1])),
        }
        for m in measures:
            m.proposed = conversion.get(m.source, default)
            m.proposed_temperature = band(m.proposed, hot, warm)
    gated = sorted(m.source for m in measures if m.gated_proposed)
    if maturity == "mature":
        body["allowed_sources"] = sorted(m.source for m in measures if not m.gated_proposed)
        body["gated_sources"] = []
    else:
        body["gated_sources"] = gated  # every gated source today is measured (or insufficient)
        body["allowed_sources"] = None
    return Policy.model_validate(body)


def what_if(
    events: Iterable[Event],
    current: Policy,
    proposed: Policy,
    measures: Sequence[SourceMeasure],
    overall: Rate,
) -> WhatIf:
    """Replay both policies (`simulate`) and price the MQLs lost and gained per source."""
    sim = simulate(events, current, proposed)
    rates = {
        m.source: m.to_customer.rate
        for m in measures
        if m.enough and m.to_customer.rate is not None
    }
    fallback = overall.rate or 0.0
    kept: Counter[str] = Counter()
    lost: Counter[str] = Counter()
    gained: Counter[str] = Counter()
    for person, source in sim.mqls_a.items():
        (kept if person in sim.mqls_b else lost)[source] += 1
    for person, source in sim.mqls_b.items():
        if person not in sim.mqls_a:
            gained[source] += 1
    return WhatIf(
        dict(kept),
        dict(lost),
        dict(gained),
        sum(n * rates.get(s, fallback) for s, n in lost.items()),
        sum(n * rates.get(s, fallback) for s, n in gained.items()),
        sim,
    )


def calibrate(
    events: Sequence[Event],
    policy: Policy,
    *,
    min_mqls: int = DEFAULT_MIN_MQLS,
    maturity: str | None = None,
) -> Calibration:
    """Measure, propose and price the switch, from `events` in history order."""
    if min_mqls < 1:
        raise ValueError("min_mqls must be at least 1")
    chosen = maturity_of(policy, maturity)
    data = DataSource.of(events)
    basis = ungated(policy)
    report = funnel_of(replay(events, basis))
    measures = measure(report, policy, min_mqls)
    steps = report.conversion["mql->customer"]
    overall = Rate(steps["to"], steps["from"])
    gate(measures, chosen)
    proposed = propose(policy, measures, overall, chosen)
    result = Calibration(data, policy, basis, chosen, min_mqls, measures, overall, proposed)
    result.changes = policy_changes(policy, proposed)
    result.what_if = what_if(events, policy, proposed, measures, overall)
    return result


def proposal_yaml(result: Calibration) -> str:
    """The proposed policy file, headed by a comment naming the data it came from."""
    header = [
        f"# Proposed by `leadflow calibrate` from {result.data.events:,} events",
        f"# ({result.data.first:%Y-%m-%dT%H:%M:%SZ} to {result.data.last:%Y-%m-%dT%H:%M:%SZ}),"
        if result.data.first and result.data.last
        else "# (no events),",
        f"# history sha256 {result.data.sha256}.",
        f"# Measured under {result.policy.name} ({result.policy.version}) with source gates "
        f"lifted; maturity {result.maturity}; at least {result.min_mqls} MQLs per source.",
        f"# Review: leadflow policy diff <current> <this file>; version {result.proposed.version}.",
    ]
    return "\n".join(header) + "\n" + result.proposed.to_yaml()
