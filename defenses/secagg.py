"""Secure aggregation: the server learns the weighted mean of the updates and nothing about any one.

Implements the honest-but-curious protocol of Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning" (CCS 2017), and its sparse-graph variant SecAgg+ of Bell et al.,
"Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS 2020), as a simulation inside
one process: every party's cryptography is real (X25519 key agreement, HKDF-SHA256, ChaCha20 mask
expansion, ChaCha20-Poly1305 share envelopes, Shamir sharing over GF(2^521 - 1)); only the network is
simulated (messages are handed over in memory, and their serialised sizes are counted). The protocol
itself lives in ``defenses/masking/``.

Weighted mean. FedAvg weights are public example counts. Client u sends the masked fixed-point
encoding of w_u * clip(x_u) with w_u = n_u / sum of n_v over the round's sampled clients, so the
unmasked sum is the weighted mean. If clients drop before their input arrives, the sum covers the
survivors S only, and the transport divides it by sum_{u in S} w_u: the mean renormalised over
survivors, exactly FedAvg over S (the weights are public, so this leaks nothing).

Departures from the papers: no signatures and no consistency round (they defend against an active
server; the benchmark's server is honest-but-curious); keys are fresh every round; by default key
material is drawn from the run's generator so that a scenario and seed reproduce the same transcript
(``key_source: os`` draws it from the operating system, as a deployment must); ``dropout_rate`` drops
clients after they shared their keys but before their masked input arrives, and ``late_dropout_rate``
drops them after their input arrived but before they answer the unmasking request.

Under ``federation.protocol: kd`` the same transport carries each client's softened distribution on the
proxy set (probabilities, so the default clip of 1 clips nothing): the server unmasks only the consensus
it distils from, and a per-client attack on the shared logits (``mia-kd-logits``) is left with that sum.

Encoding range. Each coordinate is clipped to [-clip, clip] before encoding. A defense whose guarantee
rests on the exact values clients send (``dp-central`` with client-side noise: clipping a noisy
coordinate would shrink and distort the noise on the sum) declares a bound (``Defense.coordinate_bound``),
and the range is widened to it; a coordinate beyond a declared bound stops the run
(``EncodingRangeError``) rather than be clipped. ``cost.secagg.clipped_coordinates`` counts the
coordinates clipped per round in any case.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from bench.api.config import doc
from bench.api.defense import Defense, DefenseSlot, Transport
from bench.api.protocol import Channel
from bench.api.registry import DEFENSES
from bench.api.transcript import PlannedScenario
from bench.api.vocabulary import DefenseFamily
from defenses.masking.errors import EncodingRangeError, IndividualUpdatesHiddenError, SecAggAbortError
from defenses.masking.fixedpoint import MAX_BITS, MIN_BITS, FixedPoint
from defenses.masking.graph import default_degree
from defenses.masking.material import Entropy
from defenses.masking.protocol import SecAggRound

__all__ = ["SecureAggregation", "SecAggTransport", "SecAggAbortError", "IndividualUpdatesHiddenError"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SecAggConfig:
    variant: Literal["secagg", "secagg+"] = doc(
        "secagg: every pair of clients shares a mask (Bonawitz et al. 2017, O(n^2) key agreements); "
        "secagg+: only neighbours in a random Harary graph do (Bell et al. 2020, O(n log n))",
        "secagg",
    )
    threshold: float = doc(
        "Shamir threshold as a fraction of each share group (the client and its neighbours): "
        "t = floor(threshold * group size) + 1 shares reconstruct a secret, so up to group size - t "
        "members may drop; fewer than t colluding parties learn nothing about a secret",
        0.5,
    )
    dropout_rate: float = doc(
        "Probability that a client drops after sharing its keys and before its masked input arrives "
        "(its update is lost; the server cancels its pairwise masks); drawn from the round's generator",
        0.0,
    )
    late_dropout_rate: float = doc(
        "Probability that a client whose masked input arrived drops before the unmasking round "
        "(its update still counts; the others reveal its self-mask seed)",
        0.0,
    )
    bits: int = doc(
        f"Bits k of the ring Z_(2^k) the masked sums live in ({MIN_BITS}..{MAX_BITS}); the fixed-point "
        "scale is chosen from k and the number of clients so that the sum cannot overflow",
        32,
    )
    clip: float = doc(
        "Each coordinate is clipped to [-clip, clip] before fixed-point encoding; widened to the bound a "
        "defense running alongside declares (dp-central's client-side noise)",
        1.0,
    )
    neighbours: int = doc(
        "secagg+ only: each client's number of neighbours (rounded up to even); 0 picks "
        "2 * ceil(log2 n), capped at n - 1",
        0,
    )
    key_source: Literal["generator", "os"] = doc(
        "Where key material comes from: 'generator' (the run's seeded generator: reproducible, "
        "simulation only) or 'os' (os.urandom, as a deployment must)",
        "generator",
    )
    skip_aborted_rounds: bool = doc(
        "When too many clients drop to unmask: false stops the run with an error; true leaves the global "
        "model unchanged for that round (a zero aggregate) and counts it in cost.secagg.aborted_rounds",
        False,
    )

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold must lie in [0, 1), got {self.threshold}")
        for name in ("dropout_rate", "late_dropout_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must lie in [{MIN_BITS}, {MAX_BITS}], got {self.bits}")
        if not self.clip > 0:
            raise ValueError(f"clip must be positive, got {self.clip}")
        if self.neighbours < 0:
            raise ValueError(f"neighbours must be >= 0, got {self.neighbours}")


@dataclass
class _PendingRound:
    """What the transport keeps between ``encode`` and ``aggregate`` of one round."""

    protocol: SecAggRound
    weight_fractions: dict[int, float]
    """Each sampled client's weight over the round's total (public)."""
    late_dropouts: frozenset[int]
    length: int
    dtype: torch.dtype
    device: torch.device
    clipped: int
    """Coordinates clipped to the encoding range, over the arrived inputs."""
    reference: np.ndarray  # plain survivors' mean, only to measure precision loss; dropped after use

    def __repr__(self) -> str:
        return f"_PendingRound({self.protocol!r})"


class CostLedger:
    """Per-round protocol costs, summarised as the ``cost.secagg.*`` metrics of the defense."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, float]] = []
        self.aborted_rounds = 0
        self.contributors: dict[int, int] = {}
        """Per round (until read by ``survivors``): how many inputs the unmasked sum holds."""

    def record(self, pending: _PendingRound, delivered: int, dropped: int, error: float) -> None:
        """``delivered`` inputs reached the server; expansion compares all bytes up with theirs in float32."""
        length = pending.length
        costs = pending.protocol.costs
        clients = list(costs.bytes_up)
        self.rounds.append(
            {
                "client_s": sum(costs.client_seconds.values()) / len(clients),
                "server_s": costs.server_seconds,
                "bytes_up": sum(costs.bytes_up.values()) / len(clients),
                "bytes_down": sum(costs.bytes_down.values()) / len(clients),
                "plain_bytes": 4.0 * length * delivered / len(clients),
                "dropped": float(dropped),
                "dropout_tolerance": 1 - pending.protocol.threshold / pending.protocol.group_size,
                "precision_loss": error,
                "clipped_coordinates": float(pending.clipped),
                "range": pending.protocol.fixed_point.clip,
            }
        )

    def summary(self) -> dict[str, float]:
        if not self.rounds:
            return {"aborted_rounds": float(self.aborted_rounds)} if self.aborted_rounds else {}
        mean = {key: sum(r[key] for r in self.rounds) / len(self.rounds) for key in self.rounds[0]}
        return {
            "client_s": mean["client_s"],
            "server_s": mean["server_s"],
            "bytes_up": mean["bytes_up"],
            "bytes_down": mean["bytes_down"],
            "expansion": mean["bytes_up"] / mean["plain_bytes"],
            "dropped_clients": mean["dropped"],
            "dropout_tolerance": min(r["dropout_tolerance"] for r in self.rounds),
            "precision_loss": max(r["precision_loss"] for r in self.rounds),
            "clipped_coordinates": mean["clipped_coordinates"],
            "range": max(r["range"] for r in self.rounds),
            "aborted_rounds": float(self.aborted_rounds),
        }


