"""Empirical lower bounds on epsilon: one-run auditing (Steinke, Nasr, Jagielski, NeurIPS 2023).

``m`` canaries are each inserted into the training data independently with probability 1/2. After
training, the auditor ranks canaries by a score (here: how much training lowered the canary's loss),
guesses "included" for the ``k`` highest and "excluded" for the ``k`` lowest, and abstains on the
rest. Under (epsilon, delta)-DP the number of correct guesses is dominated by Binomial(r,
e^eps / (1 + e^eps)) up to a delta term (their Theorem 3.1 / Proposition 5.7, p-value as in their
Algorithm 2 code); the lower bound is the largest epsilon rejected at the requested confidence.

Departure: when ``guesses`` is not given, several numbers of guesses are tried and the confidence
is Bonferroni-corrected over them (the paper reports the best over a sweep without correcting).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

DEFAULT_GUESS_FRACTIONS = (0.1, 0.2, 0.3, 0.5, 1.0)


def p_value_dp(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[>= v correct out of r guesses] for an (epsilon, delta)-DP mechanism over m canaries."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + np.exp(-epsilon))  # accuracy of epsilon-DP randomised response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if v == 0 or delta == 0:
        return min(1.0, beta)
    # alpha = max_i P[v > Binomial(r, q) >= v - i] / i: what delta can buy per extra correct guess
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, p: float) -> float:
    """The largest epsilon at which ``v`` correct of ``r`` guesses has p-value below ``p``."""
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    if p_value_dp(m, r, v, 0.0, delta) >= p:
        return 0.0
    low, high = 0.0, 1.0
    while p_value_dp(m, r, v, high, delta) < p:
        low, high = high, high * 2
        if high > 1e4:
            return low
    for _ in range(40):  # bisection keeps p_value(low) < p <= p_value(high)
        middle = (low + high) / 2
        if p_value_dp(m, r, v, middle, delta) < p:
            low = middle
        else:
            high = middle
    return low


def audit_one_run(
    scores: torch.Tensor | Sequence[float],
    included: torch.Tensor | Sequence[bool],
    delta: float,
    confidence: float = 0.95,
    guesses: int | None = None,
) -> float:
    """epsilon lower bound from canary ``scores`` (higher = more likely included) and the truth.

    ``guesses``: how many canaries to guess on (half "in" from the top, half "out" from the bottom);
    None tries ``DEFAULT_GUESS_FRACTIONS`` of m, Bonferroni-corrected.
    """
    scores_t = torch.as_tensor(scores, dtype=torch.float64).flatten()
    truth = torch.as_tensor(included, dtype=torch.bool).flatten()
    m = len(scores_t)
    if m != len(truth) or m < 2:
        raise ValueError("need at least two canaries and one inclusion flag per score")
    candidates = [guesses] if guesses is not None else sorted({max(2, round(f * m)) for f in DEFAULT_GUESS_FRACTIONS})
    p = (1.0 - confidence) / len(candidates)
    order = torch.argsort(scores_t, descending=True, stable=True)
    best = 0.0
    for r in candidates:
        positives = (r + 1) // 2
        guessed_in = order[:positives]
        guessed_out = order[m - (r - positives) :]
        correct = int(truth[guessed_in].sum()) + int((~truth[guessed_out]).sum())
        best = max(best, epsilon_lower_bound(m, r, correct, delta, p))
    return best


@dataclass(frozen=True)
class AuditOutcome:
    epsilon_lower: float
    included: torch.Tensor
    scores: torch.Tensor


def audit_with_canaries(
    canaries: list[Any],
    train: Callable[[list[Any]], None],
    canary_losses: Callable[[list[Any]], torch.Tensor],
    delta: float,
    rng: torch.Generator,
    confidence: float = 0.95,
) -> AuditOutcome:
    """End-to-end one-run audit: include each canary with probability 1/2, train once, score each
    canary by its loss decrease, and bound epsilon from below.

    ``train(included_canaries)`` runs the (private) training with those canaries added to the data;
    ``canary_losses(canaries)`` returns each canary's loss under the current model.
    """
    included = torch.rand(len(canaries), generator=rng) < 0.5
    before = canary_losses(canaries).detach().double()
    train([c for c, flag in zip(canaries, included.tolist(), strict=True) if flag])
    scores = before - canary_losses(canaries).detach().double()
    return AuditOutcome(audit_one_run(scores, included, delta, confidence), included, scores)
