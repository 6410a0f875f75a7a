"""What a KD server can read from one round's shared logits, and the copy of a client it can distil from them.

Shared by the attacks on knowledge distillation's channel (``mia-kd-logits``, ``pii-infer-kd``): each
distils the server's model, from the state it broadcast that round, toward one client's softened
distribution on the public proxy set (model stealing by distillation, Hinton et al. 2015), then probes
the copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.api.errors import IncompatibleError
from bench.api.handles import ModelHandle
from bench.api.protocol import scored_logits
from bench.api.transcript import RoundRecord


def teachers(record: RoundRecord, attack: str) -> list[torch.Tensor]:
    """The distributions the server can read this round: each client's, or under a secure sum only the
    aggregate it unmasked."""
    if record.channel.get("secure_sum"):
        if record.aggregate is None:
            raise IncompatibleError(f"{attack}: the logits were securely summed and no aggregate was kept")
        return [record.aggregate.float()]
    return [F.softmax(record.transmitted[c].float(), dim=-1) for c in sorted(record.transmitted)]


def distil_copy(model: ModelHandle, start: torch.Tensor, record: RoundRecord, teacher: torch.Tensor, *,
                steps: int, lr: float) -> None:
    """Leave ``model`` at ``start`` distilled ``steps`` Adam steps toward ``teacher`` on the round's proxy
    set (eval mode: no dropout); the caller restores the model's state."""
    proxy, temperature = record.channel["proxy"], record.channel["temperature"]
    model.set_flat(start)
    module = model.module()
    was_training = module.training
    module.eval()
    opt = torch.optim.Adam([p for _, p in model.named_trainable], lr=lr)
    batch = model.task.collate(proxy, model.tokenizer, model.device)
    teacher = teacher.to(model.device)
    try:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            log_q = F.log_softmax(scored_logits(module, batch) / temperature, dim=-1)
            (-(teacher * log_q).sum(-1).mean()).backward()
            opt.step()
    finally:
        module.train(was_training)
