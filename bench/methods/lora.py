"""LoRA (Hu et al. 2022) through peft: low-rank factors on the attention (and optionally MLP) weights.

The layers follow peft's defaults for the model type (query/value, or the fused qkv), or the scenario
names them (``target_modules``); an architecture peft does not know, or a name that matches no layer,
is refused with the layers the model has (``check_model`` before loading weights, ``build`` at run time).

Classification heads stay trainable (``modules_to_save``): a fresh head must be learned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from bench.api.config import doc
from bench.api.method import Method
from bench.api.registry import METHODS
from bench.api.seeding import derive_seed, isolated_rng
from bench.api.vocabulary import TaskKind
from bench.methods._common import check_on_skeleton

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PretrainedConfig

    from bench.world.tasks import Task  # named in annotations only: transformers loads lazily

MLP_TARGETS = {"gpt2": ["c_fc"], "llama": ["up_proj", "down_proj"], "qwen2": ["up_proj", "down_proj"],
               **{t: ["intermediate.dense", "output.dense"] for t in ("bert", "roberta", "xlm-roberta", "electra")}}
"""Feed-forward layers added by ``target: all``; other model types fall back to peft's IA3 feed-forward map."""
HEAD_NAMES = ["score", "classifier"]


@dataclass(frozen=True, kw_only=True)
class LoraSettings:
    rank: int = doc("Rank r of the low-rank factors.", 8)
    alpha: float = doc("Scaling numerator (update scaled by alpha / rank).", 16.0)
    dropout: float = doc("Dropout on the LoRA input (0 keeps runs deterministic).", 0.0)
    target: str = doc("'attention' (query/value or fused qkv) or 'all' (attention and MLP).", "attention")
    target_modules: tuple[str, ...] = doc(
        "Layers to adapt, by name or dotted name suffix as peft matches them (e.g. ['query', 'value'] on "
        "BERT, ['c_attn'] on GPT-2); empty: peft's defaults for the model type, widened by 'target'.", ())

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError("rank must be at least 1")
        if self.target not in ("attention", "all"):
            raise ValueError("target must be 'attention' or 'all'")
        if any(not isinstance(t, str) or not t for t in self.target_modules):
            raise ValueError("target_modules must be non-empty layer names")


ADAPTABLE = ("Linear", "Conv1D", "Conv1d", "Conv2d", "Embedding", "Linear4bit")
"""Module classes peft's LoRA (and bitsandbytes' 4-bit layers) can carry factors on."""


def adaptable_layers(model: nn.Module) -> list[str]:
    """Distinct 'parent.leaf' names of the layers LoRA could adapt (heads excluded), in model order."""
    names = [n for n, m in model.named_modules() if type(m).__name__ in ADAPTABLE and n.split(".")[-1] not in HEAD_NAMES]
    return list(dict.fromkeys(".".join(n.split(".")[-2:]) for n in names))


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)  # peft's rule for a list of target names


def default_targets(model_type: str, target: str) -> list[str] | None:
    """peft's default LoRA targets for ``model_type`` (plus the MLP for 'all'); None when peft has none."""
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
    )

    attention = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if attention is None:
        return None
    names = list(attention)
    if target == "all":
        names += MLP_TARGETS.get(model_type, TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, []))
    return list(dict.fromkeys(names))


def target_problem(model: nn.Module, settings: LoraSettings) -> str | None:
    """Why LoRA cannot be placed on ``model`` with ``settings`` (unknown architecture, or named layers
    that do not exist), listing the layers it has; None when it can."""
    model_type = getattr(model.config, "model_type", "?")
    layers = adaptable_layers(model)
    names = list(settings.target_modules) or default_targets(model_type, settings.target)
    if names is None:
        return (f"no default LoRA layers for model type '{model_type}' ({type(model).__name__}); name them with "
                f"the method param target_modules; layers it has: {', '.join(layers)}")
    present = [n for n, m in model.named_modules() if type(m).__name__ in ADAPTABLE]
    missing = [t for t in names if not any(_matches(n, t) for n in present)]
    if missing:
        return (f"LoRA target(s) {', '.join(missing)} match no layer of {type(model).__name__} "
                f"(model type '{model_type}'); layers it has: {', '.join(layers)}")
    return None


def lora_targets(model: nn.Module, settings: LoraSettings) -> list[str]:
    """The layer names LoRA adapts on ``model``; raises ``ValueError`` naming the layers it has."""
    problem = target_problem(model, settings)
    if problem:
        raise ValueError(problem)
    return list(settings.target_modules) or default_targets(model.config.model_type, settings.target) or []


def lora_config(model: nn.Module, settings: LoraSettings, task: Task) -> LoraConfig:
    from peft import LoraConfig

    present = {n.split(".")[-1] for n, _ in model.named_modules()}
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=lora_targets(model, settings),
                      modules_to_save=[h for h in HEAD_NAMES if h in present] if task.kind == TaskKind.CLASSIFICATION else None,
                      fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2")


def apply_lora(model: nn.Module, settings: LoraSettings, task: Task, rng: torch.Generator) -> nn.Module:
    from peft import get_peft_model

    with isolated_rng(derive_seed(int(torch.randint(2**31, (1,), generator=rng)))):
        return get_peft_model(model, lora_config(model, settings, task))


@METHODS.register("lora")
class Lora(Method):
    """LoRA factors on the attention weights (peft); the base stays frozen."""

    Config = LoraSettings
    batchable = True

    def build(self, model: nn.Module, task: Task, rng: torch.Generator) -> nn.Module:
        return apply_lora(model, self.config, task, rng)

    def check_model(self, architecture: PretrainedConfig | None, task_kind: str) -> str | None:
        return check_on_skeleton(architecture, task_kind, lambda model: target_problem(model, self.config))
