"""Label flipping (``poison-labelflip``): Tolpegin et al. 2020, "Data poisoning attacks against
federated learning systems" (ESORICS); the untargeted all-class variant follows Fang et al. 2020.

Knowledge and collusion: each malicious client knows only its own labelled data and the number of
classes; attackers do not collude beyond flipping the same way.

Two modes. Targeted (``source`` and ``target`` both set): examples of class ``source`` are relabelled
``target``; success = auxiliary examples of class ``source`` predicted as ``target``. Otherwise
untargeted: y -> ``target`` when set, else (y + 1) mod ``num_classes``; success = the final model's
error rate on clean auxiliary examples (it includes the error a clean run would have; compare with
the no-attack row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.poisoning._common import (
    ParticipantAttack,
    PoisonConfig,
    require_format,
    rewrite_some,
    sample_auxiliary,
    untargeted_outcome,
)
from bench.api.config import doc
from bench.api.errors import UserError
from bench.api.predictions import PoisonOutcome
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import Record


@dataclass(frozen=True, kw_only=True)
class LabelFlipConfig(PoisonConfig):
    num_classes: int = doc("Number of classes of the task (labels are 0 .. num_classes - 1).", 2)
    source: int | None = doc("Only flip examples of this class (unset = every class).", None)
    target: int | None = doc("Flip to this class (unset = (y + 1) mod num_classes).", None)
    poison_fraction: float = doc("Fraction of each malicious client's eligible examples flipped.", 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes < 2:
            raise ValueError("num_classes must be >= 2")
        for name in ("source", "target"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.num_classes:
                raise ValueError(f"{name} must be in 0 .. num_classes - 1")
        if not 0.0 <= self.poison_fraction <= 1.0:
            raise ValueError("poison_fraction must be in [0, 1]")


def flipped_label(label: int, config: LabelFlipConfig) -> int:
    if not 0 <= label < config.num_classes:
        raise UserError(f"poison-labelflip saw label {label}; set num_classes above every label")
    return config.target if config.target is not None else (label + 1) % config.num_classes


@ATTACKS.register("poison-labelflip")
class LabelFlip(ParticipantAttack):
    """Relabel a malicious client's examples."""

    Config = LabelFlipConfig

    @property
    def targeted(self) -> bool:
        return self.config.source is not None and self.config.target is not None

    def _eligible(self, example: Record) -> bool:
        return self.config.source is None or int(example["label"]) == self.config.source

    def poison_examples(self, client: int, examples: list[Record], rng: torch.Generator) -> list[Record]:
        require_format(examples, {"classification": None}, self.name)
        relabel = lambda e: {**e, "label": flipped_label(int(e["label"]), self.config)}  # noqa: E731
        return rewrite_some(examples, self.config.poison_fraction, rng, relabel, eligible=self._eligible)

    def run(self, view: ThreatView, rng: torch.Generator) -> PoisonOutcome:
        if not self.targeted:
            return untargeted_outcome(view, self.config.eval_examples, rng)
        examples = sample_auxiliary(view, self.config.eval_examples, rng, keep=lambda e: "label" in e and self._eligible(e))
        predicted = view.final_model.predict_labels(examples).long().cpu()
        return PoisonOutcome(predicted=predicted, target=torch.full_like(predicted, self.config.target))
