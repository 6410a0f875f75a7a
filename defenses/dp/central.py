"""``dp-central``: user-level DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018).

Each sampled client's flat update is clipped to L2 norm ``clip_norm`` (C) before it leaves the
client (``on_client_update``); the server adds Gaussian noise to the aggregate so that the *sum* of
the round's clipped updates carries noise of std ``z * C`` (``z`` = ``noise_multiplier``). The
engine hands ``on_aggregate`` the mean over the round's ``num_clients`` surviving clients (those
whose update the aggregate holds, ``Transport.survivors``), so the noise added to it has std
``z * C / num_clients``. The privacy unit is a whole client (level ``user``).

Sampling and accounting. The engine samples a fixed number ``m = clients_per_round`` of the ``n``
clients each round, uniformly without replacement (``randperm[:m]``), and that is what is accounted:
each round is the Gaussian mechanism on a fixed-size subset, with the RDP bound of Wang, Balle and
Kasiviswanathan (2019, Theorem 27; ``defenses/dp/wor.py``) at ratio ``q = m / n``, composed over the
rounds. That bound holds for the replace-one neighbouring relation (``n`` is public; one client's data
is replaced by anything), under which one clipped update moves the sum by up to ``2C``: the accountant
sees noise ``z / 2`` relative to that sensitivity. (An add/remove epsilon from a Poisson accountant,
as in the paper, would need the engine to sample clients independently with probability q, i.e. a
variable cohort; it does not, and an add/remove epsilon is not a guarantee for the fixed-size cohort.
A replace-one epsilon is roughly twice the add/remove one at the same noise.) Clients that drop out
after being sampled only shrink the subset; the survivors are a uniform subset of data-independent
size ``<= m``, and the bound grows with q, so the round's RDP is at most the bound at ``m / n``.
The result row says so: ``dp.sampling = fixed-size without replacement``, ``dp.neighbouring =
replace-one``. The ledger counts every round, including one that a transport skipped.

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
  party sees a noiseless aggregate. If clients drop out (``num_clients < n`` survivors) the server tops
  the noise up by the missing variance ``(z C)^2 (1 - num_clients / n)`` so the guarantee is unchanged.
  A fixed-range transport must not clip the noisy coordinates (that would shrink the noise and make it
  non-Gaussian): ``coordinate_bound`` declares ``C + 12 sigma_client`` (``sigma_client = z C /
  sqrt(n)``), which one Gaussian coordinate exceeds with probability 2 Phi(-12) < 4e-33, so a run
  of 1e12 coordinate draws clips with probability below 1e-20, far below delta; secagg widens its range
  to it and stops the run if a coordinate still falls outside.
  Departure: the discrete Gaussian / Skellam noise of Kairouz et al. (2021) for modular arithmetic is
  not used; noise is added in floating point before the transport quantises (rounding error per
  coordinate at most n / (2 * scale), about 1e-8 of the noise std at 32 bits). Against the server
  itself, which under secure aggregation still learns who was sampled, the amplification by sampling
  does not apply: the reported epsilon is about the released aggregates and model.
- unset (default): ``clients`` when a transport defense (``secagg``/``he``) runs alongside, else
  ``server`` (decided in ``setup``, from the run's other defenses: ``noise_placement``).

Other departures: robust aggregation rules replace the mean, whose sensitivity is then no longer
``C / num_clients``; that combination is rejected as incompatible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from bench.api.config import doc
from bench.api.defense import Defense, DefenseSlot, PrivacyReport
from bench.api.private_steps import generator_on
from bench.api.registry import DEFENSES
from bench.api.transcript import PlannedScenario
from bench.api.vocabulary import DefenseFamily
from defenses.dp.accounting import Ledger, calibrate_noise

FEDERATION = 0  # the single privacy ledger unit: user-level DP is about the federation's output
REPLACE_ONE_SENSITIVITY = 2.0
"""Replacing one client's clipped update (norm <= C) moves the sum by up to 2C."""
ACCOUNTANT = "rdp-wor"
"""Fixed-size sampling without replacement, replace-one (``defenses/dp/accounting.py``)."""
TAIL_SIGMAS = 12.0
"""Half-width of the encoding range in per-client noise stds beyond C (see the module docstring)."""


def clip_to_norm(update: torch.Tensor, clip_norm: float | None) -> torch.Tensor:
    """``update`` scaled to L2 norm at most ``clip_norm``; returned as is when already inside."""
    if clip_norm is None or math.isinf(clip_norm):
        return update
    norm = float(update.norm())
    return update if norm <= clip_norm else update * (clip_norm / norm)


