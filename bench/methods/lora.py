"""LoRA (Hu et al. 2022) through peft: low-rank factors on the attention (and optionally MLP) weights.

Classification heads stay trainable (``modules_to_save``): a fresh head must be learned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.config import doc
from bench.methods.base import Method
from bench.registry import METHODS
from bench.seeding import derive_seed, isolated_rng

# peft's default target names per architecture family, extended by the MLP when asked.
ATTENTION_TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"]}
MLP_TARGETS = {"gpt2": ["c_fc"], "llama": ["up_proj", "down_proj"], "qwen2": ["up_proj", "down_proj"]}
HEAD_NAMES = ["score", "classifier"]


@dataclass(frozen=True, kw_only=True)
class LoraSettings:
    rank: int = doc("Rank r of the low-rank factors.", 8)
    alpha: float = doc("Scaling numerator (update scaled by alpha / rank).", 16.0)
    dropout: float = doc("Dropout on the LoRA input (0 keeps runs deterministic).", 0.0)
    target: str = doc("'attention' (query/value or fused qkv) or 'all' (attention and MLP).", "attention")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError("rank must be at least 1")
        if self.target not in ("attention", "all"):
            raise ValueError("target must be 'attention' or 'all'")


def lora_targets(model: nn.Module, target: str) -> list[str]:
    family = getattr(model.config, "model_type", "llama")
    names = list(ATTENTION_TARGETS.get(family, ["q_proj", "v_proj"]))
    if target == "all":
        names += MLP_TARGETS.get(family, ["up_proj", "down_proj"])
    return names


def lora_config(model: nn.Module, settings: LoraSettings, task: Any) -> Any:
    from peft import LoraConfig

    present = {n.split(".")[-1] for n, _ in model.named_modules()}
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=lora_targets(model, settings.target),
                      modules_to_save=[h for h in HEAD_NAMES if h in present] if task.kind == "classification" else None,
                      fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2")


def apply_lora(model: nn.Module, settings: LoraSettings, task: Any, rng: torch.Generator) -> nn.Module:
    from peft import get_peft_model

    with isolated_rng(derive_seed(int(torch.randint(2**31, (1,), generator=rng)))):
        return get_peft_model(model, lora_config(model, settings, task))


@METHODS.register("lora")
class Lora(Method):
    """LoRA factors on the attention weights (peft); the base stays frozen."""

    Config = LoraSettings

    def build(self, model: nn.Module, task: Any, rng: torch.Generator) -> nn.Module:
        return apply_lora(model, self.config, task, rng)
