"""Geometry of flat client updates, shared by robust aggregation (defenses) and the attacks that evade it.

Kept in the api layer so that an attack never imports a defense's internals (and vice versa).
"""

from __future__ import annotations

import torch


def pairwise_sq_distances(updates: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (clients, clients) from one Gram matrix.

    The updates are centred first: ``||a-b||^2 = |a|^2 + |b|^2 - 2ab`` loses precision in float32 when
    all updates share a large common part, and centring removes that part without changing distances.
    """
    centred = updates - updates.mean(dim=0, keepdim=True)
    gram = centred @ centred.T
    norms = gram.diagonal()
    distances = (norms[:, None] + norms[None, :] - 2 * gram).clamp_(min=0)
    return distances.fill_diagonal_(0)
