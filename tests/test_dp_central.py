"""dp-central (user-level DP-FedAvg, McMahan et al. 2018): clipping, noise scale and placement,
accounting over rounds, and the exact plain mean when noise and clipping are off."""

from __future__ import annotations

import math

import pytest
import torch
from dp_helpers import plan

from bench.api.config import bind
from bench.api.defense import Defense, DefenseSlot, Transport
from bench.api.vocabulary import DefenseFamily
from defenses.dp.accounting import epsilon_for
from defenses.dp.central import DPCentral, clip_to_norm


def dp_central(**params) -> DPCentral:
    return DPCentral(bind(DPCentral.Config, params, file=None, key="dp-central"))


def central_round(defense: DPCentral, updates: dict[int, torch.Tensor], seed: int = 0) -> torch.Tensor:
    clipped = {
        c: defense.on_client_update(0, c, u, torch.Generator().manual_seed(seed + c)) for c, u in updates.items()
    }
    mean = Transport().aggregate(0, clipped, {c: 1.0 for c in clipped})
    return defense.on_aggregate(0, mean, len(updates), torch.Generator().manual_seed(seed + 100))


@pytest.mark.parametrize("clip_norm", [None, math.inf, 1e9])
def test_noiseless_unclipped_dp_fedavg_is_exactly_the_plain_mean(clip_norm):
    g = torch.Generator().manual_seed(0)
    updates = {c: torch.randn(1000, generator=g) for c in range(4)}
    defense = dp_central(noise_multiplier=0.0, clip_norm=clip_norm)
    defense.setup(plan(clients=8, clients_per_round=4), {})
    assert torch.equal(central_round(defense, updates), Transport().aggregate(0, updates, {c: 1.0 for c in updates}))


def test_client_updates_are_clipped_to_the_norm():
    g = torch.Generator().manual_seed(1)
    big, small = torch.randn(500, generator=g) * 10, torch.randn(500, generator=g) * 1e-3
    assert float(clip_to_norm(big, 2.0).norm()) == pytest.approx(2.0, rel=1e-5)
    assert clip_to_norm(small, 2.0) is small
    defense = dp_central(noise_multiplier=0.0, clip_norm=2.0)
    assert float(defense.on_client_update(0, 0, big, torch.Generator()).norm()) == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize("noise_at", ["server", "clients"])
def test_aggregate_noise_has_std_z_clip_over_num_clients(noise_at):
    z, clip, n, dim = 1.5, 0.2, 4, 20000
    defense = dp_central(noise_multiplier=z, clip_norm=clip, noise_at=noise_at)
    defense.setup(plan(clients=10, clients_per_round=n), {})
    aggregate = central_round(defense, {c: torch.zeros(dim) for c in range(n)})
    assert abs(float(aggregate.std()) / (z * clip / n) - 1) < 0.03
    if noise_at == "clients":  # each client's message already carries std z*C/sqrt(n)
        message = defense.on_client_update(0, 0, torch.zeros(dim), torch.Generator().manual_seed(9))
        assert abs(float(message.std()) / (z * clip / math.sqrt(n)) - 1) < 0.03
        dropped = defense.on_aggregate(0, torch.zeros(dim), 2, torch.Generator().manual_seed(3))
        expected_top_up = z * clip * math.sqrt(1 - 2 / n) / 2  # the missing variance after 2 dropouts
        assert abs(float(dropped.std()) / expected_top_up - 1) < 0.03


def test_dp_central_accounts_rounds_with_client_sampling_rate():
    defense = dp_central(noise_multiplier=1.0, clip_norm=1.0)
    defense.setup(plan(rounds=5, clients=20, clients_per_round=5), {})
    for r in range(5):
        defense.on_aggregate(r, torch.zeros(3), 5, torch.Generator().manual_seed(r))
    report = defense.privacy()
    assert report["dp.level"] == "user" and report["dp.steps"] == 5 and report["dp.sampling_rate"] == 0.25
    # fixed-size cohorts, replace-one: the accountant sees noise z / 2 against the sum's sensitivity 2C
    assert report["dp.epsilon"] == pytest.approx(epsilon_for([(0.5, 0.25, 5)], report["dp.delta"], "rdp-wor"))
    assert report["dp.sampling"] == "fixed-size without replacement" and report["dp.neighbouring"] == "replace-one"
    calibrated = dp_central(target_epsilon=2.0, clip_norm=1.0)
    calibrated.setup(plan(rounds=5, clients=20, clients_per_round=5), {})
    for r in range(5):
        calibrated.on_aggregate(r, torch.zeros(3), 5, torch.Generator().manual_seed(r))
    assert 0.95 * 2.0 <= calibrated.privacy()["dp.epsilon"] <= 2.0 * 1.001
    assert dp_central(noise_multiplier=0.0, clip_norm=None).privacy()["dp.epsilon"] == math.inf


def test_noise_placement_follows_transport_and_robust_rules_are_rejected():
    class SecAggLike(Defense):
        name, slot = "secagg-like", DefenseSlot.TRANSPORT
        family = DefenseFamily.SECAGG

    class RobustLike(Defense):
        name, slot = "robust-like", DefenseSlot.AGGREGATION
        family = DefenseFamily.ROBUST_AGGREGATION

    defense = dp_central(noise_multiplier=1.0)
    assert defense.check_compatible([SecAggLike(None)], None) is None
    defense.setup(plan(clients=8, clients_per_round=4), {}, peers=[SecAggLike(None)])
    assert defense.noise_at == "clients"
    alone = dp_central(noise_multiplier=1.0)
    alone.setup(plan(clients=8, clients_per_round=4), {})
    assert alone.noise_at == "server"
    explicit = dp_central(noise_multiplier=1.0, noise_at="server")
    explicit.setup(plan(clients=8, clients_per_round=4), {}, peers=[SecAggLike(None)])
    assert explicit.noise_at == "server"
    assert "replaces the mean" in dp_central(noise_multiplier=1.0).check_compatible([RobustLike(None)], None)
    assert DPCentral.requires_uniform_weights
