"""Membership inference from the logits a KD client shared (server vantage, ``federation.protocol: kd``).

The server receives each client's (temperature-scaled) logits on the public proxy set. It cannot query
the client's model on the candidates, but it can copy it: distil its own (final, global) model toward
one client's shared distribution on the proxy set, the very step it runs on the consensus every round
(model stealing by distillation, Hinton et al. 2015; the server-side KD attack surface of FedMD-style
protocols, e.g. the logit-sharing MIA evaluated in "FedMD" follow-ups and Hu et al. 2022's MIA survey).
The copy starts from the global model the server broadcast that round and inherits what the client's
logits reveal about the records it trained on; the attack scores each candidate by the copy's confidence
minus the broadcast model's (the reference attack of Carlini et al. 2021 with the server's own model as
the reference), per client, and a candidate's score is its largest over the clients (a member of any
client is a member).

What it can reach depends on the proxy set: logits on public records carry membership only through how
the client's model generalises from its data to them, so on a proxy disjoint from every client the
advantage is small; a proxy that overlaps a client's records (the tests' one-client case) leaks directly.
Reads only the last attacked round's messages (``rounds``).

Under secure aggregation (``secagg`` on the logit sum: ``channel["secure_sum"]``) the messages are masked
residues, uniformly random on their own; the server holds only the consensus it distils from (the round's
``aggregate``: the example-weighted mean of the clients' distributions). The attack then distils one copy
from that aggregate, the most a per-client attack can do with what the server saw: membership of any
client's records through the federation's mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.mia._common import confidence_signal
from attacks.mia._kd import distil_copy, teachers
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.errors import IncompatibleError
from bench.api.predictions import MembershipScores
from bench.api.protocol import Channel
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, Vantage


@ATTACKS.register("mia-kd-logits")
class SharedLogitsMIA(Attack):
    """Distil a copy of each client from its shared logits; score candidates by the copy's confidence."""

    vantage = Vantage.SERVER
    family = AttackFamily.MIA
    access = frozenset({Access.WEIGHTS, Access.LOGITS})
    needs = frozenset({"client_updates", "global_states"})
    channels = frozenset({Channel.LOGITS})

    @dataclass(frozen=True, kw_only=True)
    class Config:
        steps: int = doc("Distillation steps of each client copy on the proxy set (>= 1).", 30)
        lr: float = doc("Adam learning rate of the copy (> 0).", 1e-3)
        rounds: int = doc("Attack the messages of the last this many rounds (>= 1).", 1)

    def run(self, view: ThreatView, rng: torch.Generator) -> MembershipScores:
        attacked = [r for r in view.rounds if r.transmitted][-self.config.rounds:]
        if not attacked:
            raise IncompatibleError("mia-kd-logits reads shared logits; this run's server saw none")
        model = view.final_model
        saved = model.get_flat()
        best = torch.full((len(view.candidates),), -torch.inf)
        try:
            for record in attacked:
                model.set_flat(record.global_before)
                reference = confidence_signal(model, view.candidates)
                for teacher in teachers(record, "mia-kd-logits"):
                    distil_copy(model, record.global_before, record, teacher, steps=self.config.steps,
                                lr=self.config.lr)
                    best = torch.maximum(best, confidence_signal(model, view.candidates) - reference)
        finally:
            model.set_flat(saved)
        return MembershipScores(scores=best)
