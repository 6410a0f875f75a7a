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
from typing import TYPE_CHECKING

import torch
from torch import nn

from bench.api.config import doc
from bench.api.method import Method
from bench.api.registry import METHODS
from bench.methods._common import HookOutput, check_on_skeleton, decoder_layers, freeze, seeded, unfreeze_heads

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from bench.world.tasks import Task  # named in annotations only: transformers loads lazily

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
ATTENTION_SUBLAYERS = ("attn", "self_attn", "attention.output.dense", "attention")
"""Where the attention sublayer's output leaves a block before the residual addition, first match wins:
GPT-2 ``attn``, Llama ``self_attn``, BERT-family ``attention.output.dense`` (their ``attention`` module
already adds the residual and normalises), DistilBERT / GPT-NeoX ``attention``."""
MLP_SUBLAYERS = ("mlp", "feed_forward", "ffn", "output.dense")
"""Likewise for the feed-forward sublayer (BERT-family: ``output.dense``, the down projection)."""


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


def _adapt_output(adapter: Bottleneck) -> Callable[[nn.Module, tuple[torch.Tensor, ...], HookOutput], HookOutput]:
    """A forward hook that passes a sublayer's output (a tensor, or a tuple led by one) through ``adapter``."""

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: HookOutput) -> HookOutput:
        if isinstance(output, tuple):
            return (adapter(output[0]),) + output[1:]
        return adapter(output)

    return hook


def _has(block: nn.Module, path: str) -> bool:
    try:
        block.get_submodule(path)
    except AttributeError:
        return False
    return True


def sublayer_paths(block: nn.Module, named: tuple[str, ...]) -> list[str] | str:
    """The attention and feed-forward sublayers of ``block`` (or the scenario's ``named`` ones), or why
    there are none, listing the block's modules."""
    if named:
        missing = [p for p in named if not _has(block, p)]
        found = list(named)
    else:
        found = [next((p for p in options if _has(block, p)), "") for options in (ATTENTION_SUBLAYERS, MLP_SUBLAYERS)]
        missing = [f"one of ({', '.join(o)})" for o, p in zip((ATTENTION_SUBLAYERS, MLP_SUBLAYERS), found) if not p]
    if missing:
        modules = ", ".join(n for n, _ in block.named_modules() if n and n.count(".") < 3)
        return (f"{type(block).__name__} has no sublayer {'; no '.join(missing)}; name them with the method param "
                f"sublayers (dotted paths inside a block); its modules: {modules}")
    return found


def adapter_problem(model: nn.Module, settings: AdapterSettings) -> str | None:
    """Why adapters cannot be placed in ``model`` (no blocks, or no matching sublayers), or None."""
    try:
        block = decoder_layers(model)[0]
    except ValueError as error:
        return str(error)
    found = sublayer_paths(block, settings.sublayers)
    return found if isinstance(found, str) else None


def insert_adapters(model: nn.Module, size: int, activation: str, named: tuple[str, ...] = ()) -> list[Bottleneck]:
    """Attach an adapter after the attention and the feed-forward sublayer (or each named one) of every block."""
    device = next(model.parameters()).device
    adapters = []
    for block in decoder_layers(model):
        paths = sublayer_paths(block, named)
        if isinstance(paths, str):
            raise ValueError(paths)
        slots = ("adapter_attention", "adapter_mlp") if not named else [f"adapter_{i}" for i in range(len(paths))]
        for slot, path in zip(slots, paths):
            adapter = Bottleneck(_output_width(block.get_submodule(path), model), size, activation).to(device)
            block.add_module(slot, adapter)
            block.get_submodule(path).register_forward_hook(_adapt_output(adapter))
            adapters.append(adapter)
    return adapters


def _output_width(sublayer: nn.Module, model: nn.Module) -> int:
    """A linear layer's output width (``Conv1D`` calls it ``nf``); a whole sublayer returns the hidden width."""
    return getattr(sublayer, "out_features", None) or getattr(sublayer, "nf", None) or model.config.hidden_size


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


@dataclass(frozen=True, kw_only=True)
class AdapterSettings:
    size: int = doc("Bottleneck width m (Houlsby use 8 to 256).", 16)
    activation: str = doc(f"Nonlinearity inside the adapter: {', '.join(ACTIVATIONS)}.", "relu")
    train_norms: bool = doc("Also train every layer norm (as Houlsby et al. do).", True)
    sublayers: tuple[str, ...] = doc(
        "Dotted paths inside each transformer block whose outputs get an adapter (e.g. "
        "['attention.output.dense', 'output.dense'] on BERT); empty: attention and feed-forward, found by name.", ())

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("size must be at least 1")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}")


def apply_adapters(model: nn.Module, settings: AdapterSettings, task: Task, rng: torch.Generator) -> nn.Module:
    freeze(model)
    with seeded(rng):
        insert_adapters(model, settings.size, settings.activation, settings.sublayers)
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
    batchable = True

    def build(self, model: nn.Module, task: Task, rng: torch.Generator) -> nn.Module:
        return apply_adapters(model, self.config, task, rng)

    def check_model(self, architecture: PretrainedConfig | None, task_kind: str) -> str | None:
        return check_on_skeleton(architecture, task_kind, lambda model: adapter_problem(model, self.config))
