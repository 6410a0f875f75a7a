"""Helpers shared by the post-training methods (not a method: it registers nothing, so the plugin
loader's import of it is harmless; the underscore only says it is private to this package)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from torch import nn

from bench.api.seeding import derive_seed, isolated_rng
from bench.api.vocabulary import TaskKind
from bench.world.tasks import widened

if TYPE_CHECKING:  # named in annotations only
    from transformers import PretrainedConfig, PreTrainedTokenizerBase
    from transformers.utils import ModelOutput

    from bench.world.tasks import Task

HEAD_NAMES = ("score", "classifier")
"""Classification heads of Hugging Face sequence-classification models (fresh, so always trained)."""



HookOutput: TypeAlias = torch.Tensor | tuple[torch.Tensor, ...]
"""What a module's forward returns to a forward hook (a tensor, or a tuple led by one)."""

def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze_heads(model: nn.Module, task: Task) -> None:
    """A classification task needs its freshly initialised head trained."""
    if task.kind != TaskKind.CLASSIFICATION:
        return
    for name, module in model.named_modules():
        if name.split(".")[-1] in HEAD_NAMES:
            for p in module.parameters():
                p.requires_grad_(True)


def seeded(rng: torch.Generator) -> contextlib.AbstractContextManager[None]:
    """Library code that initialises weights from torch's global RNG, made reproducible from ``rng``."""
    return isolated_rng(derive_seed(int(torch.randint(2**31, (1,), generator=rng))))


def tokenizer_of(model: nn.Module) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside the model (zoo directory or hub name); pad token as the runner sets it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks (GPT-2's ``transformer.h``, Llama's ``model.layers``, ...)."""
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} decoder layers of {type(model).__name__}")


class Wrapper(nn.Module):
    """A module around a Hugging Face model that forwards unknown attributes (``config``,
    ``generate``, ...) to it, so handles and attacks use it like the model itself."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def forward(self, *args: object, **kwargs: object) -> ModelOutput:
        return self.inner(*args, **kwargs)

    def generate(self, *args: object, **kwargs: object) -> torch.Tensor:
        return self.inner.generate(*args, **kwargs)


def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor) -> torch.Tensor:
    """Sum over response tokens (labels != -100) of log p(token | prefix), per sequence."""
    logits = widened(model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1])
    targets = labels[:, 1:]
    keep = targets != -100
    picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * keep).sum(dim=1)


def skeleton(architecture: PretrainedConfig | None, task_kind: str) -> nn.Module:
    """The module tree the runner would load for a transformers config, on the meta device: no weights
    read, no memory, so methods can check where they attach before a run (``Method.check_model``)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if task_kind == TaskKind.CLASSIFICATION else AutoModelForCausalLM
    with isolated_rng(0), torch.device("meta"):
        return auto.from_config(architecture)


def check_on_skeleton(architecture: PretrainedConfig | None, task_kind: str,
                      check: Callable[[nn.Module], str | None]) -> str | None:
    """``check(model)`` on the skeleton of ``architecture``; None where there is no config to build it from
    (zoo models: their architectures are known) or transformers cannot build it (load will say why)."""
    if architecture is None:
        return None
    try:
        model = skeleton(architecture, task_kind)
    except Exception:  # an exotic config that only loads with its weights: checked again at build
        return None
    return check(model)
