"""Lift of a variant against the holdout: a difference of proportions with its interval."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["Lift", "wilson_interval", "difference_interval"]

_Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when n is 0."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Lift:
    """Conversion rate of a variant minus the holdout's, with a 95% Newcombe interval."""

    variant: str
    n: int
    converted: int
    rate: float
    holdout_n: int
    holdout_converted: int
    holdout_rate: float
    lift: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float | int | str]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def difference_interval(
    variant: str, converted: int, n: int, holdout_converted: int, holdout_n: int,
    z: float = _Z95,
) -> Lift:
    """Newcombe's hybrid score interval (method 10) for p_variant - p_holdout.

    Unlike the plain Wald interval it keeps its coverage when rates are near 0 or groups small.
    """
    p1 = converted / n if n else 0.0
    p2 = holdout_converted / holdout_n if holdout_n else 0.0
    l1, u1 = wilson_interval(converted, n, z)
    l2, u2 = wilson_interval(holdout_converted, holdout_n, z)
    delta = p1 - p2
    low = delta - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = delta + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Lift(variant, n, converted, p1, holdout_n, holdout_converted, p2, delta, low, high)
