"""Server-side membership inference from transmitted updates: gradient alignment.

Nasr, Shokri, Houmansadr 2019, "Comprehensive Privacy Analysis of Deep Learning: Passive and Active
White-box Inference Attacks against Centralized and Federated Learning" (IEEE S&P) show that an
honest-but-curious federated server infers membership from clients' updates; Li et al. 2023,
"Effective Passive Membership Inference Attacks in Federated Learning against Overparameterized
Models" (ICLR) score by the cosine similarity between a candidate's gradient and an update. This
implements the latter: for each round, the candidate's descent direction -grad loss(x) at the
round's global state is compared with each client's transmitted update (after - before, which
points along the clients' accumulated descent directions); the score is the maximum cosine over
clients and rounds.

Departures: no trained attack model (the cosine is the score). Transmitted values that are not
float vectors of the trainable size (secure-aggregation masks, HE ciphertexts) carry nothing the
server can align with, so they are skipped; the round's aggregate, which the server sees under any
transport, is compared too (``use_aggregate``). A round with nothing usable adds nothing; with
nothing usable at all every score is 0 (chance).

Access: the gradient at each round's broadcast state needs the weights and gradients (an open
tier's handle, ``at_state``); the runner refuses the attack at tiers that do not grant them. The
loss is the task's public loss (``task.example_losses``), which is what every method but RLHF
trains on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.mia._common import membership_scores
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.registry import ATTACKS
from bench.api.transcript import RoundRecord, ThreatView
from bench.api.vocabulary import AttackFamily, Vantage


def observed_directions(
    record: RoundRecord, size: int, use_aggregate: bool, device: torch.device
) -> torch.Tensor | None:
    """Unit vectors of the float updates the server saw this round, (updates, size), or None."""
    seen = list(record.transmitted.values()) + ([record.aggregate] if use_aggregate else [])
    usable = [u for u in seen if isinstance(u, torch.Tensor) and u.is_floating_point() and u.numel() == size]
    if not usable:
        return None
    stacked = torch.stack([u.reshape(-1).to(device, torch.float32) for u in usable])
    return stacked / stacked.norm(dim=1, keepdim=True).clamp_min(1e-12)


def example_gradient(view: ThreatView, parameters: list[torch.nn.Parameter], example: dict) -> torch.Tensor:
    """Flat gradient of one example's task loss with respect to the trainable parameters."""
    handle = view.final_model
    batch = handle.task.collate([example], view.tokenizer, parameters[0].device)
    loss = handle.task.example_losses(handle.model, batch).sum()
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1).float()
            for g, p in zip(grads, parameters, strict=True)
        ]
    )


@ATTACKS.register("mia-gradient")
class GradientAlignment(Attack):
    """Score = max over rounds and observed updates of cos(-grad loss(x) at the round's state, update)."""

    vantage = Vantage.SERVER
    family = AttackFamily.MIA
    access = frozenset({Access.WEIGHTS, Access.GRADIENTS})
    needs = frozenset({"client_updates", "global_states", "aggregates"})

    @dataclass(frozen=True, kw_only=True)
    class Config:
        last_rounds: int = doc("attack only the last N rounds (0: every round)", 0)
        use_aggregate: bool = doc(
            "also align with each round's aggregate update (visible even under secure aggregation)", True
        )

    def run(self, view: ThreatView, rng: torch.Generator):
        handle = view.final_model  # an open tier's handle: the weights and their gradients
        parameters = [p for _, p in handle.named_trainable]
        rounds = view.rounds[-self.config.last_rounds :] if self.config.last_rounds else view.rounds
        best = torch.full((len(view.candidates),), -torch.inf)
        for record in rounds:
            if record.global_before is None:
                continue
            # eval mode (no dropout): the gradient of the loss itself, deterministic
            with handle.at_state(record.global_before), torch.enable_grad():
                self._align_round(view, parameters, record, handle.num_trainable, best)
        return membership_scores(torch.where(torch.isfinite(best), best, torch.zeros_like(best)))

    def _align_round(
        self, view: ThreatView, parameters: list, record: RoundRecord, size: int, best: torch.Tensor
    ) -> None:
        device = parameters[0].device
        directions = observed_directions(record, size, self.config.use_aggregate, device)
        if directions is None:
            return
        for index, example in enumerate(view.candidates):
            descent = -example_gradient(view, parameters, example)
            cosine = (directions @ descent) / descent.norm().clamp_min(1e-12)
            best[index] = max(float(best[index]), float(cosine.max()))
