"""KD-FedLLM: clients share logits on a public proxy set, never weights.

Each client keeps its own model (all start from the base). A round, for a sampled client: distil its
model toward last round's consensus on the proxy set (the "distil back"; nothing in round 0), train
locally on its private records, then send its temperature-scaled logits on the proxy set (optionally
only the top-k per row). The server averages the clients' softened distributions (weighted by their
example counts) into the consensus and distils the global model toward it; the global model is what
utility measures. Downlink: the consensus; uplink: the logits. Compare ``cost.bytes_up`` with
``cost.expansion`` (= bytes sent / bytes a float32 parameter update would have been).

Secure sum (``defenses: [secagg]``): the server needs only the consensus, a weighted sum, so each
client's softened distribution (probabilities in [0, 1], within secagg's default clip of 1) goes through
the run's TRANSPORT defense with the others' (``seal``): the server receives masked residues and unmasks
only their weighted mean, which it then distils from exactly as without masking (up to secagg's
fixed-point rounding, ``cost.secagg.precision_loss``). Bytes up are then the masked residues (k bits a
value, dense even with top-k: masking hides which entries were shared).

The proxy set: ``federation.proxy_examples`` of the task's public records (``Federation.public``,
disjoint from every client), drawn with the run's seed.

Distillation loss: soft cross-entropy T^2 * mean_rows sum_v p_v * -log softmax(z / T)_v (Hinton et al.
2015), run in eval mode (no dropout) so that a model distilled toward its own shared distribution
gets exactly zero gradient: the self-distillation oracle the tests check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.api.defense import DefenseSlot, Transport
from bench.api.method import Method
from bench.api.protocol import Channel, Protocol, RoundContext, scored_logits
from bench.api.registry import PROTOCOLS
from bench.api.seeding import generator
from bench.api.transcript import ChannelValue
from bench.api.vocabulary import Record
from bench.client.training import LocalJob, job_rng, make_optimizer
from bench.engine.federation import slot_holder


def shared_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float, top_k: int) -> torch.Tensor:
    """What a client sends: logits / T, and with ``top_k`` > 0 only each row's k largest (the rest -inf)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        scaled = scored_logits(model, batch) / temperature
    model.train(was_training)
    if top_k <= 0 or top_k >= scaled.shape[-1]:
        return scaled
    values, indices = scaled.topk(top_k, dim=-1)
    return torch.full_like(scaled, -torch.inf).scatter(-1, indices, values)


def distil(method: Method, batch: dict[str, torch.Tensor], teacher: torch.Tensor, *, steps: int, lr: float,
           optimizer: str, temperature: float) -> float:
    """``steps`` optimizer steps of the method's trainable state toward ``teacher`` (rows of
    probabilities at ``temperature``); returns the last loss. Eval mode: no dropout."""
    model = method.model
    was_training = model.training
    model.eval()
    parameters = [p for _, p in method.named_trainable]
    opt = make_optimizer(optimizer, parameters, lr)
    loss = torch.zeros(())
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        log_q = F.log_softmax(scored_logits(model, batch) / temperature, dim=-1)
        loss = -(teacher * log_q).sum(-1).mean() * temperature**2
        loss.backward()
        opt.step()
    model.train(was_training)
    return float(loss.detach())


