"""Span checks (DAGER, Petrov et al. 2024): is a candidate layer input in the span of a gradient?

For a linear map h = W x inside the network, dL/dW = sum_i g_i x_i^T over the batch's token
positions i, so its row space (in x's space) is spanned by the inputs x_i that received gradient,
and has rank <= number of such positions. A candidate input x_v is judged by the distance of the unit
vector x_v / |x_v| to that span: ~0 for inputs the batch contained, ~sqrt(1 - rank / dim) for a
generic vector. The check says nothing once the span fills the space (rank == dim): then every
vector is "in" it, which is why the input width must exceed the number of distinct inputs.

A ``Probe`` is one such matrix with its columns in the checked space, plus an optional linear map
applied to candidates first (LoRA: the row space of dL/dB is A times the inputs' span, so candidates
are checked as A x). Distances are computed for whole candidate tensors at once (batched matmuls).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Probe:
    matrix: torch.Tensor
    """(dim, columns): the gradient oriented so that its column space holds the (mapped) inputs."""
    transform: torch.Tensor | None = None
    """(dim, input width) map applied to candidate inputs before the check; None = identity."""
    noise: torch.Tensor | None = None
    """Per-element standard deviation of the matrix's known rounding noise (same shape), or None."""


@dataclass
class SpanBasis:
    basis: torch.Tensor
    """(rank, dim) orthonormal rows spanning the probe's column space."""
    transform: torch.Tensor | None
    rank: int
    dim: int
    floor: float = 0.0
    """The rank cut relative to the largest singular value: how loud the noise is in this span."""
    singular: torch.Tensor | None = None
    """(rank,) the kept singular values: how much gradient each basis direction carries (the final
    selection weighs candidate inputs by the gradient they explain, ``_decode.refine_by_energy``)."""

    @property
    def weighted(self) -> torch.Tensor:
        """(dim, rank) the gradient's column space scaled by its singular values (float64)."""
        scale = self.singular if self.singular is not None else torch.ones(self.rank)
        return self.basis.double().T * scale.double().to(self.basis.device)

    @property
    def cut(self) -> float:
        """The singular value at the rank cut: the loudest the noise can be along one direction."""
        return self.floor * float(self.singular[0]) if self.singular is not None and self.rank else 0.0

    @property
    def informative(self) -> bool:
        return 0 < self.rank < self.dim


def span_basis(probe: Probe, rank_tol: float, noise_margin: float = 2.0) -> SpanBasis:
    """Orthonormal basis of the column space.

    Singular values count towards the rank when above both ``rank_tol`` x the largest and
    ``noise_margin`` x the largest singular value pure noise of the probe's known per-element scale
    would produce (the Marchenko-Pastur edge (sqrt(rows) + sqrt(columns)) x rms noise).
    """
    matrix = torch.nan_to_num(probe.matrix.detach().double(), nan=0.0, posinf=0.0, neginf=0.0)
    dim = matrix.shape[0]
    if matrix.numel() == 0 or not torch.any(matrix != 0):
        return SpanBasis(matrix.new_zeros(0, dim).float(), probe.transform, 0, dim)
    left, singular, _ = torch.linalg.svd(matrix, full_matrices=False)
    floor = rank_tol * singular[0]
    if probe.noise is not None:
        edge = (matrix.shape[0] ** 0.5 + matrix.shape[1] ** 0.5) * probe.noise.double().pow(2).mean().sqrt()
        floor = max(float(floor), noise_margin * float(edge))
    rank = int((singular > floor).sum())
    return SpanBasis(left[:, :rank].T.float().contiguous(), probe.transform, rank, dim, float(floor / singular[0]),
                     singular[:rank].float())


def merge_probes(probes: list[Probe]) -> list[Probe]:
    """Probes that check the same mapped space (same transform) are one matrix: their columns join."""
    groups: dict[int, list[Probe]] = {}
    for probe in probes:
        groups.setdefault(id(probe.transform) if probe.transform is not None else 0, []).append(probe)
    return [Probe(torch.cat([p.matrix for p in group], dim=1), group[0].transform, _joined_noise(group))
            for group in groups.values()]


def _joined_noise(group: list[Probe]) -> torch.Tensor | None:
    if any(p.noise is None for p in group):
        return None
    return torch.cat([p.noise for p in group], dim=1)


def rounding_noise(values: torch.Tensor) -> torch.Tensor:
    """Standard deviation of rounding ``values`` to float32: an error uniform within half an ulp.
    Applied to the client's new weights when it sends them (their difference carries the weights'
    rounding), to the update itself when it sends its gradient step (FedSGD)."""
    magnitude = values.detach().float().abs()
    ulp = torch.nextafter(magnitude, torch.full_like(magnitude, float("inf"))) - magnitude
    return ulp / 12**0.5


