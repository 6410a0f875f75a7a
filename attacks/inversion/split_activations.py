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
broadcast; they are decoded with the broadcast layers all the same (a small drift). Reconstructions
identical to one already made are dropped (the scorer counts surplus guesses as misses). Assumes
right padding (the zoo's tokenizers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.errors import IncompatibleError
from bench.api.predictions import Reconstruction, text_decoder
from bench.api.protocol import Channel
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
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
        attacked = [r for r in view.rounds if r.transmitted][-self.config.rounds:]
        if not attacked:
            raise IncompatibleError("inversion-split reads cut-layer activations; this run's server saw none")
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
