"""Where split learning cuts a transformer: its blocks, the embedding output, the module whose output
crosses the wire at a given cut. Pure torch (no engine state), so that both the split protocol
(``bench.engine.protocols.split``) and an attacker building the cut of a public base model use the same
definition of "the activations at cut c"."""

from __future__ import annotations

from torch import nn


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks (GPT-2 ``transformer.h``, Llama ``model.layers``), through any wrapper."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("h", "layers") and len(module) > 0:
            return module
    raise ValueError(f"split learning: cannot find the transformer blocks of {type(model).__name__}")


def embedding_output(model: nn.Module) -> nn.Module:
    """The module whose output enters the first block: GPT-2's embedding dropout (token + position
    embeddings), Llama's token embedding (positions enter inside the blocks)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "drop" and isinstance(module, nn.Dropout):
            return module
    for name, module in model.named_modules():
        if name.split(".")[-1] == "embed_tokens":
            return module
    raise ValueError(f"split learning: cannot find the embedding output of {type(model).__name__}")


def cut_module(model: nn.Module, cut: int) -> nn.Module:
    """The module whose output crosses the wire at ``cut`` blocks."""
    blocks = blocks_of(model)
    if cut > len(blocks):
        raise ValueError(f"cut_layer {cut} exceeds the model's {len(blocks)} blocks")
    return embedding_output(model) if cut == 0 else blocks[cut - 1]