@PROTOCOLS.register("kd")
class KnowledgeDistillation(Protocol):
    """Logit sharing on a public proxy set (FedMD / FedDF style, with a global model distilled at the server)."""

    channel = Channel.LOGITS
    shares_parameters = False

    def label(self) -> str:
        return f"kd (top-{self.settings.kd_top_k})" if self.settings.kd_top_k else "kd"  # top-k shares less

    def setup(self, fed: RoundContext) -> None:
        s = self.settings
        if len(fed.public) < 1:
            raise ValueError("protocol kd needs public records for its proxy set; the task gave none")
        order = torch.randperm(len(fed.public), generator=generator(*fed.seed_parts, "proxy")).tolist()
        self.proxy: list[Record] = [fed.public[i] for i in order[: s.proxy_examples]]
        self.local: dict[int, torch.Tensor] = {}
        """Each client's own model (flat trainable state); absent until its first round: the base."""
        self.initial = fed.method.get_flat()
        self.consensus: torch.Tensor | None = None
        carrier = slot_holder(fed.defenses, DefenseSlot.TRANSPORT)
        self.transport: Transport | None = carrier.transport() if carrier is not None else None
        """secagg's transport when the run has it: the clients' distributions are then masked together."""
        self.shape: torch.Size | None = None

    def _proxy_batch(self, fed: RoundContext) -> dict[str, torch.Tensor]:
        return fed.collate(self.proxy)

    def client_message(self, fed: RoundContext, round_index: int, client: int, global_state: torch.Tensor) -> torch.Tensor:
        s, method = self.settings, fed.method
        method.set_flat(self.local.get(client, self.initial))
        batch = self._proxy_batch(fed)
        if self.consensus is not None:  # distil back: the client learns from last round's consensus
            distil(method, batch, self.consensus, steps=s.distill_steps, lr=s.lr, optimizer=s.optimizer,
                   temperature=s.kd_temperature)
        job = LocalJob(model=method.model, parameters=[p for _, p in method.named_trainable],
                       examples=fed.clients[client].members, collate=fed.collate, example_losses=method.example_losses,
                       steps=s.local_steps, batch_size=s.batch_size, lr=s.lr, optimizer=s.optimizer,
                       rng=generator(*fed.seed_parts, "client", round_index, client), client=client)
        trainer = fed.trainer
        for defense in fed.defenses:  # record-level DP-SGD here makes the logits DP by post-processing
            trainer = defense.wrap_training(trainer, client, job.rng)
        with job_rng(job):
            trainer(job)
        self.local[client] = method.get_flat()
        message = shared_logits(method.model, batch, s.kd_temperature, s.kd_top_k)
        for defense in fed.defenses:
            message = defense.on_channel(round_index, client, message,
                                         generator(*fed.seed_parts, "channel", round_index, client))
        return message

    def seal(self, round_index: int, messages: dict[int, torch.Tensor], weights: dict[int, float],
             rng: torch.Generator) -> dict[int, torch.Tensor]:
        """Under a secure-aggregation transport: each client's softened distribution, masked with the others'
        (the server can unmask only their weighted mean); otherwise the logits as sent."""
        if self.transport is None:
            return messages
        self.shape = next(iter(messages.values())).shape
        distributions = {c: F.softmax(m.float(), dim=-1).flatten() for c, m in messages.items()}
        return self.transport.encode(round_index, distributions, weights, rng)

    def combine(self, fed: RoundContext, round_index: int, messages: dict[int, torch.Tensor], weights: dict[int, float],
                global_state: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if self.transport is not None and self.shape is not None:  # the unmasked weighted mean, renormalised
            self.consensus = self.transport.aggregate(round_index, messages, weights).view(self.shape)
        else:
            total = sum(weights[c] for c in messages)
            self.consensus = sum(F.softmax(messages[c], dim=-1) * (weights[c] / total) for c in messages)
        fed.method.set_flat(global_state)
        distil(fed.method, self._proxy_batch(fed), self.consensus, steps=s.distill_steps, lr=s.lr,
               optimizer=s.optimizer, temperature=s.kd_temperature)
        return fed.method.get_flat()

    def server_sum(self) -> torch.Tensor | None:
        return None if self.consensus is None else self.consensus.detach().clone()

    def message_bytes(self, message: torch.Tensor) -> int:
        if self.transport is not None:
            return self.transport.message_bytes(message)
        if 0 < self.settings.kd_top_k < message.shape[-1]:  # k values (float32) + k indices (int32) per row
            return int(torch.isfinite(message).sum()) * 8
        return int(message.numel()) * 4

    def download_bytes(self, fed: RoundContext, global_state: torch.Tensor) -> int:
        return 0 if self.consensus is None else int(self.consensus.numel()) * 4

    def round_public(self) -> dict[str, ChannelValue]:
        return {"proxy": list(self.proxy), "temperature": self.settings.kd_temperature,
                "secure_sum": self.transport is not None}
