"""Input reconstruction from split learning's cut-layer activations (server vantage).

Under ``federation.protocol: split`` the server receives each client's activations after the embedding
and the first ``cut_layer`` blocks, and (SplitFed) knows those client-side layers, since it averages
them every round (``RoundRecord.channel["bottom"]``: the client side as broadcast that round). The
activation at position t depends only on tokens 0..t (causal blocks), so the input can be decoded left
to right by matching: at each position, try candidate tokens after the prefix decoded so far, run them
through the known bottom layers, and keep the one whose activation is nearest (L2) to the observed one
(the nearest-neighbour search of Pasquini et al. 2021's "feature-space hijacking" without the learned
inverse, as in the white-box attacks on split LLMs, e.g. Chen et al. 2024 "Unveiling the Vulnerability
of Private Fine-Tuning in Split-Based Frameworks for LLMs"). At cut 0 the activation is the token
embedding plus the position embedding, so the match is exact; deeper cuts keep the residual stream,
and the search stays close to exact until noise or training drift blurs it.

Cost bound: candidates at each position are shortlisted (``shortlist``) by the distance between the
observed activation and each token's activation alone at position 0, then checked with the prefix.
Activations of local steps after the first come from client layers that have moved since the round's
broadcast; they are decoded with the broadcast layers all the same (not a small drift: up to 80% of the
activations' norm after one Adam step on the zoo model; ``inversion-split-replay`` below follows the client
instead, and searches the whole vocabulary where the shortlist misses, which is what makes it exact). Reconstructions
identical to one already made are dropped (the scorer counts surplus guesses as misses). Assumes
right padding (the zoo's tokenizers).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.errors import IncompatibleError
from bench.api.predictions import Reconstruction, text_decoder
from bench.api.protocol import Channel, ClientLayers
from bench.api.registry import ATTACKS
from bench.api.transcript import RoundRecord, ThreatView
from bench.api.vocabulary import AttackFamily, Vantage


def decode(bottom: torch.nn.Module, activations: torch.Tensor, mask: torch.Tensor, shortlist: int) -> list[list[int]]:
    """Greedy left-to-right matching of one step's (batch, positions, hidden) activations."""
    activations = activations.float()
    rows, width = mask.shape
    lengths = mask.sum(1)
    vocab = torch.arange(bottom.vocab_size)[:, None]
    alone = bottom(vocab, torch.ones_like(vocab)).float()[:, 0]  # (vocab, hidden): each token at position 0
    m = min(shortlist, bottom.vocab_size)
    decoded = torch.zeros(rows, width, dtype=torch.long)
    for t in range(int(lengths.max())):
        target = activations[:, t]
        candidates = torch.cdist(target, alone).topk(m, largest=False).indices  # (rows, m)
        prefix = decoded[:, :t].repeat_interleave(m, 0)
        inputs = torch.cat([prefix, candidates.reshape(-1, 1)], dim=1)
        out = bottom(inputs, torch.ones_like(inputs)).float()[:, t]
        distance = (out - target.repeat_interleave(m, 0)).norm(dim=-1).view(rows, m)
        decoded[:, t] = candidates.gather(1, distance.argmin(1, keepdim=True)).squeeze(1)
    return [decoded[b, : int(lengths[b])].tolist() for b in range(rows)]


def activation_rounds(view: ThreatView, last: int, attack: str) -> list[RoundRecord]:
    """The last ``last`` rounds in which the server received cut-layer activations (refused when none did)."""
    attacked = [r for r in view.rounds if r.transmitted][-last:]
    if not attacked:
        raise IncompatibleError(f"{attack} reads cut-layer activations; this run's server saw none")
    return attacked


@ATTACKS.register("inversion-split")
class SplitActivationInversion(Attack):
    """Nearest-token matching of cut-layer activations through the known client-side layers."""

    vantage = Vantage.SERVER
    family = AttackFamily.INVERSION
    access = frozenset()  # what the protocol hands the server, whatever the tier
    needs = frozenset({"client_updates"})
    channels = frozenset({Channel.ACTIVATIONS})

    @dataclass(frozen=True, kw_only=True)
    class Config:
        shortlist: int = doc("Candidate tokens checked with the prefix at each position (>= 1; the vocabulary size = exhaustive).", 16)
        rounds: int = doc("Attack the last this many rounds (>= 1).", 1)
        max_steps: int = doc("Decode the activations of at most this many local steps per client and round (0 = all); "
                             "the cost is one bottom-layer pass per position, step and client.", 0)

    def run(self, view: ThreatView, rng: torch.Generator) -> Reconstruction:
        attacked = activation_rounds(view, self.config.rounds, self.name)
        sequences: dict[tuple[int, int], list[list[int]]] = {}
        for record in attacked:
            bottom = record.channel["bottom"]
            for client, sent in sorted(record.transmitted.items()):
                found: dict[tuple[int, ...], None] = {}
                steps = list(zip(sent["activations"], sent["masks"]))
                for activations, mask in steps[: self.config.max_steps or len(steps)]:
                    for seq in decode(bottom, activations, mask, self.config.shortlist):
                        found.setdefault(tuple(seq), None)
                sequences[(record.round, client)] = [list(s) for s in found]
        return Reconstruction(sequences=sequences, decode=text_decoder(view.tokenizer))


