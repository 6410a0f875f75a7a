"""Table 4's verdict rule with confidence, and the minimum detectable effect (pure Python + scipy).

A cell pairs, seed by seed, the attack's advantage without the defense (a0_i) and with it (a1_i); the
advantage is the attack's metric minus the level a failed attack reaches (``bench.reporting.table4``). Its
**change** is d_i = a1_i - a0_i (defended - undefended: negative when the defense helps).

Interval: a two-sided 95% paired t-interval over seeds, mean(d) +- t(0.975, n - 1) sd(d) / sqrt(n)
(with 3 seeds t = 4.30, with 5 seeds 2.78). A t-interval rather than a bootstrap over seeds: with 3 to
10 seeds a percentile bootstrap has only a handful of distinct resamples and covers far less than 95%.
Each seed draws its own model, data and membership candidates, so the spread over seeds already holds
the candidates' sampling noise (a row's own bootstrap interval is not added on top).

Verdict (``decide``), with the mitigation threshold m = ``MITIGATION`` x mean(a0) (the defense must
remove at least that share of the undefended advantage), the partial threshold p = ``PARTIAL`` x
mean(a0), and [lo, hi] the change's interval; the first rule that holds decides:
- ``not applicable``: mean(a0) < ``MIN_ADVANTAGE``, or a0's own interval reaches the failure level
  (the attack does not beat it without the defense: nothing to mitigate);
- ``mitigates``: hi < 0 (a real reduction) and mean(d) <= -m (as large as the threshold);
- ``partial``: hi < 0 and mean(d) <= -p (a real reduction, smaller than the threshold);
- ``no effect``: lo > -m (a mitigation of the threshold's size is ruled out; what reduction there is
  cannot be told from zero or is below p);
- ``inconclusive``: otherwise: the interval covers both -m and no change (or a negligible one); one
  paired seed always lands here, having no interval.

Minimum detectable effect (``mde``): the smallest true change a column's test detects with power
``POWER`` at two-sided level ``ALPHA``, from the paired standard deviation sd and n seeds,
(t(1 - ALPHA/2, n - 1) + t(POWER, n - 1)) sd / sqrt(n) (the usual t approximation of the paired
t-test's power).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ALPHA = 0.05
POWER = 0.80
MIN_ADVANTAGE = 0.05
MITIGATION = 0.75
PARTIAL = 0.25
TOLERANCE = 1e-12  # thresholds are inclusive despite rounding (0.1 - 0.4 vs -0.75 * 0.4)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t  # lazily: only reports that build verdicts pay for scipy

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    """Mean of paired values with its two-sided (1 - ALPHA) t-interval (infinite with one value)."""

    mean: float
    sd: float | None
    n: int
    low: float
    high: float


def interval(values: Sequence[float], alpha: float = ALPHA) -> Interval:
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return Interval(mean, None, n, -math.inf, math.inf)
    sd = statistics.stdev(values)
    half = t_quantile(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, sd, n, mean - half, mean + half)


def mde(sd: float | None, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """Minimum detectable effect of a paired t-test on n seeds with paired standard deviation sd."""
    if sd is None or n < 2:
        return None
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def pooled_sd(groups: Iterable[tuple[float, int]]) -> float | None:
    """Pooled standard deviation of groups given as (sd, n): sqrt(sum (n-1) sd^2 / sum (n-1))."""
    groups = [(sd, n) for sd, n in groups if n >= 2]
    df = sum(n - 1 for _, n in groups)
    return math.sqrt(sum((n - 1) * sd * sd for sd, n in groups) / df) if df else None


@dataclass(frozen=True)
class Decision:
    verdict: str
    reduction: float | None
    change: Interval | None
    threshold: float | None
    reason: str


def _fmt(value: float) -> str:
    return f"{value:+.3f}" if math.isfinite(value) else ("+inf" if value > 0 else "-inf")


def decide(without: Sequence[float], with_: Sequence[float]) -> Decision:
    """The verdict from paired advantages without / with the defense (see the module docstring)."""
    if len(without) != len(with_) or not without:
        raise ValueError(f"{len(without)} advantages without the defense for {len(with_)} with it: not paired")
    base = interval(without)
    if base.mean < MIN_ADVANTAGE:
        return Decision("not applicable", None, None, None,
                        f"the attack does not beat its failure level without the defense (advantage {base.mean:+.3f} "
                        f"< {MIN_ADVANTAGE})")
    if base.n >= 2 and base.low <= 0:
        return Decision("not applicable", None, None, None,
                        f"without the defense the attack is not distinguishable from its failure level (advantage "
                        f"{base.mean:+.3f}, 95% interval {_fmt(base.low)}..{_fmt(base.high)})")
    change = interval([b - a for a, b in zip(without, with_)])
    threshold = -MITIGATION * base.mean
    reduction = -change.mean / base.mean
    shown = (f"advantage {base.mean:.3f} -> {base.mean + change.mean:.3f}, change {change.mean:+.3f} "
             f"[{_fmt(change.low)}, {_fmt(change.high)}], threshold {threshold:+.3f}, {change.n} seeds")
    if change.high < 0 and change.mean <= threshold + TOLERANCE:
        label = "mitigates"
    elif change.high < 0 and change.mean <= -PARTIAL * base.mean + TOLERANCE:
        label = "partial"
    elif change.low > threshold + TOLERANCE:
        label = "no effect"
    else:
        label = "inconclusive"
    return Decision(label, reduction, change, threshold, shown)
