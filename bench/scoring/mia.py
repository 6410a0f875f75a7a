"""Membership-inference metrics: AUC, TPR at low FPR, balanced accuracy, canary exposure.

Everything is computed from one ROC curve built over the distinct score values (ties form one step,
as in scikit-learn's ``roc_curve(..., drop_intermediate=False)``). TPR at a false-positive rate
``alpha`` follows the LiRA paper (Carlini et al. 2022): the largest TPR among ROC points with
FPR <= alpha, without interpolation. Balanced accuracy is the best over all thresholds.

Confidence intervals are 95% percentile intervals of a stratified bootstrap (members and non-members
resampled separately, so every resample keeps both classes). The bootstrap is vectorised: a resample
is a vector of counts per distinct score value, and all resamples' ROC curves are built at once by
cumulative sums. Its generator is seeded from a fixed ``seed`` argument, so scoring is deterministic.

Resolution: a TPR at FPR ``alpha`` means something only when ``alpha`` x non-members >= 1 (below, it is
the TPR at zero false positives); every membership metric carries ``resolution`` in its extra (member
and non-member counts, ``fpr_resolution`` = 1 / non-members, the ``resolved_fprs``), so a row says
which of its rates are real. ``federation.mia_nonmembers`` draws the non-members that resolve 0.1%.

Canary exposure (Carlini et al. 2019, "The Secret Sharer"): exposure = log2 |space| - log2 rank, where
rank is 1 + the number of candidate secrets the model finds strictly more likely than the true one.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from bench.api.predictions import MembershipScores
from bench.api.transcript import Canary, GroundTruth
from bench.api.vocabulary import JsonObject
from bench.scoring.score import Metric, scorer_for

TPR_ALPHAS = (0.001, 0.01)
DEFAULT_RESAMPLES = 1000
_RESAMPLE_CHUNK = 100  # resamples built at once: bounds memory at chunk x n integers


# --- ROC machinery ---------------------------------------------------------------------------------
def _tie_groups(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct scores in descending order, and each score's group index in that order."""
    clean = torch.nan_to_num(scores.double(), nan=-math.inf)  # an undefined score is least member-like
    distinct, inverse = torch.unique(clean, sorted=True, return_inverse=True)
    return distinct.flip(0), distinct.numel() - 1 - inverse


