"""Oracle tests for the membership-inference metrics (bench/scoring/mia.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from bench.api.predictions import MembershipScores
from bench.api.transcript import GroundTruth
from bench.scoring import mia
from bench.scoring.score import score


def random_scores(seed: int, n: int = 300, levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Members score a little higher; ``levels`` rounds scores onto a grid to create many ties."""
    rng = torch.Generator().manual_seed(seed)
    flags = torch.rand(n, generator=rng) < 0.4
    scores = torch.randn(n, generator=rng) + 0.7 * flags
    if levels is not None:
        scores = torch.round(scores * levels / 4) / levels
    return scores, flags


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("levels", [None, 3])
def test_roc_and_auc_match_scikit_learn(seed, levels):
    scores, flags = random_scores(seed, levels=levels)
    fpr, tpr, thresholds = mia.roc_curve(scores, flags)
    ref_fpr, ref_tpr, ref_thresholds = sklearn_roc_curve(
        flags.numpy(), scores.double().numpy(), drop_intermediate=False
    )
    np.testing.assert_allclose(fpr.numpy(), ref_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), ref_tpr, atol=1e-12)
    np.testing.assert_allclose(thresholds.numpy()[1:], ref_thresholds[1:], atol=1e-6)
    assert mia.auc(scores, flags) == pytest.approx(roc_auc_score(flags.numpy(), scores.double().numpy()), abs=1e-12)


def test_ties_count_half():
    # Every member tied with every non-member: AUC 0.5, not 0 or 1.
    assert mia.auc(torch.ones(6), torch.tensor([1, 0, 1, 0, 1, 0])) == pytest.approx(0.5)


def test_tpr_at_fpr_by_hand():
    # Descending: m(0.9) n(0.8) m(0.7) m(0.6) n(0.5) n(0.4) m(0.3) n(0.2) n(0.1) n(0.05); 4 members, 6 non-members.
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    flags = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 0, 0])
    assert mia.tpr_at_fpr(scores, flags, 0.0) == pytest.approx(0.25)  # only the top member, before any FP
    assert mia.tpr_at_fpr(scores, flags, 1 / 6) == pytest.approx(0.75)  # FPR exactly 1/6 is allowed
    assert mia.tpr_at_fpr(scores, flags, 0.16) == pytest.approx(0.25)  # just under one FP
    assert mia.tpr_at_fpr(scores, flags, 0.5) == pytest.approx(1.0)
    points = mia.point_metrics(scores, flags)
    assert points["mia.tpr@0.01"] == pytest.approx(0.25)
    # Best threshold keeps the top four: TPR 3/4, FPR 1/6 -> (0.75 + 5/6) / 2.
    assert points["mia.balanced_acc"] == pytest.approx((0.75 + 5 / 6) / 2)


def test_perfect_and_inverted_scores():
    flags = torch.tensor([1, 1, 1, 0, 0, 0])
    perfect = mia.point_metrics(torch.tensor([6.0, 5, 4, 3, 2, 1]), flags)
    assert perfect["mia.auc"] == 1.0 and perfect["mia.tpr@0.001"] == 1.0 and perfect["mia.balanced_acc"] == 1.0
    inverted = mia.point_metrics(torch.tensor([1.0, 2, 3, 4, 5, 6]), flags)
    assert inverted["mia.auc"] == 0.0 and inverted["mia.tpr@0.01"] == 0.0 and inverted["mia.balanced_acc"] == 0.5


def test_bootstrap_is_deterministic_and_intervals_contain_estimates():
    scores, flags = random_scores(7, n=500)
    first = mia.metrics_with_intervals(scores, flags, resamples=300)
    second = mia.metrics_with_intervals(scores, flags, resamples=300)
    assert first == second
    names = {m.name for m in first}
    assert names == {"mia.auc", "mia.tpr@0.001", "mia.tpr@0.01", "mia.balanced_acc"}
    for metric in first:
        assert metric.ci_low <= metric.value <= metric.ci_high, metric
    auc_metric = next(m for m in first if m.name == "mia.auc")
    assert 0.0 < auc_metric.ci_high - auc_metric.ci_low < 0.2  # a real interval, not a point
    other_seed = mia.metrics_with_intervals(scores, flags, resamples=300, seed=1)
    assert other_seed != first


def test_bootstrap_resamples_are_stratified_and_match_point_formula():
    scores, flags = random_scores(3, n=200, levels=3)
    draws = mia.bootstrap(scores, flags, resamples=250)
    assert all(values.shape == (250,) for values in draws.values())
    # Stratified resampling keeps both classes, so every resample's AUC is defined and near the estimate.
    assert torch.isfinite(draws["mia.auc"]).all()
    assert abs(float(draws["mia.auc"].mean()) - mia.auc(scores, flags)) < 0.02


def test_nan_scores_rank_as_least_member_like():
    scores = torch.tensor([float("nan"), 1.0, 0.5, 0.2])
    flags = torch.tensor([1, 1, 0, 0])
    assert mia.auc(scores, flags) == pytest.approx(0.5)


def test_one_class_is_rejected():
    with pytest.raises(ValueError, match="both members and non-members"):
        mia.auc(torch.rand(5), torch.ones(5))


def test_exposure_by_hand():
    losses = torch.tensor([3.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    assert mia.exposure(losses, 1) == pytest.approx(math.log2(8))  # ranked first
    assert mia.exposure(losses, 0) == pytest.approx(math.log2(8) - math.log2(3))  # two candidates more likely
    assert mia.exposure(losses, 7) == pytest.approx(0.0)  # ranked last


def test_scorer_reports_all_metrics_and_exposure_from_candidate_losses():
    scores, flags = random_scores(5, n=120)
    space = [f"{i:02d}" for i in range(16)]
    canaries = [
        SimpleNamespace(prefix="pin ", secret="03", secret_space=space),
        SimpleNamespace(prefix="code ", secret="10", secret_space=space),
    ]
    losses = [torch.arange(16.0), torch.arange(16.0)]  # candidate 0 most likely in both
    losses[0][3] = -1.0  # the first canary's secret ranks first; the second's ranks 11th
    prediction = MembershipScores(scores=scores, canary_losses=losses)
    metrics = {m.name: m for m in score(prediction, GroundTruth(member_flags=flags, canaries=canaries))}
    assert set(metrics) == {"mia.auc", "mia.tpr@0.001", "mia.tpr@0.01", "mia.balanced_acc", "mia.exposure"}
    assert metrics["mia.exposure"].value == pytest.approx((4.0 + 4.0 - math.log2(11)) / 2)
    plain = {m.name for m in score(MembershipScores(scores=scores), GroundTruth(member_flags=flags))}
    assert "mia.exposure" not in plain and "mia.auc" in plain


def test_scorer_uses_attacker_exposures_when_given():
    prediction = MembershipScores(scores=torch.zeros(0), exposures=torch.tensor([2.0, 4.0]))
    metrics = score(prediction, GroundTruth())
    assert [(m.name, m.value) for m in metrics] == [("mia.exposure", 3.0)]


def test_plot_roc_writes_a_figure(tmp_path):
    scores, flags = random_scores(0)
    fpr, tpr, _ = mia.roc_curve(scores, flags)
    path = tmp_path / "roc.png"
    mia.plot_roc({"attack": (fpr, tpr)}, str(path))
    assert path.stat().st_size > 1000
