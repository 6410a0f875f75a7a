"""Loss-based membership inference: the loss attack, its zlib calibration, and a reference model.

- ``mia-loss``: Yeom et al. 2018, "Privacy Risk in Machine Learning: Analyzing the Connection to
  Overfitting" (CSF). Score = -loss. Departure: for classification the score is the logit-scaled
  confidence of the true label, log p_y - log(1 - p_y) (Carlini et al. 2022), a monotone transform of
  the loss for one example, so the ranking and the AUC are those of the loss attack. On generative
  tasks with canaries it also reports each canary's candidate log-perplexities, from which the scorer
  computes exposure (Carlini et al. 2019, "The Secret Sharer", USENIX Security).
- ``mia-zlib``: Carlini et al. 2021, "Extracting Training Data from Large Language Models" (USENIX
  Security): log-perplexity divided by the zlib entropy (compressed length in bytes) of the text.
  Departure: used as a membership score on given candidates rather than to rank generated samples.
- ``mia-reference``: the reference-model attack of Carlini et al. 2021 (and Mireshghallah et al. 2022,
  "Quantifying Privacy Risks of Masked Language Models Using Membership Inference Attacks"):
  calibrate by the same signal under a reference model. The reference is the pre-fine-tuning base
  model, the natural reference in post-training.
- ``mia-calibrated``: difficulty calibration with reference models trained on population data
  (Watson et al. 2022, "On the Importance of Difficulty Calibration in Membership Inference
  Attacks", ICLR; the reference attack of Ye et al. 2022, "Enhanced Membership Inference Attacks
  against Machine Learning Models", CCS): score = signal under the target - mean signal under
  ``references`` models fine-tuned from the base model with the run's method and hyperparameters on
  random draws of the auxiliary (public, same-distribution) records. Where the base model is no
  reference (a classifier's new head is random; a task format the base never saw), this one knows
  how hard each record is for a model that learned the task without it. It is offline LiRA with
  a global variance and no Gaussian, at a fraction of the cost: the references are shared by the runs
  of a (method, seed) whose federation settings agree (``bench.engine.views.ShadowTrainer`` caches them).

All four default to the ``external`` vantage and read the final model through the tier's access
(a ``ProviderAPI`` at gray-box; at black-box the logits request raises ``TierAccessError``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from attacks.mia._common import (
    canary_losses,
    confidence_signal,
    derived_generator,
    is_classification,
    membership_scores,
    text_of,
)
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.errors import TierAccessError, UserError
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, Vantage


@ATTACKS.register("mia-loss")
class LossAttack(Attack):
    """Score = -loss (logit-scaled confidence for classification)."""

    vantage = Vantage.EXTERNAL
    family = AttackFamily.MIA
    access = frozenset({Access.LOGITS})

    @dataclass(frozen=True, kw_only=True)
    class Config:
        canaries: bool = doc("also report canary log-perplexities for exposure (generative tasks with canaries)", True)

    def run(self, view: ThreatView, rng: torch.Generator):
        scores = confidence_signal(view.final_model, view.candidates)
        text_task = not (view.candidates and is_classification(view.candidates[0], view.final_model.task))
        canary = (
            canary_losses(view.final_model, view.canaries)
            if self.config.canaries and view.canaries and text_task
            else None
        )
        return membership_scores(scores, canary)


def zlib_entropy(text: str) -> int:
    """Bytes of the zlib-compressed UTF-8 text (Carlini et al. 2021's zlib entropy)."""
    return len(zlib.compress(text.encode("utf-8")))


@ATTACKS.register("mia-zlib")
class ZlibAttack(Attack):
    """Score = -loss / zlib entropy: texts that are easy to compress are expected to have low loss."""

    vantage = Vantage.EXTERNAL
    family = AttackFamily.MIA
    access = frozenset({Access.LOGITS})

    def run(self, view: ThreatView, rng: torch.Generator):
        losses = view.final_model.example_losses(view.candidates).double()
        entropy = torch.tensor([zlib_entropy(text_of(view, e)) for e in view.candidates], dtype=torch.float64)
        return membership_scores(-(losses / entropy))


@ATTACKS.register("mia-reference")
class ReferenceAttack(Attack):
    """Score = signal under the fine-tuned model - signal under the base model."""

    vantage = Vantage.EXTERNAL
    family = AttackFamily.MIA
    access = frozenset({Access.LOGITS})

    def run(self, view: ThreatView, rng: torch.Generator):
        target = confidence_signal(view.final_model, view.candidates)
        reference = confidence_signal(view.base_model, view.candidates)
        return membership_scores(target - reference)


@ATTACKS.register("mia-calibrated")
class CalibratedAttack(Attack):
    """Score = signal under the target - mean signal under reference models fine-tuned on population data."""

    vantage = Vantage.EXTERNAL
    family = AttackFamily.MIA
    access = frozenset({Access.LOGITS, Access.WEIGHTS, Access.GRADIENTS})  # references are fine-tuned locally

    @dataclass(frozen=True, kw_only=True)
    class Config:
        references: int = doc("reference models, each fine-tuned on its own random draw of the auxiliary records", 1)
        reference_examples: int = doc("auxiliary records per reference model (all there are, if fewer)", 32)

        def __post_init__(self) -> None:
            if self.references < 1 or self.reference_examples < 1:
                raise ValueError("references and reference_examples must be at least 1")

    def run(self, view: ThreatView, rng: torch.Generator):
        if view.train_shadow is None:
            raise TierAccessError("mia-calibrated fine-tunes reference models, and this vantage cannot train them")
        if not view.auxiliary:
            raise UserError("mia-calibrated needs auxiliary records to fine-tune its reference models on")
        target = confidence_signal(view.final_model, view.candidates).double()
        references = torch.stack([confidence_signal(self._reference(view, rng), view.candidates).double()
                                  for _ in range(self.config.references)])
        return membership_scores(target - references.mean(0))

    def _reference(self, view: ThreatView, rng: torch.Generator):
        pool = list(view.auxiliary)
        picked = torch.randperm(len(pool), generator=rng)[: self.config.reference_examples].tolist()
        return view.train_shadow([pool[i] for i in sorted(picked)], derived_generator(rng))
