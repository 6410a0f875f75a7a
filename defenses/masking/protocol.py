"""One round of SecAgg / SecAgg+ run phase by phase, with each party's seconds and bytes recorded.

``SecAggRound`` is built when the round starts (rounds 0 and 1: key advertisement and share
distribution), then ``masked_inputs`` runs round 2 for the clients whose input reaches the server and
``unmask`` runs round 4 with the clients still online. Clients that never send their masked input
(dropped before round 2) lose their contribution: the server reconstructs their mask keys and cancels
their pairwise masks. Clients that drop after sending it (before round 4) keep their contribution: the
others reveal shares of their self-mask seeds. Round 3 (consistency check with signatures) defends
against an active server and is left out, as in the honest-but-curious variant of the paper.

Timing is per party: each client's protocol work (key generation, sharing, sealing, mask expansion,
answering the unmasking request) and the server's (routing, reconstruction, unmasking). Byte counts
are the sizes of the serialised messages, per client, up and down.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from defenses.masking.fixedpoint import FixedPoint
from defenses.masking.graph import complete_graph, harary_graph
from defenses.masking.material import Entropy
from defenses.masking.parties import RESPONSE_ENTRY_BYTES, AdvertisedKeys, Client, Server


def share_threshold(group_size: int, fraction: float) -> int:
    """Shares needed to reconstruct: more than ``fraction`` of the share group (at least 1)."""
    return min(group_size, math.floor(fraction * group_size) + 1)


@dataclass
class RoundCosts:
    client_seconds: dict[int, float] = field(default_factory=dict)
    server_seconds: float = 0.0
    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)

    def add_bytes(self, client: int, up: int = 0, down: int = 0) -> None:
        self.bytes_up[client] = self.bytes_up.get(client, 0) + up
        self.bytes_down[client] = self.bytes_down.get(client, 0) + down

    @contextmanager
    def client_clock(self, client: int) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.client_seconds[client] = self.client_seconds.get(client, 0.0) + time.perf_counter() - start

    @contextmanager
    def server_clock(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.server_seconds += time.perf_counter() - start


class SecAggRound:
    """Runs one round; ``degree=None`` is SecAgg (everyone is everyone's neighbour), else SecAgg+."""

    def __init__(
        self,
        round_index: int,
        client_ids: list[int],
        fixed_point: FixedPoint,
        threshold_fraction: float,
        degree: int | None,
        entropy: Entropy,
        rng: torch.Generator,
    ):
        self.round_index = round_index
        self.fixed_point = fixed_point
        self.costs = RoundCosts()
        graph = complete_graph(client_ids) if degree is None else harary_graph(client_ids, degree, rng)
        self.group_size = 1 + min(len(vs) for vs in graph.values())
        """Smallest share group (a client and its neighbours); the threshold is relative to it."""
        self.threshold = share_threshold(self.group_size, threshold_fraction)
        self.server = Server(round_index, graph, self.threshold)
        self.clients: dict[int, Client] = {}
        for u in client_ids:
            with self.costs.client_clock(u):
                self.clients[u] = Client(u, round_index, entropy)
        self._advertise_keys()
        self._share_keys()

    def __repr__(self) -> str:
        return f"SecAggRound(round={self.round_index}, clients={len(self.clients)}, threshold={self.threshold})"

    @property
    def graph(self) -> dict[int, frozenset[int]]:
        return self.server.graph

    def _advertise_keys(self) -> None:
        """Round 0: each client posts its public keys; the server sends each its neighbours' keys."""
        for u, client in self.clients.items():
            with self.costs.client_clock(u):
                self.server.directory[u] = client.advertise()
            self.costs.add_bytes(u, up=AdvertisedKeys.WIRE_BYTES, down=AdvertisedKeys.WIRE_BYTES * len(self.graph[u]))

    def _share_keys(self) -> None:
        """Round 1: sealed share envelopes go up, the server routes them, recipients open them."""
        outgoing = {}
        for u, client in self.clients.items():
            with self.costs.client_clock(u):
                outgoing[u] = client.share_keys(self.server.directory, self.graph[u], self.threshold)
            self.costs.add_bytes(u, up=sum(4 + len(e) for e in outgoing[u].values()))
        with self.costs.server_clock():
            inbox = Server.route(outgoing)
        for v, envelopes in inbox.items():
            with self.costs.client_clock(v):
                self.clients[v].receive_shares(envelopes)
            self.costs.add_bytes(v, down=sum(4 + len(e) for e in envelopes.values()))

    def masked_inputs(self, inputs: dict[int, tuple[np.ndarray, float]]) -> dict[int, np.ndarray]:
        """Round 2 for the clients in ``inputs`` (update, public weight): their masked residues y_u."""
        masked = {}
        for u, (update, weight) in inputs.items():
            with self.costs.client_clock(u):
                encoded = self.fixed_point.encode(update, weight)
                masked[u] = self.fixed_point.reduce(self.clients[u].masked_input(encoded, self.fixed_point.bits))
            wire_bytes = math.ceil(update.size * self.fixed_point.bits / 8)
            self.costs.add_bytes(u, up=wire_bytes)
        return masked

    def unmask(self, masked: dict[int, np.ndarray], responders: set[int]) -> np.ndarray:
        """Round 4: responders reveal shares; returns the float64 sum of the arrived weighted inputs."""
        survivors = frozenset(masked)
        responses = {}
        for v in sorted(responders & survivors):
            with self.costs.client_clock(v):
                responses[v] = self.clients[v].unmask(survivors)
            self.costs.add_bytes(v, up=RESPONSE_ENTRY_BYTES * len(responses[v]), down=4 * len(survivors))
        with self.costs.server_clock():
            total = self.server.unmask(masked, responses, self.fixed_point.bits)
            return self.fixed_point.decode(total)
