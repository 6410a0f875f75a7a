"""Update decoding: read the batch back out of a PEFT update by decoding with the update amplified.

For adapters, prompt tuning and low-rank LoRA no linear layer's input span is exposed (DAGER needs
the batch's layer inputs to be fewer than the trainable rank), and the embeddings are frozen (no
token bag). What every method's update does expose is its effect: one SGD step on a batch raises
the likelihood of exactly that batch's tokens after exactly their prefixes. So the server applies
the client's update, amplified, to the broadcast state and decodes: the amplified model regurgitates
the batch. Candidate sentences are then chosen by how well their own gradients, at the broadcast
state, explain the observed update.

In the spirit of UTR (Chen, Luo, Deng, Liu, Xu, Fu, Jia 2026, "Reconstructing Training Data from
Adapter-based Federated Large Language Models", arXiv 2601.17533), which reports ROUGE-1/2 above
0.99 for an honest-but-curious server against adapter-based federated LLMs with (i) token presence
from the frozen backbone, (ii) sentence-level inversion in the low-rank subspace of the adapter
gradients and (iii) greedy decoding constrained by language priors. The decoding-with-the-update
idea is the differential score of Zanella-Béguelin et al. 2020 ("Analyzing Information Leakage of
Updates to Natural Language Models", CCS), who beam-search the log-probability difference between
two snapshots of a model; amplifying one FedSGD step is our reading of it for a single update.

Departures from UTR (we had its abstract, not its code): no token-presence step from attention
patterns (the amplified model's own distribution is the constraint, so the language prior and the
update act in one score, ``alpha`` x update); sentence-level inversion is a greedy choice among the
decoded candidates of the subset whose mean per-example gradient has the highest cosine with the
observed one (``select``), over every trainable parameter rather than a low-rank subspace; the
amplification is chosen per batch by that same cosine, so no truth is used. The first token of a
sequence is never a label (no loss reaches it): the ``start_candidates`` tokens after which the
amplified model is most confident, and that moved most from the broadcast model, are tried.

What it reaches (measured on 2 CPU cores under load; honest: far from UTR's figures). The
sentence-level match is sharp: on the zoo tiny-gpt2 with Houlsby adapters (size 16), one FedSGD
round of two clinical notes of 24 tokens, the true pair's summed gradient has cosine 1.000 with the
observed one, each true note alone 0.86 / 0.45, and held-out notes of the same template -0.42 to
0.00. The search does not reach it: one SGD step on adapters barely moves the model (the true
private tokens, e.g. MRN digits, stay at ranks 20-800 of the vocabulary under the amplified models),
and coordinate ascent from the decoded candidates stalls in local optima (shifted token runs). On
that run ROUGE-1 (text) was 0.07-0.36 against a floor of 0.59: below guessing. On a tiny random
decoder (vocabulary 50, one sequence of 6 random tokens) it recovers half to two thirds of the
tokens (token F1 0.5-0.67 against 0.12 by chance; ``tests/test_inversion_methods.py``). It is kept
as the adapter/prompt-tuning attack of record, to be strengthened (UTR's token-presence step is the
missing piece).

Needs: a causal LM (classification heads have nothing to decode: empty reconstruction), a float update
(secure aggregation, HE: empty), and the broadcast state. Cost per batch: ``len(scales)`` beam
decodes plus one backward pass per distinct candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attacks.inversion._common import (
    Target,
    TargetConfig,
    configure_vantage,
    is_language_model,
    model_at,
    reconstruct,
)
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.handles import OpenHandle
from bench.api.predictions import Reconstruction
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, Vantage


@dataclass(frozen=True, kw_only=True)
class UpdateDecodeConfig(TargetConfig):
    scales: tuple[float, ...] = doc("Amplifications tried: the model decoded is broadcast state + scale x update / lr "
                                    "(scale = how many SGD steps of unit learning rate along the observed gradient).",
                                    (0.0, 1.0))
    beam: int = doc("Beam width of each decode (also the candidates it hands to the selection).", 8)
    start_candidates: int = doc("First tokens tried (they are inputs only, never predicted).", 8)
    max_length: int = doc("Tokens decoded per sequence (0 = the model's position limit, at most 64).", 0)
    prior_weight: float = doc("Weight of the broadcast model's mean NLL against the gradient match (LAMP's prior).", 0.2)
    refine_passes: int = doc("Passes of token swaps over the chosen sentences (each tries every position).", 2)
    max_sequences: int = doc("Sequences reported per batch (0 = the federation's batch size x steps x clients, capped "
                             "by the example counts clients report).", 0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.scales or any(s < 0 for s in self.scales):
            raise ValueError("scales must be >= 0 (0: the broadcast model itself)")
        if self.beam < 1 or self.start_candidates < 1 or self.max_length < 0 or self.max_sequences < 0:
            raise ValueError("beam and start_candidates must be >= 1, max_length and max_sequences >= 0")


@ATTACKS.register("inversion-decode")
class UpdateDecode(Attack):
    """Decode the batch from the amplified update; pick sentences whose gradients explain it (any method)."""

    vantage = Vantage.SERVER
    family = AttackFamily.INVERSION
    access = frozenset({Access.WEIGHTS, Access.GRADIENTS})
    needs = frozenset({"client_updates", "global_states"})
    Config = UpdateDecodeConfig

    def __init__(self, config: UpdateDecodeConfig):
        super().__init__(config)
        configure_vantage(self, config)

    def run(self, view: ThreatView, rng: torch.Generator) -> Reconstruction:
        return reconstruct(view, self.config, lambda target: self.invert(view, target))

    def invert(self, view: ThreatView, target: Target) -> list[list[int]]:
        method = view.final_model
        if not is_language_model(method.model):
            return []
        before = target.global_before
        update = target.update.to(before.device)
        lr = float(view.federation.lr or 1.0)
        eos = getattr(getattr(method.model, "config", None), "eos_token_id", None)
        most = self.config.max_sequences or target.most_sequences(view.federation)
        proposals = [before + (scale / lr) * update for scale in self.config.scales]
        with model_at(method, before) as model:
            grower = _Grower(method, model, proposals, eos, self.config)
            pool = grower.decode(grower.starts(), _length(self.config, model))
            if not pool:
                return []
            chosen = select(model, method, pool, -update, most)
            return grower.refine(chosen, -update.float())

def _length(config: UpdateDecodeConfig, model: torch.nn.Module) -> int:
    if config.max_length:
        return config.max_length
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None) or 64
    return min(int(limit), 64)


class _Grower:
    """Sentence growth guided by the update: proposals from the amplified models, kept by how much of the
    observed gradient the grown prefix's own gradient explains."""

    def __init__(self, method: OpenHandle, model: torch.nn.Module, proposals: list[torch.Tensor], eos: int | None,
                 config: UpdateDecodeConfig):
        self.method, self.model, self.proposals, self.eos, self.config = method, model, proposals, eos, config
        self.params = [p for _, p in method.named_trainable]
        self.device = model.get_input_embeddings().weight.device

    def _next_logprobs(self, state: torch.Tensor, prefixes: torch.Tensor) -> torch.Tensor:
        with model_at(self.method, state) as model, torch.no_grad():
            mask = torch.ones_like(prefixes)
            return F.log_softmax(model(input_ids=prefixes, attention_mask=mask).logits[:, -1].float(), dim=-1)

    def starts(self) -> list[int]:
        """First tokens (inputs only, never predicted): the likeliest document starts after an
        end-of-text token under each amplified model."""
        if self.eos is None:
            return list(range(min(self.config.start_candidates, self.model.get_input_embeddings().weight.shape[0])))
        prefix = torch.tensor([[self.eos]], device=self.device)
        picked: list[int] = []
        for state in self.proposals:
            picked += self._next_logprobs(state, prefix)[0].topk(self.config.start_candidates).indices.tolist()
        return list(dict.fromkeys(picked))

    def _candidates(self, prefixes: torch.Tensor) -> torch.Tensor:
        """(beams, k) next tokens: the union of each amplified model's top ``beam`` proposals."""
        picks = [self._next_logprobs(state, prefixes).topk(self.config.beam, dim=-1).indices for state in self.proposals]
        return torch.cat(picks, dim=1)

    def decode(self, starts: list[int], length: int) -> list[list[int]]:
        """Beam search under each amplified model from every start: the candidate sentences."""
        pool: list[list[int]] = []
        for state in self.proposals:
            beams, scores = [[t] for t in starts], torch.zeros(len(starts), device=self.device)
            for _ in range(length - 1):
                logp = self._next_logprobs(state, torch.tensor(beams, device=self.device))
                total = (scores.unsqueeze(1) + logp).reshape(-1)
                keep = total.topk(min(self.config.beam, total.numel())).indices
                rows, tokens = (keep // logp.shape[1]).tolist(), (keep % logp.shape[1]).tolist()
                pool += [beams[r] for r, t in zip(rows, tokens) if t == self.eos]  # a record ends before EOS
                alive = [i for i, t in enumerate(tokens) if t != self.eos]
                if not alive:
                    break
                beams = [beams[rows[i]] + [tokens[i]] for i in alive]
                scores = total[keep][alive]
            pool += beams
        return [list(p) for p in dict.fromkeys(tuple(p) for p in pool if len(p) >= 2)]

    def refine(self, chosen: list[list[int]], target: torch.Tensor) -> list[list[int]]:
        """Coordinate ascent on the sentence-level match: at each position of each chosen sentence, try
        the amplified models' proposals for that position and keep a swap when the chosen set's summed
        gradient moves closer (cosine) to ``target``."""
        sentences = [list(s) for s in chosen]
        grads = [_gradient(self.model, self.params, s) for s in sentences]
        nll = [self._nll(s) for s in sentences]
        best = self._objective(sum(grads), target, nll)
        for _ in range(self.config.refine_passes):
            improved = False
            for i in range(len(sentences)):
                sentence = sentences[i]
                others = sum(grads[:i] + grads[i + 1:], torch.zeros_like(target))
                flips = self._flip_proposals(sentence, others, target)
                for t in range(len(sentence)):  # the first token too: an input only, but it shapes every gradient
                    tokens = flips[t] + (self._prior_proposals(sentence[:t]) if t else [])
                    for token in dict.fromkeys(tokens):
                        if token == sentence[t]:
                            continue
                        trial = sentence[:t] + [token] + sentence[t + 1:]
                        grad, trial_nll = _gradient(self.model, self.params, trial), self._nll(trial)
                        value = self._objective(others + grad, target, nll[:i] + [trial_nll] + nll[i + 1:])
                        if value > best:
                            best, sentence, grads[i], nll[i], improved = value, trial, grad, trial_nll, True
                sentences[i] = sentence
            if not improved:
                break
        return sentences

    def _prior_proposals(self, prefix: list[int]) -> list[int]:
        ids = torch.tensor([prefix], device=self.device)
        return self._next_logprobs(self.proposals[0], ids)[0].topk(self.config.beam).indices.tolist()

    def _objective(self, total: torch.Tensor, target: torch.Tensor, nll: list[float]) -> float:
        """Sentence-level match (cosine of the summed gradients) minus ``prior_weight`` x the mean NLL the
        broadcast model gives the sentences (the language prior: the match alone has spurious optima in
        disfluent text)."""
        cosine = float(F.cosine_similarity(total.unsqueeze(0), target.unsqueeze(0)))
        return cosine - self.config.prior_weight * sum(nll) / max(len(nll), 1)

    def _nll(self, sentence: list[int]) -> float:
        ids = torch.tensor([sentence], device=self.device)
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1].float()
            return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))

    def _flip_proposals(self, sentence: list[int], others: torch.Tensor, target: torch.Tensor) -> list[list[int]]:
        """Per position, the ``beam`` tokens whose swap raises the match most to first order (HotFlip,
        Ebrahimi et al. 2018: the objective's gradient at the input embeddings dotted with each token's
        embedding difference); a double backward through the sentence's parameter gradient."""
        table = self.model.get_input_embeddings().weight
        ids = torch.tensor([sentence], device=self.device)
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            embeds = table[ids].detach().clone().requires_grad_(True)
            logits = self.model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            match = F.cosine_similarity((others + _flat(grads, self.params)).unsqueeze(0), target.unsqueeze(0)).squeeze()
            (direction,) = torch.autograd.grad(match, embeds)
        gain = direction[0].float() @ table.detach().float().T  # (T, V): first-order change per swapped-in token
        gain = gain - (direction[0].float() * embeds[0].detach().float()).sum(-1, keepdim=True)
        return gain.topk(self.config.beam, dim=-1).indices.tolist()


