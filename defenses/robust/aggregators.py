"""Byzantine-robust aggregators as defenses: thin wrappers over ``defenses.robust.rules``.

Each replaces FedAvg's weighted mean on the server and so needs every client's plain update: each fills
the ``AGGREGATION`` slot (one per scenario: two rules are refused at loading and at planning), and the
inherited ``check_compatible`` rejects them next to secagg or he.

Papers and departures:
- ``robust-krum``: Krum / Multi-Krum, Blanchard et al. 2017 (NeurIPS). Multi-Krum averages the m
  best-scored updates uniformly, as in the paper. The paper's guarantee needs n >= 2f + 3 clients per
  round; planning refuses a scenario whose ``clients_per_round`` is smaller (with 4 clients and f = 1
  Krum keeps one update of four and lost 0.47 accuracy without any attacker, a cost of running it
  outside its precondition, not of the defense). The rule itself still scores with max(n - f - 2, 1)
  neighbours when a round reports fewer clients (dropouts, partial participation).
- ``robust-median`` / ``robust-trimmed``: coordinate-wise median and trimmed mean, Yin et al. 2018
  (ICML). Client weights are ignored, as in the paper. Planning refuses a trimmed mean that would trim
  no client per end at the scenario's ``clients_per_round`` (it would be FedAvg under another name).
- ``robust-clip``: norm bounding, Sun et al. 2019 ("Can you really backdoor federated learning?").
  Without a configured bound it uses the round's median update norm (the paper fixes M by hand).
- ``robust-fltrust``: Cao et al. 2021 (NDSS). The server update comes from ``server_update_fn``,
  which the engine sets (it trains on ``root_size`` public records from the round's global state).
- ``robust-geomed``: RFA, Pillutla et al. 2022 (IEEE TSP), smoothed Weiszfeld, weights = client weights.
- ``robust-cclip``: centered clipping, Karimireddy et al. 2021 (ICML). Clients send deltas, not
  worker momenta, so the center is the previous round's aggregate (kept here); round 0 centres at 0.
  Without a configured tau it uses the median distance to the center.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.api.config import doc
from bench.api.defense import Defense, DefenseSlot
from bench.api.registry import DEFENSES
from bench.api.transcript import PlannedScenario
from bench.api.vocabulary import DefenseFamily
from defenses.robust import rules


class RobustAggregator(Defense):
    """Shared base: robust rules read the individual plain updates."""

    slot: ClassVar[DefenseSlot] = DefenseSlot.AGGREGATION
    family = DefenseFamily.ROBUST_AGGREGATION


@DEFENSES.register("robust-krum")
class Krum(RobustAggregator):
    """Krum (m = 1) or Multi-Krum (m > 1)."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        f: int = doc("Assumed number of Byzantine clients per round.", 1)
        m: int = doc("Updates averaged: 1 = Krum, more = Multi-Krum.", 1)

        def __post_init__(self) -> None:
            if self.f < 0 or self.m < 1:
                raise ValueError("need f >= 0 and m >= 1")

    def check_compatible(self, others: list[Defense], scenario: PlannedScenario) -> str | None:
        return super().check_compatible(others, scenario) or krum_precondition(self.config.f, _round_size(scenario))

    def aggregate(self, round_index: int, updates: torch.Tensor, weights: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        return rules.multi_krum(updates, self.config.f, self.config.m)


def _round_size(scenario: PlannedScenario) -> int:
    """Clients per round of the scenario (the engine always plans a defense into one: its schema fills
    ``clients_per_round``)."""
    return scenario.federation.clients_per_round


def krum_precondition(f: int, clients_per_round: int) -> str | None:
    """Why Krum with ``f`` Byzantine clients cannot keep its guarantee at this round size (n >= 2f + 3), or None."""
    if clients_per_round >= 2 * f + 3:
        return None
    return (f"robust-krum with f={f} needs at least 2f + 3 = {2 * f + 3} clients per round (Blanchard et al. 2017), "
            f"the scenario has {clients_per_round}; use more clients or a smaller f")


@DEFENSES.register("robust-median")
class CoordinateMedian(RobustAggregator):
    """Coordinate-wise median."""

    def aggregate(self, round_index: int, updates: torch.Tensor, weights: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        return rules.coordinate_median(updates)


@DEFENSES.register("robust-trimmed")
class TrimmedMean(RobustAggregator):
    """Coordinate-wise trimmed mean."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        beta: float = doc("Fraction of clients trimmed from EACH end per coordinate (floor(beta * n)); 0.25 matches the "
                          "25% malicious clients of Table 4 and trims one client per end from 4 clients up.", 0.25)
        trim_count: int | None = doc("Clients trimmed from each end; overrides beta when set.", None)

        def __post_init__(self) -> None:
            if not 0.0 <= self.beta < 0.5:
                raise ValueError("beta must be in [0, 0.5)")
            if self.trim_count is not None and self.trim_count < 0:
                raise ValueError("trim_count must be >= 0")

    def trim_for(self, num_clients: int) -> int:
        if self.config.trim_count is not None:
            return self.config.trim_count
        return int(self.config.beta * num_clients)

    def check_compatible(self, others: list[Defense], scenario: PlannedScenario) -> str | None:
        problem = super().check_compatible(others, scenario)
        if problem:
            return problem
        size = _round_size(scenario)
        if self.trim_for(size) > 0:
            return None
        return (f"robust-trimmed trims floor(beta x clients) = floor({self.config.beta} x {size}) = 0 clients per end at "
                f"{size} clients per round, so it would be FedAvg; set beta to at least 1/{size} or trim_count >= 1")

    def aggregate(self, round_index: int, updates: torch.Tensor, weights: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        return rules.trimmed_mean(updates, self.trim_for(updates.shape[0]))


@DEFENSES.register("robust-clip")
class NormClipping(RobustAggregator):
    """Clip each update's norm, then FedAvg's weighted mean."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        max_norm: float | None = doc("Norm bound M; unset = the round's median update norm.", None)

        def __post_init__(self) -> None:
            if self.max_norm is not None and self.max_norm <= 0:
                raise ValueError("max_norm must be positive")

    def aggregate(self, round_index: int, updates: torch.Tensor, weights: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        bound = self.config.max_norm if self.config.max_norm is not None else rules.median_norm(updates)
        return rules.norm_clipped_mean(updates, weights, bound)


@DEFENSES.register("robust-fltrust")
class FLTrust(RobustAggregator):
    """Trust-weighted aggregation against a server update computed on a small root dataset."""

    needs_server_update: ClassVar[bool] = True
    """Tells the engine to set ``server_update_fn`` before training."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        root_size: int = doc("Public records in the server's root dataset (the paper uses 100).", 100)

        def __post_init__(self) -> None:
            if self.root_size < 1:
                raise ValueError("root_size must be >= 1")

    def __init__(self, config: FLTrust.Config):
        super().__init__(config)
        self.server_update_fn: Callable[[int], torch.Tensor] | None = None
        """round_index -> the server's flat update, trained on the root data from this round's global state."""

    def aggregate(self, round_index: int, updates: torch.Tensor, weights: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        if self.server_update_fn is None:
            raise RuntimeError("robust-fltrust needs server_update_fn (set by the engine before training)")
        server_update = self.server_update_fn(round_index).to(device=updates.device, dtype=updates.dtype)
        return rules.fltrust(updates, server_update)


@DEFENSES.register("robust-geomed")
class GeometricMedian(RobustAggregator):
    """Robust federated aggregation (RFA): the weighted geometric median."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        smoothing: float = doc("Weiszfeld smoothing nu: distances are floored at nu.", 1e-6)
        max_iter: int = doc("Maximum Weiszfeld iterations.", 100)
        tol: float = doc("Stop when the objective's relative decrease is below this.", 1e-6)

        def __post_init__(self) -> None:
            if self.smoothing <= 0 or self.max_iter < 1 or self.tol < 0:
                raise ValueError("need smoothing > 0, max_iter >= 1 and tol >= 0")

    def aggregate(self, round_index: int, updates: torch.Tensor, weights: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        c = self.config
        return rules.geometric_median(updates, weights, smoothing=c.smoothing, max_iter=c.max_iter, tol=c.tol)


@DEFENSES.register("robust-cclip")
class CenteredClipping(RobustAggregator):
    """Centered clipping around the previous round's aggregate."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        tau: float | None = doc("Clipping radius; unset = the median distance of the updates to the center.", None)
        iterations: int = doc("Clipping iterations per round (the paper finds 1 enough).", 1)

        def __post_init__(self) -> None:
            if (self.tau is not None and self.tau <= 0) or self.iterations < 1:
                raise ValueError("need tau > 0 and iterations >= 1")

    def __init__(self, config: CenteredClipping.Config):
        super().__init__(config)
        self.center: torch.Tensor | None = None

    def setup(self, scenario: PlannedScenario, num_examples: dict[int, int], *, peers: Sequence[Defense] = ()) -> None:
        self.center = None

    def aggregate(self, round_index: int, updates: torch.Tensor, weights: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        center = self.center if self.center is not None else torch.zeros_like(updates[0])
        self.center = rules.centered_clip(updates, center, self.config.tau, self.config.iterations)
        return self.center
