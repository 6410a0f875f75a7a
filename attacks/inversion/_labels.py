"""The last token of each causal-LM sequence: recovered from the output-side gradient.

In next-token training the final token y_s of sequence s is only ever a label (its own output has no
target and nothing attends to it), so no span check can see it. Once the rest of every sequence is
known, though, the loss is linear in the unknown one-hot labels:

    G = A - sum_s w_s * d logit_{s, y_s} / d theta,

where A is the gradient of the loss with every known label in place and a bare log-sum-exp at each
sequence's last position (one backward pass on the recovered prefixes), w_s = 1 / (B * n_s) the
weight of a token of s under the per-example mean loss (``bench.data.token_losses``), and G the
observed gradient (-update / lr). The residual R = A - G is a sum of one known "atom" per sequence,
chosen among the vocabulary, on parameters where d logit_v / d theta is analytic and touches nothing
but the output path:

- output embedding rows (lm_head, trainable in full fine-tuning): atom = e_v h_s^T (h_s the final
  hidden state). With tied embeddings (GPT-2) the rows of tokens that occur as inputs also carry the
  input-embedding gradient, so those rows are left out.
- the final norm's gain (and bias): atom = W_out[v] * n_s (and W_out[v]), n_s the normalised hidden.

Atoms are picked greedily (orthogonal-matching-pursuit style: the best projection over all
unassigned sequences and tokens, subtract, repeat), batched over the vocabulary. When none of these
parameters is trainable (LoRA, adapters, prompt tuning) the last token falls back to the round-start
model's most likely next token: a guess, not a recovery.

Departure from DAGER, which scores only the tokens that are inputs.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FINAL_NORM = re.compile(r"(?:^|\.)(?:ln_f|norm|final_layernorm)$")


def final_norm(model: nn.Module) -> nn.Module | None:
    found = [m for name, m in model.named_modules() if FINAL_NORM.search(name) and getattr(m, "weight", None) is not None]
    return found[-1] if found else None


def last_tokens(model: nn.Module, prefixes: list[list[int]], observed: dict[str, torch.Tensor],
                names: dict[int, str]) -> list[int]:
    """The most likely final token of each prefix; ``observed`` = named observed mean gradient."""
    if not prefixes:
        return []
    output = model.get_output_embeddings()
    norm = final_norm(model)
    roles = {"out": output.weight, "gain": getattr(norm, "weight", None), "bias": getattr(norm, "bias", None)}
    roles = {role: p for role, p in roles.items() if p is not None and id(p) in names and p.requires_grad}
    if not roles:
        return _prior_guess(model, prefixes)
    hidden, known_gradient = _known_part(model, output, prefixes, list(roles.values()))
    residual = {role: (a - observed[names[id(p)]].to(a)).float() for (role, p), a in zip(roles.items(), known_gradient)}
    tied = output.weight is model.get_input_embeddings().weight
    allowed = torch.ones(output.weight.shape[0], dtype=torch.bool, device=hidden.device)
    if tied:
        allowed[torch.tensor(sorted({t for s in prefixes for t in s}), device=hidden.device)] = False
    normalised = _normalised(hidden, norm, roles)
    weights = torch.tensor([1.0 / (len(prefixes) * len(s)) for s in prefixes], device=hidden.device)
    return _pursue(residual, output.weight.detach().float(), hidden, normalised, allowed, weights)


def _batch(prefixes: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in prefixes)
    ids = torch.zeros((len(prefixes), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(prefixes):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def _known_part(model: nn.Module, output: nn.Module, prefixes: list[list[int]], params: list[torch.Tensor]):
    """(final hidden state at each prefix's last position, gradient A of the known part of the loss)."""
    device = output.weight.device
    ids, mask = _batch(prefixes, device)
    seen: list[torch.Tensor] = []
    handle = output.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with torch.enable_grad():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            lengths = mask.sum(1)
            last = lengths - 1
            rows = torch.arange(len(prefixes), device=device)
            labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none", ignore_index=-100).sum(1)
            lse = torch.logsumexp(logits[rows, last], dim=-1)
            loss = ((nll + lse) / (lengths.float() * len(prefixes))).sum()
            gradient = torch.autograd.grad(loss, params)
    finally:
        handle.remove()
    hidden = seen[0][torch.arange(len(prefixes), device=device), mask.sum(1) - 1].detach().float()
    return hidden, [g.detach() for g in gradient]


def _normalised(hidden: torch.Tensor, norm: nn.Module | None, roles: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The norm's output before its affine part: (h - bias) / gain."""
    if "gain" not in roles:
        return None
    gain = norm.weight.detach().float()
    bias = norm.bias.detach().float() if getattr(norm, "bias", None) is not None else 0.0
    return (hidden - bias) / torch.where(gain.abs() > 1e-8, gain, torch.full_like(gain, 1e-8))


def _pursue(residual: dict[str, torch.Tensor], out_weight: torch.Tensor, hidden: torch.Tensor,
            normalised: torch.Tensor | None, allowed: torch.Tensor, weights: torch.Tensor) -> list[int]:
    count = hidden.shape[0]
    chosen = [-1] * count
    for _ in range(count):
        score = _scores(residual, out_weight, hidden, normalised, allowed)
        score[[s for s in range(count) if chosen[s] >= 0]] = -torch.inf
        s, v = divmod(int(torch.argmax(score)), score.shape[1])
        chosen[s] = v
        _subtract(residual, out_weight, hidden, normalised, allowed, s, v, float(weights[s]))
    return chosen


def _scores(residual: dict[str, torch.Tensor], out_weight: torch.Tensor, hidden: torch.Tensor,
            normalised: torch.Tensor | None, allowed: torch.Tensor) -> torch.Tensor:
    """<R, atom(s, v)> / |atom(s, v)| for every sequence s and token v, shape (sequences, vocab)."""
    numerator = hidden.new_zeros(hidden.shape[0], out_weight.shape[0])
    energy = torch.zeros_like(numerator)
    if "out" in residual:
        numerator += (hidden @ residual["out"].T) * allowed
        energy += (hidden.pow(2).sum(1, keepdim=True)) * allowed
    if "gain" in residual and normalised is not None:
        numerator += (normalised * residual["gain"]) @ out_weight.T
        energy += normalised.pow(2) @ out_weight.pow(2).T
    if "bias" in residual:
        numerator += (residual["bias"] @ out_weight.T)[None, :]
        energy += out_weight.pow(2).sum(1)[None, :]
    return numerator / energy.clamp_min(1e-30).sqrt()


def _subtract(residual: dict[str, torch.Tensor], out_weight: torch.Tensor, hidden: torch.Tensor,
              normalised: torch.Tensor | None, allowed: torch.Tensor, s: int, v: int, weight: float) -> None:
    if "out" in residual and bool(allowed[v]):
        residual["out"][v] -= weight * hidden[s]
    if "gain" in residual and normalised is not None:
        residual["gain"] -= weight * out_weight[v] * normalised[s]
    if "bias" in residual:
        residual["bias"] -= weight * out_weight[v]


def _prior_guess(model: nn.Module, prefixes: list[list[int]]) -> list[int]:
    ids, mask = _batch(prefixes, next(model.parameters()).device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return logits[torch.arange(len(prefixes)), mask.sum(1) - 1].argmax(-1).tolist()


def complete(model: nn.Module, prefixes: list[list[int]], observed: dict[str, torch.Tensor] | None,
             names: dict[int, Any]) -> list[list[int]]:
    """Prefixes with their recovered final token appended."""
    finals = last_tokens(model, prefixes, observed or {}, names) if observed is not None else _prior_guess(model, prefixes)
    return [list(p) + [int(t)] for p, t in zip(prefixes, finals)]
