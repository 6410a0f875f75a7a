"""Dealing a task's pool to clients and splitting each share into members and non-members."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.api.vocabulary import Record


@dataclass
class ClientData:
    members: list[Record]
    """Records the client trains on."""
    nonmembers: list[Record]
    """Held-out records of the same distribution (never trained on): the MIA negatives."""


def deal(pool_size: int, clients: int, scheme: str, alpha: float, labels: list[int], rng: torch.Generator) -> list[list[int]]:
    """Indices of the pool for each client."""
    return _SCHEMES[scheme](pool_size, clients, alpha, labels, rng)


def _iid(pool_size: int, clients: int, alpha: float, labels: list[int], rng: torch.Generator) -> list[list[int]]:
    order = torch.randperm(pool_size, generator=rng)
    return [chunk.tolist() for chunk in torch.tensor_split(order, clients)]


def _dirichlet(pool_size: int, clients: int, alpha: float, labels: list[int], rng: torch.Generator) -> list[list[int]]:
    """Each label's records are split across clients by proportions drawn from Dirichlet(alpha)."""
    label_tensor = torch.tensor(labels)
    shares: list[list[int]] = [[] for _ in range(clients)]
    concentration = torch.full((clients,), float(alpha))
    for label in torch.unique(label_tensor).tolist():
        indices = torch.nonzero(label_tensor == label).flatten()
        indices = indices[torch.randperm(len(indices), generator=rng)]
        gamma = torch._standard_gamma(concentration.unsqueeze(0).expand(1, -1).contiguous(), generator=rng)[0]
        proportions = gamma / gamma.sum()
        cuts = (torch.cumsum(proportions, 0)[:-1] * len(indices)).round().long().tolist()
        for client, chunk in enumerate(torch.tensor_split(indices, cuts)):
            shares[client].extend(chunk.tolist())
    # Every client keeps at least two records so it has a member and a non-member.
    for client in range(clients):
        while len(shares[client]) < 2:
            donor = max(range(clients), key=lambda c: len(shares[c]))
            shares[client].append(shares[donor].pop())
    return shares


_SCHEMES: dict[str, Callable[..., list[list[int]]]] = {"iid": _iid, "dirichlet": _dirichlet}
PARTITIONS = tuple(_SCHEMES)


def split_members(records: list[Record], member_fraction: float, rng: torch.Generator) -> ClientData:
    order = torch.randperm(len(records), generator=rng).tolist()
    cut = max(1, min(len(records) - 1, int(round(member_fraction * len(records)))))
    return ClientData(members=[records[i] for i in order[:cut]], nonmembers=[records[i] for i in order[cut:]])