def span_distance(basis: SpanBasis, inputs: torch.Tensor) -> torch.Tensor:
    """Distance of each normalised (mapped) input to the span; ``inputs`` is (..., width)."""
    vectors = inputs.float()
    if basis.transform is not None:
        vectors = vectors @ basis.transform.T.float()
    length = vectors.norm(dim=-1)
    vectors = vectors / length.clamp_min(1e-30).unsqueeze(-1)
    projected = (vectors @ basis.basis.T) @ basis.basis
    distance = (vectors - projected).norm(dim=-1)
    # a zero input (a padding row of the embedding) is in every span and says nothing
    return torch.where(length > 1e-6 * length.max().clamp_min(1e-30), distance, torch.ones_like(distance))


def chance_distance(basis: SpanBasis, checked: int, false_positives: float) -> float:
    """The distance below which ``false_positives`` of ``checked`` unrelated inputs are expected.

    A uniformly random unit vector's squared distance to a fixed rank-r subspace of R^dim is
    Beta((dim - r) / 2, r / 2); its quantile at false_positives / checked is the threshold at which
    chance alone admits that many of the candidates. Close to full rank this is tiny, which is what
    makes wide spans uninformative rather than permissive.
    """
    from scipy.stats import beta

    quantile = min(false_positives / max(checked, 1), 0.5)
    return float(beta.ppf(quantile, (basis.dim - basis.rank) / 2, basis.rank / 2)) ** 0.5


def span_measures(bases: list[SpanBasis], inputs: torch.Tensor, threshold: float, false_positives: float,
                  checked: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, distances) of each input against the informative spans.

    score = min over spans of distance / that span's threshold (< 1 means "in the batch"), where a
    span's threshold is the smaller of ``threshold`` and its chance distance for ``checked``
    candidates (``chance_distance``); distance = that span's raw distance. The best span decides
    because a true input need not be in all of them: the query at position 0 attends to itself
    alone (a softmax over one key is constant), so a query projection's gradient never contains the
    first position, while its key and value do. Full fine-tuning merges q, k and v into one span;
    LoRA's per-module r-dimensional spans stay separate.
    """
    useful = [b for b in bases if b.informative]
    if not useful:
        raise ValueError("no informative span")
    distances = torch.stack([span_distance(b, inputs) for b in useful])
    limits = torch.tensor([min(threshold, chance_distance(b, checked, false_positives)) for b in useful],
                          device=distances.device).reshape(-1, *([1] * (distances.dim() - 1)))
    scores, best = (distances / limits).min(dim=0)
    return scores, distances.gather(0, best.unsqueeze(0)).squeeze(0)


def restrict_to_inputs(basis: SpanBasis, sample: torch.Tensor, tolerance: float = 1e-4) -> None:
    """Set ``basis.dim`` to the dimension of the space real (mapped) inputs occupy, from a sample.

    Inputs need not fill the space: LayerNorm without a bias puts every input in the hyperplane
    orthogonal to its centring direction, so a span of rank d - 1 already holds every candidate.
    Judging informativeness and chance distances against that space, not R^d, is what keeps a full
    span from passing for a selective one.
    """
    vectors = sample.reshape(-1, sample.shape[-1]).double()
    if basis.transform is not None:
        vectors = vectors @ basis.transform.T.double()
    vectors = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    singular = torch.linalg.svdvals(vectors)
    occupied = int((singular > tolerance * singular[0]).sum()) if singular.numel() else 0
    basis.dim = min(basis.dim, max(occupied, 1))


def informative(bases: list[SpanBasis]) -> bool:
    return any(b.informative for b in bases)


@dataclass
class SpanCheck:
    """The spans of one layer and how strictly candidates are judged against them."""

    bases: list[SpanBasis]
    threshold: float
    """Largest accepted distance of a unit-norm input (the chance distance may make it smaller)."""
    false_positives: float
    """Unrelated candidates expected to pass by chance, per batch of ``checked`` candidates."""

    @property
    def informative(self) -> bool:
        return informative(self.bases)

    @property
    def rank(self) -> int:
        return max((b.rank for b in self.bases if b.informative), default=0)

    @property
    def noise(self) -> float:
        """Relative noise floor of the loudest informative span (distances of true inputs scale with it)."""
        return max((b.floor for b in self.bases if b.informative), default=0.0)

    def measure(self, inputs: torch.Tensor, checked: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, distances): score < 1 passes the absolute test; distances feed relative tests."""
        return span_measures(self.bases, inputs, self.threshold, self.false_positives, checked)
