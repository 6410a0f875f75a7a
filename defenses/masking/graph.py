"""Who shares masks with whom: everyone (SecAgg) or a random Harary graph (SecAgg+).

Bell et al. (2020) connect each client to k = O(log n) others in a Harary graph H(n, k) laid over a
random permutation of the clients: on a ring in that order, each client is joined to its k/2 nearest
clients on either side. The server draws the permutation; the graph is public.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def default_degree(num_clients: int) -> int:
    """The smallest even number >= 2 * ceil(log2 n), capped at n - 1."""
    wanted = 2 * math.ceil(math.log2(max(num_clients, 2)))
    return min(num_clients - 1, wanted + wanted % 2)


def complete_graph(ids: Sequence[int]) -> dict[int, frozenset[int]]:
    everyone = frozenset(ids)
    return {u: everyone - {u} for u in ids}


def harary_graph(ids: Sequence[int], degree: int, rng: torch.Generator) -> dict[int, frozenset[int]]:
    """Each client's neighbours; ``degree`` is rounded up to even, and >= n - 1 gives the complete graph."""
    ids = list(ids)
    if degree >= len(ids) - 1:
        return complete_graph(ids)
    half = (degree + 1) // 2
    order = [ids[i] for i in torch.randperm(len(ids), generator=rng).tolist()]
    neighbours: dict[int, set[int]] = {u: set() for u in ids}
    for position, u in enumerate(order):
        for step in range(1, half + 1):
            v = order[(position + step) % len(order)]
            neighbours[u].add(v)
            neighbours[v].add(u)
    return {u: frozenset(vs) for u, vs in neighbours.items()}
