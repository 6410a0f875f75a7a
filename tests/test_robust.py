"""Oracle tests for the Byzantine-robust aggregators (defenses.robust)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.api.defense import Defense, DefenseSlot
from bench.api.registry import DEFENSES
from bench.api.vocabulary import DefenseFamily
from defenses.robust import rules

ROBUST_NAMES = ["robust-krum", "robust-median", "robust-trimmed", "robust-clip", "robust-fltrust", "robust-geomed", "robust-cclip"]


def make(name: str, **values):
    cls = DEFENSES.get(name)
    return cls(cls.Config(**values))


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def ones(n: int) -> torch.Tensor:
    return torch.ones(n)


# --- registration and compatibility ----------------------------------------------------------------
@pytest.mark.parametrize("name", ROBUST_NAMES)
def test_registered_and_rejects_hiding_transports(name):
    defense = make(name)
    assert defense.slot is DefenseSlot.AGGREGATION

    class FakeSecAgg(Defense):
        name = "fake-secagg"
        slot = DefenseSlot.TRANSPORT
        family = DefenseFamily.SECAGG

    reason = defense.check_compatible([FakeSecAgg(FakeSecAgg.Config())], scenario=with_round_size(8))
    assert reason is not None and "fake-secagg" in reason
    assert defense.check_compatible([], scenario=with_round_size(8)) is None


@pytest.mark.parametrize("name", ROBUST_NAMES)
def test_every_config_field_has_a_docstring(name):
    for field in dataclasses.fields(DEFENSES.get(name).Config):
        assert field.metadata.get("doc"), f"{name}.{field.name} lacks a docstring"


# --- Krum ------------------------------------------------------------------------------------------
def test_krum_picks_the_central_update_on_a_hand_example():
    # 1-D points 0, 1, 2, 10; f = 1 -> each scores its n - f - 2 = 1 nearest neighbour:
    # 0 -> 1, 1 -> 1, 2 -> 1, 10 -> 64; tie among 0, 1, 2 broken by order -> client 0.
    # Make it unique: points 0, 1, 1.5, 10 -> scores 1, 0.25, 0.25, 72.25 -> client 1 (first of the tie).
    updates = torch.tensor([[0.0], [1.0], [1.5], [10.0]])
    assert rules.krum_select(updates, f=1).tolist() == [1]
    assert torch.equal(make("robust-krum", f=1).aggregate(0, updates, ones(4), gen()), torch.tensor([1.0]))


def test_krum_scores_match_the_definition():
    updates = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [1.0, 0.0]])
    distances = torch.cdist(updates, updates) ** 2
    f, n = 1, 5
    expected = torch.stack([distances[i][torch.arange(n) != i].sort().values[: n - f - 2].sum() for i in range(n)])
    assert torch.allclose(rules.krum_scores(rules.pairwise_sq_distances(updates), f), expected, atol=1e-4)


def test_krum_without_attackers_returns_one_of_the_honest_updates():
    honest = torch.randn(9, 50, generator=gen())
    result = make("robust-krum", f=2).aggregate(0, honest, ones(9), gen())
    assert any(torch.equal(result, row) for row in honest)


def test_krum_ignores_far_byzantine_updates():
    honest = torch.randn(8, 20, generator=gen()) * 0.1
    byzantine = torch.full((2, 20), 100.0)
    updates = torch.cat([honest, byzantine])
    assert set(rules.krum_select(updates, f=2, m=4).tolist()) <= set(range(8))


def test_multi_krum_averages_the_m_best_and_with_m_equal_n_is_the_mean():
    updates = torch.tensor([[0.0], [1.0], [1.5], [10.0]])
    assert torch.allclose(make("robust-krum", f=1, m=3).aggregate(0, updates, ones(4), gen()), torch.tensor([2.5 / 3]))
    assert torch.allclose(rules.multi_krum(updates, f=1, m=4), updates.mean(0))


def test_pairwise_distances_survive_a_large_common_offset():
    # Without centring, |x|^2 ~ 2e4 in float32 swamps squared distances of ~1e-6.
    updates = torch.tensor([[0.0, 0.0], [1e-3, 0.0], [0.0, 2e-3]]) + 100.0
    exact = torch.cdist(updates.double(), updates.double()) ** 2
    assert torch.allclose(rules.pairwise_sq_distances(updates).double(), exact, rtol=1e-2, atol=1e-9)


# --- median and trimmed mean -----------------------------------------------------------------------
def test_median_of_an_odd_count_is_exact():
    updates = torch.tensor([[5.0, -1.0, 0.0], [1.0, 7.0, 0.5], [3.0, 2.0, -9.0]])
    result = make("robust-median").aggregate(0, updates, ones(3), gen())
    assert torch.equal(result, torch.tensor([3.0, 2.0, 0.0]))


def test_median_of_an_even_count_averages_the_middle_pair():
    updates = torch.tensor([[1.0], [100.0], [2.0], [4.0]])
    assert torch.equal(rules.coordinate_median(updates), torch.tensor([3.0]))


def test_trimmed_mean_with_trim_zero_equals_the_mean():
    updates = torch.randn(7, 30, generator=gen())
    result = make("robust-trimmed", trim_count=0).aggregate(0, updates, ones(7), gen())
    assert torch.allclose(result, updates.mean(0))
    assert torch.allclose(make("robust-trimmed", beta=0.0).aggregate(0, updates, ones(7), gen()), updates.mean(0))


def test_trimmed_mean_drops_extremes_on_a_hand_example():
    # column 0: 1 2 3 4 1e30 -> drop 1 and 1e30 -> mean(2, 3, 4) = 3; column 1: -1e30 5 6 7 8 -> mean(5, 6, 7) = 6
    updates = torch.tensor([[1.0, -1e30], [2.0, 5.0], [3.0, 6.0], [4.0, 7.0], [1e30, 8.0]])
    result = make("robust-trimmed", beta=0.2).aggregate(0, updates, ones(5), gen())
    assert torch.equal(result, torch.tensor([3.0, 6.0]))


def test_trimmed_mean_handles_ties():
    updates = torch.tensor([[2.0], [2.0], [2.0], [2.0], [9.0]])
    assert torch.equal(rules.trimmed_mean(updates, 2), torch.tensor([2.0]))


def test_trimmed_mean_with_maximal_trim_is_the_median_for_odd_counts():
    updates = torch.randn(7, 40, generator=gen())
    assert torch.allclose(rules.trimmed_mean(updates, 3), rules.coordinate_median(updates))


# --- norm clipping ---------------------------------------------------------------------------------
def test_clipping_with_a_huge_bound_equals_the_weighted_mean():
    updates = torch.randn(5, 12, generator=gen())
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    result = make("robust-clip", max_norm=1e9).aggregate(0, updates, weights, gen())
    assert torch.allclose(result, (weights[:, None] * updates).sum(0) / weights.sum(), atol=1e-6)


def test_clipping_bounds_norms_on_a_hand_example():
    updates = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # norms 5 and 0.5
    result = make("robust-clip", max_norm=1.0).aggregate(0, updates, ones(2), gen())
    assert torch.allclose(result, torch.tensor([(0.6 + 0.3) / 2, (0.8 + 0.4) / 2]))


def test_clipping_default_bound_is_the_median_norm():
    updates = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, -30.0]])  # median norm 2
    result = make("robust-clip").aggregate(0, updates, ones(3), gen())
    assert torch.allclose(result, torch.tensor([1.0, 0.0]) / 3)


# --- FLTrust ---------------------------------------------------------------------------------------
def test_fltrust_with_a_client_identical_to_the_server_update_gives_that_update():
    server = torch.tensor([1.0, 2.0, -1.0])
    opposite = -3 * server
    orthogonal = torch.tensor([2.0, -1.0, 0.0])
    defense = make("robust-fltrust")
    defense.server_update_fn = lambda round_index: server
    result = defense.aggregate(0, torch.stack([server, opposite, orthogonal]), ones(3), gen())
    assert torch.allclose(result, server)


def test_fltrust_weights_by_relu_cosine_and_rescales_to_the_server_norm():
    server = torch.tensor([2.0, 0.0])
    a = torch.tensor([10.0, 10.0])  # cos = 1/sqrt2, rescaled to norm 2: (sqrt2, sqrt2)
    b = torch.tensor([0.0, -5.0])  # cos = 0 -> trust 0
    c = torch.tensor([0.5, 0.0])  # cos = 1, rescaled to (2, 0)
    t = 2 ** -0.5
    expected = (t * torch.tensor([2 ** 0.5, 2 ** 0.5]) + 1.0 * torch.tensor([2.0, 0.0])) / (t + 1.0)
    assert torch.allclose(rules.fltrust(torch.stack([a, b, c]), server), expected)


def test_fltrust_without_any_trusted_client_returns_zero_and_without_hook_raises():
    server = torch.tensor([1.0, 0.0])
    assert torch.equal(rules.fltrust(torch.tensor([[-1.0, 0.0], [0.0, 1.0]]), server), torch.zeros(2))
    with pytest.raises(RuntimeError, match="server_update_fn"):
        make("robust-fltrust").aggregate(0, torch.ones(2, 2), ones(2), gen())


# --- geometric median ------------------------------------------------------------------------------
def test_geometric_median_of_collinear_points_is_the_middle_point():
    direction = torch.tensor([1.0, 2.0, -2.0]) / 3
    positions = torch.tensor([0.0, 1.0, 2.0, 3.0, 100.0])
    updates = positions[:, None] * direction
    result = make("robust-geomed").aggregate(0, updates, ones(5), gen())
    assert torch.allclose(result, 2.0 * direction, atol=1e-4)


def test_geometric_median_of_a_symmetric_set_is_its_centre():
    # Square around (5, 5) plus a heavier outlier weight pulling nowhere: symmetric -> centre.
    updates = torch.tensor([[4.0, 5.0], [6.0, 5.0], [5.0, 4.0], [5.0, 6.0]])
    result = rules.geometric_median(updates, ones(4))
    assert torch.allclose(result, torch.tensor([5.0, 5.0]), atol=1e-5)


def test_geometric_median_of_a_convex_quadrilateral_is_where_the_diagonals_cross():
    # Diagonals (0,0)-(4,1) and (4,0)-(0,3) cross at (3, 0.75); the mean (2, 1) is elsewhere.
    updates = torch.tensor([[0.0, 0.0], [4.0, 0.0], [4.0, 1.0], [0.0, 3.0]])
    result = rules.geometric_median(updates, ones(4), max_iter=1000, tol=1e-12)
    assert torch.allclose(result, torch.tensor([3.0, 0.75]), atol=1e-3)


def test_geometric_median_with_a_majority_weight_is_that_point():
    # A point holding at least half the total weight is the weighted geometric median.
    updates = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3 ** 0.5]])
    result = make("robust-geomed").aggregate(0, updates, torch.tensor([1.0, 1.0, 2.0]), gen())
    assert torch.allclose(result, updates[2], atol=1e-4)


def test_geometric_median_resists_a_minority_of_huge_updates():
    honest = torch.randn(7, 10, generator=gen()) * 0.1
    updates = torch.cat([honest, torch.full((3, 10), 1e4)])
    assert rules.geometric_median(updates, ones(10)).abs().max() < 1.0


# --- centered clipping -----------------------------------------------------------------------------
def test_centered_clipping_on_a_hand_example():
    # center 0, tau 1: updates (3, 4) and (0.6, 0.8) -> clipped (0.6, 0.8) both -> v = (0.6, 0.8)
    updates = torch.tensor([[3.0, 4.0], [0.6, 0.8]])
    assert torch.allclose(rules.centered_clip(updates, torch.zeros(2), tau=1.0), torch.tensor([0.6, 0.8]))


def test_centered_clipping_with_a_huge_radius_is_the_mean():
    updates = torch.randn(6, 9, generator=gen())
    assert torch.allclose(rules.centered_clip(updates, torch.randn(9, generator=gen()), tau=1e9), updates.mean(0), atol=1e-6)


def test_centered_clipping_keeps_the_previous_aggregate_as_center():
    defense = make("robust-cclip", tau=1.0)
    defense.setup(scenario=None, num_examples={})
    first = defense.aggregate(0, torch.tensor([[3.0, 4.0], [3.0, 4.0]]), ones(2), gen())
    assert torch.allclose(first, torch.tensor([0.6, 0.8]))
    # round 1 starts at (0.6, 0.8): moves by at most tau towards (3.6, 4.8)
    second = defense.aggregate(1, torch.tensor([[3.6, 4.8], [3.6, 4.8]]), ones(2), gen())
    assert torch.allclose(second, torch.tensor([1.2, 1.6]))
    defense.setup(scenario=None, num_examples={})
    assert defense.center is None


# --- shape and dtype contract ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ROBUST_NAMES)
def test_every_rule_returns_one_float32_vector(name):
    updates = torch.randn(6, 17, generator=gen())
    defense = make(name)
    defense.server_update_fn = lambda round_index: updates.mean(0)
    result = defense.aggregate(0, updates, ones(6), gen())
    assert result.shape == (17,) and result.dtype == torch.float32 and torch.isfinite(result).all()


def test_krum_with_fewer_than_2f_plus_3_clients_still_picks_a_reported_update():
    updates = torch.tensor([[0.0], [1.0], [5.0]])  # n = 3 <= 2f + 2 for f = 2: one neighbour is used
    assert rules.krum_select(updates, f=2).tolist() == [0]
    assert torch.equal(rules.multi_krum(updates[:1], f=2), updates[0])


# --- preconditions checked at planning (issue 15) ----------------------------------------------------
def with_round_size(clients_per_round: int):
    from types import SimpleNamespace

    return SimpleNamespace(federation=SimpleNamespace(clients_per_round=clients_per_round))


def test_krum_refuses_fewer_than_2f_plus_3_clients_per_round():
    # n = 4, f = 1: Krum kept one update of four and lost 0.47 accuracy without any attacker
    reason = make("robust-krum", f=1).check_compatible([], with_round_size(4))
    assert reason and "2f + 3 = 5" in reason and "has 4" in reason
    assert make("robust-krum", f=1).check_compatible([], with_round_size(5)) is None
    assert make("robust-krum", f=2).check_compatible([], with_round_size(6)) is not None
    assert make("robust-krum", f=2).check_compatible([], with_round_size(8)) is None


def test_trimmed_mean_refuses_to_trim_nobody_and_its_default_trims_from_four_clients():
    reason = make("robust-trimmed", beta=0.1).check_compatible([], with_round_size(8))
    assert reason and "would be FedAvg" in reason
    assert make("robust-trimmed").check_compatible([], with_round_size(4)) is None
    assert make("robust-trimmed").trim_for(8) == 2 and make("robust-trimmed", trim_count=1).trim_for(8) == 1


def test_krum_refusal_makes_the_run_incompatible(tmp_path):
    from bench.engine.runner import execute
    from tests.helpers import make_scenario

    rows = execute(make_scenario(tmp_path, defenses=["robust-krum"]), 0)  # 3 clients per round, f = 1
    assert rows[0].status == "incompatible" and "2f + 3" in rows[0].error