def decode_exact(bottom: ClientLayers, activations: torch.Tensor, mask: torch.Tensor, shortlist: int,
                 tolerance: float) -> torch.Tensor:
    """Left-to-right matching over the whole vocabulary, affordable: at each position the candidates
    share the decoded prefix, which runs once (``shared_prefix``), and the ``shortlist`` tokens nearest
    by their activation alone at position 0 are tried first; when none of them reproduces the observed
    activation within ``tolerance`` (relative L2: float error, when the layers are the ones that ran),
    every token of the vocabulary is tried and the nearest kept. Returns (rows, positions) ids, padded
    positions holding the pad token (as the client's batch did)."""
    activations = activations.float()
    rows, width = mask.shape
    vocab = torch.arange(bottom.vocab_size)
    alone = bottom(vocab[:, None], torch.ones(len(vocab), 1, dtype=torch.long)).float()[:, 0]
    decoded = torch.full((rows, width), bottom.pad_token_id, dtype=torch.long)
    for b in range(rows):
        for t in range(int(mask[b].sum())):
            target = activations[b, t]
            first = torch.cdist(target[None], alone)[0].topk(min(shortlist, len(vocab)), largest=False).indices
            distance, token = _nearest(bottom, decoded[b, :t], first, target)
            if distance > tolerance * float(target.norm()):
                distance, token = _nearest(bottom, decoded[b, :t], vocab, target)
            decoded[b, t] = token
    return decoded


def _nearest(bottom: ClientLayers, prefix: torch.Tensor, candidates: torch.Tensor, target: torch.Tensor) -> tuple[float, int]:
    """The candidate whose activation after ``prefix`` is nearest ``target``, and its distance."""
    inputs = torch.cat([prefix.repeat(len(candidates), 1), candidates[:, None]], dim=1)
    out = bottom(inputs, torch.ones_like(inputs), shared_prefix=len(prefix))[:, -1].float()
    distance = (out - target).norm(dim=-1)
    best = int(distance.argmin())
    return float(distance[best]), int(candidates[best])


@ATTACKS.register("inversion-split-replay")
class SplitReplayInversion(Attack):
    """White-box inversion of cut-layer activations that follows the client through its local steps.

    The server knows the client-side layers as broadcast at the start of each round, but a client's
    local steps after the first run on layers that have since moved (one Adam step at lr 2e-3 moves the
    cut-1 activations of the zoo model by up to 80% of their norm), so matching them against the
    broadcast layers decodes wrong tokens. The server can follow the client instead: it returned the
    gradient of every step's activations, knows the optimizer and learning rate (it runs the protocol),
    and, once a step's batch is decoded, replays that step (``ClientLayers.follow``: the backward from
    the returned gradient, then the optimizer step) to get the layers the next step ran on. Each step is
    then decoded against exactly the layers that produced it, by an exhaustive (prefix-cached) nearest
    match, so the reconstruction is exact up to float ties, at every cut, until a defense changes the
    activations or the client's update (noise, local DP) or a wrong token makes the replay drift.

    This is the white-box attack the split-learning literature starts from (the server "knows the
    bottom model": Pasquini et al. 2021, "Unleashing the tiger: inference attacks on split learning",
    whose feature-space hijacking learns an inverse instead; Erdogan et al. 2022, "UnSplit", which
    optimises inputs and weights jointly when it does not), made exact for causal LMs: position t depends
    on tokens 0..t only, so greedy left-to-right matching is exhaustive search, not a heuristic. The
    replay of local steps is ours: SplitFed papers attack the first step or assume a frozen client.
    Where the gain comes from is measured in ``results/studies/split-cut-depth/``."""

    vantage = Vantage.SERVER
    family = AttackFamily.INVERSION
    access = frozenset()  # what the protocol hands the server, whatever the tier
    needs = frozenset({"client_updates"})
    channels = frozenset({Channel.ACTIVATIONS})

    @dataclass(frozen=True, kw_only=True)
    class Config:
        shortlist: int = doc("Tokens tried first at each position (nearest by their activation alone); the whole "
                             "vocabulary is tried when none matches within the tolerance (>= 1).", 64)
        tolerance: float = doc("A candidate matches when its activation is within this relative L2 distance of the "
                               "observed one (float error on the layers that ran; > 0).", 1e-3)
        replay: bool = doc("Follow the client through its local steps (True), or decode every step against the "
                           "round's broadcast layers (False: the drift the replay removes).", True)
        rounds: int = doc("Attack the last this many rounds (>= 1).", 1)
        max_steps: int = doc("Decode at most this many local steps per client and round (0 = all).", 0)

    def run(self, view: ThreatView, rng: torch.Generator) -> Reconstruction:
        attacked = activation_rounds(view, self.config.rounds, self.name)
        c, fed = self.config, view.federation
        sequences: dict[tuple[int, int], list[list[int]]] = {}
        for record in attacked:
            for client, sent in sorted(record.transmitted.items()):
                layers = copy.deepcopy(record.channel["bottom"])  # this client's own trajectory
                steps = list(zip(sent["activations"], sent["masks"], sent["gradients"]))[: c.max_steps or None]
                found: dict[tuple[int, ...], None] = {}
                for i, (activations, mask, gradient) in enumerate(steps):
                    ids = decode_exact(layers, activations, mask, c.shortlist, c.tolerance)
                    for row, m in zip(ids, mask):
                        found.setdefault(tuple(row[m.bool()].tolist()), None)
                    if c.replay and i + 1 < len(steps):
                        layers.follow(ids, mask, gradient, fed.optimizer, fed.lr)
                sequences[(record.round, client)] = [list(s) for s in found]
        return Reconstruction(sequences=sequences, decode=text_decoder(view.tokenizer))
