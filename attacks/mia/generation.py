"""Black-box membership inference from generated text or predicted labels only.

- Text tasks: extraction-style membership (Carlini et al. 2021, "Extracting Training Data from Large
  Language Models"; the prefix-completion test of Carlini et al. 2023, "Quantifying Memorization
  Across Neural Language Models", ICLR): prompt with the first part of each candidate and score by
  the word-level ROUGE-L F1 between the model's greedy completion and the true continuation.
  Departure: a graded overlap instead of the exact-match test, so the ROC has more than two points.
- Classification: label-only membership (Choquette-Choo et al. 2021, "Label-Only Membership
  Inference Attacks", ICML): the fraction of randomly perturbed copies of the input (each word
  dropped with a small probability) that are still classified correctly; members sit further from
  the decision boundary. Departure: word dropout stands in for the paper's text-free augmentations.

Only ``generate`` / ``predict_labels`` are used, which every tier grants (TEXT access).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch

from attacks.mia._common import is_classification, membership_scores, text_of
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, Vantage

_WORD = re.compile(r"\S+")


def split_prefix(text: str, fraction: float) -> tuple[str, list[str]]:
    """(the text up to the cut word, without trailing space; the words after the cut)."""
    words = list(_WORD.finditer(text))
    if len(words) < 2:
        return text, []
    cut = min(max(1, int(len(words) * fraction)), len(words) - 1)
    return text[: words[cut].start()].rstrip(), [w.group() for w in words[cut:]]


def longest_common_subsequence(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_f1(generated: list[str], reference: list[str]) -> float:
    """Word-level ROUGE-L F1; the generation is cut to the reference's length (it runs past it)."""
    generated = generated[: len(reference)]
    if not generated or not reference:
        return 0.0
    common = longest_common_subsequence(generated, reference)
    return 2.0 * common / (len(generated) + len(reference))


def continuation_overlap(completion: str, continuation: list[str]) -> float:
    """Mean of word-level ROUGE-L F1 and character similarity; 1.0 for an exact reproduction."""
    reference = " ".join(continuation)
    generated = " ".join(completion.split())[: len(reference)]
    characters = difflib.SequenceMatcher(None, generated, reference, autojunk=False).ratio() if reference else 0.0
    return 0.5 * rouge_l_f1(completion.split(), continuation) + 0.5 * characters


def drop_words(text: str, probability: float, rng: torch.Generator) -> str:
    words = text.split()
    keep = torch.rand(len(words), generator=rng) >= probability
    kept = [w for w, k in zip(words, keep.tolist(), strict=True) if k]
    return " ".join(kept or words[:1])


@ATTACKS.register("mia-generation")
class GenerationAttack(Attack):
    """Membership from the model's text output: completion overlap (text) or label robustness."""

    vantage = Vantage.EXTERNAL
    family = AttackFamily.MIA
    access = frozenset({Access.TEXT})  # generated text, or labels only

    @dataclass(frozen=True, kw_only=True)
    class Config:
        prefix_fraction: float = doc("fraction of each candidate's words given as the prompt", 0.5)
        max_new_tokens: int = doc("tokens generated per prompt (greedy)", 32)
        perturbations: int = doc("label-only: perturbed copies per candidate (classification)", 8)
        drop_probability: float = doc("label-only: probability of dropping each word in a perturbed copy", 0.1)

        def __post_init__(self) -> None:
            if not 0.0 < self.prefix_fraction < 1.0 or not 0.0 <= self.drop_probability < 1.0:
                raise ValueError("prefix_fraction must be in (0, 1) and drop_probability in [0, 1)")
            if self.max_new_tokens < 1 or self.perturbations < 0:
                raise ValueError("max_new_tokens must be at least 1 and perturbations at least 0")

    def run(self, view: ThreatView, rng: torch.Generator):
        if view.candidates and is_classification(view.candidates[0], view.final_model.task):
            return membership_scores(self._label_only(view, rng))
        return membership_scores(self._completion_overlap(view))

    def _completion_overlap(self, view: ThreatView) -> torch.Tensor:
        splits = [split_prefix(text_of(view, e), self.config.prefix_fraction) for e in view.candidates]
        completions = view.final_model.generate(
            [prefix for prefix, _ in splits], max_new_tokens=self.config.max_new_tokens
        )
        return torch.tensor([continuation_overlap(c, rest) for c, (_, rest) in zip(completions, splits, strict=True)])

    def _label_only(self, view: ThreatView, rng: torch.Generator) -> torch.Tensor:
        copies = [view.candidates]
        for _ in range(self.config.perturbations):
            copies.append(
                [{**e, "text": drop_words(e["text"], self.config.drop_probability, rng)} for e in view.candidates]
            )
        flat = [e for copy in copies for e in copy]
        predicted = torch.as_tensor(view.final_model.predict_labels(flat)).reshape(len(copies), -1)
        labels = torch.tensor([int(e["label"]) for e in view.candidates])
        return (predicted.cpu() == labels).float().mean(0)
