"""``dp-central``: user-level DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018).

Each sampled client's flat update is clipped to L2 norm ``clip_norm`` (C) before it leaves the
client (``on_client_update``); the server adds Gaussian noise to the aggregate so that the *sum* of
the round's clipped updates carries noise of std ``z * C`` (``z`` = ``noise_multiplier``). The
engine hands ``on_aggregate`` the mean over the round's ``num_clients`` clients, so the noise added
to it has std ``z * C / num_clients``. Accounting treats each round as one subsampled Gaussian
mechanism with sampling rate ``q = clients_per_round / clients`` (Opacus RDP or PRV accountant); the
privacy unit is a whole client (level ``user``).

Weights. DP-FedAvg's sensitivity argument needs every client's clipped update to enter the aggregate
with the same weight (1 / num_clients): with example-count weights one client could move the mean by
up to ``C * w_max / sum(w)``, not ``C / num_clients``. This defense therefore declares
``requires_uniform_weights = True`` and the engine must aggregate with equal weights when it is
present (the paper's bounded-weight estimator is not implemented).

Where the noise is added (``noise_at``):

- ``server`` (central DP): the server adds ``N(0, (z C / num_clients)^2)`` to the mean. The server
  sees the noiseless clipped updates (or their noiseless sum under secure aggregation) and is trusted
  to add the noise.
- ``clients`` (distributed DP, for use with ``secagg``/``he``): each client adds
  ``N(0, (z C)^2 / n)`` to its clipped update before masking/encryption, ``n`` being the planned
  ``clients_per_round``; the sum of ``n`` such updates carries std ``z C`` exactly as above, and no
  party sees a noiseless aggregate. If clients drop out (``num_clients < n``) the server tops the noise
  up by the missing variance ``(z C)^2 (1 - num_clients / n)`` so the guarantee is unchanged.
  Departure: the discrete Gaussian / Skellam noise of Kairouz et al. (2021) for modular arithmetic is
  not used; noise is added in floating point before the transport quantises.
- unset (default): ``clients`` when a transport defense (``secagg``/``he``) runs alongside, else
  ``server`` (decided in ``check_compatible``, which the engine calls before training).

Other departures: the engine samples a fixed number of clients per round, while the accountant
assumes Poisson sampling at rate q (the usual approximation, as in the paper's experiments). Robust
aggregation rules replace the mean, whose sensitivity is then no longer ``C / num_clients``; that
combination is rejected as incompatible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from bench.config import doc
from bench.registry import DEFENSES
from defenses._dp_accounting import Ledger, calibrate_noise, generator_on
from defenses.base import Defense

FEDERATION = 0  # the single privacy ledger unit: user-level DP is about the federation's output


def clip_to_norm(update: torch.Tensor, clip_norm: float | None) -> torch.Tensor:
    """``update`` scaled to L2 norm at most ``clip_norm``; returned as is when already inside."""
    if clip_norm is None or math.isinf(clip_norm):
        return update
    norm = float(update.norm())
    return update if norm <= clip_norm else update * (clip_norm / norm)


@DEFENSES.register("dp-central")
class DPCentral(Defense):
    """User-level DP-FedAvg (McMahan et al. 2018): clip each client update, noise on the aggregate."""

    requires_uniform_weights: ClassVar[bool] = True
    """The engine must give every client the same aggregation weight (see the module docstring)."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        noise_multiplier: float | None = doc("z: noise std on the sum of clipped updates / clip_norm.", None)
        target_epsilon: float | None = doc("Calibrate z so that epsilon after all rounds is this.", None)
        clip_norm: float | None = doc("Per-client update L2 clip norm C; null or inf disables clipping.", 1.0)
        delta: float | None = doc("delta of the guarantee; default min(1e-5, clients^-1.1).", None)
        accountant: Literal["rdp", "prv"] = doc("Opacus accountant: rdp (Renyi DP) or prv (PRV).", "rdp")
        noise_at: Literal["server", "clients"] | None = doc(
            "server (central DP), clients (distributed DP under secagg/he); unset: clients iff secagg/he runs.",
            None,
        )

        def __post_init__(self) -> None:
            if (self.noise_multiplier is None) == (self.target_epsilon is None):
                raise ValueError("give exactly one of noise_multiplier and target_epsilon")
            if self.noise_multiplier is not None and self.noise_multiplier < 0:
                raise ValueError("noise_multiplier must be >= 0")
            if self.target_epsilon is not None and not self.target_epsilon > 0:
                raise ValueError("target_epsilon must be > 0")
            unclipped = self.clip_norm is None or math.isinf(self.clip_norm)
            if not unclipped and not self.clip_norm > 0:
                raise ValueError("clip_norm must be > 0 (or null/inf to disable clipping)")
            if unclipped and (self.target_epsilon is not None or (self.noise_multiplier or 0) > 0):
                raise ValueError("noise needs a finite clip_norm (the noise std is noise_multiplier * clip_norm)")
            if self.delta is not None and not 0 < self.delta < 1:
                raise ValueError("delta must be in (0, 1)")

    def __init__(self, config: Config):
        super().__init__(config)
        self.ledger = Ledger()
        self.noise_multiplier = config.noise_multiplier
        self.noise_at = config.noise_at or "server"
        self.delta = config.delta if config.delta is not None else 1e-5
        self.sample_rate = 1.0  # no amplification claimed until setup() gives the federation's size
        self.planned_clients: int | None = None

    def check_compatible(self, others: list[Defense], scenario: Any) -> str | None:
        robust = [d.name for d in others if d.needs_client_updates]
        if robust:
            return f"dp-central calibrates noise to the mean's sensitivity; {robust[0]} replaces the mean"
        if self.config.noise_at is None:
            self.noise_at = "clients" if any(d.is_transport for d in others) else "server"
        return None

    def setup(self, scenario: Any, num_examples: dict[int, int]) -> None:
        federation = scenario.federation
        self.planned_clients = int(federation.clients_per_round)
        self.sample_rate = min(1.0, federation.clients_per_round / federation.clients)
        if self.config.delta is None:
            self.delta = min(1e-5, float(federation.clients) ** -1.1)
        if self.config.target_epsilon is not None:
            self.noise_multiplier = calibrate_noise(
                self.config.target_epsilon, self.delta, self.sample_rate, int(federation.rounds), self.config.accountant
            )

    @property
    def _noise_std_on_sum(self) -> float:
        if not self.noise_multiplier:
            return 0.0
        return float(self.noise_multiplier) * float(self.config.clip_norm)

    def on_client_update(
        self, round_index: int, client: int, update: torch.Tensor, rng: torch.Generator
    ) -> torch.Tensor:
        if self.noise_multiplier is None:
            raise RuntimeError("dp-central with target_epsilon needs setup(scenario, ...) before training")
        clipped = clip_to_norm(update, self.config.clip_norm)
        if self.noise_at != "clients" or self._noise_std_on_sum == 0.0:
            return clipped
        if self.planned_clients is None:
            raise RuntimeError("dp-central with noise_at=clients needs setup(scenario, ...) for clients_per_round")
        std = self._noise_std_on_sum / math.sqrt(self.planned_clients)
        return clipped + _gaussian_like(clipped, std, rng)

    def on_aggregate(
        self, round_index: int, aggregate: torch.Tensor, num_clients: int, rng: torch.Generator
    ) -> torch.Tensor:
        if self.noise_multiplier is None:
            raise RuntimeError("dp-central with target_epsilon needs setup(scenario, ...) before training")
        self.ledger.record(FEDERATION, float(self.noise_multiplier), self.sample_rate, 1)
        variance_on_sum = self._noise_std_on_sum**2
        if self.noise_at == "clients" and self.planned_clients:
            variance_on_sum *= max(0.0, 1.0 - num_clients / self.planned_clients)  # top up after dropouts
        if variance_on_sum == 0.0:
            return aggregate
        return aggregate + _gaussian_like(aggregate, math.sqrt(variance_on_sum) / max(num_clients, 1), rng)

    def privacy(self) -> dict[str, Any]:
        clip = self.config.clip_norm
        unclipped = clip is None or math.isinf(clip)
        epsilon = math.inf if unclipped else self.ledger.worst(self.delta, self.config.accountant)[1]
        return {
            "dp.epsilon": epsilon,
            "dp.delta": self.delta,
            "dp.accountant": self.config.accountant,
            "dp.level": "user",
            "dp.noise_multiplier": self.noise_multiplier,
            "dp.clip_norm": math.inf if unclipped else clip,
            "dp.sampling_rate": self.sample_rate,
            "dp.steps": self.ledger.steps(FEDERATION),
            "dp.noise_at": self.noise_at,
        }


def _gaussian_like(reference: torch.Tensor, std: float, rng: torch.Generator) -> torch.Tensor:
    generator = generator_on(reference.device, rng)
    return torch.randn(reference.shape, generator=generator, device=reference.device, dtype=reference.dtype) * std
