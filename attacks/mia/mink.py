"""Token-level membership inference: Min-K% Prob and Min-K%++.

- ``mia-mink``: Shi et al. 2024, "Detecting Pretraining Data from Large Language Models" (ICLR):
  score = mean log-probability of the k% least likely tokens of the text.
- ``mia-minkpp``: Zhang et al. 2024, "Min-K%++: Improved Baseline for Detecting Pre-Training Data
  from Large Language Models": each token's log-probability is standardised by the mean and standard
  deviation of log p over the vocabulary under the model's own next-token distribution,
  (log p(x_t) - mu_t) / sigma_t, then the k% lowest are averaged.

Departures: applied to fine-tuning membership (the papers target pretraining data); the count of
kept tokens is ``max(1, floor(k * T))`` so short texts still get a score. Text tasks only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.mia._common import membership_scores, per_example_tokens, require_text_task
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, TaskKind, Vantage


def lowest_fraction_mean(values: torch.Tensor, fraction: float) -> float:
    """Mean of the ``fraction`` smallest values (at least one); NaN for an empty text."""
    if values.numel() == 0:
        return float("nan")
    count = max(1, int(values.numel() * fraction))
    return float(values.topk(count, largest=False).values.mean())


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)


def standardised_token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(log p(x_t) - E_{v~p}[log p(v)]) / std_{v~p}[log p(v)] at each position (Min-K%++)."""
    log_probs = logits.double().log_softmax(-1)
    probs = log_probs.exp()
    mean = (probs * log_probs).sum(-1)
    variance = (probs * log_probs.square()).sum(-1) - mean.square()
    chosen = log_probs.gather(1, targets[:, None]).squeeze(1)
    return ((chosen - mean) / variance.clamp_min(1e-12).sqrt()).float()


@dataclass(frozen=True, kw_only=True)
class MinKConfig:
    k: float = doc("fraction of the text's lowest-scoring tokens that are averaged", 0.2)

    def __post_init__(self) -> None:
        if not 0.0 < self.k <= 1.0:
            raise ValueError(f"k must be in (0, 1], got {self.k}")


@ATTACKS.register("mia-mink")
class MinKProb(Attack):
    """Score = mean log p of the k% least likely tokens."""
    task_kinds = frozenset({TaskKind.LANGUAGE, TaskKind.INSTRUCTION})

    vantage = Vantage.EXTERNAL
    family = AttackFamily.MIA
    access = frozenset({Access.LOGITS})
    Config = MinKConfig
    token_score = staticmethod(token_log_probs)

    def run(self, view: ThreatView, rng: torch.Generator):
        require_text_task(view.candidates, self.name, view.final_model.task)
        k = self.config.k
        scores = per_example_tokens(
            view.final_model, view.candidates, lambda z, t: lowest_fraction_mean(self.token_score(z, t), k)
        )
        return membership_scores(torch.tensor(scores))


@ATTACKS.register("mia-minkpp")
class MinKPlusPlus(MinKProb):
    """Score = mean standardised log p of the k% lowest-scoring tokens."""

    token_score = staticmethod(standardised_token_log_probs)
