"""Shared pieces of the gradient-inversion attacks: what they attack and the model state they use.

An inversion attack reads, per attacked batch, the update the server saw and the trainable state
broadcast at the start of that round (``RoundRecord.global_before``); it runs the shared model at that
state and restores the model afterwards (the runner evaluates utility on the same object).

Targets. ``client``: each client's transmitted update, keyed ``(round, client)``. ``aggregate``: the
round's aggregate treated as one big batch, keyed ``(round, AGGREGATE_CLIENT)``; the scorer compares
it with the union of the round's batches.

Transports that hide updates. A secure-aggregation message is masked integers, an HE message is
ciphertext bytes: neither is an update, so ``as_float_update`` yields ``None`` for them (and for a
float message that is not finite) and the attack reports an empty reconstruction for that batch.
(Masked residues read as floats are meaningless numbers up to 2^52; DAGER's linear algebra was
reported to crash on them with ``LinAlgError``.) Nothing but the message itself is ever looked at.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.handles import OpenHandle
from bench.api.predictions import Reconstruction, text_decoder
from bench.api.transcript import FederationSettings, ThreatView
from bench.api.vocabulary import AGGREGATE_CLIENT

TARGET_NEEDS = {
    "client": frozenset({"client_updates", "global_states"}),
    "aggregate": frozenset({"aggregates", "global_states"}),
}
TARGET_VANTAGE = {"client": "server", "aggregate": "aggregate"}


@dataclass(frozen=True, kw_only=True)
class TargetConfig:
    target: str = doc("'client': invert each client's transmitted update; 'aggregate': the round's aggregate as one batch.", "client")
    rounds: tuple[int, ...] = doc("Rounds to attack (indices into the transcript); empty = every round.", (0,))
    max_clients: int = doc("Attack at most this many clients per round (0 = all), in client order.", 0)

    def __post_init__(self) -> None:
        if self.target not in TARGET_NEEDS:
            raise ValueError(f"target must be one of {', '.join(TARGET_NEEDS)}")
        if self.max_clients < 0:
            raise ValueError("max_clients must be >= 0")


def configure_vantage(attack: Attack, config: TargetConfig) -> None:
    """Per-instance vantage and needs: the aggregate target stands at the aggregate vantage."""
    attack.vantage = TARGET_VANTAGE[config.target]
    attack.needs = TARGET_NEEDS[config.target]


@dataclass
class Target:
    key: tuple[int, int]
    update: torch.Tensor | None
    """Float update of the trainable size, or None when the message is not one (ciphertexts)."""
    global_before: torch.Tensor
    clients: int = 1
    """How many clients' batches the update mixes (the round's sampled clients for the aggregate)."""
    examples: int | None = None
    """The example counts those clients reported (public FedAvg weights), when the record has them."""
    per_example: int = 1
    """Sequences each example puts through the model (``RoundRecord.sequences_per_example``: 2 for a
    preference pair, whose chosen and rejected answers are both layer inputs)."""
    last_token_is_label: bool = True
    """The update's loss was next-token prediction (``RoundRecord.last_token_is_label``): each sequence's
    final token is a label only; False for a reward model, whose every token is an input."""

    def most_sequences(self, federation: FederationSettings) -> int:
        """How many distinct sequences can be in the update: batch size x steps x clients x sequences per
        example, and no more than the clients said they hold."""
        steps = 1 if federation.protocol == "fedsgd" else int(federation.local_steps)
        bound = int(federation.batch_size) * max(steps, 1) * self.clients
        return (min(bound, self.examples) if self.examples else bound) * self.per_example


def targets(view: ThreatView, config: TargetConfig, size: int) -> Iterator[Target]:
    wanted = set(config.rounds)
    for record in view.rounds:
        if (wanted and record.round not in wanted) or record.global_before is None:
            continue
        if config.target == "aggregate":
            if record.aggregate is not None:
                reported = [record.weights.get(c) for c in record.sampled]
                examples = int(sum(reported)) if reported and None not in reported else None
                yield Target((record.round, AGGREGATE_CLIENT), as_float_update(record.aggregate, size),
                             record.global_before, max(len(record.sampled), 1), examples,
                             record.sequences_per_example, record.last_token_is_label)
            continue
        clients = sorted(record.transmitted)
        for client in clients[: config.max_clients or None]:
            examples = int(record.weights[client]) if client in record.weights else None
            yield Target((record.round, client), as_float_update(record.transmitted[client], size),
                         record.global_before, 1, examples, record.sequences_per_example,
                         record.last_token_is_label)


def reconstruct(view: ThreatView, config: TargetConfig, invert: Callable[[Target], list[list[int]]]) -> Reconstruction:
    """One reconstruction per attacked update; an update that is not a float vector (ciphertexts, masked
    sums) gives none."""
    result = Reconstruction(decode=text_decoder(view.tokenizer))
    for target in targets(view, config, view.layout.num_trainable):
        result.sequences[target.key] = [] if target.update is None else invert(target)
    return result


def as_float_update(message: object, size: int) -> torch.Tensor | None:
    """The message as a flat float32 vector of the trainable size, or None when it cannot be one."""
    if not isinstance(message, torch.Tensor) or message.numel() != size or not message.is_floating_point():
        return None  # ciphertexts, masked integers: nothing an inversion can read
    flat = message.detach().reshape(-1).to(torch.float32)
    return flat if bool(torch.isfinite(flat).all()) else None


@contextlib.contextmanager
def model_at(method: OpenHandle, flat: torch.Tensor) -> Iterator[torch.nn.Module]:
    """The method's model with trainable state ``flat`` in eval mode; restored on exit."""
    model = method.model
    saved, was_training = method.get_flat(), model.training
    try:
        method.set_flat(flat.to(saved.device))
        model.eval()
        yield model
    finally:
        method.set_flat(saved)
        model.train(was_training)


def observed_gradient(update: torch.Tensor, federation: FederationSettings) -> torch.Tensor:
    """The mean gradient an SGD client followed: update = -lr * sum of ``local_steps`` gradients.

    Spans do not care about this scale; losses that compare magnitudes (label recovery, L2 gradient
    matching) do. FedSGD takes one step, whatever ``local_steps`` says.
    """
    lr = float(federation.lr or 1.0)
    steps = 1 if federation.protocol == "fedsgd" else max(int(federation.local_steps), 1)
    return -update / (lr * steps)


def trainable_names(method: OpenHandle) -> dict[int, str]:
    """id(parameter) -> trainable name, to find a module's parameters in ``method.unflatten``."""
    return {id(p): name for name, p in method.named_trainable}


def is_language_model(model: torch.nn.Module) -> bool:
    """Causal LMs have output embeddings; sequence classifiers have a head instead."""
    get = getattr(model, "get_output_embeddings", None)
    return get is not None and get() is not None
