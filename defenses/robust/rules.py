"""Byzantine-robust aggregation rules as pure tensor functions.

Every function takes the stacked client updates ``updates`` of shape (clients, parameters) and
returns one aggregate of shape (parameters,). All of them are vectorised over parameters; the only
Python loops run over a handful of solver iterations (Weiszfeld, centered clipping).
The registered ``Defense`` wrappers live in ``defenses.robust.aggregators``.
"""

from __future__ import annotations

import torch

from bench.api.updates import pairwise_sq_distances

_EPS = 1e-12


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """FedAvg's mean with weights normalised to sum to one."""
    w = weights.to(updates.dtype)
    return (w / w.sum()) @ updates


def krum_scores(sq_distances: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score of each client: sum of squared distances to its n - f - 2 nearest other clients.

    Blanchard et al. need n > 2f + 2; with fewer clients the score uses at least one neighbour.
    """
    n = sq_distances.shape[0]
    neighbours = min(max(n - f - 2, 1), n - 1)
    if neighbours < 1:
        return torch.zeros(n, dtype=sq_distances.dtype)
    others = sq_distances + torch.diag(torch.full((n,), float("inf"), dtype=sq_distances.dtype))
    return others.topk(neighbours, dim=1, largest=False).values.sum(dim=1)


def krum_select(updates: torch.Tensor, f: int, m: int = 1) -> torch.Tensor:
    """Indices of the ``m`` clients with the lowest Krum scores (ties broken by client order)."""
    scores = krum_scores(pairwise_sq_distances(updates), f)
    order = torch.sort(scores, stable=True).indices
    return order[: max(1, min(m, updates.shape[0]))]


def multi_krum(updates: torch.Tensor, f: int, m: int = 1) -> torch.Tensor:
    """Krum (m = 1) returns the best-scored update; Multi-Krum averages the m best (unweighted)."""
    return updates[krum_select(updates, f, m)].mean(dim=0)


def coordinate_median(updates: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median; for an even count, the mean of the two middle values."""
    n = updates.shape[0]
    lower = updates.median(dim=0).values  # torch returns the lower middle value for even counts
    if n % 2:
        return lower
    upper = updates.kthvalue(n // 2 + 1, dim=0).values
    return (lower + upper) / 2


def trimmed_mean(updates: torch.Tensor, trim: int) -> torch.Tensor:
    """Coordinate-wise mean after dropping the ``trim`` largest and ``trim`` smallest values.

    The dropped entries are masked rather than subtracted from the total: subtracting an attacker's
    huge value from a float32 sum would wipe out the honest values it was added to.
    """
    n = updates.shape[0]
    trim = min(max(trim, 0), (n - 1) // 2)
    if trim == 0:
        return updates.mean(dim=0)
    keep = torch.ones_like(updates, dtype=torch.bool)
    keep.scatter_(0, updates.topk(trim, dim=0, largest=True).indices, False)
    keep.scatter_(0, updates.topk(trim, dim=0, largest=False).indices, False)
    # Ties can make both top-k sets share an index; then every kept value equals it, so the mean of
    # the kept values is still the trimmed mean.
    kept = torch.where(keep, updates, torch.zeros((), dtype=updates.dtype))
    return kept.sum(dim=0) / keep.sum(dim=0)


def norm_clipped_mean(updates: torch.Tensor, weights: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Sun et al. 2019: bound every update's norm, then take FedAvg's weighted mean.

    The clipping factors are folded into the weights, so no clipped copy of the updates is made.
    """
    norms = torch.linalg.vector_norm(updates, dim=1)
    factors = (max_norm / norms.clamp(min=_EPS)).clamp(max=1.0)
    w = weights.to(updates.dtype)
    return (w * factors / w.sum()) @ updates


def median_norm(updates: torch.Tensor) -> float:
    """A scale-free default clipping bound: the median of the updates' norms."""
    return float(torch.linalg.vector_norm(updates, dim=1).median())


def fltrust(updates: torch.Tensor, server_update: torch.Tensor) -> torch.Tensor:
    """Cao et al. 2021: trust = ReLU(cosine to the server update); updates rescaled to its norm.

    Returns zeros when no client has positive trust (the paper's aggregate is then undefined).
    """
    server_norm = torch.linalg.vector_norm(server_update)
    norms = torch.linalg.vector_norm(updates, dim=1).clamp(min=_EPS)
    trust = torch.relu((updates @ server_update) / (norms * server_norm.clamp(min=_EPS)))
    if float(trust.sum()) <= 0:
        return torch.zeros_like(server_update)
    scale = trust * server_norm / norms
    return (scale / trust.sum()) @ updates


def geometric_median(
    updates: torch.Tensor, weights: torch.Tensor, *, smoothing: float = 1e-6, max_iter: int = 100, tol: float = 1e-6
) -> torch.Tensor:
    """Weighted geometric median by smoothed Weiszfeld iterations (RFA, Pillutla et al. 2022).

    Starts at the weighted mean; each step re-weights clients by alpha_i / max(nu, |v - x_i|) and
    stops when the objective's relative decrease falls below ``tol``.
    """
    alpha = (weights / weights.sum()).to(torch.float64)
    median = weighted_mean(updates, weights)
    objective = _weiszfeld_objective(updates, median, alpha, smoothing)
    for _ in range(max_iter):
        distances = _distances_to(updates, median).clamp(min=smoothing)
        beta = alpha / distances
        median = (beta / beta.sum()).to(updates.dtype) @ updates
        previous, objective = objective, _weiszfeld_objective(updates, median, alpha, smoothing)
        if abs(previous - objective) <= tol * max(objective, _EPS):
            break
    return median


def _distances_to(updates: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distances (float64) without materialising ``updates - point``."""
    distances = torch.cdist(updates[None], point[None, None], compute_mode="donot_use_mm_for_euclid_dist")
    return distances.reshape(-1).to(torch.float64)


def _weiszfeld_objective(updates: torch.Tensor, point: torch.Tensor, alpha: torch.Tensor, smoothing: float) -> float:
    return float((alpha * _distances_to(updates, point).clamp(min=smoothing)).sum())


def centered_clip(
    updates: torch.Tensor, center: torch.Tensor, tau: float | None = None, iterations: int = 1
) -> torch.Tensor:
    """Karimireddy et al. 2021: v <- v + mean_i clip_tau(x_i - v), ``iterations`` times from ``center``.

    ``tau`` None uses the median distance of the updates to the starting center (a scale-free default).
    """
    v = center.to(updates.dtype)
    if tau is None:
        tau = float(_distances_to(updates, v).median())
    for _ in range(iterations):
        distances = _distances_to(updates, v).to(updates.dtype).clamp(min=_EPS)
        factors = (tau / distances).clamp(max=1.0)
        # mean_i factor_i (x_i - v) = (factors @ x) / n - mean(factors) * v
        v = v + (factors @ updates) / updates.shape[0] - factors.mean() * v
    return v
