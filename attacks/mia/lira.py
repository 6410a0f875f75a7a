"""LiRA: the likelihood-ratio attack with shadow models.

Carlini, Chien, Nasr, Song, Terzis, Tramer 2022, "Membership Inference Attacks From First
Principles" (IEEE S&P). For each candidate, fit Gaussians to its signal under shadow models trained
with it (IN) and without it (OUT), then score the target model's signal:

- online: score = log N(x; mu_in, s_in) - log N(x; mu_out, s_out). Shadow training sets are random
  halves of (auxiliary ∪ candidates), balanced so each record is IN for exactly half the shadows.
- offline: only OUT shadows (random halves of the auxiliary data); score = (x - mu_out) / s_out, the
  one-sided test's statistic (monotone in its p-value).

Signal: logit-scaled confidence of the true label (classification) or the negative task loss (text).

Setting and departures: shadows are central fine-tunes of the base model with the target's method
and hyperparameters on records of the same distribution (``view.train_shadow``, provided and cached
by the harness), while the target was trained federatedly, so shadow and target training differ in
how the data was split across clients. No test-time augmentations. Per-example means are sample
means (the paper uses medians). The global-variance option pools the per-example residual variance
over all candidates (the paper's code takes the spread of all observations); ``variance: auto``
uses it below 64 shadows, where the paper reports per-example variances are unreliable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from attacks.base import Attack
from attacks.mia._common import confidence_signal, derived_generator, membership_scores
from bench.config import doc
from bench.errors import TierAccessError, UserError
from bench.registry import ATTACKS
from bench.transcript import ThreatView

GLOBAL_VARIANCE_BELOW = 64
_VARIANCE_FLOOR = 1e-8


def balanced_membership(shadows: int, records: int, rng: torch.Generator) -> torch.Tensor:
    """(shadows, records) bool: each record IN for exactly ``shadows // 2`` shadows, chosen at random."""
    ranks = torch.rand(shadows, records, generator=rng).argsort(0).argsort(0)
    return ranks < shadows // 2


def masked_gaussian(observations: torch.Tensor, mask: torch.Tensor, pooled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-record mean and variance of ``observations`` (shadows, records) where ``mask`` is set.

    ``pooled``: one variance shared by all records (residuals around each record's own mean)."""
    weight = mask.double()
    count = weight.sum(0)
    mean = (observations * weight).sum(0) / count.clamp_min(1)
    squared = (observations - mean).square() * weight
    if pooled:
        variance = squared.sum() / (count - 1).clamp_min(0).sum().clamp_min(1)
        variance = variance.expand_as(mean)
    else:
        variance = squared.sum(0) / (count - 1).clamp_min(1)
    return mean, variance.clamp_min(_VARIANCE_FLOOR)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x - mean).square() / variance - 0.5 * variance.log()


@ATTACKS.register("mia-lira")
class LiRA(Attack):
    """Likelihood-ratio membership inference with shadow fine-tunes."""

    vantage = "external"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        shadows: int = doc("number of shadow models to train (even; at least 4 online, 2 offline)", 8)
        online: bool = doc(
            "online LiRA (shadows trained with and without each candidate) or offline (without only)", True
        )
        variance: Literal["auto", "per-example", "global"] = doc(
            f"Gaussian variances per candidate, pooled over candidates, or auto (global below {GLOBAL_VARIANCE_BELOW} shadows)",
            "auto",
        )

        def __post_init__(self) -> None:
            least = 4 if self.online else 2
            if self.shadows < least or self.shadows % 2:
                raise ValueError(
                    f"shadows must be even and at least {least} for {'online' if self.online else 'offline'} LiRA"
                )

    def run(self, view: ThreatView, rng: torch.Generator):
        if view.train_shadow is None:
            raise TierAccessError("LiRA needs shadow models, and this vantage cannot train them")
        pool = list(view.auxiliary) + (list(view.candidates) if self.config.online else [])
        if not view.auxiliary and not self.config.online:
            raise UserError("offline LiRA needs auxiliary records to train shadow models on")
        membership = balanced_membership(self.config.shadows, len(pool), rng)
        observations = torch.stack([self._shadow_signal(view, pool, keep, rng) for keep in membership]).double()
        target = confidence_signal(view.final_model, view.candidates).double()
        candidate_in = membership[:, len(view.auxiliary) :] if self.config.online else None
        return membership_scores(self._score(target, observations, candidate_in))

    def _shadow_signal(self, view: ThreatView, pool: list, keep: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        shadow = view.train_shadow([pool[i] for i in keep.nonzero().flatten().tolist()], derived_generator(rng))
        return confidence_signal(shadow, view.candidates)

    def _pooled(self) -> bool:
        return {"global": True, "per-example": False, "auto": self.config.shadows < GLOBAL_VARIANCE_BELOW}[
            self.config.variance
        ]

    def _score(
        self, target: torch.Tensor, observations: torch.Tensor, candidate_in: torch.Tensor | None
    ) -> torch.Tensor:
        pooled = self._pooled()
        if candidate_in is None:
            mean_out, var_out = masked_gaussian(observations, torch.ones_like(observations, dtype=torch.bool), pooled)
            return (target - mean_out) / var_out.sqrt()
        mean_in, var_in = masked_gaussian(observations, candidate_in, pooled)
        mean_out, var_out = masked_gaussian(observations, ~candidate_in, pooled)
        return gaussian_log_density(target, mean_in, var_in) - gaussian_log_density(target, mean_out, var_out)
