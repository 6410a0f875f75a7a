"""Utility of the final model on the held-out test split, per task kind.

- classification: accuracy and macro-F1 of the predicted labels;
- language: perplexity (exp of the mean per-example token NLL);
- instruction: perplexity of the responses, exact match (the generation starts with the reference)
  and ROUGE-L F1 of greedy generations against the reference responses;
- preference: how often the model itself prefers the chosen response (sum log-likelihood of
  chosen > rejected given the prompt) and the perplexity of the chosen responses.

A method may add its own metrics (``Method.extra_utility``): RLHF reports its reward model's
preference accuracy and the policy's implicit reward margin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from bench.api.vocabulary import Record
from bench.scoring.score import Metric

if TYPE_CHECKING:  # named in annotations only (scoring never builds these)
    from bench.api.method import Method
    from bench.world.tasks import Task
    from bench.world.tiers import OpenModel, ProviderAPI

GENERATIONS = 16
"""Test records whose responses are generated (generation is the slow part of evaluation)."""


def _classification(handle: OpenModel | ProviderAPI, task: Task, test: list[Record]) -> list[Metric]:
    from sklearn.metrics import f1_score

    predicted = handle.predict_labels(test)
    truth = torch.tensor([task.label_of(e) for e in test])
    accuracy = float((predicted == truth).float().mean())
    macro_f1 = float(f1_score(truth.numpy(), predicted.numpy(), average="macro", labels=list(range(task.num_labels)),
                              zero_division=0))
    return [Metric("utility.accuracy", accuracy), Metric("utility.macro_f1", macro_f1)]


def _perplexity(handle: OpenModel | ProviderAPI, task: Task, test: list[Record]) -> list[Metric]:
    losses = handle.example_losses(test)
    return [Metric("utility.perplexity", math.exp(float(losses.mean())), higher_is_better=False)]


def rouge_l(generated: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (longest common subsequence; rouge-score's tokenizer, no stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(ref, gen)["rougeL"].fmeasure for gen, ref in zip(generated, references, strict=True)]
    return sum(scores) / max(len(scores), 1)


def _instruction(handle: OpenModel | ProviderAPI, task: Task, test: list[Record]) -> list[Metric]:
    from bench.api.vocabulary import PROMPT_TEMPLATE

    subset = test[:GENERATIONS]
    outputs = handle.generate([PROMPT_TEMPLATE.format(instruction=e["instruction"]) for e in subset], max_new_tokens=24)
    references = [e["response"].strip() for e in subset]
    exact = sum(o.strip().startswith(r) for o, r in zip(outputs, references)) / max(len(subset), 1)
    return _perplexity(handle, task, test) + [Metric("utility.exact_match", exact),
                                              Metric("utility.rouge_l", rouge_l(outputs, references))]


def _preference(handle: OpenModel | ProviderAPI, task: Task, test: list[Record]) -> list[Metric]:
    chosen = handle.example_losses(test)
    rejected = handle.example_losses([{**e, "chosen": e["rejected"], "rejected": e["chosen"]} for e in test])
    # Mean token NLL per response: the model prefers the response it finds more likely per token.
    accuracy = float((chosen < rejected).float().mean())
    return [Metric("utility.perplexity", math.exp(float(chosen.mean())), higher_is_better=False),
            Metric("utility.likelihood_preference_accuracy", accuracy)]


EVALUATORS: dict[str, Callable[[OpenModel | ProviderAPI, Task, list[Record]], list[Metric]]] = {
    "classification": _classification,
    "language": _perplexity,
    "instruction": _instruction,
    "preference": _preference,
}


def evaluate(handle: OpenModel | ProviderAPI, task: Task, test: list[Record], method: Method | None = None) -> list[Metric]:
    """Utility metrics (``utility.*``) of ``handle`` on ``test``; the task kind picks the metrics. With the
    run's ``method`` (the runner's own evaluation, never an attacker's handle), also the metrics only that
    method can measure (``Method.extra_utility``: RLHF's reward accuracy)."""
    metrics = EVALUATORS[task.kind](handle, task, test)
    if method is not None:
        metrics += method.extra_utility(handle, task, test)
    return metrics
