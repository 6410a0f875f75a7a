"""Causal prefix search: read one sequence back from any method's update, token by token (a probe).

A probe, not a registered attack (issue 15, session 10): it was built to give prompt tuning's inversion
cells a working attack and a curve, and measured failing on them (the figures are in ../README.md,
"Prompt tuning"; ``python prefix_search.py`` reruns them). Kept so the next attempt starts from what was
learned: the exactness below holds to 1e-6, and the greedy choice is what fails.

An honest-but-curious server holds a client's one-step FedSGD update of a causal language model,
``update = -lr x (1/N) sum_t grad l_t``, where ``l_t = -log p(x_{t+1} | x_0..x_t)`` and N is the count of
predicted tokens. Causal masking makes the sum *prefix-exact*: the first k terms depend on x_0..x_k only,
so a guessed prefix has a gradient of its own that is exactly part of the observed one. The search grows
the sequence one token at a time and keeps the next token whose loss term leaves the smallest residual
``|N g - S_k - d_v|`` (g the observed mean gradient, S_k the guessed prefix's summed gradient, d_v the new
term for next token v). Nothing here depends on what is trainable: a soft prompt, LoRA factors, adapters
or the whole model all give a gradient, and the search only compares gradients. It is the attack for the
methods that hide every layer input (prompt tuning has no linear layer whose input span DAGER could read,
and no embedding gradient for a token bag).

Every candidate next token is scored at once, exactly, for the linear part of the residual:
``<R, d_v> = <R, J^T (p - e_v)> = (J R) . p - (J R)_v``, with J the Jacobian of the next-token logits
with respect to the trainable parameters and ``J R`` one forward-mode product (computed as a double
backward). The ``shortlist`` best are then scored exactly with their own gradients (one backward each).
The first token is an input only (no loss reaches it), so the first step scores every (x_0, x_1) pair
the same way (a batch of the whole vocabulary as one-token prefixes). N is not known to the server (the
record's length): the search runs for every N up to ``max_length - 1`` and keeps the sequence whose
summed gradient leaves the smallest relative residual ``|N g - S_N| / |N g|``; prefixes shared between
values of N are computed once.

Builds on DAGER (Petrov et al. 2024, "DAGER: Exact Gradient Inversion for Large Language Models"), whose
decoder attack also grows sequences token by token using causal masking, checking each candidate
against the span of a layer's gradient; here the check is the gradient-matching residual of TAG/LAMP
(Deng et al. 2021; Balunovic et al. 2022) restricted to exact partial sums, which needs no layer input
span and so applies to prompt tuning, low-rank LoRA and adapters alike. Departures and limits: one
sequence per update (the residual of a batch of B sequences would need B-tuples of candidates per step,
V^B of them); a loss on every next token (response-only losses, such as instruction tuning's, leave
prompt positions unlabelled: the search then reads them as labelled and drifts); one SGD step (FedSGD):
several local steps move the parameters between the terms; greedy (no beam), then single-token swaps.

Needs: a causal LM whose loss predicts next tokens (``last_token_is_label``; a reward model's is not),
a float update (secure aggregation and HE give none) and the broadcast state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attacks.inversion._common import (
    Target,
    TargetConfig,
    configure_vantage,
    is_language_model,
    model_at,
    observed_gradient,
    reconstruct,
)
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.predictions import Reconstruction
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, Vantage


@dataclass(frozen=True, kw_only=True)
class PrefixSearchConfig(TargetConfig):
    max_length: int = doc("Longest sequence searched, in tokens (the task's max_length; each length up to it is tried).", 24)
    shortlist: int = doc("Next tokens per step scored exactly with their own gradient: this many by the exact linear "
                         "term and this many by the broadcast model's own prediction (the language prior).", 8)
    starts: int = doc("First tokens tried (inputs only, never predicted): the likeliest document starts after an "
                      "end-of-text token under the broadcast model.", 4)
    refine_passes: int = doc("Passes of single-token swaps over the grown sequence, each kept when the whole "
                             "sequence's gradient explains the update better (0 = greedy growth only).", 3)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length < 2 or self.shortlist < 1 or self.starts < 1 or self.refine_passes < 0:
            raise ValueError("max_length must be >= 2, shortlist and starts >= 1, refine_passes >= 0")


class PrefixSearch(Attack):
    """Token-by-token search for the sequence whose exact partial gradients sum to the update (any method, batch of one)."""

    vantage = Vantage.SERVER
    family = AttackFamily.INVERSION
    access = frozenset({Access.WEIGHTS, Access.GRADIENTS})
    needs = frozenset({"client_updates", "global_states"})
    Config = PrefixSearchConfig

    def __init__(self, config: PrefixSearchConfig):
        super().__init__(config)
        configure_vantage(self, config)

    def run(self, view: ThreatView, rng: torch.Generator) -> Reconstruction:
        return reconstruct(view, self.config, lambda target: self.invert(view, target))

    def invert(self, view: ThreatView, target: Target) -> list[list[int]]:
        method = view.final_model
        if not is_language_model(method.model) or not target.last_token_is_label:
            return []
        before = target.global_before
        observed = observed_gradient(target.update.to(before.device), view.federation).float()
        if not bool(observed.norm() > 0):
            return []  # nothing was sent (every example truncated to nothing, or a zero step)
        with model_at(method, before) as model:
            search = _Search(model, [p for _, p in method.named_trainable], observed, self.config)
            return [search.best()]


@dataclass
class _Prefix:
    """What the search knows about one guessed prefix (computed once, shared by every length N)."""

    summed: torch.Tensor
    """S_k: the summed gradient of the prefix's loss terms."""
    probs: torch.Tensor
    """p: the next-token distribution after the prefix."""
    jacobian_observed: torch.Tensor
    """J g: the next-token logits' directional derivative along the observed gradient."""
    jacobian_summed: torch.Tensor
    """J S_k."""
    terms: dict[int, torch.Tensor] = field(default_factory=dict)
    """d_v: the loss term's gradient for next token v, for the tokens scored exactly so far."""


