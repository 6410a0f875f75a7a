"""Where the attention projections are, what their gradients reveal, and the inputs they receive.

Architectures are recognised by module names (a table of patterns, extended by adding one): GPT-2's
fused ``h.<i>.attn.c_attn`` (a ``Conv1D`` storing W as (in, out)) and Llama-style
``layers.<i>.self_attn.{q,k,v}_proj`` (``nn.Linear``, W as (out, in)). The same names hold inside a
peft wrapper, whose LoRA layer wraps the original module.

Probes per projection (see ``_span``):
- the full weight is trainable (full fine-tuning): dL/dW; its input-side space is the span of the
  layer inputs x_i.
- LoRA (h = W x + s B A x): dL/dA = s B^T G X^T (columns in x-space: a subspace of span(X), equal to
  it when B != 0 and the batch has fewer distinct inputs than r), and dL/dB = s G (A X)^T (columns of
  its transpose in r-space: span{A x_i}, checked by mapping candidates through A). dL/dA is zero while
  B = 0 (peft's initialisation, so in round 0), and either probe is informative only when the number
  of distinct inputs is below r: the matrix has rank <= r, and once the inputs outnumber r it fills
  the r-dimensional space. That is the LoRA identifiability limit.

Layer inputs are captured with a forward pre-hook on the projection module (its input is the
normalised hidden state the weight multiplies), and the forward stops there, so a check of layer L
costs the embedding and L blocks, nothing more.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from attacks.inversion._span import Probe

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import Cache

PreHook = Callable[[nn.Module, tuple[torch.Tensor, ...], dict[str, torch.Tensor]], None]
"""A forward pre-hook with keyword arguments: the module and the inputs it is about to receive."""

PROJECTION_PATTERNS = (
    re.compile(r"(?:^|\.)h\.(\d+)\.attn\.c_attn$"),
    re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.[qkv]_proj$"),
)
LORA_FACTOR = re.compile(r"\.lora_([AB])\.[^.]+\.weight$")


def projection_modules(model: nn.Module, layer: int) -> list[tuple[str, nn.Module]]:
    found = []
    for name, module in model.named_modules():
        for pattern in PROJECTION_PATTERNS:
            match = pattern.search(name)
            if match and int(match.group(1)) == layer:
                found.append((name, module))
    return found


def probes_for(model: nn.Module, layer: int, grads: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
               noise: dict[str, torch.Tensor] | None = None) -> list[Probe]:
    """Every probe the trainable gradients offer at ``layer``'s attention projections.

    ``grads``/``weights``/``noise`` map trainable names to the update, the state the inputs are
    computed at, and the update's per-element rounding noise (optional).
    """
    noise = noise or {}
    probes = []
    for name, module in projection_modules(model, layer):
        key = f"{name}.weight"
        if key in grads:
            flip = isinstance(module, nn.Linear)  # Linear stores (out, in), Conv1D (in, out)
            probes.append(Probe(_oriented(grads[key], flip), noise=_oriented(noise.get(key), flip)))
        probes += _lora_probes(name, grads, weights, noise)
    return probes


def _oriented(matrix: torch.Tensor | None, flip: bool) -> torch.Tensor | None:
    return None if matrix is None else (matrix.T if flip else matrix)


def _lora_probes(module_name: str, grads: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                 noise: dict[str, torch.Tensor]) -> list[Probe]:
    factors: dict[str, str] = {}
    for name in grads:
        if name.startswith(module_name + ".") and (match := LORA_FACTOR.search(name[len(module_name):])):
            factors[match.group(1)] = name
    if set(factors) != {"A", "B"}:
        return []
    a, b = factors["A"], factors["B"]
    lora_a = weights[a].detach().float()
    return [Probe(grads[a].T, noise=_oriented(noise.get(a), True)),
            Probe(grads[b].T, transform=lora_a, noise=_oriented(noise.get(b), True))]


class _Captured(Exception):
    """Raised by the hook to stop the forward once the wanted input is in hand."""


def capture_inputs(model: nn.Module, module: nn.Module, input_ids: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The input ``module`` receives for each sequence of ``input_ids`` (n, T) -> (n, T, width)."""
    outputs = []
    for start in range(0, input_ids.shape[0], chunk):
        outputs.append(_capture_once(model, [module], input_ids[start : start + chunk])[0])
    return torch.cat(outputs) if outputs else torch.zeros(0)


def _capture_once(model: nn.Module, modules: list[nn.Module], input_ids: torch.Tensor, cache: Cache | None = None,
                  past: int = 0) -> list[torch.Tensor]:
    """The inputs each of ``modules`` receives (in forward order); the forward stops at the last."""
    seen: dict[int, torch.Tensor] = {}

    def hook_for(index: int) -> PreHook:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], kwargs: dict[str, torch.Tensor]) -> None:
            seen[index] = (args[0] if args else next(iter(kwargs.values()))).detach()
            if len(seen) == len(modules):
                raise _Captured
        return hook

    handles = [m.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, m in enumerate(modules)]
    ids = input_ids.to(_device(model))
    mask = torch.ones((ids.shape[0], past + ids.shape[1]), dtype=torch.long, device=ids.device)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=cache is not None)
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if len(seen) < len(modules):
        raise RuntimeError("a projection module was not reached by the forward pass")
    return [seen[i].float() for i in range(len(modules))]


