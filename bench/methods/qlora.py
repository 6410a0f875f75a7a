"""QLoRA (Dettmers et al. 2023): LoRA factors over a frozen base quantised to 4 bits with bitsandbytes.

The base model arrives in full precision (the runner loads every model the same way); ``build``
replaces every linear layer inside the transformer blocks by a ``bitsandbytes.nn.Linear4bit`` (NF4 by
default, optional double quantisation) and then adds peft LoRA factors on the attention weights.
Embeddings, the LM head and a classification head stay in full precision, as in QLoRA (the head is
trained). bitsandbytes 0.50 quantises and runs 4-bit layers on CPU as well as on CUDA; if the
installed bitsandbytes cannot, ``build`` raises with the reason (the run is recorded as failed):
never a silent fall back to plain LoRA.

GPT-2 keeps its weights transposed (``Conv1D``); they are transposed into ``Linear4bit``'s
(out, in) layout, so LoRA then runs without ``fan_in_fan_out``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn

from bench.api.config import doc
from bench.api.method import Method
from bench.api.registry import METHODS
from bench.api.vocabulary import TaskKind
from bench.methods._common import HEAD_NAMES, check_on_skeleton, decoder_layers, freeze, seeded
from bench.methods.lora import LoraSettings, lora_targets, target_problem

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from bench.world.tasks import Task  # named in annotations only: transformers loads lazily

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, kw_only=True)
class QloraSettings(LoraSettings):
    quant_type: str = doc("4-bit data type: 'nf4' (QLoRA's NormalFloat) or 'fp4'.", "nf4")
    double_quant: bool = doc("Quantise the quantisation constants too (QLoRA's double quantisation).", True)
    compute_dtype: str = doc("dtype of the 4-bit matmuls: 'auto' (bfloat16 on a CUDA device that has it, "
                             "else float32), 'float32', 'bfloat16' or 'float16'.", "auto")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError("quant_type must be 'nf4' or 'fp4'")
        if self.compute_dtype not in ("auto", *COMPUTE_DTYPES):
            raise ValueError(f"compute_dtype must be one of auto, {', '.join(COMPUTE_DTYPES)}")


def _bitsandbytes() -> ModuleType:
    try:
        import bitsandbytes as bnb
    except ImportError as error:  # the run fails with the reason instead of silently training LoRA
        raise RuntimeError(f"qlora needs bitsandbytes for 4-bit layers: {error}") from None
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    return bnb


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return COMPUTE_DTYPES[name]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    # transformers' Conv1D (GPT-2) stores (in, out); nn.Linear stores (out, in).
    return module.weight.detach().t() if type(module).__name__ == "Conv1D" else module.weight.detach()


def quantize_linear(module: nn.Module, settings: QloraSettings, device: torch.device) -> nn.Module:
    bnb = _bitsandbytes()
    weight = _weight_out_in(module).float().cpu().contiguous()
    out_features, in_features = weight.shape
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=module.bias is not None,
                              compute_dtype=compute_dtype(settings.compute_dtype, device),
                              compress_statistics=settings.double_quant, quant_type=settings.quant_type)
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=settings.double_quant,
                                     quant_type=settings.quant_type)
    if module.bias is not None:
        layer.bias = nn.Parameter(module.bias.detach().float().cpu().clone(), requires_grad=False)
    # bitsandbytes repacks CPU weights at the first no-grad eval call (needs out_features % 32 == 0, which
    # Llama's MLP widths miss, and changes numerics between training and evaluation): keep one format.
    layer.support_avx512bf16_for_cpu = False
    layer = layer.to(device)  # moving a Params4bit quantises it
    if not getattr(layer.weight, "bnb_quantized", False):
        raise RuntimeError(f"bitsandbytes did not quantise a layer on {device}")
    return layer


def quantize_blocks(model: nn.Module, settings: QloraSettings) -> int:
    """Replace every linear layer inside the transformer blocks by a 4-bit one; returns how many."""
    device = next(model.parameters()).device
    replaced = 0
    for block in decoder_layers(model):
        for name, module in list(block.named_modules()):
            if type(module).__name__ not in ("Linear", "Conv1D") or name.split(".")[-1] in HEAD_NAMES:
                continue
            parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
            setattr(parent, name.split(".")[-1], quantize_linear(module, settings, device))
            replaced += 1
    model.is_loaded_in_4bit = True  # peft dispatches LoRA onto bnb layers only for models marked so
    return replaced


@METHODS.register("qlora")
class Qlora(Method):
    """LoRA over a 4-bit (NF4) quantised frozen base (Dettmers et al. 2023; bitsandbytes + peft)."""

    Config = QloraSettings

    def check_model(self, architecture: PretrainedConfig | None, task_kind: str) -> str | None:
        return check_on_skeleton(architecture, task_kind, lambda model: target_problem(model, self.config))

    def build(self, model: nn.Module, task: Task, rng: torch.Generator) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        freeze(model)
        self.quantized_layers = quantize_blocks(model, self.config)
        present = {n.split(".")[-1] for n, _ in model.named_modules()}
        config = LoraConfig(r=self.config.rank, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
                            target_modules=lora_targets(model, self.config),
                            modules_to_save=[h for h in HEAD_NAMES if h in present] if task.kind == TaskKind.CLASSIFICATION else None)
        with seeded(rng):
            return get_peft_model(model, config)