def select(model: torch.nn.Module, method: OpenHandle, candidates: list[list[int]], direction: torch.Tensor,
           most: int) -> list[list[int]]:
    """Greedily the candidates whose mean per-example gradient (mean next-token NLL at the broadcast state)
    has the highest cosine with the observed gradient direction, adding one while the cosine rises."""
    params = [p for _, p in method.named_trainable]
    target = F.normalize(direction.float().reshape(-1), dim=0)
    grads = torch.stack([_gradient(model, params, c) for c in candidates])
    chosen: list[int] = []
    total = torch.zeros_like(target)
    best = -2.0
    while len(chosen) < most:
        trial = (total.unsqueeze(0) + grads)  # each candidate added to the chosen sum
        cosine = F.cosine_similarity(trial, target.unsqueeze(0), dim=1)
        if chosen:
            cosine[chosen] = -2.0
        pick = int(cosine.argmax())
        if float(cosine[pick]) <= best:
            break
        best, total = float(cosine[pick]), total + grads[pick]
        chosen.append(pick)
    return [candidates[i] for i in chosen]


def _gradient(model: torch.nn.Module, params: list[torch.nn.Parameter], tokens: list[int]) -> torch.Tensor:
    device = params[0].device
    ids = torch.tensor([tokens], device=device)
    with torch.enable_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        if not loss.requires_grad:  # the trained part does not act on the LM (RLHF's reward phase)
            return torch.zeros(sum(p.numel() for p in params), device=device)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return _flat(grads, params)


def _flat(grads: tuple, params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)])
