"""Optimisation-based text inversion: match the observed gradient with dummy input embeddings.

TAG (Deng et al. 2021, "TAG: Gradient Attack on Transformer-based Language Models") and LAMP
(Balunovic et al. 2022, "LAMP: Extracting Text from Gradients with Language Model Priors"): dummy
continuous input embeddings X (B x T x d) are optimised so that the gradient they induce on the
trainable parameters matches the observed one, with LAMP's distance
    sum over parameters (1 - cos(g(X), g*)) / #parameters + l2_weight * |g(X) - g*|^2 / |g*|^2,
differentiated through the gradient itself (``torch.autograd.grad(create_graph=True)``). Every
``discrete_every`` steps LAMP's discrete moves run: a few random token swaps within a sequence are
scored by gradient distance + ``prior_weight`` x the perplexity the round-start model gives the
nearest tokens (the LM prior), and the best arrangement is kept. The answer is the nearest tokens
of the final embeddings (cosine similarity to the embedding table).

Because it only needs gradients of the trainable parameters, it runs against any method (full
fine-tuning, LoRA, adapters, prompt tuning): the forward takes ``inputs_embeds`` (virtual prompt
positions, when a prompt method adds them, are cut from the logits).

Departures. Causal LM labels are the inputs shifted by one (the task trains on next tokens), so the
dummy labels are the nearest tokens of the next dummy positions, refreshed every step (no gradient
through them); for classifiers, soft dummy labels are optimised jointly (DLG). When the input
embedding is trainable, tokens are projected only onto the bag ``inversion-tokens`` recovers (as LAMP
restricts BERT's vocabulary). Batch size and length come from the federation settings and
``seq_len`` (or the non-zero rows of a trainable position-embedding gradient + 1), all sequences of
one length. The default budget is small so it runs on a CPU; raise ``steps`` for real attacks.
"""

from __future__ import annotations

import re
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
    observed_gradient,
    reconstruct,
)
from attacks.inversion.tokens import EmbeddingRows, TokensConfig
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.handles import OpenHandle
from bench.api.predictions import Reconstruction
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, Vantage

POSITION_EMBEDDING = re.compile(r"(?:^|\.)(?:wpe|embed_positions|position_embeddings)\.weight$")


