"""RDP of the Gaussian mechanism on a subset sampled without replacement (replace-one neighbours).

Wang, Balle, Kasiviswanathan, "Subsampled Renyi Differential Privacy and Analytical Moments
Accountant" (AISTATS 2019), Theorem 27 of arXiv:1808.00087v3: for a mechanism run on a uniformly
random subset of fixed size m out of n (ratio q = m/n) and integer order a >= 2,

    (a - 1) eps'(a) <= log( 1 + sum_{j=2..a} C(a, j) q^j min(4 sqrt(D[2 floor(j/2)] D[2 ceil(j/2)]),
                                                              2 exp((j - 1) eps(j))) )

where eps(j) = j / (2 sigma^2) is the Gaussian's RDP (sigma = noise std / replace-one sensitivity)
and D[l] is the l-th forward difference at 0 of the sequence exp((i - 1) eps(i)), i = 0, 1, ...
(D[l] = E[(L - 1)^l] for the likelihood ratio L, so even differences are >= 0). Fractional orders
interpolate the cumulant (a - 1) eps'(a) linearly between integers (Corollary 10 of the paper).

The forward differences cancel catastrophically in floating point (terms of size exp(l^2 / 2 sigma^2)
sum to something as small as sigma^-l), so they are computed exactly enough with ``mpmath`` at a
precision chosen from those sizes; everything after is in log space. The orders are Opacus' default
grid (1.1 .. 63), and epsilon comes from Opacus' RDP-to-(eps, delta) conversion (Balle et al. 2020),
as for the Poisson accountant.
"""

from __future__ import annotations

import functools
import math
import warnings

import mpmath
import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import get_privacy_spent
from scipy.special import gammaln

ORDERS: tuple[float, ...] = tuple(float(a) for a in RDPAccountant.DEFAULT_ALPHAS)
_INTEGER_ORDERS = tuple(range(2, math.ceil(max(ORDERS)) + 1))
_MAX_EXPONENT = 3000.0
"""Orders whose moments exceed exp(3000) are left out (their RDP is then +inf: still a bound); they
only matter for noise so small that epsilon is huge at every order."""


@functools.lru_cache(maxsize=512)
def _log_moments(sigma: float, q: float) -> dict[int, float]:
    """log A_a = (a - 1) eps'(a) at each integer order a that fits under ``_MAX_EXPONENT``."""
    c = 1.0 / (2.0 * sigma**2)
    fits = [a for a in _INTEGER_ORDERS if a * (a - 1) * c <= _MAX_EXPONENT]
    if not fits:
        return {}
    top = max(fits)
    last = top + top % 2  # the highest (even) difference the terms need
    digits = (last * (last - 1) * c + last * math.log(2) + last / 2 * math.log(max(2 * sigma**2, 1.0))) / math.log(10)
    with mpmath.workdps(int(digits) + 30):
        row = [mpmath.exp(mpmath.mpf(i * (i - 1)) * c) for i in range(last + 1)]
        log_even: dict[int, float] = {}
        for order in range(1, last + 1):  # the difference table, one order at a time
            row = [row[i + 1] - row[i] for i in range(len(row) - 1)]
            if order % 2 == 0:
                log_even[order] = float(mpmath.log(row[0]))
    j = np.arange(2, top + 1)
    lower = np.array([log_even[2 * (k // 2)] for k in j])
    upper = np.array([log_even[2 * ((k + 1) // 2)] for k in j])
    log_terms = np.minimum(math.log(4) + 0.5 * (lower + upper), math.log(2) + j * (j - 1) * c) + j * math.log(q)
    moments = {}
    for a in range(2, top + 1):
        terms = gammaln(a + 1) - gammaln(j[: a - 1] + 1) - gammaln(a - j[: a - 1] + 1) + log_terms[: a - 1]
        moments[a] = float(np.logaddexp(0.0, np.logaddexp.reduce(terms)))
    return moments


def wor_rdp(sigma: float, q: float) -> np.ndarray:
    """RDP of one step at each of ``ORDERS``: Gaussian with noise ``sigma`` (std over the replace-one
    sensitivity) on a fixed-size subset of ratio ``q``."""
    if q <= 0.0:
        return np.zeros(len(ORDERS))
    if q >= 1.0:  # no sampling: the Gaussian mechanism itself
        return np.array([a / (2 * sigma**2) for a in ORDERS])
    moments = _log_moments(float(sigma), float(q))
    out = []
    for a in ORDERS:
        low, high = math.floor(a), math.ceil(a)
        at_low = 0.0 if low == 1 else moments.get(low, math.inf)
        at_high = moments.get(high, math.inf)
        t = a - low
        out.append(((1 - t) * at_low + t * at_high) / (a - 1))
    return np.array(out)


def wor_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at ``delta`` of the composition of ``(sigma, q, steps)`` entries."""
    rdp = sum(steps * wor_rdp(sigma, q) for sigma, q, steps in history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # optimal order at the grid's edge: still a bound
        return float(get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)[0])


def wor_calibrate(target_epsilon: float, delta: float, q: float, steps: int, tolerance: float) -> float:
    """The smallest sigma found by bisection whose epsilon is at most ``target_epsilon`` and within
    ``tolerance`` of it (Opacus' ``get_noise_multiplier`` procedure)."""
    low, high = 0.0, 10.0
    while wor_epsilon([(high, q, steps)], delta) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon} at delta {delta}")
    epsilon = wor_epsilon([(high, q, steps)], delta)
    while target_epsilon - epsilon > tolerance:
        middle = (low + high) / 2
        at_middle = wor_epsilon([(middle, q, steps)], delta)
        if at_middle < target_epsilon:
            high, epsilon = middle, at_middle
        else:
            low = middle
    return high
