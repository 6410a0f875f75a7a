"""Membership inference by the hosting provider: a lookup in its own request log.

At gray- and black-box tiers clients send their training examples (provider-side tuning uploads)
and prompts to the provider, which logs them. Membership is then not an inference but a lookup; the
position paper's argument (Agrawal et al. 2025, arXiv 2505.23593, on closed tiers) is that this
vantage sees the data outright. Scoring it like any attack puts that on the same scale as the
others. Score = the number of logged client requests whose text equals the candidate's text, plus
0.5 when the candidate's text appears inside some logged request (a prompt that embeds it).

Requests not attributed to a client (``client is None``: the evaluation's own queries, such as
other attacks probing the final model) are ignored by default, so they cannot leak the candidates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from attacks.mia._common import membership_scores, text_of
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, Vantage

_SEPARATOR = "\x00"


@ATTACKS.register("mia-provider")
class ProviderLogLookup(Attack):
    """Score = exact matches of the candidate's text in the provider log (+0.5 if embedded)."""

    vantage = Vantage.PROVIDER
    family = AttackFamily.MIA
    access: frozenset[Access] = frozenset()  # the provider reads its own request log

    @dataclass(frozen=True, kw_only=True)
    class Config:
        purposes: tuple[str, ...] = doc(
            "request purposes to search (inference, tuning-upload)", ("tuning-upload", "inference")
        )
        clients_only: bool = doc("ignore requests not attributed to a client (the evaluation's own queries)", True)

    def run(self, view: ThreatView, rng: torch.Generator):
        logged = [
            record.text
            for record in view.provider_log
            if record.purpose in self.config.purposes and (record.client is not None or not self.config.clients_only)
        ]
        exact = Counter(logged)
        corpus = _SEPARATOR.join(logged)
        texts = [text_of(view, e) for e in view.candidates]
        scores = [exact[t] + (0.5 if t and t in corpus else 0.0) for t in texts]
        return membership_scores(torch.tensor(scores))
