"""A learned inversion of split learning's cut-layer activations, for a server that does NOT know the
client-side layers (server vantage).

``inversion-split-replay`` reads the client-side layers the SplitFed server averages. A split deployment
can keep them from the server (SplitFed with a separate fed server the main server cannot see, or plain
split learning between clients): then the main server holds only the activations. What it may still
know is the public base model the federation started from (the open-weight tier hands everybody its
weights, and the round-0 client side *is* that base's bottom). This attack learns an inverse of the
base's bottom and applies it to the activations of the fine-tuned one:

1. push public records (``ThreatView.auxiliary``: same distribution, never a client's) through the base
   model's embedding and first ``cut_layer`` blocks (the protocol's public setting, read from the round's
   channel; the layers themselves are never read);
2. train a per-position decoder (activation at position t -> token at t; an MLP) on those pairs, the
   activations standardised per dimension and noised during training (``augment``), so that it reads
   directions that survive a shift;
3. decode every observed step's activations position by position (argmax), after standardising them
   with their own per-dimension mean and spread (``align``: the fine-tuned layers move the activations,
   by 44% of their norm after one round on the zoo model; matching the two domains' first two moments
   is the cheapest domain adaptation, and a server sees enough activations to estimate them).

This follows He, Zhang and Lee 2019 ("Model inversion attacks against collaborative inference", ACSAC):
their black-box attacker trains an inverse network on (features, input) pairs it produces itself, and
their query-free attacker first builds a shadow of the unknown client model. We depart in two ways: the
shadow is the public base (no query access to the client, no training of a shadow), and the inputs are
discrete tokens, so the inverse is a classifier over the vocabulary per position (as Pasquini et al.
2021's feature-space hijacking decodes through a learned inverse), not a regression to pixels. Its gap
to the replay attack is what not knowing the fine-tuned layers costs; its gap to the scorer's floor
(the task's template guessed) is what the public base alone still reveals.

Tier: needs the base model's weights (``Access.WEIGHTS``); at gray/black-box tiers the base is hosted
and this attack does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attacks.inversion.split_activations import activation_rounds
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.cut import cut_module
from bench.api.errors import IncompatibleError
from bench.api.predictions import Reconstruction, text_decoder
from bench.api.protocol import Channel
from bench.api.registry import ATTACKS
from bench.api.seeding import isolated_rng
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, Vantage


@torch.no_grad()
def cut_activations(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, cut: int) -> torch.Tensor:
    """(rows, positions, hidden) output of ``model``'s module at ``cut`` (``bench.api.cut``), as split
    learning would send it."""
    captured: list[torch.Tensor] = []

    def grab(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor | tuple[torch.Tensor, ...]) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = cut_module(model, cut).register_forward_hook(grab)
    try:
        model.eval()
        model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        handle.remove()
    return captured[0].float().cpu()


def decoder(hidden: int, vocab: int, width: int) -> nn.Module:
    """Standardised activation -> token logits."""
    return nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, vocab))


@ATTACKS.register("inversion-split-learned")
class SplitLearnedInversion(Attack):
    """A decoder trained on the public base model's cut activations, applied to the clients' activations."""

    vantage = Vantage.SERVER
    family = AttackFamily.INVERSION
    access = frozenset({Access.WEIGHTS})  # the public base model's weights (not the client layers)
    needs = frozenset({"client_updates"})
    channels = frozenset({Channel.ACTIVATIONS})

    @dataclass(frozen=True, kw_only=True)
    class Config:
        width: int = doc("Hidden width of the decoder MLP (>= 1).", 256)
        epochs: int = doc("Passes over the public records' token positions (>= 1).", 200)
        lr: float = doc("Adam learning rate of the decoder (> 0).", 3e-3)
        batch: int = doc("Public records per collation batch when computing the base's activations (>= 1).", 16)
        augment: float = doc("Std of the Gaussian noise added to the standardised training activations (>= 0).", 0.5)
        align: bool = doc("Standardise the observed activations with their own mean and spread (True) or with the "
                          "public ones' (False).", True)
        rounds: int = doc("Attack the last this many rounds (>= 1).", 1)
        max_steps: int = doc("Decode at most this many local steps per client and round (0 = all).", 0)

    def run(self, view: ThreatView, rng: torch.Generator) -> Reconstruction:
        attacked = activation_rounds(view, self.config.rounds, self.name)
        if not view.auxiliary:
            raise IncompatibleError("inversion-split-learned trains its decoder on public records; this run has none")
        cut = attacked[0].channel["cut_layer"]
        if not isinstance(cut, int):
            raise IncompatibleError("inversion-split-learned needs the protocol's cut layer")
        inverse = self._train(view, cut, rng)
        sequences: dict[tuple[int, int], list[list[int]]] = {}
        with torch.no_grad():
            for record in attacked:
                for client, sent in sorted(record.transmitted.items()):
                    found: dict[tuple[int, ...], None] = {}
                    steps = list(zip(sent["activations"], sent["masks"]))[: self.config.max_steps or None]
                    seen = torch.cat([a.float()[m.bool()] for a, m in steps])
                    scale = Moments.of(seen) if self.config.align else inverse.public
                    for activations, mask in steps:
                        tokens = inverse(scale(activations.float())).argmax(-1)
                        for row, m in zip(tokens, mask):
                            found.setdefault(tuple(row[m.bool()].tolist()), None)
                    sequences[(record.round, client)] = [list(s) for s in found]
        return Reconstruction(sequences=sequences, decode=text_decoder(view.tokenizer))

    def _train(self, view: ThreatView, cut: int, rng: torch.Generator) -> _Classes:
        """The decoder, fitted on (base activation, token) pairs of the public records."""
        c, base = self.config, view.base_model
        model, task = base.module(), base.task
        device = next(model.parameters()).device
        features, targets = [], []
        for start in range(0, len(view.auxiliary), c.batch):
            batch = task.collate(view.auxiliary[start: start + c.batch], view.tokenizer, device)
            acts = cut_activations(model, batch["input_ids"], batch["attention_mask"], cut)
            keep = batch["attention_mask"].cpu().bool()
            features.append(acts[keep])
            targets.append(batch["input_ids"].cpu()[keep])
        x, y = torch.cat(features), torch.cat(targets)
        # a classifier can only learn tokens it has seen: its classes are the public records' tokens
        # (the templated tasks use a few hundred of the vocabulary), which also makes it cheap
        tokens, y = torch.unique(y, return_inverse=True)
        public = Moments.of(x)
        x = public(x)
        with isolated_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=rng))):
            fitted = decoder(x.shape[1], len(tokens), c.width)
        optimizer = torch.optim.Adam(fitted.parameters(), lr=c.lr)
        for _ in range(c.epochs):  # full-batch: a few thousand positions
            optimizer.zero_grad(set_to_none=True)
            noise = torch.randn(x.shape, generator=rng) * c.augment
            nn.functional.cross_entropy(fitted(x + noise), y).backward()
            optimizer.step()
        return _Classes(fitted.eval(), tokens, public)


@dataclass(frozen=True)
class Moments:
    """Per-dimension standardisation with one domain's mean and spread."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, activations: torch.Tensor) -> Moments:
        """From (positions, hidden) activations."""
        return cls(activations.mean(0), activations.std(0) + 1e-5)

    def __call__(self, activations: torch.Tensor) -> torch.Tensor:
        return (activations - self.mean) / self.std


class _Classes(nn.Module):
    """The decoder's logits over the vocabulary (its classes' scores, every other token at -inf), on
    standardised activations; ``public``: the training activations' moments."""

    def __init__(self, fitted: nn.Module, tokens: torch.Tensor, public: Moments):
        super().__init__()
        self.fitted, self.tokens, self.public = fitted, tokens, public

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        scores = self.fitted(activations)
        return scores.new_full((*scores.shape[:-1], int(self.tokens.max()) + 1), float("-inf")).index_copy(
            -1, self.tokens, scores)
