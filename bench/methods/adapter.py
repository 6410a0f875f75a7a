"""Bottleneck adapters after Houlsby et al. 2019 ("Parameter-Efficient Transfer Learning for NLP").

Each transformer block gets two adapters: one on the output of the attention sublayer and one on the
output of the feed-forward sublayer, both before the residual addition, as in Houlsby's Figure 2. An
adapter is ``h + W_up(act(W_down h))`` with a bottleneck of ``size`` units; ``W_up`` starts at zero
so the adapted model starts as the base model (Houlsby initialise near identity; exact identity is
the AdapterHub convention). Layer norms are trained too (Houlsby do), and a classification head.

peft has no Houlsby adapter, so this is a small module attached with forward hooks: the Hugging Face
block code runs unchanged and the adapters are ordinary submodules of each block (so they move with
the model and Opacus sees plain ``nn.Linear`` layers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.config import doc
from bench.methods._common import decoder_layers, freeze, seeded, unfreeze_heads
from bench.methods.base import Method
from bench.registry import METHODS

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
ATTENTION_CHILDREN = ("attn", "self_attn", "attention")
MLP_CHILDREN = ("mlp", "feed_forward")


class Bottleneck(nn.Module):
    """``h + up(act(down(h)))``; zero ``up`` makes it the identity at initialisation."""

    def __init__(self, width: int, size: int, activation: str):
        super().__init__()
        self.down = nn.Linear(width, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, width)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


def _adapt_output(adapter: Bottleneck) -> Callable[..., Any]:
    """A forward hook that passes a sublayer's output (a tensor, or a tuple led by one) through ``adapter``."""

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (adapter(output[0]),) + output[1:]
        return adapter(output)

    return hook


def _child(block: nn.Module, names: tuple[str, ...]) -> nn.Module:
    for name in names:
        if hasattr(block, name):
            return getattr(block, name)
    raise ValueError(f"{type(block).__name__} has none of the sublayers {names}")


def insert_adapters(model: nn.Module, size: int, activation: str) -> list[Bottleneck]:
    """Attach an adapter after the attention and the feed-forward sublayer of every block."""
    width = model.config.hidden_size
    device = next(model.parameters()).device
    adapters = []
    for block in decoder_layers(model):
        for slot, children in (("adapter_attention", ATTENTION_CHILDREN), ("adapter_mlp", MLP_CHILDREN)):
            adapter = Bottleneck(width, size, activation).to(device)
            block.add_module(slot, adapter)
            _child(block, children).register_forward_hook(_adapt_output(adapter))
            adapters.append(adapter)
    return adapters


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


@dataclass(frozen=True, kw_only=True)
class AdapterSettings:
    size: int = doc("Bottleneck width m (Houlsby use 8 to 256).", 16)
    activation: str = doc(f"Nonlinearity inside the adapter: {', '.join(ACTIVATIONS)}.", "relu")
    train_norms: bool = doc("Also train every layer norm (as Houlsby et al. do).", True)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("size must be at least 1")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}")


def apply_adapters(model: nn.Module, settings: AdapterSettings, task: Any, rng: torch.Generator) -> nn.Module:
    freeze(model)
    with seeded(rng):
        insert_adapters(model, settings.size, settings.activation)
    if settings.train_norms:
        for module in model.modules():
            if is_norm(module):
                for p in module.parameters():
                    p.requires_grad_(True)
    unfreeze_heads(model, task)
    return model


@METHODS.register("adapter")
class HoulsbyAdapter(Method):
    """Bottleneck adapters after attention and feed-forward sublayers (Houlsby et al. 2019)."""

    Config = AdapterSettings

    def build(self, model: nn.Module, task: Any, rng: torch.Generator) -> nn.Module:
        return apply_adapters(model, self.config, task, rng)
