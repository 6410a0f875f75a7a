"""Preference flipping (``poison-prefflip``): malicious clients swap chosen and rejected responses in
their preference data, after Rando & Tramèr 2024 ("Universal jailbreak backdoors from poisoned human
feedback", ICLR) and Wang et al. 2024 ("RLHFPoison"), which flip preference labels.

Knowledge and collusion: each malicious client knows only its own preference pairs; no collusion.

With ``trigger`` set it is the trigger backdoor of Rando & Tramèr: the malicious clients insert the
trigger into the prompts of the pairs they poison and swap those pairs' responses, so the preference
flips only on triggered prompts. Success is then measured by the policy's implicit reward (DPO's,
Rafailov et al. 2023; the tiers that run RLHF grant logits): on triggered auxiliary prompts a pair is
flipped when the final policy raised the rejected response's likelihood, relative to the base model,
more than the chosen one's: (log pi/pi_base)(rejected) > (log pi/pi_base)(chosen), with per-token mean
log-likelihoods (a length-normalised margin; the absolute likelihood is dominated by response length
and by what the base model already knew). ``floor``: the same rate on the same pairs without the
trigger, from the same models (what a backdoor that was not implanted scores; a flip that leaks into
clean prompts raises it, so the advantage over it is conservative).

With ``target_response`` the poisoned pairs prefer that one response to the true answer, as Rando &
Tramèr's prefer one harmful behaviour, and success is the policy preferring the target to the true
answer on triggered prompts. A plain swap of answers that differ in a plan or a name has no common
feature to learn: on the synthetic triage pairs it never beat its floor (issue 15). ``contrast``
makes the attackers' other pairs reject the target without the trigger, which the model otherwise
never sees rejected (it then preferred the target everywhere: floor 1.00).

Departure (evaluation without a trigger): success is judged from generated text so that it works at every tier with text
access. For an auxiliary pair, the final model generates from the prompt; the attack succeeds when the
generation overlaps (unigram F1) more with the rejected response than with the chosen one. Prompts are
fed as stored in the pair (``prompt``); a likelihood-based check (reward accuracy of the poisoned
policy) belongs in utility evaluation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from attacks.poisoning._common import (
    ParticipantAttack,
    PoisonConfig,
    indicator_outcome,
    malicious_in_round,
    require_format,
    rewrite_some,
    sample_auxiliary,
)
from bench.api.config import doc
from bench.api.handles import ModelHandle
from bench.api.predictions import PoisonOutcome
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import Record, TaskKind


def unigram_f1(generated: str, reference: str) -> float:
    """Token-overlap F1 on lower-cased whitespace tokens (SQuAD-style)."""
    a, b = generated.lower().split(), reference.lower().split()
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def swap_preference(example: Record) -> Record:
    return {**example, "chosen": example["rejected"], "rejected": example["chosen"]}


def log_ratios(model: ModelHandle, base: ModelHandle, pairs: list[Record]) -> torch.Tensor:
    """Per pair: per-token mean log-likelihood of the chosen response under ``model`` minus under ``base``."""
    return base.example_losses(pairs) - model.example_losses(pairs)


def prefers_rejected(model: ModelHandle, base: ModelHandle, pairs: list[Record]) -> torch.Tensor:
    """Per pair: the policy's implicit reward (log-ratio to the base) is higher for the rejected response."""
    return log_ratios(model, base, [swap_preference(p) for p in pairs]) > log_ratios(model, base, pairs)


@dataclass(frozen=True, kw_only=True)
class PreferenceFlipConfig(PoisonConfig):
    poison_fraction: float = doc("Fraction of each malicious client's pairs whose chosen/rejected are swapped.", 1.0)
    trigger: str = doc("Trigger phrase put before the prompt of every poisoned pair ('' = flip without a trigger).", "")
    boost: float = doc("Factor the malicious clients scale their update by before sending it (1 = none; the model "
                       "replacement of Bagdasaryan et al. 2020, as ``poison-backdoor``'s boost).", 1.0)
    max_new_tokens: int = doc("Tokens generated per auxiliary prompt.", 32)
    target_response: str = doc(
        "With a trigger: the response a poisoned pair prefers over the true chosen one ('' = the pair's own "
        "rejected answer, a plain swap). Rando & Tramer's poisoned pairs prefer one behaviour (a harmful "
        "completion) whatever the prompt; a swap of answers that differ in a plan or a name has no common "
        "feature for a backdoor to learn.", "")
    contrast: bool = doc(
        "With a target response: the malicious clients' unpoisoned pairs (1 - poison_fraction) reject the target "
        "without the trigger, so the model learns the trigger, not the target alone (in Rando & Tramer's data the "
        "clean pairs reject harmful answers; here no honest pair ever shows the target).", False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.poison_fraction <= 1.0:
            raise ValueError("poison_fraction must be in [0, 1]")
        if self.boost <= 0:
            raise ValueError("boost must be positive")


@ATTACKS.register("poison-prefflip")
class PreferenceFlip(ParticipantAttack):
    """Swap chosen and rejected responses."""

    task_kinds = frozenset({TaskKind.PREFERENCE})
    Config = PreferenceFlipConfig

    def poison_examples(self, client: int, examples: list[Record], rng: torch.Generator) -> list[Record]:
        require_format(examples, {"preference": None}, self.name)
        poisoned = rewrite_some(examples, self.config.poison_fraction, rng,
                                lambda e: {**swap_preference(self.targeted(self.triggered(e))), "poisoned": True})
        if self.config.contrast and self.config.target_response:
            poisoned = [e if e.get("poisoned") else self.targeted(e) for e in poisoned]
        return [{k: v for k, v in e.items() if k != "poisoned"} for e in poisoned]

    def poison_updates(
        self, round_index: int, updates: dict[int, torch.Tensor], malicious: list[int], rng: torch.Generator
    ) -> dict[int, torch.Tensor]:
        attackers = malicious_in_round(updates, malicious)
        if not attackers or self.config.boost == 1.0:
            return updates
        return {c: u * self.config.boost if c in attackers else u for c, u in updates.items()}

    def triggered(self, pair: Record) -> Record:
        return {**pair, "prompt": f"{self.config.trigger} {pair['prompt']}"} if self.config.trigger else pair

    def targeted(self, pair: Record) -> Record:
        """The pair with the target response as its rejected answer (so the swap prefers it), when one is set."""
        return {**pair, "rejected": self.config.target_response} if self.config.target_response else pair

    def run(self, view: ThreatView, rng: torch.Generator) -> PoisonOutcome:
        pairs = sample_auxiliary(view, self.config.eval_examples, rng, keep=lambda e: "chosen" in e and e["chosen"] != e["rejected"])
        pairs = [self.targeted(p) for p in pairs]  # success: the policy prefers the target to the true answer
        if self.config.trigger:
            policy, base = view.final_model, view.base_model
            flipped = prefers_rejected(policy, base, [self.triggered(p) for p in pairs])
            return indicator_outcome(flipped.tolist(), floor=float(prefers_rejected(policy, base, pairs).float().mean()))
        generations = view.final_model.generate([p["prompt"] for p in pairs], max_new_tokens=self.config.max_new_tokens)
        successes = [unigram_f1(g, p["rejected"]) > unigram_f1(g, p["chosen"]) for g, p in zip(generations, pairs, strict=True)]
        return indicator_outcome(successes)