def _curves(positive_counts: torch.Tensor, negative_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ROC points (FPR, TPR), shape (resamples, groups + 1), from per-group counts (resamples, groups).

    Column 0 is the (0, 0) point (threshold above every score); column g+1 predicts "member" for
    every score group up to g in descending order.
    """
    start = torch.zeros(positive_counts.shape[0], 1, dtype=torch.float64)
    tp = torch.cat([start, positive_counts.double().cumsum(1)], dim=1)
    fp = torch.cat([start, negative_counts.double().cumsum(1)], dim=1)
    return fp / fp[:, -1:], tp / tp[:, -1:]


def _metrics_from_curves(fpr: torch.Tensor, tpr: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each metric for each row (resample) of the curves."""
    area = ((fpr[:, 1:] - fpr[:, :-1]) * (tpr[:, 1:] + tpr[:, :-1]) / 2).sum(1)
    out = {"mia.auc": area}
    for alpha in TPR_ALPHAS:
        allowed = fpr <= alpha + 1e-12  # counts / total: guard against rounding at exact multiples
        out[f"mia.tpr@{alpha:g}"] = tpr.masked_fill(~allowed, 0.0).max(1).values
    out["mia.balanced_acc"] = ((tpr + 1.0 - fpr) / 2).max(1).values
    return out


def _split(scores: torch.Tensor, member_flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    scores = torch.as_tensor(scores).reshape(-1)
    flags = torch.as_tensor(member_flags).reshape(-1).bool()
    if scores.numel() != flags.numel():
        raise ValueError(f"{scores.numel()} scores for {flags.numel()} membership flags")
    if flags.all() or not flags.any():
        raise ValueError("membership metrics need both members and non-members among the candidates")
    _, groups = _tie_groups(scores)
    return groups[flags], groups[~flags], int(groups.max()) + 1


def roc_curve(scores: torch.Tensor, member_flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fpr, tpr, thresholds), as scikit-learn's ``roc_curve(..., drop_intermediate=False)``."""
    distinct, _ = _tie_groups(torch.as_tensor(scores).reshape(-1))
    positive, negative, n_groups = _split(scores, member_flags)
    fpr, tpr = _curves(
        torch.bincount(positive, minlength=n_groups)[None], torch.bincount(negative, minlength=n_groups)[None]
    )
    thresholds = torch.cat([torch.tensor([math.inf], dtype=torch.float64), distinct])
    return fpr[0], tpr[0], thresholds


def point_metrics(scores: torch.Tensor, member_flags: torch.Tensor) -> dict[str, float]:
    """AUC, TPR@0.1%/1% FPR and balanced accuracy of one set of scores."""
    positive, negative, n_groups = _split(scores, member_flags)
    curves = _curves(
        torch.bincount(positive, minlength=n_groups)[None], torch.bincount(negative, minlength=n_groups)[None]
    )
    return {name: float(values[0]) for name, values in _metrics_from_curves(*curves).items()}


def auc(scores: torch.Tensor, member_flags: torch.Tensor) -> float:
    return point_metrics(scores, member_flags)["mia.auc"]


def tpr_at_fpr(scores: torch.Tensor, member_flags: torch.Tensor, alpha: float) -> float:
    """Largest TPR among ROC points with FPR <= alpha (no interpolation, as in the LiRA paper)."""
    fpr, tpr, _ = roc_curve(scores, member_flags)
    return float(tpr[fpr <= alpha + 1e-12].max())


def _resampled_counts(groups: torch.Tensor, n_groups: int, resamples: int, rng: torch.Generator) -> torch.Tensor:
    """Counts per score group of ``resamples`` draws with replacement from ``groups``: (resamples, n_groups)."""
    picks = torch.randint(groups.numel(), (resamples, groups.numel()), generator=rng)
    counts = torch.zeros(resamples, n_groups, dtype=torch.int32)
    return counts.scatter_add_(1, groups[picks], torch.ones_like(picks, dtype=torch.int32))


def bootstrap(
    scores: torch.Tensor, member_flags: torch.Tensor, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Each metric's value on ``resamples`` stratified bootstrap resamples (deterministic in ``seed``)."""
    positive, negative, n_groups = _split(scores, member_flags)
    rng = torch.Generator().manual_seed(seed)
    chunks: dict[str, list[torch.Tensor]] = {}
    for start in range(0, resamples, _RESAMPLE_CHUNK):
        size = min(_RESAMPLE_CHUNK, resamples - start)
        pos = _resampled_counts(positive, n_groups, size, rng)
        neg = _resampled_counts(negative, n_groups, size, rng)
        for name, values in _metrics_from_curves(*_curves(pos, neg)).items():
            chunks.setdefault(name, []).append(values)
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def metrics_with_intervals(
    scores: torch.Tensor, member_flags: torch.Tensor, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> list[Metric]:
    """Point estimates with 95% percentile bootstrap intervals."""
    points = point_metrics(scores, member_flags)
    draws = bootstrap(scores, member_flags, resamples=resamples, seed=seed)
    quantiles = torch.tensor([0.025, 0.975], dtype=torch.float64)
    out = []
    for name, value in points.items():
        low, high = torch.quantile(draws[name], quantiles).tolist()
        out.append(Metric(name, value, higher_is_better=True, ci_low=low, ci_high=high))
    return out


# --- canary exposure -------------------------------------------------------------------------------
def exposure(candidate_losses: torch.Tensor, secret_index: int) -> float:
    """log2 |space| - log2 rank of the true secret (rank 1 = the model's most likely candidate)."""
    losses = torch.as_tensor(candidate_losses, dtype=torch.float64).reshape(-1)
    rank = 1 + int((losses < losses[secret_index]).sum())
    return math.log2(losses.numel()) - math.log2(rank)


def _secret_index(canary: Canary) -> int:
    """Position of the inserted secret in its space (ground-truth canaries carry both)."""
    return list(canary.secret_space).index(canary.secret)


def canary_exposures(canary_losses: list[torch.Tensor], truth_canaries: list[Canary]) -> torch.Tensor:
    if len(canary_losses) != len(truth_canaries):
        raise ValueError(f"losses for {len(canary_losses)} canaries, ground truth has {len(truth_canaries)}")
    return torch.tensor(
        [exposure(losses, _secret_index(c)) for losses, c in zip(canary_losses, truth_canaries, strict=True)],
        dtype=torch.float64,
    )


def _exposure_metrics(prediction: MembershipScores, truth: GroundTruth) -> list[Metric]:
    exposures = prediction.exposures
    losses = prediction.canary_losses
    if exposures is None and losses is not None and truth.canaries:
        exposures = canary_exposures(losses, truth.canaries)
    if exposures is None or exposures.numel() == 0:
        return []
    return [Metric("mia.exposure", float(exposures.double().mean()), higher_is_better=True)]


def resolution(member_flags: torch.Tensor) -> JsonObject:
    """What the candidates can resolve, kept beside each membership metric: the counts, the finest
    false-positive rate (one false positive in ``nonmembers``) and the finest TPR step; a ``tpr@a``
    with ``a`` below ``fpr_resolution`` is the TPR at zero false positives, not at ``a``."""
    flags = torch.as_tensor(member_flags).reshape(-1).bool()
    members, nonmembers = int(flags.sum()), int((~flags).sum())
    return {"members": members, "nonmembers": nonmembers, "fpr_resolution": 1 / max(nonmembers, 1),
            "tpr_resolution": 1 / max(members, 1),
            "resolved_fprs": [alpha for alpha in TPR_ALPHAS if alpha * nonmembers >= 1 - 1e-9]}


def score_membership(prediction: MembershipScores, truth: GroundTruth) -> list[Metric]:
    """Scorer for membership predictions (``mia.exposure`` is the mean over canaries, no interval).
    Each rate metric carries the candidates' ``resolution`` in its extra."""
    out = []
    if truth.member_flags is not None and prediction.scores.numel() > 0:
        counts = resolution(truth.member_flags)
        out += [replace(m, extra=counts) for m in metrics_with_intervals(prediction.scores, truth.member_flags)]
    return out + _exposure_metrics(prediction, truth)


scorer_for(MembershipScores)(score_membership)


# --- figure ----------------------------------------------------------------------------------------
def plot_roc(curves: dict[str, tuple[torch.Tensor, torch.Tensor]], path: str) -> None:
    """Log-log ROC curves (the LiRA paper's view: the low-FPR regime is what matters) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    floor = 1e-5  # log axes cannot show 0; points at 0 sit on the floor
    for name, (fpr, tpr) in curves.items():
        fpr = torch.as_tensor(fpr, dtype=torch.float64).clamp_min(floor)
        tpr = torch.as_tensor(tpr, dtype=torch.float64).clamp_min(floor)
        axes.plot(fpr.numpy(), tpr.numpy(), label=name)
    axes.plot([floor, 1], [floor, 1], linestyle="--", color="grey", linewidth=0.8)
    axes.set(
        xscale="log",
        yscale="log",
        xlim=(floor, 1),
        ylim=(floor, 1),
        xlabel="false positive rate",
        ylabel="true positive rate",
    )
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
