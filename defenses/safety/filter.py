"""``safety-filter``: each client screens its training data with the local judge before training and drops
the records that answer a harmful request with compliance.

What it implements: the data-screening safety filter of the responsible-FedLLM setting this project's
seed describes (a harmful-content classifier run over client data before fine-tuning), in the spirit of
the data filtering defenses against harmful fine-tuning (Qi et al. 2024, "Fine-tuning aligned language
models compromises safety", section on mitigation; Ye et al. 2024, "Emerging safety attack and defense
in federated instruction tuning"). The judge is ``bench.api.safety.local_judge``: two char-n-gram logistic
regressions (harmful request?; response complies / refuses / other), trained on generated pairs.

Where it departs: the judge is a small classifier on generated data, not a safety-tuned LLM (Llama Guard)
or a moderation API; it screens the trained response, not model outputs at inference. Threat model: the
harmful data sits in clients' datasets and every client runs the federation's client software as shipped
(the filter included); a client that controls its own software skips it, and against such a client only
server-side defenses (``robust-*``) apply.

Where it sits: the TRAINING slot, wrapping local training like ``scrub-pii``; records are judged once
(verdicts are cached by text). Reports ``safety.filtered_fraction`` (records dropped over distinct records
screened) and ``safety.filtered_records``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.api.config import doc
from bench.api.defense import Defense, DefenseSlot
from bench.api.registry import DEFENSES
from bench.api.safety import local_judge
from bench.api.vocabulary import DefenseFamily, Record
from bench.client.training import Trainer
from defenses.safety._examples import request_response, training_on


@DEFENSES.register("safety-filter")
class SafetyFilter(Defense):
    """Drops each client's records that the local judge marks as harmful compliance."""

    slot = DefenseSlot.TRAINING
    family = DefenseFamily.SAFETY

    @dataclass(frozen=True, kw_only=True)
    class Config:
        judge_seed: int = doc("Seed of the local judge's training data and classifier (bench.api.safety).", 0)

    def __init__(self, config: SafetyFilter.Config):
        super().__init__(config)
        self._verdicts: dict[tuple[str, str], bool] = {}
        """(request, response) -> harmful compliance, for every distinct record screened."""

    def harmful(self, examples: list[Record]) -> list[bool]:
        """The judge's verdict per example (records without a response are never harmful compliance)."""
        pairs = [request_response(e) for e in examples]
        new = sorted({p for p in pairs if p is not None and p not in self._verdicts})
        if new:
            verdicts = local_judge(self.config.judge_seed).harmful_compliance([r for r, _ in new], [s for _, s in new])
            self._verdicts.update(zip(new, verdicts, strict=True))
        return [p is not None and self._verdicts[p] for p in pairs]

    def screen(self, examples: list[Record]) -> tuple[list[Record], list[int]]:
        keep = [i for i, bad in enumerate(self.harmful(examples)) if not bad]
        return [examples[i] for i in keep], keep

    def wrap_training(self, train_step: Trainer, client: int, rng: torch.Generator) -> Trainer:
        return training_on(train_step, self.screen)

    def privacy(self) -> dict[str, float]:
        """The after-run report: how much of the data the filter dropped."""
        dropped = sum(self._verdicts.values())
        return {"safety.filtered_fraction": dropped / len(self._verdicts) if self._verdicts else 0.0,
                "safety.filtered_records": dropped}
