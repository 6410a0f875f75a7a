"""What attacks output. ``bench.scoring.score`` turns each kind, plus ground truth, into metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from bench.api.vocabulary import JsonObject

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import PreTrainedTokenizerBase


@dataclass
class MembershipScores:
    """Higher score = more likely a member; one score per candidate, in candidate order."""

    scores: torch.Tensor
    exposures: torch.Tensor | None = None
    """Canary exposure (log2 |space| - log2 rank), one per canary, when the attack measured it."""
    canary_losses: list[torch.Tensor] | None = None
    """Per canary: the loss of every candidate in its ``secret_space`` (the scorer ranks the true one)."""


@dataclass
class Reconstruction:
    """Token sequences the attacker recovered, per (round, client) it attacked."""

    sequences: dict[tuple[int, int], list[list[int]]] = field(default_factory=dict)
    decode: Callable[[Sequence[int]], str] | None = None
    """The public tokenizer's ids -> text (``text_decoder``), so that the scorer can report word-level
    ROUGE on decoded text as the inversion papers do; None = token-id metrics only. It is the
    attacker's public tokenizer, not ground truth: the scorer decodes both sides with it."""


def text_decoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[Sequence[int]], str] | None:
    """``tokenizer.decode`` without special tokens (padding and end-of-text are not words); None
    when there is no tokenizer (token ids are the data)."""
    if tokenizer is None or not hasattr(tokenizer, "decode"):
        return None
    return lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True)


@dataclass
class PoisonOutcome:
    """Behaviour of the final model on triggered held-out inputs (predicted vs target labels)."""

    predicted: torch.Tensor
    target: torch.Tensor
    extra: JsonObject = field(default_factory=dict)


@dataclass
class Extraction:
    """What an extraction attack got the final model (and the base model, the floor) to reproduce.

    Per candidate, in candidate order: ``trials`` target items probed (suffix tokens, PII values)
    taken from the candidate record the attacker holds, and ``hits`` of them the model reproduced.
    Which candidates were trained on is ground truth: the scorer alone splits members from
    non-members. Canary completions are raw text; the scorer checks them against the hidden secrets."""

    hits: torch.Tensor
    trials: torch.Tensor
    base_hits: torch.Tensor
    graded: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-candidate similarity in [0, 1] (e.g. ``lcs``, ``rouge_l``) of the final model's output."""
    base_graded: dict[str, torch.Tensor] = field(default_factory=dict)
    canary_completions: list[str] = field(default_factory=list)
    """Greedy completion of each canary's prefix (``ThreatView.canaries`` order) by the final model."""
    base_canary_completions: list[str] = field(default_factory=list)
    chance: float | None = None
    """The rate a guess reaches with no model at all (1 / candidates for a pick from a list)."""
    extra: dict[str, float] = field(default_factory=dict)
    """Attack-specific counts reported as they are (``extraction.<key>``)."""


Prediction = MembershipScores | Reconstruction | PoisonOutcome | Extraction
"""What ``Attack.run`` returns: one of the prediction types, each with its scorer in ``bench.scoring``
(``scorer_for``). A new kind of prediction is added here and given a scorer."""
