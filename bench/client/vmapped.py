"""What running a Hugging Face model for many clients at once under ``torch.func.vmap`` takes.

Shared by ``bench.client.batched`` (plain local training) and ``bench.client.private_group`` (DP-SGD):
a model called with one client's trainable tensors (``Bound``), the forward settings vmap needs
(``vmappable``), clients' batches stacked to one shape (``stack_batches``), their trainable tensors stacked
(``stacked_copies``), one vmapped call whose refusal at a group's first step becomes ``Unbatchable`` (the
caller then trains those clients one after another), and what a group trainer returns per client (``Trained``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.client.device import autocast

if TYPE_CHECKING:  # named in annotations only
    from transformers.utils import ModelOutput


class Unbatchable(Exception):
    """The model's forward failed under vmap at a group's first step (nothing was changed)."""


def vmapped_call(model: nn.Module, function: Callable[..., torch.Tensor], *args: object, first_step: bool) -> torch.Tensor:
    """``torch.func.vmap(function)(*args)`` with ``model``'s forward made vmappable (under the device's
    autocast). In a group's first vmapped pass (``first_step``) a failure means vmap refuses the model
    (data-dependent control flow, random ops): ``Unbatchable``, with nothing changed; later it is a real error."""
    try:
        with autocast(next(model.parameters()).device), vmappable(model):
            return torch.func.vmap(function, randomness="error")(*args)
    except Exception as error:
        if first_step:
            raise Unbatchable(f"forward cannot be vmapped: {str(error).splitlines()[0][:200]}") from error
        raise


@dataclass
class Trained:
    """What a group trainer gives back for one client."""

    result: dict[str, float]
    after: torch.Tensor
    """The client's trainable state after training, flat (as ``Method.get_flat``)."""


def stacked_copies(parameters: list[nn.Parameter], clients: int) -> list[torch.Tensor]:
    """Each trainable tensor repeated along a new leading client dimension: the group's leaf tensors."""
    return [p.detach().unsqueeze(0).repeat(clients, *([1] * p.dim())).requires_grad_(True) for p in parameters]


def copied(rng: torch.Generator) -> torch.Generator:
    """A generator in ``rng``'s state: a group draws on copies, so a refused first step leaves the jobs untouched."""
    twin = torch.Generator(device=rng.device)
    twin.set_state(rng.get_state())
    return twin


class Bound:
    """The model called with one client's trainable tensors (``torch.func.functional_call``), passed to
    ``example_losses`` where the model goes. The model's own methods (RLHF's ``reward`` and ``logprobs``,
    which call its inner model themselves) run with the same tensors in place; other attributes are the
    model's."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]):
        self.model, self.params = model, params

    def __call__(self, *args: object, **kwargs: object) -> ModelOutput:
        return torch.func.functional_call(self.model, self.params, args, kwargs, strict=False)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.model, name)
        if not (inspect.ismethod(attribute) and attribute.__self__ is self.model):
            return attribute
        call = _Call(self.model, attribute)
        params = {f"model.{key}": value for key, value in self.params.items()}

        def with_client_tensors(*args: object, **kwargs: object) -> object:
            return torch.func.functional_call(call, params, args, kwargs, strict=False)

        return with_client_tensors


class _Call(nn.Module):
    """A module whose forward is one method of ``model`` (a submodule here, so ``functional_call`` puts a
    client's tensors in place for the method's whole body, through every call it makes)."""

    def __init__(self, model: nn.Module, method: Callable[..., object]):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args: object, **kwargs: object) -> object:
        return self.method(*args, **kwargs)


@contextlib.contextmanager
def vmappable(model: nn.Module) -> Iterator[None]:
    """What the Hugging Face forward needs to run under vmap, restored afterwards:
    - attention through plain matmuls (``eager``) instead of SDPA, which has no vmap batching rule on
      CPU (vmap would loop over the clients, one kernel each, the cost batching removes);
    - a causal mask always built: with SDPA, transformers skips it when a batch has no padding by
      reading the mask's values in Python (``_ignore_causal_mask_sdpa``), which vmap cannot do; the
      skip is only a speed-up (the same attention either way)."""
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    try:
        from transformers import masking_utils
    except ImportError:
        masking_utils = None
    skip = getattr(masking_utils, "_ignore_causal_mask_sdpa", None)
    if implementation == "sdpa":
        config._attn_implementation = "eager"
    if skip is not None:
        masking_utils._ignore_causal_mask_sdpa = lambda *args, **kwargs: False
    try:
        yield
    finally:
        if implementation == "sdpa":
            config._attn_implementation = implementation
        if skip is not None:
            masking_utils._ignore_causal_mask_sdpa = skip


PAD_VALUES = {"attention_mask": 0, "labels": -100}


def stack_batches(batches: list[dict[str, torch.Tensor]], model: nn.Module) -> dict[str, torch.Tensor]:
    """Clients' batches stacked along a new leading dimension, sequences right-padded to the longest:
    input ids with the pad token, masks with 0, labels with -100, position ids continued."""
    out = {}
    for key in batches[0]:
        tensors = [b[key] for b in batches]
        length = max(t.shape[1] for t in tensors) if tensors[0].dim() > 1 else 0
        out[key] = torch.stack([_pad(key, t, length, model) for t in tensors])
    return out


def _pad(key: str, tensor: torch.Tensor, length: int, model: nn.Module) -> torch.Tensor:
    missing = length - tensor.shape[1] if tensor.dim() > 1 else 0
    if missing == 0:
        return tensor
    kind = key.removeprefix("rejected_")  # preference pairs: the rejected sequences pad like the chosen ones
    if kind == "position_ids":
        extra = torch.arange(tensor.shape[1], length, device=tensor.device, dtype=tensor.dtype)
        return torch.cat([tensor, extra.expand(tensor.shape[0], -1)], dim=1)
    if kind == "input_ids":
        value = getattr(getattr(model, "config", None), "pad_token_id", None)
        return F.pad(tensor, (0, missing), value=0 if value is None else int(value))
    if kind not in PAD_VALUES:
        raise ValueError(f"cannot pad batch key {key!r} of clients' batches to one length")
    return F.pad(tensor, (0, missing), value=PAD_VALUES[kind])
