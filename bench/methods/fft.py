"""Full fine-tuning: every parameter of the base model is client-trainable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from bench.api.method import Method
from bench.api.registry import METHODS

if TYPE_CHECKING:  # named in annotations only
    from bench.world.tasks import Task


@METHODS.register("fft")
class FullFineTuning(Method):
    """Full fine-tuning: every weight of the base model is trained and transmitted."""

    batchable = True

    @dataclass(frozen=True, kw_only=True)
    class Config:
        pass

    def build(self, model: nn.Module, task: Task, rng: torch.Generator) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
