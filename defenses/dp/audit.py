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
from typing import TypeVar

import numpy as np
import torch
from scipy import stats

from bench.api.vocabulary import Record
from bench.client.training import LocalJob

Canary = TypeVar("Canary")
"""Whatever a canary is to the caller's ``train`` and ``canary_losses`` (a record, an example index)."""

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
    canaries: list[Canary],
    train: Callable[[list[Canary]], None],
    canary_losses: Callable[[list[Canary]], torch.Tensor],
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


# --- the audit inside a federated run (dp-local's ``audit_canaries``) --------------------------------

def random_text(vocabulary: list[str], rng: torch.Generator, words: int = 8) -> str:
    """Words of the client's own vocabulary in a random order: cheap to tokenise, yet a sequence no
    record contains, so only training on it lowers its loss much."""
    picks = torch.randint(0, len(vocabulary), (words,), generator=rng).tolist()
    return " ".join(vocabulary[i] for i in picks)


def make_canaries(template: Record, labels: list[int], vocabulary: list[str], m: int,
                  rng: torch.Generator) -> list[Record]:
    """``m`` records shaped like ``template`` (the task's fields) with random text and random labels."""
    canaries = []
    for _ in range(m):
        canary: Record = {}
        for key, value in template.items():
            if isinstance(value, str):
                canary[key] = random_text(vocabulary, rng)
            elif key == "label" and labels:
                canary[key] = labels[int(torch.randint(0, len(labels), (1,), generator=rng))]
            else:
                canary[key] = value
        canaries.append(canary)
    return canaries


class ClientAudit:
    """One-run audit of one client's record-level guarantee inside the federation.

    On the client's first job, ``m`` canaries are made and each is included with probability 1/2;
    every job of that client trains on its records plus the included canaries (so the accountant
    charges the sampling rate actually used). A canary's score is its loss before the client's first
    job minus its loss on the client's model after its last job: that model is the global model it
    started from (other clients' data, independent of the canaries) plus its own DP-SGD output, so
    the audit is post-processing of what the DP guarantee covers. The score is the relative loss
    decrease, 1 - after / before.
    """

    def __init__(self, canaries: int, seed: int):
        self.m = canaries
        self.rng = torch.Generator().manual_seed(seed)
        self.canaries: list[Record] = []
        self.included = torch.zeros(0, dtype=torch.bool)
        self.before: torch.Tensor | None = None
        self.after: torch.Tensor | None = None

    def augment(self, job: LocalJob) -> LocalJob:
        """The job with the included canaries appended to its examples (made on the first call)."""
        from dataclasses import replace

        if not self.canaries:
            labels = sorted({e["label"] for e in job.examples if isinstance(e.get("label"), int)})
            words = sorted({w for e in job.examples for v in e.values() if isinstance(v, str) for w in v.split()})
            self.canaries = make_canaries(job.examples[0], labels, words or ["canary"], self.m, self.rng)
            self.included = torch.rand(self.m, generator=self.rng) < 0.5
            self.before = self.losses(job)
        extra = [c for c, flag in zip(self.canaries, self.included.tolist(), strict=True) if flag]
        return replace(job, examples=list(job.examples) + extra, seen=[])

    def losses(self, job: LocalJob, chunk: int = 32) -> torch.Tensor:
        was_training = job.model.training
        job.model.eval()
        with torch.no_grad():
            parts = [job.example_losses(job.model, job.collate(self.canaries[i : i + chunk])).detach().double().cpu()
                     for i in range(0, len(self.canaries), chunk)]
        job.model.train(was_training)
        return torch.cat(parts)

    def epsilon_lower(self, delta: float, confidence: float) -> float | None:
        if self.before is None or self.after is None:
            return None  # the audited client never trained
        # Relative decrease: canaries start at different losses, and a long one drops more in absolute
        # terms whether or not it was trained on (measured: ratio 1.02 vs difference 0.72 at no noise).
        return audit_one_run(1.0 - self.after / self.before, self.included, delta, confidence)