def capture_extensions(model: nn.Module, modules: list[nn.Module], prefixes: torch.Tensor, following: torch.Tensor,
                       budget: int = 2**15) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per module: the inputs it receives at the last position of every prefix + next-token
    extension (prefix-major order, (n * w, width)), and at the prefix's own last position (repeated
    to match).

    Each prefix runs once and leaves its key/value cache; the extensions then run one token each on
    the repeated cache. The forward stops at the deepest module, so the cache holds only the layers
    below it.
    """
    from transformers import DynamicCache

    width = following.numel()
    rows = max(1, budget // max(width * prefixes.shape[1], 1))
    last: list[list[torch.Tensor]] = [[] for _ in modules]
    previous: list[list[torch.Tensor]] = [[] for _ in modules]
    for start in range(0, prefixes.shape[0], rows):
        chunk = prefixes[start : start + rows]
        cache = DynamicCache(config=model.config)
        own = _capture_once(model, modules, chunk, cache)
        cache.batch_repeat_interleave(width)
        new = following.repeat(chunk.shape[0])[:, None]
        extended = _capture_once(model, modules, new, cache, past=chunk.shape[1])
        for i in range(len(modules)):
            last[i].append(extended[i][:, -1])
            previous[i].append(own[i][:, -1].repeat_interleave(width, 0))
    return [(torch.cat(a), torch.cat(b)) for a, b in zip(last, previous)]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def first_module(model: nn.Module, layer: int) -> nn.Module | None:
    modules = projection_modules(model, layer)
    return modules[0][1] if modules else None


def trainable_maps(model: nn.Module, grads: dict[str, torch.Tensor]) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` maps whose weight the update trains, in the order a forward pass reaches them.

    Any such map inside a causal decoder sees, at position i, a function of tokens 0..i only, and its
    weight gradient sum_i g_i x_i^T holds its inputs x_i in its row space: the span DAGER's growth
    needs, wherever the method put its trainable maps (a bottleneck adapter's projections, LoRA on
    feed-forward layers). The order is found by running one short sequence with pre-hooks.
    """
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and f"{name}.weight" in grads]
    order: dict[int, int] = {}

    def seen(module: nn.Module, _args: tuple[torch.Tensor, ...]) -> None:  # returns None: inputs unchanged
        order.setdefault(id(module), len(order))

    handles = [m.register_forward_pre_hook(seen) for _, m in found]
    ids = torch.zeros((1, 2), dtype=torch.long, device=_device(model))
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for handle in handles:
            handle.remove()
    return sorted((f for f in found if id(f[1]) in order), key=lambda f: order[id(f[1])])


def map_probe(module: nn.Linear, name: str, grads: dict[str, torch.Tensor],
              noise: dict[str, torch.Tensor] | None = None) -> Probe:
    """The probe of one trainable linear map: its weight gradient with the input side as columns."""
    key = f"{name}.weight"
    return Probe(grads[key].T, noise=_oriented((noise or {}).get(key), True))


def output_gradient_dimension(model: nn.Module, module: nn.Module, input_ids: torch.Tensor, rng: torch.Generator,
                              tolerance: float = 1e-4) -> int:
    """The dimension of the space the gradients at ``module``'s output occupy, from a sample.

    A weight gradient sum_i g_i x_i^T holds every input x_i only while the g_i are independent, i.e.
    fewer than the dimension they occupy. That is the output width unless the network confines them:
    every path from a GPT-2 block's output to the loss passes a LayerNorm, whose Jacobian removes the
    mean direction, so the g_i of a width-128 map span at most 127 dimensions. Measured on the zoo
    GPT-2 (adapter size 256, 8 x 23 inputs): the up projection's gradient had rank 127, one below its
    output width, and only a subspace of the inputs' span. The sample's g_i come from a random linear
    function of the logits (its form does not matter, only the space the network lets them fill);
    ``torch.autograd.grad`` leaves the parameters' ``.grad`` untouched.
    """
    outputs: list[torch.Tensor] = []

    def keep(_module: nn.Module, _args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        outputs.append(output)

    handle = module.register_forward_hook(keep)
    ids = input_ids.to(_device(model))
    try:
        with torch.enable_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            weights = torch.randn(logits.shape, generator=rng).to(logits)
            grads = torch.autograd.grad((logits * weights).sum(), outputs[:1])
    finally:
        handle.remove()
    rows = grads[0].reshape(-1, grads[0].shape[-1]).double()
    singular = torch.linalg.svdvals(rows)
    return int((singular > tolerance * singular[0]).sum()) if singular.numel() and singular[0] > 0 else 0
