"""Conversion rates with their uncertainty: Wilson score intervals.

A rate measured on 12 MQLs says little; the Wilson interval (Wilson 1927) says how little,
and unlike the normal approximation it stays inside [0, 1] and behaves at 0 and n hits.
Calibration compares intervals, never bare rates, so noise does not gate a source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: The two-sided 95 % normal quantile.
Z95 = 1.959963984540054


def wilson(hits: int, base: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of `hits` successes in `base` trials; (0, 1) when base is 0."""
    if base < 0 or not 0 <= hits <= base:
        raise ValueError(f"hits must be between 0 and base (got {hits} of {base})")
    if base == 0:
        return 0.0, 1.0
    p = hits / base
    z2 = z * z
    centre = (p + z2 / (2 * base)) / (1 + z2 / base)
    half = z * math.sqrt(p * (1 - p) / base + z2 / (4 * base * base)) / (1 + z2 / base)
    low = 0.0 if hits == 0 else max(0.0, centre - half)
    high = 1.0 if hits == base else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True, slots=True)
class Rate:
    """`hits` of `base`, the rate and its 95 % Wilson interval."""

    hits: int
    base: int

    @property
    def rate(self) -> float | None:
        return self.hits / self.base if self.base else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.hits, self.base)

    @property
    def low(self) -> float:
        return self.interval[0]

    @property
    def high(self) -> float:
        return self.interval[1]

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.hits + other.hits, self.base + other.base)

    def below(self, other: Rate) -> bool:
        """This interval lies wholly below the other's: clearly lower, not noise."""
        return self.base > 0 and other.base > 0 and self.high < other.low

    def to_dict(self) -> dict[str, Any]:
        rate = self.rate
        low, high = self.interval
        return {
            "hits": self.hits,
            "base": self.base,
            "rate": None if rate is None else round(rate, 4),
            "low": round(low, 4),
            "high": round(high, 4),
        }