@dataclass(frozen=True, kw_only=True)
class OptimConfig(TargetConfig):
    steps: int = doc("Optimisation steps (each is a forward, a double backward and an Adam step).", 60)
    lr: float = doc("Adam step size on the dummy embeddings.", 0.05)
    l2_weight: float = doc("Weight of the normalised L2 gradient distance next to the cosine distance.", 0.1)
    prior_weight: float = doc("Weight of the LM perplexity when choosing between discrete arrangements (LAMP).", 0.2)
    discrete_every: int = doc("Run the discrete swap moves every this many steps (0 = never).", 20)
    swap_candidates: int = doc("Random token swaps scored at each discrete step.", 8)
    batch_size: int = doc("Sequences per attacked batch (0 = the federation's batch size).", 0)
    seq_len: int = doc("Tokens per sequence (0 = inferred from the position-embedding gradient, else 16).", 0)
    restrict_vocab: bool = doc("Project only onto tokens whose embedding rows have gradient (when trainable).", True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 0 or self.lr <= 0 or self.batch_size < 0 or self.seq_len < 0:
            raise ValueError("steps, batch_size and seq_len must be >= 0 and lr > 0")


@ATTACKS.register("inversion-optim")
class GradientMatching(Attack):
    """TAG/LAMP gradient matching on dummy input embeddings, with an LM prior (any method)."""

    vantage = Vantage.SERVER
    family = AttackFamily.INVERSION
    access = frozenset({Access.WEIGHTS, Access.GRADIENTS})
    needs = frozenset({"client_updates", "global_states"})
    Config = OptimConfig

    def __init__(self, config: OptimConfig):
        super().__init__(config)
        configure_vantage(self, config)

    def run(self, view: ThreatView, rng: torch.Generator) -> Reconstruction:
        return reconstruct(view, self.config, lambda target: self.invert(view, target, rng))

    def invert(self, view: ThreatView, target: Target, rng: torch.Generator) -> list[list[int]]:
        method = view.final_model
        update = target.update.to(target.global_before.device)
        with model_at(method, target.global_before) as model:
            observed = [g.detach() for g in method.unflatten(observed_gradient(update, view.federation)).values()]
            params = [p for _, p in method.named_trainable]
            useful = [i for i, g in enumerate(observed) if torch.isfinite(g).all() and g.norm() > 0]
            if not useful:
                return []
            vocabulary = self._vocabulary(view, target)
            problem = _Problem(model, [params[i] for i in useful], [observed[i] for i in useful], vocabulary, self.config)
            batch = self._batch(view)
            return problem.solve((batch, self._length(method, update, vocabulary, batch)), rng)

    def _batch(self, view: ThreatView) -> int:
        return self.config.batch_size or int(view.federation.batch_size)

    def _length(self, method: OpenHandle, update: torch.Tensor, vocabulary: torch.Tensor | None, batch: int) -> int:
        """Configured, else positions with gradient + 1 (the last token is a label only), else the
        recovered bag spread over the batch, else 16."""
        if self.config.seq_len:
            return self.config.seq_len
        for name, grad in method.unflatten(update).items():
            if POSITION_EMBEDDING.search(name):
                used = int((grad.abs().amax(dim=1) > 0).sum())
                if used:
                    return used + 1
        if vocabulary is not None:
            return max(2, -(-vocabulary.numel() // max(batch, 1)))  # the bag holds inputs and labels
        return 16

    def _vocabulary(self, view: ThreatView, target: Target) -> torch.Tensor | None:
        if not self.config.restrict_vocab:
            return None
        bag = EmbeddingRows(TokensConfig()).tokens(view, target)
        return torch.tensor(sorted(bag), dtype=torch.long) if len(bag) >= 2 else None


class _Problem:
    """One gradient-matching problem: the model at round start, the observed gradient, the vocabulary."""

    def __init__(self, model: torch.nn.Module, params: list[torch.Tensor], observed: list[torch.Tensor],
                 vocabulary: torch.Tensor | None, config: OptimConfig):
        self.model, self.params, self.observed, self.config = model, params, observed, config
        table = model.get_input_embeddings().weight.detach()
        self.device = table.device
        self.vocabulary = vocabulary.to(self.device) if vocabulary is not None else torch.arange(table.shape[0], device=self.device)
        self.table = table[self.vocabulary].float()
        self.language = is_language_model(model)
        self.observed_norm = sum(float(g.pow(2).sum()) for g in observed)

    # --- objective -------------------------------------------------------------------------------
    def nearest(self, embeds: torch.Tensor) -> torch.Tensor:
        """Nearest vocabulary token ids by cosine similarity, shape (B, T)."""
        similarity = F.normalize(embeds.detach(), dim=-1) @ F.normalize(self.table, dim=-1).T
        return self.vocabulary[similarity.argmax(-1)]

    def logits(self, embeds: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits.float()
        return out[:, -embeds.shape[1]:] if out.dim() == 3 else out  # prompt methods prepend positions

    def task_loss(self, embeds: torch.Tensor, soft_labels: torch.Tensor | None) -> torch.Tensor:
        logits = self.logits(embeds)
        if not self.language:
            return -(soft_labels.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()
        targets = self.nearest(embeds)[:, 1:]
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
        return nll.mean(1).mean()  # per-example mean over tokens, then over the batch (the task's loss)

    def distance(self, embeds: torch.Tensor, soft_labels: torch.Tensor | None, create_graph: bool) -> torch.Tensor:
        grads = torch.autograd.grad(self.task_loss(embeds, soft_labels), self.params, create_graph=create_graph,
                                    allow_unused=True)
        cosine, squared = embeds.new_zeros(()), embeds.new_zeros(())
        for g, target in zip(grads, self.observed):
            if g is None:
                continue
            cosine = cosine + 1 - F.cosine_similarity(g.reshape(1, -1), target.reshape(1, -1).to(g)).squeeze()
            squared = squared + (g - target.to(g)).pow(2).sum()
        return cosine / len(self.observed) + self.config.l2_weight * squared / max(self.observed_norm, 1e-30)

    def perplexity(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token NLL of each discrete sequence under the round-start model (the LM prior)."""
        if not self.language or tokens.shape[1] < 2:
            return torch.zeros(tokens.shape[0], device=self.device)
        with torch.no_grad():
            mask = torch.ones_like(tokens)
            logits = self.model(input_ids=tokens, attention_mask=mask, use_cache=False).logits.float()[:, -tokens.shape[1]:]
            return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none").mean(1)

    # --- search ----------------------------------------------------------------------------------
    def solve(self, shape: tuple[int, int], rng: torch.Generator) -> list[list[int]]:
        embeds = self._initial(shape, rng)
        soft_labels = None if self.language else torch.zeros(shape[0], self._classes(), device=self.device, requires_grad=True)
        optimiser = torch.optim.Adam([embeds] + ([soft_labels] if soft_labels is not None else []), lr=self.config.lr)
        # the math attention kernel is twice differentiable; the fused CPU/GPU kernels are not
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            for step in range(1, self.config.steps + 1):
                optimiser.zero_grad()
                loss = self.distance(embeds, soft_labels, create_graph=True)
                loss.backward()
                optimiser.step()
                if self.config.discrete_every and step % self.config.discrete_every == 0:
                    with torch.no_grad():
                        embeds.copy_(self._discrete_step(embeds.detach(), soft_labels, rng))
        return self.nearest(embeds).tolist()

    def _initial(self, shape: tuple[int, int], rng: torch.Generator) -> torch.Tensor:
        scale = float(self.table.std())
        noise = torch.randn(*shape, self.table.shape[1], generator=rng) * scale
        return noise.to(self.device).requires_grad_(True)

    def _classes(self) -> int:
        with torch.no_grad():
            return int(self.logits(self.table[:1].reshape(1, 1, -1)).shape[-1])

    def _discrete_step(self, embeds: torch.Tensor, soft_labels: torch.Tensor | None, rng: torch.Generator) -> torch.Tensor:
        """LAMP's discrete move: the best of the current arrangement and random swaps."""
        candidates = [embeds] + [self._swapped(embeds, rng) for _ in range(self.config.swap_candidates)]
        scores = []
        with torch.enable_grad():
            for candidate in candidates:
                trial = candidate.clone().requires_grad_(True)
                rec = float(self.distance(trial, soft_labels, create_graph=False))
                prior = float(self.perplexity(self.nearest(candidate)).mean())
                scores.append(rec + self.config.prior_weight * prior)
        return candidates[min(range(len(scores)), key=scores.__getitem__)]

    def _swapped(self, embeds: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        out = embeds.clone()
        if embeds.shape[1] < 2:
            return out
        row = int(torch.randint(embeds.shape[0], (1,), generator=rng))
        i, j = torch.randperm(embeds.shape[1], generator=rng)[:2].tolist()
        out[row, [i, j]] = out[row, [j, i]]
        return out
