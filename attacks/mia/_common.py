"""Shared pieces of the membership-inference attacks: membership signals, text, result type.

Task kind is read from the example schema (``bench`` data conventions): classification examples
carry a ``label``; every other kind is scored as text through the task loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F

from bench.api.errors import IncompatibleError
from bench.api.handles import ModelHandle, TaskSpec
from bench.api.predictions import MembershipScores
from bench.api.transcript import Canary, ThreatView
from bench.api.vocabulary import Record, TaskKind

Reduced = TypeVar("Reduced")
"""What ``per_example_tokens`` reduces each example's token logits to."""

TOKEN_CHUNK = 16
"""Examples per ``token_logits`` request: bounds the (tokens x vocabulary) logits held at once."""

# Fields joined into one text, per example schema, when no task is at hand to say how.
_SCHEMA_FIELDS = (("text",), ("instruction", "response"), ("prompt", "chosen"))


def is_classification(example: Record, task: TaskSpec | None = None) -> bool:
    """The task's kind when the task is known (a language task may still carry labels), else the schema."""
    if task is not None:
        return task.kind == TaskKind.CLASSIFICATION
    return "label" in example


def require_text_task(examples: list[Record], attack: str, task: TaskSpec | None = None) -> None:
    if examples and is_classification(examples[0], task):
        raise IncompatibleError(f"{attack} scores tokens of generated text; it does not apply to classification tasks")


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p_y - log(1 - p_y), computed stably as z_y - logsumexp_{j != y} z_j (Carlini et al. 2022)."""
    logits = logits.double()
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], -torch.inf).logsumexp(1)
    return (true - others).float()


def confidence_signal(handle: ModelHandle, examples: list[Record]) -> torch.Tensor:
    """Per example, higher = more member-like: logit-scaled confidence of the true label
    (classification) or the negative task loss (text)."""
    if not examples:
        return torch.zeros(0)
    if is_classification(examples[0], handle.task):
        labels = torch.tensor([int(e["label"]) for e in examples])
        return logit_confidence(handle.class_logits(examples), labels)
    return -handle.example_losses(examples).float()


def text_of(view: ThreatView, example: Record) -> str:
    """The example's text as the task renders it (what a provider logs), else joined schema fields."""
    task = view.final_model.task  # the task's public definition comes with the model the view grants
    if task is not None:
        return task.text_of(example)
    for fields in _SCHEMA_FIELDS:
        if all(f in example for f in fields):
            return "\n".join(str(example[f]) for f in fields)
    raise ValueError(f"cannot find the text of an example with keys {sorted(example)}")


def per_example_tokens(
    handle: ModelHandle, examples: list[Record], reduce: Callable[[torch.Tensor, torch.Tensor], Reduced]
) -> list[Reduced]:
    """``reduce(logits, targets)`` for each example, requesting token logits a chunk at a time."""
    out = []
    for start in range(0, len(examples), TOKEN_CHUNK):
        out += [
            reduce(logits.float(), targets)
            for logits, targets in handle.token_logits(examples[start : start + TOKEN_CHUNK])
        ]
    return out


def summed_nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.cross_entropy(logits, targets, reduction="sum"))


def canary_losses(handle: ModelHandle, canaries: list[Canary]) -> list[torch.Tensor]:
    """For each canary, the log-perplexity (summed token NLL, nats) of ``prefix + s`` for every
    candidate secret ``s`` in its space, in space order (Carlini et al. 2019)."""
    out = []
    for canary in canaries:
        texts = [{"text": canary.prefix + secret} for secret in canary.secret_space]
        out.append(torch.tensor(per_example_tokens(handle, texts, summed_nll), dtype=torch.float64))
    return out


def membership_scores(scores: torch.Tensor, canary: list[torch.Tensor] | None = None) -> MembershipScores:
    scores = torch.as_tensor(scores).double().reshape(-1)  # double: no ties introduced by rounding
    if canary is None:
        return MembershipScores(scores=scores)
    return MembershipScores(scores=scores, canary_losses=canary)


def derived_generator(rng: torch.Generator) -> torch.Generator:
    """A fresh generator seeded from ``rng`` (one per shadow model or sub-task)."""
    return torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=rng)))