@DEFENSES.register("dp-central")
class DPCentral(Defense):
    """User-level DP-FedAvg (McMahan et al. 2018): clip each client update, noise on the aggregate."""

    slot: ClassVar[DefenseSlot] = DefenseSlot.CLIENT_UPDATE
    family = DefenseFamily.DP
    requires_uniform_weights: ClassVar[bool] = True
    """The engine must give every client the same aggregation weight (see the module docstring)."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        noise_multiplier: float | None = doc("z: noise std on the sum of clipped updates / clip_norm.", None)
        target_epsilon: float | None = doc("Calibrate z so that epsilon after all rounds is this.", None)
        clip_norm: float | None = doc("Per-client update L2 clip norm C; null or inf disables clipping.", 1.0)
        delta: float | None = doc("delta of the guarantee; default min(1e-5, clients^-1.1).", None)
        accountant: Literal["rdp"] = doc(
            "rdp: Renyi DP of fixed-size sampling without replacement (Wang, Balle, Kasiviswanathan 2019), "
            "the way the engine samples clients; Poisson-only accountants (prv) do not apply",
            "rdp",
        )
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

    def check_compatible(self, others: list[Defense], scenario: PlannedScenario) -> str | None:
        robust = [d.name for d in others if d.slot is DefenseSlot.AGGREGATION]
        if robust:
            return f"dp-central calibrates noise to the mean's sensitivity; {robust[0]} replaces the mean"
        return None

    def setup(self, scenario: PlannedScenario, num_examples: dict[int, int], *, peers: Sequence[Defense] = ()) -> None:
        self.noise_at = noise_placement(self.config, peers)
        federation = scenario.federation
        self.planned_clients = int(federation.clients_per_round)
        self.sample_rate = min(1.0, federation.clients_per_round / federation.clients)
        if self.config.delta is None:
            self.delta = min(1e-5, float(federation.clients) ** -1.1)
        if self.config.target_epsilon is not None:
            sigma = calibrate_noise(
                self.config.target_epsilon, self.delta, self.sample_rate, int(federation.rounds), ACCOUNTANT
            )
            self.noise_multiplier = sigma * REPLACE_ONE_SENSITIVITY

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
        return clipped + _gaussian_like(clipped, self._client_noise_std, rng)

    @property
    def _client_noise_std(self) -> float:
        return self._noise_std_on_sum / math.sqrt(self.planned_clients or 1)

    def coordinate_bound(self) -> float | None:
        """With client-side noise: ``C + TAIL_SIGMAS`` client noise stds, which no coordinate of a clipped,
        noised update exceeds but with negligible probability; None otherwise (nothing to protect)."""
        if self.noise_at != "clients" or self._noise_std_on_sum == 0.0:
            return None
        return float(self.config.clip_norm) + TAIL_SIGMAS * self._client_noise_std

    def on_aggregate(
        self, round_index: int, aggregate: torch.Tensor, num_clients: int, rng: torch.Generator
    ) -> torch.Tensor:
        if self.noise_multiplier is None:
            raise RuntimeError("dp-central with target_epsilon needs setup(scenario, ...) before training")
        self.ledger.record(FEDERATION, float(self.noise_multiplier) / REPLACE_ONE_SENSITIVITY, self.sample_rate, 1)
        if num_clients == 0:
            return aggregate  # the round was skipped: the aggregate holds no one's update
        variance_on_sum = self._noise_std_on_sum**2
        if self.noise_at == "clients" and self.planned_clients:
            variance_on_sum *= max(0.0, 1.0 - num_clients / self.planned_clients)  # top up after dropouts
        if variance_on_sum == 0.0:
            return aggregate
        return aggregate + _gaussian_like(aggregate, math.sqrt(variance_on_sum) / num_clients, rng)

    def privacy(self) -> PrivacyReport:
        clip = self.config.clip_norm
        unclipped = clip is None or math.isinf(clip)
        epsilon = math.inf if unclipped else self.ledger.worst(self.delta, ACCOUNTANT)[1]
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
            "dp.sampling": "fixed-size without replacement",
            "dp.neighbouring": "replace-one",
        }


def noise_placement(config: DPCentral.Config, peers: Sequence[Defense]) -> str:
    """Where the noise is added: the configured place, else at the clients iff a transport (secagg, he)
    keeps the server from seeing a noiseless aggregate's parts."""
    if config.noise_at is not None:
        return config.noise_at
    return "clients" if any(d.slot is DefenseSlot.TRANSPORT for d in peers) else "server"


def _gaussian_like(reference: torch.Tensor, std: float, rng: torch.Generator) -> torch.Tensor:
    generator = generator_on(reference.device, rng)
    return torch.randn(reference.shape, generator=generator, device=reference.device, dtype=reference.dtype) * std
