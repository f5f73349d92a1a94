"""Repeat-purchase models from purchase histories: BG/NBD, fitted by maximum likelihood.

The BG/NBD model (Fader, Hardie and Lee, "Counting Your Customers the Easy Way", Marketing
Science 2005) says each customer buys at a Poisson rate drawn from a gamma(r, alpha) and, after
each purchase, drops out for good with a probability drawn from a beta(a, b). It needs three
numbers per customer and no labels: ``frequency`` (repeat purchases, days with a purchase after
the first), ``recency`` (time from the first to the last purchase) and ``T`` (time from the first
purchase to the end of the calibration period), all in the same unit.

It is the strong simple baseline for "who buys again": with four parameters for a whole tenant
it ranks customers by their expected purchases in the next ``t``, and on CDNOW it is what the
literature compares against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.special import gammaln, hyp2f1

__all__ = ["BgNbd", "rfm_summary"]


def _arrays(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    x, t_x, t = (np.asarray(a, dtype=np.float64).ravel() for a in (frequency, recency, T))
    if not (len(x) == len(t_x) == len(t)):
        raise ValueError(f"frequency, recency and T differ in length: {len(x)}, {len(t_x)}, {len(t)}")
    if len(x) == 0:
        raise ValueError("no customers to fit")
    if not (np.isfinite(x).all() and np.isfinite(t_x).all() and np.isfinite(t).all()):
        raise ValueError("frequency, recency and T must be finite numbers")
    if (x < 0).any() or (t_x < 0).any() or (t_x > t + 1e-9).any():
        raise ValueError("need frequency >= 0 and 0 <= recency <= T for every customer")
    if ((x == 0) & (t_x > 0)).any():
        raise ValueError("a customer with no repeat purchase has recency 0")
    return x, t_x, t


def _log_likelihood(params: NDArray[np.float64], x: NDArray[np.float64], t_x: NDArray[np.float64],
                    t: NDArray[np.float64]) -> NDArray[np.float64]:
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + t)
    repeat = x > 0
    a4 = np.full_like(x, -np.inf)
    a4[repeat] = (np.log(a) - np.log(b + x[repeat] - 1)
                  - (r + x[repeat]) * np.log(alpha + t_x[repeat]))
    return a1 + a2 + np.logaddexp(a3, a4)  # type: ignore[no-any-return]


@dataclass
class BgNbd:
    """BG/NBD fitted by maximum likelihood (L-BFGS-B on the log-parameters).

    Attributes
    ----------
    r, alpha, a, b : float
        The fitted parameters (NaN before ``fit``).
    log_likelihood_ : float
        Total log-likelihood at the optimum.
    """

    r: float = float("nan")
    alpha: float = float("nan")
    a: float = float("nan")
    b: float = float("nan")
    log_likelihood_: float = float("nan")

    def fit(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> BgNbd:
        """Maximise the likelihood of every customer's (frequency, recency, T).

        Raises
        ------
        ValueError
            For inconsistent inputs, or when the optimiser does not converge.
        """
        x, t_x, t = _arrays(frequency, recency, T)
        if not (x > 0).any():
            raise ValueError("no customer bought twice: the dropout process cannot be fitted")
        scale = float(np.mean(t)) or 1.0

        def negative(log_params: NDArray[np.float64]) -> float:
            params = np.exp(log_params)
            return -float(np.sum(_log_likelihood(params, x, t_x, t))) / len(x)

        start = np.log(np.array([1.0, scale, 1.0, 1.0]))
        result = minimize(negative, start, method="L-BFGS-B",
                          bounds=[(-10.0, 10.0), (-10.0, 15.0), (-10.0, 10.0), (-10.0, 10.0)])
        if not result.success:
            raise ValueError(f"BG/NBD likelihood did not converge: {result.message}")
        self.r, self.alpha, self.a, self.b = (float(v) for v in np.exp(result.x))
        self.log_likelihood_ = -float(result.fun) * len(x)
        return self

    def expected_purchases(self, t: float, frequency: ArrayLike, recency: ArrayLike,
                           T: ArrayLike) -> NDArray[np.float64]:
        """Expected purchases in the next ``t`` of customers with these histories (eq. 10)."""
        if np.isnan(self.r):
            raise ValueError("fit the model first")
        if t <= 0:
            raise ValueError(f"t must be positive, got {t}")
        x, t_x, big_t = _arrays(frequency, recency, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + big_t + t)
        head = (a + b + x - 1) / (a - 1) if a != 1 else np.full_like(x, np.nan)
        ratio = ((alpha + big_t) / (alpha + big_t + t)) ** (r + x)
        numerator = head * (1 - ratio * hyp2f1(r + x, b + x, a + b + x - 1, z))
        alive = np.where(x > 0, a / np.maximum(b + x - 1, 1e-12) * ((alpha + big_t) / (alpha + t_x)) ** (r + x), 0.0)
        return numerator / (1 + alive)  # type: ignore[no-any-return]


def rfm_summary(customer: ArrayLike, when_days: ArrayLike, end_days: float
                ) -> tuple[NDArray[Any], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(customers, frequency, recency, T) from purchase times in days, up to ``end_days``.

    Purchases on the same day count once, as in the BG/NBD literature; purchases after
    ``end_days`` are ignored.
    """
    ids = np.asarray(customer)
    days = np.floor(np.asarray(when_days, dtype=np.float64))
    keep = days <= end_days
    ids, days = ids[keep], days[keep]
    order = np.lexsort((days, ids))
    ids, days = ids[order], days[order]
    distinct = np.ones(len(ids), dtype=bool)
    distinct[1:] = (ids[1:] != ids[:-1]) | (days[1:] != days[:-1])
    ids, days = ids[distinct], days[distinct]
    customers, first_index, counts = np.unique(ids, return_index=True, return_counts=True)
    first = days[first_index]
    last = days[first_index + counts - 1]
    return customers, (counts - 1).astype(np.float64), last - first, end_days - first