class SecAggTransport(Transport):
    """Carries fixed-point, masked updates; the server can only recover their (weighted) sum."""

    def __init__(self, config: SecAggConfig):
        self.config = config
        self.ledger = CostLedger()
        self._pending: dict[int, _PendingRound] = {}
        self.bound_sources: list[Defense] = []
        """Defenses whose ``coordinate_bound`` the encoding range must hold (set by ``setup``)."""

    def encoding_range(self) -> tuple[float, float | None]:
        """The clip used this round, and the bound a defense declared (None when none did)."""
        bounds = [b for b in (d.coordinate_bound() for d in self.bound_sources) if b is not None]
        declared = max(bounds) if bounds else None
        return max(self.config.clip, declared or 0.0), declared

    def __repr__(self) -> str:
        return f"SecAggTransport({self.config!r}, pending_rounds={sorted(self._pending)})"

    def encode(
        self, round_index: int, updates: dict[int, torch.Tensor], weights: dict[int, float], rng: torch.Generator
    ) -> dict[int, torch.Tensor]:
        """Each arriving client's masked residues (int64 tensor in [0, 2^k)): what the server sees."""
        ids = sorted(updates)
        total_weight = float(sum(weights[c] for c in ids))
        fractions = {c: float(weights[c]) / total_weight for c in ids}
        early, late = self._draw_dropouts(ids, rng)
        entropy = _ENTROPY_SOURCES[self.config.key_source](rng)
        clip, declared = self.encoding_range()
        protocol = SecAggRound(
            round_index,
            ids,
            FixedPoint(self.config.bits, clip, len(ids)),
            self.config.threshold,
            _DEGREES[self.config.variant](self.config, len(ids)),
            entropy,
            rng,
        )
        plain = {c: updates[c].detach().to("cpu", torch.float32).numpy() for c in ids if c not in early}
        clipped = sum(int(np.count_nonzero(np.abs(x) > clip)) for x in plain.values())
        if clipped and declared is not None:
            raise EncodingRangeError(
                f"secagg round {round_index}: {clipped} coordinates exceed the range +-{declared:.4g} that "
                f"{', '.join(d.name for d in self.bound_sources)} declared; clipping them would change its guarantee"
            )
        masked = protocol.masked_inputs({c: (plain[c], fractions[c]) for c in plain})
        first = updates[ids[0]]
        self._pending[round_index] = _PendingRound(
            protocol,
            fractions,
            frozenset(late),
            first.numel(),
            first.dtype,
            first.device,
            clipped,
            _weighted_mean(plain, fractions),
        )
        return {c: torch.from_numpy(y.astype(np.int64)) for c, y in masked.items()}

    def aggregate(self, round_index: int, messages: dict[int, torch.Tensor], weights: dict[int, float]) -> torch.Tensor:
        """Unmask the sum of the arrived inputs (the int64 residues ``encode`` sent) and renormalise it over their weights."""
        pending = self._pending.pop(round_index, None)
        if pending is None:
            raise RuntimeError(f"secagg: aggregate for round {round_index} without a matching encode")
        protocol = pending.protocol
        residues = {c: m.cpu().numpy().astype(protocol.fixed_point.dtype) for c, m in messages.items()}
        length = pending.length
        try:
            total = protocol.unmask(residues, set(residues) - pending.late_dropouts)
        except SecAggAbortError:
            if not self.config.skip_aborted_rounds:
                raise
            self.ledger.aborted_rounds += 1
            self.ledger.contributors[round_index] = 0  # a skipped round's zero aggregate holds no one's update
            log.warning("secagg round %d aborted: too many dropouts; the round is skipped", round_index)
            return torch.zeros(length, dtype=pending.dtype, device=pending.device)
        mean = total / sum(pending.weight_fractions[c] for c in residues)
        self.ledger.contributors[round_index] = len(residues)  # late dropouts' inputs arrived: they count
        dropped = len(protocol.clients) - len(residues) + len(pending.late_dropouts & set(residues))
        error = float(np.abs(mean - pending.reference).max()) if mean.size else 0.0
        self.ledger.record(pending, len(residues), dropped, error)
        log.debug(
            "secagg round %d: %d clients, %d dropped, threshold %d, client %.4fs, server %.4fs",
            round_index,
            len(protocol.clients),
            dropped,
            protocol.threshold,
            self.ledger.rounds[-1]["client_s"],
            protocol.costs.server_seconds,
        )
        return torch.from_numpy(mean).to(dtype=pending.dtype, device=pending.device)

    def survivors(self, round_index: int, messages: dict[int, torch.Tensor]) -> int:
        """Clients whose inputs the unmasked sum holds: those whose masked input arrived (0 if the round
        was skipped after too many late dropouts)."""
        return self.ledger.contributors.pop(round_index, len(messages))

    def message_bytes(self, message: torch.Tensor) -> int:
        """Wire size of one masked input: k bits per coordinate, packed."""
        return math.ceil(message.numel() * self.config.bits / 8)

    def decode_individual(self, messages: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        raise IndividualUpdatesHiddenError(
            "secagg hides each client's update from the server: a masked input is uniformly random on "
            "its own, and only the sum over clients can be unmasked"
        )

    def _draw_dropouts(self, ids: list[int], rng: torch.Generator) -> tuple[set[int], set[int]]:
        # Both draws always happen, so the generator's stream does not depend on the rates.
        early_draw = torch.rand(len(ids), generator=rng).tolist()
        late_draw = torch.rand(len(ids), generator=rng).tolist()
        early = {c for c, p in zip(ids, early_draw, strict=True) if p < self.config.dropout_rate}
        late = {c for c, p in zip(ids, late_draw, strict=True) if p < self.config.late_dropout_rate and c not in early}
        return early, late


# The mask graph's degree per variant: None is the complete graph.
_DEGREES = {
    "secagg": lambda config, num_clients: None,
    "secagg+": lambda config, num_clients: config.neighbours or default_degree(num_clients),
}
_ENTROPY_SOURCES = {"generator": Entropy.from_generator, "os": lambda rng: Entropy.from_os()}


def _weighted_mean(plain: dict[int, np.ndarray], fractions: dict[int, float]) -> np.ndarray:
    total = sum(fractions[c] for c in plain)
    return sum(plain[c].astype(np.float64) * (fractions[c] / total) for c in plain) if plain else np.zeros(0)


@DEFENSES.register("secagg")
class SecureAggregation(Defense):
    """Secure aggregation (SecAgg / SecAgg+): hides every client's update from the server."""

    slot = DefenseSlot.TRANSPORT
    family = DefenseFamily.SECAGG
    Config = SecAggConfig
    channels = frozenset({Channel.PARAMETERS, Channel.LOGITS})
    """Parameter updates, and KD's logits: the KD server needs only the weighted mean of the clients'
    distributions, so it gets that sum and no client's (``bench.engine.protocols.kd``)."""

    def __init__(self, config: SecAggConfig):
        super().__init__(config)
        self._transport = SecAggTransport(config)

    def __repr__(self) -> str:
        return f"SecureAggregation({self.config!r})"

    def transport(self) -> SecAggTransport:
        return self._transport

    def setup(self, scenario: PlannedScenario, num_examples: dict[int, int], *, peers: Sequence[Defense] = ()) -> None:
        self._transport.bound_sources = list(peers)  # their coordinate bounds set the encoding range

    def costs(self) -> dict[str, float]:
        """Protocol costs as ``cost.secagg.<name>`` (the engine's own ``cost.client_s`` etc. cover the whole
        round). Means per round: ``client_s`` per client, ``server_s``, ``bytes_up``/``bytes_down`` per
        client, ``expansion`` = all bytes up over the float32 size of the updates that arrived,
        ``dropped_clients``; ``dropout_tolerance`` is the fraction of a share group that may drop,
        ``precision_loss`` the largest absolute error of a decoded mean against the plain mean of the
        same clients (clipping plus rounding), ``clipped_coordinates`` the coordinates clipped to the
        encoding range (mean per round), ``range`` that range's largest half-width, ``aborted_rounds`` a count."""
        return {f"cost.{self.name}.{key}": value for key, value in self._transport.ledger.summary().items()}
