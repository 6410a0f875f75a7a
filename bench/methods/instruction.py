"""Instruction tuning: supervised fine-tuning on instruction -> response pairs (Wei et al. 2022, FLAN;
Taori et al. 2023, Alpaca), with the loss on response tokens only.

The response-only loss lives in the instruction tasks' batches (prompt tokens carry label -100; see
``bench.world.tasks.collate_prompt_response``), so this method decides what is trained: LoRA factors
(``mode: lora``, the default, as in most federated instruction-tuning work, e.g. FedIT by Zhang et al.
2024) or every weight (``mode: full``). It accepts instruction tasks only: ``synthetic-instructions``
and ``local-file`` with ``objective: instruction`` (e.g. ``../shared/data/alpaca_1k``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from bench.api.config import doc
from bench.api.method import Method
from bench.api.registry import METHODS
from bench.api.vocabulary import TaskKind
from bench.methods._common import check_on_skeleton
from bench.methods.lora import LoraSettings, apply_lora, target_problem

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from bench.world.tasks import Task  # named in annotations only: transformers loads lazily


def _full(model: nn.Module, settings: LoraSettings, task: Task, rng: torch.Generator) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


MODES: dict[str, Callable[[nn.Module, LoraSettings, Task, torch.Generator], nn.Module]] = {"lora": apply_lora, "full": _full}


@dataclass(frozen=True, kw_only=True)
class InstructionSettings(LoraSettings):
    mode: str = doc("'lora' (LoRA factors, settings below) or 'full' (every weight).", "lora")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")


@METHODS.register("instruction-tuning")
class InstructionTuning(Method):
    """SFT on instruction -> response with the loss on the response only (LoRA or full)."""

    Config = InstructionSettings
    task_kinds = frozenset({TaskKind.INSTRUCTION})

    def build(self, model: nn.Module, task: Task, rng: torch.Generator) -> nn.Module:
        return MODES[self.config.mode](model, self.config, task, rng)

    def check_model(self, architecture: PretrainedConfig | None, task_kind: str) -> str | None:
        if self.config.mode != "lora":
            return None
        return check_on_skeleton(architecture, task_kind, lambda model: target_problem(model, self.config))
