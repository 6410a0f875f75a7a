"""The defense contract: hooks into the single round loop of ``bench.federation``.

Order inside one round (the engine calls every defense's hook in scenario order):

1. ``wrap_training``      client side, around local training (record-level DP-SGD)
2. ``on_client_update``   client side, on the flat update before it leaves the client (clipping)
3. transport              what the server sees: at most one defense with ``is_transport`` (secagg, he)
4. ``aggregate``          server side, replaces the weighted mean (robust rules; needs plain updates)
5. ``on_aggregate``       server side, on the aggregate (central DP noise)
6. ``privacy``            after the run: epsilon, delta, accountant, level
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


class Transport:
    """Carries client updates to the server. The plain transport sends float vectors."""

    def encode(
        self, round_index: int, updates: dict[int, torch.Tensor], weights: dict[int, float], rng: torch.Generator
    ) -> dict[int, Any]:
        """Each client's message as the server receives it."""
        return dict(updates)

    def aggregate(self, round_index: int, messages: dict[int, Any], weights: dict[int, float]) -> torch.Tensor:
        """The weighted mean of the updates, recovered from the messages."""
        total = sum(weights[c] for c in messages)
        return sum(messages[c] * (weights[c] / total) for c in messages)

    def survivors(self, round_index: int, messages: dict[int, Any]) -> int:
        """How many clients' updates the aggregate ``aggregate`` just returned for this round averages
        over (fewer than sampled when clients dropped): every client whose message arrived."""
        return len(messages)

    def message_bytes(self, message: Any) -> int:
        return int(message.numel() * message.element_size())

    def decode_individual(self, messages: dict[int, Any]) -> dict[int, torch.Tensor]:
        """Individual float updates, for robust aggregation; only the plain transport can."""
        return dict(messages)


class Defense:
    name: ClassVar[str]
    removes_vantages: ClassVar[frozenset[str]] = frozenset()
    """Vantages whose per-client view this defense hides (secagg/he hide ``server``)."""
    needs_client_updates: ClassVar[bool] = False
    """True for robust aggregators: they must read each client's plain update."""
    is_transport: ClassVar[bool] = False
    replaces_training: ClassVar[bool] = False
    """True when ``wrap_training`` runs its own trainer (DP-SGD) instead of wrapping the given one."""
    requires_uniform_weights: ClassVar[bool] = False
    """True when the aggregate must weight clients equally (user-level DP-FedAvg's sensitivity)."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        pass

    def __init__(self, config: Any):
        self.config = config

    def check_compatible(self, others: list[Defense], scenario: Any) -> str | None:
        """A reason this defense cannot run with ``others`` in ``scenario``, or None."""
        if self.needs_client_updates:
            hiding = [d.name for d in others if d.is_transport]
            if hiding:
                return f"{self.name} needs each client's update, which {hiding[0]} hides from the server"
        return None

    def setup(self, scenario: Any, num_examples: dict[int, int]) -> None:
        """Called once before training with the scenario and each client's member count."""

    def wrap_training(self, train_step: Callable[..., Any], client: int, rng: torch.Generator) -> Callable[..., Any]:
        return train_step

    def on_client_update(self, round_index: int, client: int, update: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        return update

    def transport(self) -> Transport | None:
        return None

    def aggregate(
        self, round_index: int, updates: torch.Tensor, weights: torch.Tensor, rng: torch.Generator
    ) -> torch.Tensor | None:
        """``updates`` is (clients, parameters); return the aggregate or None to keep the mean."""
        return None

    def on_aggregate(self, round_index: int, aggregate: torch.Tensor, num_clients: int, rng: torch.Generator) -> torch.Tensor:
        """``num_clients``: the clients whose updates ``aggregate`` averages (``Transport.survivors``)."""
        return aggregate

    def coordinate_bound(self) -> float | None:
        """A bound on every coordinate of the updates ``on_client_update`` returns, when this defense's
        guarantee needs a fixed-range transport (secagg) to encode them unclipped; None when it needs none."""
        return None

    def privacy(self) -> dict[str, Any]:
        return {}

    def costs(self) -> dict[str, float]:
        """Extra cost metrics (``cost.*``) this defense measured."""
        return {}
