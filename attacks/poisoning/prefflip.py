"""Preference flipping (``poison-prefflip``): malicious clients swap chosen and rejected responses in
their preference data, after Rando & Tramèr 2024 ("Universal jailbreak backdoors from poisoned human
feedback", ICLR) and Wang et al. 2024 ("RLHFPoison"), which flip preference labels.

Knowledge and collusion: each malicious client knows only its own preference pairs; no collusion.

Departure (evaluation): success is judged from generated text so that it works at every tier with text
access. For an auxiliary pair, the final model generates from the prompt; the attack succeeds when the
generation overlaps (unigram F1) more with the rejected response than with the chosen one. Prompts are
fed as stored in the pair (``prompt``); a likelihood-based check (reward accuracy of the poisoned
policy) belongs in utility evaluation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from attacks.poisoning._common import (
    ParticipantAttack,
    PoisonConfig,
    indicator_outcome,
    require_format,
    rewrite_some,
    sample_auxiliary,
)
from bench.api.config import doc
from bench.api.predictions import PoisonOutcome
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView


def unigram_f1(generated: str, reference: str) -> float:
    """Token-overlap F1 on lower-cased whitespace tokens (SQuAD-style)."""
    a, b = generated.lower().split(), reference.lower().split()
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def swap_preference(example: dict[str, Any]) -> dict[str, Any]:
    return {**example, "chosen": example["rejected"], "rejected": example["chosen"]}


@dataclass(frozen=True, kw_only=True)
class PreferenceFlipConfig(PoisonConfig):
    poison_fraction: float = doc("Fraction of each malicious client's pairs whose chosen/rejected are swapped.", 1.0)
    max_new_tokens: int = doc("Tokens generated per auxiliary prompt.", 32)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.poison_fraction <= 1.0:
            raise ValueError("poison_fraction must be in [0, 1]")


@ATTACKS.register("poison-prefflip")
class PreferenceFlip(ParticipantAttack):
    """Swap chosen and rejected responses."""

    task_kinds = frozenset({"preference"})
    Config = PreferenceFlipConfig

    def poison_examples(self, client: int, examples: list[dict[str, Any]], rng: torch.Generator) -> list[dict[str, Any]]:
        require_format(examples, {"preference": None}, self.name)
        return rewrite_some(examples, self.config.poison_fraction, rng, swap_preference)

    def run(self, view: ThreatView, rng: torch.Generator) -> PoisonOutcome:
        pairs = sample_auxiliary(view, self.config.eval_examples, rng, keep=lambda e: "chosen" in e and e["chosen"] != e["rejected"])
        generations = view.final_model.generate([p["prompt"] for p in pairs], max_new_tokens=self.config.max_new_tokens)
        successes = [unigram_f1(g, p["rejected"]) > unigram_f1(g, p["chosen"]) for g, p in zip(generations, pairs, strict=True)]
        return indicator_outcome(successes)
