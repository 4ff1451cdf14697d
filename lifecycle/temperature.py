"""Lead temperature: hot, warm or cold by the lead source's measured conversion rate."""

from __future__ import annotations

from lifecycle.policy import Policy


def temperature(policy: Policy, lead_source: str | None) -> str | None:
    """None when the policy has no temperature thresholds or the source has no measured rate."""
    rules = policy.temperature
    if rules is None:
        return None
    rate = rules.source_conversion.get(lead_source) if lead_source else None
    if rate is None:
        rate = rules.default_conversion
    if rate is None:
        return None
    if rate >= rules.hot:
        return "hot"
    return "warm" if rate >= rules.warm else "cold"
