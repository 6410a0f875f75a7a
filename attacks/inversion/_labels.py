"""The last token of each causal-LM sequence: recovered from the output-side gradient.

In next-token training the final token y_s of sequence s is only ever a label (its own output has no
target and nothing attends to it), so no span check can see it. Once the rest of every sequence is
known, though, the loss is linear in the unknown one-hot labels:

    G = A - sum_s w_s * d logit_{s, y_s} / d theta,

where A is the gradient of the loss with every known label in place and a bare log-sum-exp at each
sequence's last position (one backward pass on the recovered prefixes), w_s = 1 / (B * n_s) the
weight of a token of s under the per-example mean loss (``bench.world.tasks.token_losses``), and G the
observed gradient (-update / lr). The residual R = A - G is a sum of one known "atom" per sequence,
chosen among the vocabulary, on parameters where d logit_v / d theta is analytic and touches nothing
but the output path:

- output embedding rows (lm_head, trainable in full fine-tuning): atom = e_v h_s^T (h_s the final
  hidden state). With tied embeddings (GPT-2) the rows of tokens that occur as inputs also carry the
  input-embedding gradient, so those rows are left out.
- the final norm's gain (and bias): atom = W_out[v] * n_s (and W_out[v]), n_s the normalised hidden.
- the last block's MLP output map (GPT-2 ``mlp.c_proj``, Llama ``mlp.down_proj``), whose output at
  each position joins the residual stream that the final norm reads: atom = x_s (J_s^T W_out[v])^T,
  x_s its input at the sequence's last position and J_s the final norm's Jacobian there. The
  output-side rows and the norm say which tokens are labels but little about which sequence each
  belongs to: with tied embeddings the rows of tokens that are also inputs are left out, and the
  norm's atoms differ between sequences only through n_s. Two sequences whose labels are also
  inputs of the batch then had their final tokens swapped (3 of 41 batches of 4 x 8 notes on the
  width-64 zoo GPT-2, every other token exact). x_s is a distinct wide vector per sequence, so this
  atom pairs token and sequence. It is scored on each sequence's ``PAIRING_SHORTLIST`` best tokens
  by the other atoms (its norm needs J_s^T W_out[v], a width x width product per token).

Atoms are picked greedily (orthogonal-matching-pursuit style: the best projection over all
unassigned sequences and tokens, subtract, repeat), batched over the vocabulary. When none of these
parameters is trainable (LoRA, adapters, prompt tuning) the last token falls back to the round-start
model's most likely next token: a guess, not a recovery.

Departure from DAGER, which scores only the tokens that are inputs.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

FINAL_NORM = re.compile(r"(?:^|\.)(?:ln_f|norm|final_layernorm)$")
OUTPUT_PROJECTION = re.compile(r"(?:^|\.)(?:h|layers)\.(\d+)\.mlp\.(?:c_proj|down_proj)$")
PAIRING_SHORTLIST = 64
"""Tokens per sequence, by each of two cheap rankings, on which the last block's atom is scored."""
SEPARABLE = 1e-4
"""The last positions' inputs to the last block's MLP map count as independent above this relative
singular value (identical prefixes are not: their final tokens fall back to the pursuit)."""


def final_norm(model: nn.Module) -> nn.Module | None:
    found = [m for name, m in model.named_modules() if FINAL_NORM.search(name) and getattr(m, "weight", None) is not None]
    return found[-1] if found else None


def output_projection(model: nn.Module) -> nn.Module | None:
    """The last block's MLP output map (its output joins the residual stream at each position alone)."""
    found = [(int(m.group(1)), module) for name, module in model.named_modules() if (m := OUTPUT_PROJECTION.search(name))]
    return max(found, key=lambda f: f[0])[1] if found else None


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
    projection = output_projection(model) if norm is not None else None
    weight = getattr(projection, "weight", None)
    pairing = weight is not None and id(weight) in names and weight.requires_grad and weight.dim() == 2
    if pairing:
        roles["proj"] = weight
    watched = [norm, projection] if pairing else []
    hidden, captured, known_gradient = _known_part(model, output, prefixes, list(roles.values()), watched)
    residual = {role: (a - observed[names[id(p)]].to(a)).float() for (role, p), a in zip(roles.items(), known_gradient)}
    pairs = None
    if pairing:
        # (input width, output width) orientation: Conv1D stores W that way, nn.Linear transposed
        residual["proj"] = residual["proj"].T.contiguous() if isinstance(projection, nn.Linear) else residual["proj"]
        pairs = _Pairing(norm, captured[0], captured[1], output.weight.detach().float(), residual.pop("proj"))
    tied = output.weight is model.get_input_embeddings().weight
    allowed = torch.ones(output.weight.shape[0], dtype=torch.bool, device=hidden.device)
    if tied:
        allowed[torch.tensor(sorted({t for s in prefixes for t in s}), device=hidden.device)] = False
    normalised = _normalised(hidden, norm, roles)
    weights = torch.tensor([1.0 / (len(prefixes) * len(s)) for s in prefixes], device=hidden.device)
    out_weight = output.weight.detach().float()
    if pairs is not None and pairs.separable:
        return pairs.choose(_scores(residual, out_weight, hidden, normalised, allowed))
    return _pursue(residual, out_weight, hidden, normalised, allowed, weights)