class _Search:
    """Greedy growth from each start; every prefix's gradients are computed once and shared."""

    def __init__(self, model: torch.nn.Module, params: list[torch.nn.Parameter], observed: torch.Tensor,
                 config: PrefixSearchConfig):
        self.model, self.params, self.observed, self.config = model, params, observed, config
        self.device = observed.device
        self.eos = getattr(getattr(model, "config", None), "eos_token_id", None)
        self.prefixes: dict[tuple[int, ...], _Prefix] = {}

    # --- gradients -------------------------------------------------------------------------------
    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        return out[:, -1].float()

    def _flat(self, grads: tuple) -> torch.Tensor:
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                          for g, p in zip(grads, self.params)])

    def _directional(self, ids: torch.Tensor, directions: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Next-token probabilities after each row of ``ids`` and, per direction r, J r for every row
        (rows x vocabulary): a double backward through the parameter gradient of <logits, w>."""
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            logits = self._logits(ids)
            probe = torch.zeros_like(logits, requires_grad=True)
            grads = torch.autograd.grad((logits * probe).sum(), self.params, create_graph=True, allow_unused=True)
            flat = self._flat(grads)
            products = []
            for k, direction in enumerate(directions):
                (jr,) = torch.autograd.grad(flat @ direction, probe, retain_graph=k < len(directions) - 1)
                products.append(jr.detach())
        return logits.detach().softmax(-1), products

    def _term(self, ids: list[int], token: int) -> torch.Tensor:
        """The gradient of -log p(token | ids) at the broadcast state."""
        x = torch.tensor([ids], device=self.device)
        with torch.enable_grad():
            loss = F.cross_entropy(self._logits(x), torch.tensor([token], device=self.device))
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return self._flat(grads)

    # --- search ----------------------------------------------------------------------------------
    def best(self) -> list[int]:
        """The grown sequence, over every start, whose summed gradient explains the update best."""
        found = [self._from(start) for start in self._starts()]
        return min(found, key=lambda item: item[0])[1]

    def _starts(self) -> list[int]:
        if self.eos is None:
            return list(range(self.config.starts))
        with torch.no_grad():
            probs = self._logits(torch.tensor([[self.eos]], device=self.device)).softmax(-1)[0]
        return probs.topk(min(self.config.starts, probs.numel())).indices.tolist()

    def _from(self, start: int) -> tuple[float, list[int]]:
        """Grow from ``start`` assuming the longest record (N = max_length - 1 predicted tokens); when the
        growth ends early at an end-of-text token, grow again with N set to that length; then refine."""
        count, tried = self.config.max_length - 1, set()
        while True:
            tried.add(count)
            sequence, _ = self._grow(start, count)
            ended = len(sequence) - 1
            if ended == count or ended in tried:
                return self._refine(sequence)
            count = ended

    def _sum_gradient(self, ids: list[int]) -> torch.Tensor:
        """S: the gradient of the summed next-token NLL of ``ids`` (every term at once)."""
        if len(ids) < 2:
            return torch.zeros_like(self.observed)
        x = torch.tensor([ids], device=self.device)
        with torch.enable_grad():
            logits = self.model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, :-1].float()
            loss = F.cross_entropy(logits, x[0, 1:], reduction="sum")
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return self._flat(grads)

    def _left(self, ids: list[int]) -> float:
        """The relative residual |N g - S| / |N g| of a whole sequence of N + 1 tokens."""
        scaled = (len(ids) - 1) * self.observed
        return float((scaled - self._sum_gradient(ids)).norm() / scaled.norm())

    def _refine(self, sequence: list[int]) -> tuple[float, list[int]]:
        """Single-token swaps, position by position, kept when the whole sequence's residual falls. Greedy
        growth misjudges tokens whose term the later terms partly cancel; with the rest of the sequence
        right, the true token is the one swap that brings the residual to zero."""
        best = self._left(sequence)
        for _ in range(self.config.refine_passes):
            improved = False
            for position in range(len(sequence)):
                for token in self._proposals(sequence, position):
                    if token == sequence[position]:
                        continue
                    trial = sequence[:position] + [token] + sequence[position + 1:]
                    left = self._left(trial)
                    if left < best:
                        best, sequence, improved = left, trial, True
            if not improved:
                break
        return best, sequence

    def _proposals(self, sequence: list[int], position: int) -> list[int]:
        """Tokens tried at ``position``: the document starts for the first; else the shortlist of ``_pick``
        (best by the exact linear term for the label role, and likeliest under the broadcast model)."""
        if position == 0:
            return self._starts()
        prefix_ids = sequence[:position]
        prefix = self._known(tuple(prefix_ids), self._sum_gradient(prefix_ids))
        count = len(sequence) - 1
        directional = count * prefix.jacobian_observed - prefix.jacobian_summed
        inner = (directional * prefix.probs).sum() - directional
        k = min(self.config.shortlist, inner.numel())
        return list(dict.fromkeys(inner.topk(k).indices.tolist() + prefix.probs.topk(k).indices.tolist()))

    def _grow(self, start: int, count: int) -> tuple[list[int], torch.Tensor]:
        """Greedy growth for N = ``count`` predicted tokens: at most N + 1 tokens and their summed
        gradient; stops after an end-of-text token (a record's last label)."""
        sequence, summed = [start], torch.zeros_like(self.observed)
        for _ in range(count):
            prefix = self._known(tuple(sequence), summed)
            directional = count * prefix.jacobian_observed - prefix.jacobian_summed  # J R
            inner = (directional * prefix.probs).sum() - directional  # <R, d_v> = (J R) . p - (J R)_v
            token, term = self._pick(prefix, sequence, inner, count * self.observed - summed)
            sequence.append(token)
            summed = summed + term
            if token == self.eos:
                break
        return sequence, summed

    def _known(self, key: tuple[int, ...], summed: torch.Tensor) -> _Prefix:
        prefix = self.prefixes.get(key)
        if prefix is None:
            ids = torch.tensor([list(key)], device=self.device)
            probs, (jg, js) = self._directional(ids, [self.observed, summed])
            prefix = self.prefixes[key] = _Prefix(summed, probs[0], jg[0], js[0])
        return prefix

    def _pick(self, prefix: _Prefix, ids: list[int], inner: torch.Tensor, residual: torch.Tensor
              ) -> tuple[int, torch.Tensor]:
        """Of the shortlist (the best by the exact linear term, and the likeliest under the broadcast model:
        a well-predicted token's term is tiny and never ranks high by the linear term), the next token that
        leaves the smallest residual."""
        k = min(self.config.shortlist, inner.numel())
        shortlist = dict.fromkeys(inner.topk(k).indices.tolist() + prefix.probs.topk(k).indices.tolist())
        best: tuple[float, int, torch.Tensor] | None = None
        for token in shortlist:
            term = prefix.terms.get(token)
            if term is None:
                term = prefix.terms[token] = self._term(ids, token)
            left = float((residual - term).norm())
            if best is None or left < best[0]:
                best = (left, token, term)
        return best[1], best[2]


def diagnose(scenario_file: str, seed: int = 0, search: bool = False) -> None:
    """Run ``scenario_file``'s first scenario (one FedSGD round, batch of one) and print, for the first
    attacked client: how exactly its record's loss terms sum to the update, and per step of a growth that
    is given the true prefix, the true token's rank by the exact linear term, its probability, and
    whether the residual rule would pick it. With ``search``, the whole search's answer as well."""
    from bench.api.registry import ATTACKS, load_plugins
    from bench.engine import runner
    from bench.spec.scenario import load

    from attacks.inversion._common import targets

    load_plugins()
    ATTACKS.register("inversion-prefix")(PrefixSearch)  # a probe: registered only while it runs
    captured: dict[str, object] = {}
    PrefixSearch.run = lambda self, view, rng: captured.setdefault("view", view) and Reconstruction()
    scored = runner.score
    runner.score = lambda prediction, truth: (captured.setdefault("truth", truth), scored(prediction, truth))[1]
    runner.execute(load(scenario_file)[0], seed)
    view, truth = captured["view"], captured["truth"]
    config = PrefixSearch.Config(max_clients=1)
    target = next(targets(view, config, view.layout.num_trainable))
    record = truth.client_batches[target.key][0]
    observed = observed_gradient(target.update, view.federation).float()
    with model_at(view.final_model, target.global_before) as model:
        search_ = _Search(model, [p for _, p in view.final_model.named_trainable], observed, config)
        terms = [search_._term(record[:k + 1], record[k + 1]) for k in range(len(record) - 1)]
        count = len(terms)
        print(f"N = {count}; |N g - sum of the true terms| / |N g| = "
              f"{float((count * observed - sum(terms)).norm() / (count * observed).norm()):.2e}")
        summed, picked = torch.zeros_like(observed), 0
        for k in range(count):  # the first token given: it is an input only
            prefix = search_._known(tuple(record[:k + 1]), summed)
            directional = count * prefix.jacobian_observed - prefix.jacobian_summed
            inner = (directional * prefix.probs).sum() - directional
            token, _ = search_._pick(prefix, record[:k + 1], inner, count * observed - summed)
            true = record[k + 1]
            picked += token == true
            print(f"step {k}: linear rank {int((inner > inner[true]).sum())}, p {float(prefix.probs[true]):.3f}, "
                  f"|term| {float(terms[k].norm()):.3f}, rule picks the true token: {token == true}")
            summed = summed + terms[k]
        print(f"the residual rule picks the true token at {picked} of {count} steps given the true prefix")
        if search:
            print("record:", record, "\nsearch:", search_.best())


if __name__ == "__main__":
    import sys

    diagnose(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0, "--search" in sys.argv)