def _batch(prefixes: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in prefixes)
    ids = torch.zeros((len(prefixes), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(prefixes):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def _known_part(model: nn.Module, output: nn.Module, prefixes: list[list[int]], params: list[torch.Tensor],
                watched: list[nn.Module]):
    """(final hidden state at each prefix's last position, the inputs of each ``watched`` module there,
    gradient A of the known part of the loss)."""
    device = output.weight.device
    ids, mask = _batch(prefixes, device)
    seen: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda _m, args, i=i: seen.setdefault(i, args[0]))
               for i, m in enumerate([output, *watched])]
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
        for handle in handles:
            handle.remove()
    rows, last = torch.arange(len(prefixes), device=device), mask.sum(1) - 1
    at_last = [seen[i][rows, last].detach().float() for i in range(len(watched) + 1)]
    return at_last[0], at_last[1:], [g.detach() for g in gradient]


class _Pairing:
    """The last block's MLP output map: R = sum_s x_s c_s^T with c_s = w_s J_s^T W_out[y_s].

    The inputs x_s (its input at each sequence's last position) are known, so while they are
    linearly independent a least-squares solve separates R into one c_s per sequence, and each
    sequence's token is read from its own c_s: no greedy pairing, no cross-talk between sequences
    whose inputs are alike (the last positions' MLP activations share a large common part).
    J_s (the final norm's Jacobian at the sequence's last residual r_s) is applied through
    Jacobian-vector products, never formed.
    """

    def __init__(self, norm: nn.Module, residuals: torch.Tensor, inputs: torch.Tensor, out_weight: torch.Tensor,
                 residual: torch.Tensor):
        self.norm, self.out_weight = norm, out_weight
        self.residuals = residuals.to(next(norm.parameters()).dtype)
        x = inputs.double()
        singular = torch.linalg.svdvals(x) if x.shape[0] <= x.shape[1] else x.new_zeros(1)
        self.separable = bool(singular[-1] > SEPARABLE * singular[0])
        self.coefficients = torch.linalg.lstsq(x.T, residual.double()).solution.float() if self.separable else None

    def pulled(self, s: int, rows: torch.Tensor) -> torch.Tensor:
        """(k, width): each row v of ``rows`` as J_s^T v (the gradient at r_s of v . norm(r))."""
        with torch.no_grad():
            _, pull = torch.func.vjp(self.norm, self.residuals[s])
            return torch.func.vmap(lambda v: pull(v)[0])(rows.to(self.residuals.dtype)).float()

    def choose(self, base: torch.Tensor) -> list[int]:
        """Each sequence's token: the best aligned with its c_s among a shortlist, which holds the
        best by the other atoms (``base``, (n, vocab)) and by c_s's raw alignment (cheap over the whole
        vocabulary; the alignment's norm needs J_s^T W_out[v], one vector-Jacobian product per token)."""
        k = min(base.shape[1], PAIRING_SHORTLIST)
        lengths = self.out_weight.norm(dim=1).clamp_min(1e-30)
        chosen = []
        for s, coefficient in enumerate(self.coefficients):
            with torch.no_grad():  # J_s c_s, by a Jacobian-vector product
                pushed = torch.func.jvp(self.norm, (self.residuals[s],), (coefficient.to(self.residuals.dtype),))[1]
            direct = (self.out_weight @ pushed.float()) / lengths
            shortlist = torch.cat([torch.topk(base[s], k).indices, torch.topk(direct, k).indices])
            atoms = self.pulled(s, self.out_weight[shortlist])
            cosine = (atoms @ coefficient) / atoms.norm(dim=1).clamp_min(1e-30)
            chosen.append(int(shortlist[int(cosine.argmax())]))
        return chosen


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
    numerator, energy = _terms(residual, out_weight, hidden, normalised, allowed)
    return numerator / energy.clamp_min(1e-30).sqrt()


def _terms(residual: dict[str, torch.Tensor], out_weight: torch.Tensor, hidden: torch.Tensor,
           normalised: torch.Tensor | None, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(<R, atom(s, v)>, |atom(s, v)|^2) of the output-side atoms, each (sequences, vocab)."""
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
    return numerator, energy


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
             names: dict[int, str]) -> list[list[int]]:
    """Prefixes with their recovered final token appended."""
    finals = last_tokens(model, prefixes, observed or {}, names) if observed is not None else _prior_guess(model, prefixes)
    return [list(p) + [int(t)] for p, t in zip(prefixes, finals)]
